/** --replay against a synthetic event log whose run is known exactly. */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { RunEvent } from '../../src/event-log.js';
import { parseSimulateArgs, runSimulation } from '../../src/sim/command.js';
import { SimInputError } from '../../src/sim/errors.js';
import { loadReplay } from '../../src/sim/replay.js';
import { makeTempDir } from '../helpers.js';

const T0 = 1_800_000_000_000;

/**
 * 20 images uploaded at once; queue-match on 4 instances with a core each; each instance
 * starts in 1 s and takes 5 images of 500 ms in a row. Last finish: 0.1 + 1 + 2.5 = 3.6 s.
 */
function syntheticRun(): RunEvent[] {
  const events: RunEvent[] = [{ type: 'run', at: T0 - 5000, component: 'controller', policy: 'queue-match', maxInstances: 4, capacity: 4, idleWaitSeconds: 5, compute: 'ec2' }];
  for (let i = 0; i < 20; i++) events.push({ type: 'arrival', at: T0 + i, imageId: `img-${i}`, batchId: 'b' });
  for (let k = 0; k < 4; k++) {
    const instanceId = `i-${k}`;
    events.push({ type: 'launch', at: T0 + 100, instanceId }, { type: 'ready', at: T0 + 1100, instanceId });
    for (let j = 0; j < 5; j++) {
      const imageId = `img-${k * 5 + j}`;
      const start = T0 + 1100 + j * 500;
      events.push({ type: 'image-start', at: start, instanceId, imageId, attempt: 1 });
      // Half the finishes carry the worker's service time, half leave it to finish - start.
      events.push({ type: 'image-finish', at: start + 500, imageId, instanceId, status: 'ok', ...(j % 2 === 0 ? { serviceMs: 500 } : {}) });
    }
    events.push({ type: 'stop', at: T0 + 3600 + 5000, instanceId });
  }
  return events;
}

async function writeLog(dir: string, events: RunEvent[], extra = ''): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'events.jsonl'), `${events.map((event) => JSON.stringify(event)).join('\n')}\n${extra}`);
}

describe('replay', async () => {
  const temp = await makeTempDir('icaas-sim-replay-');
  after(() => temp.cleanup());

  it('reads arrivals, start-up and service times and the settings from the log', async () => {
    const dir = path.join(temp.dir, 'read');
    await writeLog(dir, syntheticRun(), 'not json\n');
    const replay = await loadReplay(dir);
    assert.equal(replay.trace.kind === 'open' && replay.trace.times.length, 20);
    assert.deepEqual(replay.startupSamples, [1000, 1000, 1000, 1000]);
    assert.equal(replay.serviceSamples.length, 20);
    assert.ok(replay.serviceSamples.every((ms) => ms === 500));
    assert.equal(replay.realCompletionMs, 3600);
    assert.deepEqual(replay.run, { policy: 'queue-match', maxInstances: 4, capacity: 4, idleWaitSeconds: 5, compute: 'ec2' });
    assert.equal(replay.skipped, 1);
  });

  it('reproduces the logged completion time within 20 %', async () => {
    const dir = path.join(temp.dir, 'reproduce');
    await writeLog(dir, syntheticRun());
    const simulation = await runSimulation(parseSimulateArgs(['--replay', dir]));
    assert.equal(simulation.settings.preset, 'ec2');
    assert.deepEqual(simulation.policies, ['queue-match']);
    const [report] = simulation.reports;
    assert.equal(report!.realCompletionMs, 3600);
    const difference = Math.abs(report!.run.completionMs - 3600) / 3600;
    assert.ok(difference < 0.2, `simulated ${report!.run.completionMs} ms vs real 3600 ms`);
  });

  it('lets flags override the logged settings', async () => {
    const dir = path.join(temp.dir, 'override');
    await writeLog(dir, syntheticRun());
    const simulation = await runSimulation(parseSimulateArgs(['--replay', dir, '--max', '1']));
    assert.equal(simulation.settings.max, 1);
    assert.ok(simulation.reports[0]!.run.completionMs >= 20 * 500, 'one instance does the 20 images in a row');
  });

  it('says so when the folder has no event log, or the log no arrivals', async () => {
    const none = path.join(temp.dir, 'none');
    await mkdir(none);
    await assert.rejects(loadReplay(none), (error: unknown) => error instanceof SimInputError && /no event log in .*none/.test(error.message));
    const quiet = path.join(temp.dir, 'quiet');
    await writeLog(quiet, syntheticRun().filter((event) => event.type !== 'arrival'));
    await assert.rejects(loadReplay(quiet), (error: unknown) => error instanceof SimInputError && /has no arrivals/.test(error.message));
  });
});
