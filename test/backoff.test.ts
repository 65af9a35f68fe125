/**
 * The backoff helper, deterministically: the random source and the clock are injected,
 * waits are zero-length or ended by an AbortSignal, and nothing asserts on elapsed time.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, backoffDelay, retry, sleep } from '../src/backoff.js';

const options = { initialMs: 100, maxMs: 1_000 };

describe('backoffDelay', () => {
  it('doubles the ceiling with each failure up to the cap, with full jitter by default', () => {
    const ceilings = [1, 2, 3, 4, 5, 6, 50].map((failures) => backoffDelay(failures, options, () => 0.999_999));
    assert.deepEqual(ceilings.map(Math.round), [100, 200, 400, 800, 1000, 1000, 1000]);
    // Full jitter: anywhere from nothing to the ceiling.
    assert.equal(backoffDelay(4, options, () => 0), 0);
    assert.equal(backoffDelay(4, options, () => 0.5), 400);
  });

  it('with equal jitter waits at least half the ceiling', () => {
    const equal = { ...options, jitter: 'equal' as const };
    assert.equal(backoffDelay(1, equal, () => 0), 50);
    assert.equal(backoffDelay(3, equal, () => 0), 200);
    assert.equal(backoffDelay(3, equal, () => 1), 400);
  });

  it('stays finite for absurd failure counts and treats 0 failures as the first', () => {
    assert.equal(backoffDelay(10_000, options, () => 1), 1_000);
    assert.equal(backoffDelay(0, options, () => 1), 100);
  });
});

describe('Backoff', () => {
  it('grows while failures go on and starts over after a reset', () => {
    const backoff = new Backoff(options, () => 1);
    assert.deepEqual([backoff.next(), backoff.next(), backoff.next()], [100, 200, 400]);
    assert.equal(backoff.failures, 3);
    backoff.reset();
    assert.equal(backoff.next(), 100);
  });

  it('refuses options that cannot back off', () => {
    assert.throws(() => new Backoff({ initialMs: 0, maxMs: 10 }), RangeError);
    assert.throws(() => new Backoff({ initialMs: 10, maxMs: 5 }), RangeError);
    assert.throws(() => new Backoff({ initialMs: Number.NaN, maxMs: 5 }), RangeError);
  });
});

describe('sleep', () => {
  it('returns false at once for an aborted signal, and when any of several signals aborts', async () => {
    assert.equal(await sleep(60_000, AbortSignal.abort()), false);
    const first = new AbortController();
    const second = new AbortController();
    const waiting = sleep(60_000, first.signal, undefined, second.signal);
    second.abort();
    assert.equal(await waiting, false);
    assert.equal(await sleep(0), true);
    assert.equal(await sleep(-5, first.signal), true);
  });
});

describe('retry', () => {
  /** Zero-length waits (random 0 with full jitter) that are still recorded. */
  const instant = { ...options, random: () => 0 };

  it('returns the first success, after the failures before it', async () => {
    const seen: number[] = [];
    const result = await retry(async (attempt) => {
      seen.push(attempt);
      if (attempt < 3) throw new Error(`failure ${attempt}`);
      return 'done';
    }, { ...instant, attempts: 5 });
    assert.equal(result, 'done');
    assert.deepEqual(seen, [1, 2, 3]);
  });

  it('waits the backoff between attempts and throws the last error when the attempts are spent', async () => {
    const waits: number[] = [];
    let calls = 0;
    await assert.rejects(
      retry(async (attempt) => {
        calls++;
        throw new Error(`failure ${attempt}`);
      }, { initialMs: 2, maxMs: 8, attempts: 4, random: () => 0.5, onRetry: (_error, _attempt, waitMs) => waits.push(waitMs) }),
      /failure 4/,
    );
    assert.equal(calls, 4);
    assert.deepEqual(waits, [1, 2, 4]);
  });

  it('does not retry an error that is not retryable', async () => {
    let calls = 0;
    await assert.rejects(retry(async () => {
      calls++;
      throw new TypeError('a bug');
    }, { ...instant, attempts: 5, retryable: (error) => !(error instanceof TypeError) }), TypeError);
    assert.equal(calls, 1);
  });

  it('gives up when the next attempt would start after the deadline, by the injected clock', async () => {
    let clock = 0;
    const attempts: number[] = [];
    await assert.rejects(retry(async (attempt) => {
      attempts.push(attempt);
      clock += 4;
      throw new Error(`failure ${attempt}`);
    }, { initialMs: 1, maxMs: 4, random: () => 1, deadlineMs: 15, now: () => clock, attempts: 10 }), /failure 3/);
    // 4 + wait 1, 8 + wait 2, then 12 + wait 4 would start after 15 (waits do not move this clock).
    assert.deepEqual(attempts, [1, 2, 3]);
  });

  it('stops waiting when its signal aborts, and throws the last error', async () => {
    const stop = new AbortController();
    let calls = 0;
    const running = retry(async () => {
      calls++;
      // Every wait would be a minute long; only the abort can end it.
      queueMicrotask(() => stop.abort());
      throw new Error('unreachable service');
    }, { initialMs: 60_000, maxMs: 60_000, jitter: 'equal', attempts: 10, signal: stop.signal });
    await assert.rejects(running, /unreachable service/);
    assert.equal(calls, 1);
  });

  it('refuses to run without a limit, or with a nonsensical one', async () => {
    await assert.rejects(retry(async () => 1, options), /attempts or deadlineMs/);
    await assert.rejects(retry(async () => 1, { ...options, attempts: 0 }), /attempts >= 1/);
  });
});
