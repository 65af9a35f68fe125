/** What the launch controller learns from instance listings, and what it records. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { InstanceInfo } from '../../src/compute/port.js';
import { ScalingMeasurements, scalingObservation, SERVICE_PRIOR_MS, STARTUP_PRIOR_MS } from '../../src/controller/launch.js';
import type { RunEvent } from '../../src/event-log.js';

const instance = (id: string, state: InstanceInfo['state'], extra: Partial<InstanceInfo> = {}): InstanceInfo => ({ id, state, startedAt: 1_000, ...extra });

describe('scaling measurements', () => {
  it('starts from the adapter priors, then learns start-up from instances leaving starting', () => {
    const events: RunEvent[] = [];
    const measured = new ScalingMeasurements({ record: (event) => events.push(event) });
    const compute = { maxInstances: 20, capacity: 2, startupPriorMs: 40_000 };
    const counts = { visible: 5, inFlight: 1, delayed: 0 };
    assert.equal(scalingObservation(counts, [], compute, measured, 0).startupMs, 40_000);
    assert.equal(scalingObservation(counts, [], { maxInstances: 3 }, measured, 0).startupMs, STARTUP_PRIOR_MS);
    assert.equal(scalingObservation(counts, [], compute, measured, 0).serviceMs, SERVICE_PRIOR_MS);

    measured.launched(['i-a', 'i-b'], 1_000);
    measured.observe([instance('i-a', 'starting'), instance('i-b', 'starting')], 1_500);
    assert.equal(measured.startupMs(), undefined);
    // i-a reported at 3000 (the registry's time), seen at 3200.
    measured.observe([instance('i-a', 'idle', { readyAt: 3_000 }), instance('i-b', 'starting')], 3_200);
    assert.equal(measured.startupMs(), 2_000);
    // i-b: the adapter keeps no ready time, so the time it was seen counts.
    measured.observe([instance('i-a', 'busy', { readyAt: 3_000 }), instance('i-b', 'idle')], 5_000);
    assert.equal(measured.startupMs(), 2_000 + 0.2 * (4_000 - 2_000));
    // Seen again in the same state: not counted twice.
    measured.observe([instance('i-a', 'busy', { readyAt: 3_000 }), instance('i-b', 'idle')], 6_000);
    assert.equal(measured.startupMs(), 2_400);

    const types = events.map((event) => `${event.type}:${'instanceId' in event ? event.instanceId : ''}`);
    assert.deepEqual(types, ['launch:i-a', 'launch:i-b', 'ready:i-a', 'ready:i-b']);
    assert.equal(events[2]!.at, 3_000);
  });

  it('learns the service time from what workers report, each new report once', () => {
    const measured = new ScalingMeasurements();
    measured.observe([instance('i-a', 'busy', { serviceMs: 30 })], 0);
    assert.equal(measured.serviceMs(), 30);
    measured.observe([instance('i-a', 'busy', { serviceMs: 30 })], 100);
    assert.equal(measured.serviceMs(), 30, 'an unchanged report is not a new sample');
    measured.observe([instance('i-a', 'busy', { serviceMs: 40 }), instance('i-b', 'busy', { serviceMs: 20 })], 200);
    // 30, then 40 → 32, then 20 → 29.6: a moving average with weight 0.2 for the newest.
    assert.ok(Math.abs(measured.serviceMs()! - 29.6) < 1e-9, String(measured.serviceMs()));
  });

  it('records a stop when an instance is listed stopped or leaves the listing, once', () => {
    const events: RunEvent[] = [];
    const measured = new ScalingMeasurements({ record: (event) => events.push(event) });
    measured.observe([instance('i-a', 'idle', { readyAt: 2_000 }), instance('i-b', 'busy', { readyAt: 2_000 })], 2_500);
    measured.observe([instance('i-a', 'stopped', { readyAt: 2_000 }), instance('i-b', 'busy', { readyAt: 2_000 })], 3_000);
    measured.observe([instance('i-a', 'stopped', { readyAt: 2_000 })], 4_000);
    measured.observe([], 5_000);
    const stops = events.filter((event) => event.type === 'stop').map((event) => `${(event as { instanceId: string }).instanceId}@${event.at}`);
    assert.deepEqual(stops, ['i-a@3000', 'i-b@4000']);
  });

  it('counts instances by state and the ages of those starting', () => {
    const measured = new ScalingMeasurements();
    const observation = scalingObservation(
      { visible: 7, inFlight: 2, delayed: 4 },
      [instance('a', 'starting', { startedAt: 9_000 }), instance('b', 'idle'), instance('c', 'busy'), instance('d', 'busy'), instance('e', 'stopped')],
      { maxInstances: 4, capacity: 8 },
      measured,
      10_000,
    );
    assert.deepEqual({ ...observation, serviceMs: 0, startupMs: 0 }, {
      backlog: 7, inFlight: 2, starting: 1, idle: 1, busy: 2, startingAgesMs: [1_000], max: 4, capacity: 4, serviceMs: 0, startupMs: 0, startCostMs: 0,
    });
  });
});
