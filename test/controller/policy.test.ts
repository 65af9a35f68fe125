import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { decideLaunch, type LaunchObservation } from '../../src/controller/policy.js';

const observe = (partial: Partial<LaunchObservation>): LaunchObservation => ({ visible: 0, starting: 0, idle: 0, busy: 0, max: 20, ...partial });

describe('launch policy', () => {
  it('starts nothing when no message waits', () => {
    assert.equal(decideLaunch(observe({})), 0);
    assert.equal(decideLaunch(observe({ busy: 5 })), 0);
  });

  it('starts one instance per waiting message up to the maximum', () => {
    assert.equal(decideLaunch(observe({ visible: 3 })), 3);
    assert.equal(decideLaunch(observe({ visible: 100 })), 20);
  });

  it('counts idle and starting instances as free for waiting messages', () => {
    assert.equal(decideLaunch(observe({ visible: 5, idle: 2 })), 3);
    assert.equal(decideLaunch(observe({ visible: 5, starting: 5 })), 0);
    assert.equal(decideLaunch(observe({ visible: 5, starting: 2, idle: 1 })), 2);
  });

  it('counts busy and starting instances against the maximum', () => {
    assert.equal(decideLaunch(observe({ visible: 100, busy: 18 })), 2);
    assert.equal(decideLaunch(observe({ visible: 100, busy: 15, starting: 5 })), 0);
    assert.equal(decideLaunch(observe({ visible: 100, busy: 20 })), 0);
  });

  it('never starts a negative number, even when over the maximum already', () => {
    assert.equal(decideLaunch(observe({ visible: 10, busy: 25 })), 0);
    assert.equal(decideLaunch(observe({ visible: 0, idle: 30 })), 0);
  });

  it('rejects observations that are not whole numbers', () => {
    assert.throws(() => decideLaunch(observe({ visible: -1 })), /visible/);
    assert.throws(() => decideLaunch(observe({ max: 1.5 })), /max/);
  });

  it('simulated: a burst of 100 messages scales out within the maximum and back to zero', () => {
    // A discrete-time simulation: each tick the policy starts instances, starting ones
    // become idle, idle ones take a message each, busy ones finish in 3 ticks, and an
    // instance idle for a whole tick with nothing to take stops itself.
    const max = 20;
    let visible = 100;
    let starting = 0;
    let idle = 0;
    let busy: number[] = [];
    let peak = 0;
    let completed = 0;
    for (let tick = 0; tick < 200 && (visible > 0 || busy.length > 0 || starting > 0 || idle > 0); tick++) {
      const start = decideLaunch({ visible, starting, idle, busy: busy.length, max });
      starting += start;
      peak = Math.max(peak, starting + idle + busy.length);
      assert.ok(starting + idle + busy.length <= max, `tick ${tick}: ${starting + idle + busy.length} instances`);
      idle += starting;
      starting = 0;
      busy = busy.map((left) => left - 1);
      const finished = busy.filter((left) => left <= 0).length;
      completed += finished;
      busy = busy.filter((left) => left > 0);
      idle += finished;
      const take = Math.min(idle, visible);
      visible -= take;
      idle -= take;
      busy.push(...Array.from({ length: take }, () => 3));
      idle = 0; // nothing left to take: the idle ones stop themselves
    }
    assert.equal(completed, 100);
    assert.equal(peak, max);
    assert.equal(starting + idle + busy.length, 0);
  });
});
