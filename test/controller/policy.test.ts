import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  canonicalPolicyName,
  drainTimePolicy,
  expectedDrainMs,
  policyByName,
  queueMatchPolicy,
  type ScalingObservation,
} from '../../src/controller/policy.js';

const observe = (partial: Partial<ScalingObservation>): ScalingObservation => ({
  backlog: 0, inFlight: 0, starting: 0, idle: 0, busy: 0, max: 20, capacity: 20, serviceMs: 50, startupMs: 2000, ...partial,
});

describe('queue-match policy', () => {
  const start = (partial: Partial<ScalingObservation>) => queueMatchPolicy(observe(partial)).start;

  it('starts nothing when nothing waits', () => {
    assert.equal(start({}), 0);
    assert.equal(start({ busy: 5 }), 0);
  });

  it('starts one instance per waiting message, up to the maximum', () => {
    assert.equal(start({ backlog: 3 }), 3);
    assert.equal(start({ backlog: 100 }), 20);
  });

  it('counts idle and starting instances as free', () => {
    assert.equal(start({ backlog: 5, idle: 2 }), 3);
    assert.equal(start({ backlog: 5, starting: 5 }), 0);
    assert.equal(start({ backlog: 5, starting: 2, idle: 1 }), 2);
  });

  it('never passes the maximum, counting busy and starting instances', () => {
    assert.equal(start({ backlog: 100, busy: 18 }), 2);
    assert.equal(start({ backlog: 100, busy: 15, starting: 5 }), 0);
    assert.equal(start({ backlog: 10, busy: 25 }), 0);
  });

  it('ignores capacity: that is what the drain-time policy adds', () => {
    assert.equal(start({ backlog: 11, capacity: 2 }), 11);
  });

  it('counts images still arriving as waiting', () => {
    assert.equal(start({ incoming: 3 }), 3);
    assert.equal(start({ backlog: 2, incoming: 3, idle: 1 }), 4);
  });
});

describe('drain-time policy', () => {
  const decide = (partial: Partial<ScalingObservation>) => drainTimePolicy(observe(partial));

  it('starts nothing when nothing waits, and says so', () => {
    const decision = decide({ idle: 3 });
    assert.deepEqual(decision, { start: 0, target: 3, drainMs: null, reason: 'nothing waiting' });
  });

  it('starts nothing for images in flight: their holder works on them, or they come back when their holder is gone', () => {
    const decision = decide({ inFlight: 3 });
    assert.equal(decision.start, 0);
    assert.equal(decision.reason, 'the waiting images are taken');
    assert.equal(decide({ inFlight: 2, busy: 2 }).start, 0);
    // Once back in the backlog they are waiting work like any other.
    assert.equal(decide({ backlog: 3 }).start >= 1, true);
  });

  it('on a cold tier always starts at least one instance for waiting work', () => {
    assert.equal(decide({ backlog: 1, startupMs: 60_000 }).start, 1);
    assert.equal(decide({ backlog: 1, capacity: 1, max: 1 }).start, 1);
  });

  it('starts no more instances than can usefully run at once', () => {
    // 11 images on a 2-core machine: two workers, not eleven.
    assert.equal(decide({ backlog: 11, capacity: 2 }).start, 2);
    assert.equal(decide({ backlog: 900, capacity: 2 }).start, 2);
    assert.equal(decide({ backlog: 900, capacity: 2, busy: 2 }).start, 0);
    assert.match(decide({ backlog: 900, capacity: 2, busy: 2 }).reason, /at capacity: 2/);
  });

  it('does not start an instance a running one would beat', () => {
    // One busy instance finishes the 3 waiting images in 0.2 s; a new one needs 2 s to start.
    const decision = decide({ backlog: 3, busy: 1 });
    assert.equal(decision.start, 0);
    assert.match(decision.reason, /would not finish sooner/);
  });

  it('scales out when the backlog outlasts a start-up', () => {
    // 900 images at 50 ms on one instance: 45 s; with more instances after a 2 s start, far less.
    const decision = decide({ backlog: 900, busy: 1 });
    assert.ok(decision.start >= 10, `${decision.start}: ${decision.reason}`);
    assert.ok(decision.drainMs! < 45_000 / 5, String(decision.drainMs));
  });

  it('counts the instances already starting, by how far along they are', () => {
    const fresh = decide({ backlog: 40, starting: 2, startingAgesMs: [0, 0], capacity: 4 });
    const almost = decide({ backlog: 40, starting: 2, startingAgesMs: [1900, 1900], capacity: 4 });
    assert.ok(fresh.drainMs! > almost.drainMs!, `${fresh.drainMs} vs ${almost.drainMs}`);
    assert.ok(fresh.start <= 2 && almost.start <= 2);
  });

  it('on one machine starts a second instance only when it saves more than a start burns', () => {
    const local = { capacity: 2, serviceMs: 30, startupMs: 1000, startCostMs: 600 };
    // 10 images: a second worker would save 150 ms for 600 ms of CPU.
    assert.equal(decide({ backlog: 10, ...local }).start, 1);
    assert.equal(decide({ backlog: 100, ...local }).start, 2);
    // Without a start cost (EC2), the 150 ms are worth a start.
    assert.equal(decide({ backlog: 10, ...local, startCostMs: 0 }).start, 2);
  });

  it('weighs a start against what it costs the running instances', () => {
    // On one machine, a start burns CPU that two busy workers would use.
    const free = decide({ backlog: 4, capacity: 4, busy: 1, serviceMs: 400, startupMs: 500 });
    const costly = decide({ backlog: 4, capacity: 4, busy: 1, serviceMs: 400, startupMs: 500, startCostMs: 2000 });
    assert.ok(free.start > costly.start, `${free.start} vs ${costly.start}`);
  });

  it('plans for images still arriving as for waiting ones, and says so', () => {
    // An upload of 900 about to end on a cold 2-core machine: the same two workers as for
    // 900 queued images, started now so they are ready when the images are queued.
    const arriving = decide({ incoming: 900, capacity: 2 });
    assert.deepEqual([arriving.start, arriving.target], [decide({ backlog: 900, capacity: 2 }).start, 2]);
    assert.match(arriving.reason, /starting 2: .*\(900 of the images still arriving\)/);
    assert.equal(decide({ incoming: 11, capacity: 2, idle: 2 }).start, 0);
    assert.equal(decide({ backlog: 1, incoming: 400, capacity: 2, starting: 1 }).start, 1);
    assert.equal(decide({ backlog: 1, incoming: 10, capacity: 2, starting: 1 }).start, 0, 'the one starting finishes eleven sooner');
    assert.throws(() => decide({ incoming: -1 }), /incoming|backlog/);
    assert.throws(() => decide({ incoming: 1.5 }), /incoming|backlog/);
  });

  it('keeps the hard maximum whatever the backlog', () => {
    assert.equal(decide({ backlog: 10_000, busy: 18 }).start, 2);
    assert.equal(decide({ backlog: 10_000, busy: 20 }).start, 0);
    assert.equal(decide({ backlog: 10_000, busy: 25 }).start, 0);
  });

  it('rejects observations that are not counts', () => {
    assert.throws(() => decide({ backlog: -1 }), /backlog/);
    assert.throws(() => decide({ max: 1.5 }), /max/);
    assert.throws(() => decide({ capacity: 0 }), /capacity/);
    assert.throws(() => decide({ serviceMs: Number.NaN }), /serviceMs/);
    assert.throws(() => decide({ startupMs: -5 }), /startupMs/);
  });

  it('never exceeds the maximum for any observation (exhaustive over small counts)', () => {
    for (let max = 1; max <= 5; max++) {
      for (let backlog = 0; backlog <= 12; backlog++) {
        for (let starting = 0; starting <= 3; starting++) {
          for (let busy = 0; busy <= 3; busy++) {
            for (const capacity of [1, 2, 8]) {
              const existing = starting + busy;
              const decision = decide({ backlog, starting, busy, max, capacity, startingAgesMs: Array(starting).fill(500) });
              assert.ok(decision.start >= 0 && existing + decision.start <= Math.max(existing, max), JSON.stringify({ max, backlog, starting, busy, capacity, decision }));
              assert.ok(decision.start <= backlog, 'never more starts than waiting images');
              if (backlog > 0 && existing === 0) assert.ok(decision.start >= 1, 'waiting work on an empty tier always gets an instance');
            }
          }
        }
      }
    }
  });
});

describe('expected drain time', () => {
  it('is the work divided by the instances that can run, after their start-up', () => {
    assert.equal(expectedDrainMs(observe({ backlog: 10, idle: 1 }), 0), 500);
    assert.equal(expectedDrainMs(observe({ backlog: 10, idle: 2 }), 0), 250);
    assert.equal(expectedDrainMs(observe({ backlog: 10, idle: 4, capacity: 2 }), 0), 250);
    // No instance now, one after 2 s: 2 s + 10 × 50 ms.
    assert.equal(expectedDrainMs(observe({ backlog: 10 }), 1), 2500);
    assert.equal(expectedDrainMs(observe({ backlog: 10 }), 0), Infinity);
  });
});

describe('policy names', () => {
  it('knows both policies and "default", and rejects others with the choices', () => {
    assert.equal(policyByName('queue-match'), queueMatchPolicy);
    assert.equal(policyByName('default'), drainTimePolicy);
    assert.equal(canonicalPolicyName('default'), 'drain-time');
    assert.throws(() => policyByName('Queue-Match'), /unknown policy "Queue-Match": choose one of drain-time, queue-match/);
    assert.throws(() => policyByName('__proto__'), /unknown policy/);
  });
});
