/**
 * The simulator's model: deterministic by seed, every image finished once, the maximum
 * held, scale-in after the idle wait, and the policies compared on both presets.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseDistribution } from '../../src/sim/distributions.js';
import { simulate, type SimSettings } from '../../src/sim/engine.js';
import { preset, type PresetName } from '../../src/sim/presets.js';
import { parseTrace, traceImages } from '../../src/sim/traces.js';

function settings(trace: string, presetName: PresetName, overrides: Partial<SimSettings> = {}): SimSettings {
  const defaults = preset(presetName);
  const seed = overrides.seed ?? 1;
  return {
    trace: parseTrace(trace, seed),
    policy: 'drain-time',
    max: defaults.max,
    capacity: defaults.capacity ?? defaults.max,
    startup: defaults.startup,
    service: defaults.service,
    startCostMs: defaults.startCostMs,
    startupPriorMs: defaults.startupPriorMs,
    idleWaitMs: 5_000,
    launchIntervalMs: 500,
    seed,
    ...overrides,
  };
}

describe('simulate', () => {
  it('gives the same result for the same seed, and another for another seed', () => {
    const first = simulate(settings('poisson:20:30', 'local', { seed: 7 }));
    const again = simulate(settings('poisson:20:30', 'local', { seed: 7 }));
    assert.deepEqual(again, first);
    const other = simulate(settings('poisson:20:30', 'local', { seed: 8 }));
    assert.notEqual(other.completionMs, first.completionMs);
  });

  for (const policy of ['drain-time', 'queue-match']) {
    for (const trace of ['burst:300', 'poisson:40:20', 'sync:30:200']) {
      it(`finishes every arrival exactly once and never passes the maximum (${policy}, ${trace})`, () => {
        const input = settings(trace, 'local', { policy, max: 7, capacity: 2 });
        const run = simulate(input);
        assert.equal(run.images, traceImages(input.trace));
        assert.equal(run.records.length, run.images);
        assert.equal(run.finishEvents, run.images, 'one finish per image');
        for (const image of run.records) {
          assert.ok(image.finishedAt !== undefined && image.startedAt !== undefined, `image ${image.index} finished`);
          assert.ok(image.arrivedAt <= image.startedAt && image.startedAt <= image.finishedAt, `image ${image.index} in order`);
        }
        assert.ok(run.timeline.length > 0);
        for (const sample of run.timeline) assert.ok(sample.starting + sample.idle + sample.busy <= 7, `at ${sample.at} ms: ${JSON.stringify(sample)}`);
        assert.ok(run.peakInstances <= 7);
      });
    }
  }

  it('never passes the maximum when the policy asks for more (queue-match, max 3, burst of 50)', () => {
    const run = simulate(settings('burst:50', 'ec2', { policy: 'queue-match', max: 3, capacity: 3 }));
    assert.equal(run.peakInstances, 3);
    for (const sample of run.timeline) assert.ok(sample.starting + sample.idle + sample.busy <= 3);
  });

  it('scales in to zero: each instance stops the idle wait after its last image', () => {
    const constant = { startup: parseDistribution('const:1000', 'startup'), service: parseDistribution('const:200', 'service') };
    for (const idleWaitMs of [0, 5_000]) {
      const run = simulate(settings('burst:6', 'ec2', { ...constant, policy: 'queue-match', idleWaitMs }));
      const lastFinish = Math.max(...run.records.map((image) => image.finishedAt!));
      assert.equal(run.endMs, lastFinish + idleWaitMs);
      // 6 instances, ready at 1 s, one image each, then the idle wait: nothing runs longer.
      assert.equal(run.launches, 6);
      assert.ok(Math.abs(run.instanceSeconds - 6 * (1 + 0.2 + idleWaitMs / 1000)) < 1e-6, `instance-seconds ${run.instanceSeconds}`);
    }
  });

  it('on the local preset, a burst of 11 costs drain-time fewer instance-seconds than queue-match and finishes no later than a little', () => {
    const queueMatch = simulate(settings('burst:11', 'local', { policy: 'queue-match' }));
    const drainTime = simulate(settings('burst:11', 'local', { policy: 'drain-time' }));
    assert.ok(drainTime.instanceSeconds < queueMatch.instanceSeconds, `${drainTime.instanceSeconds} < ${queueMatch.instanceSeconds}`);
    assert.ok(drainTime.completionMs <= queueMatch.completionMs * 1.1, `${drainTime.completionMs} vs ${queueMatch.completionMs}`);
  });

  it('on the ec2 preset, a burst of 5 makes drain-time start fewer instances than queue-match', () => {
    const queueMatch = simulate(settings('burst:5', 'ec2', { policy: 'queue-match' }));
    const drainTime = simulate(settings('burst:5', 'ec2', { policy: 'drain-time' }));
    assert.equal(queueMatch.launches, 5);
    assert.ok(drainTime.launches < queueMatch.launches, `${drainTime.launches} < ${queueMatch.launches}`);
  });

  it('shares the cores: on one core, two images of 1 s that run together both take 2 s', () => {
    const run = simulate(settings('burst:2', 'local', {
      policy: 'queue-match', capacity: 1, startCostMs: 0,
      startup: parseDistribution('const:100', 'startup'), service: parseDistribution('const:1000', 'service'),
    }));
    for (const image of run.records) assert.ok(Math.abs(image.finishedAt! - image.startedAt! - 2000) < 1e-6, `wall ${image.finishedAt! - image.startedAt!}`);
  });
});
