/** The consumers' pause that lets a batch gather between receives (controller/loop.ts). */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { sleep } from '../../src/backoff.js';
import { every, GATHER_MS, pauseToGather } from '../../src/controller/loop.js';
import { silentLogger } from '../../src/log.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { makeTempDir, waitFor } from '../helpers.js';

/** 'returned' if `pause` ends within `withinMs`, else 'still waiting'. */
async function settlesWithin(pause: Promise<void>, withinMs: number): Promise<'returned' | 'still waiting'> {
  const stop = new AbortController();
  try {
    return await Promise.race([pause.then(() => 'returned' as const), sleep(withinMs, stop.signal).then(() => 'still waiting' as const)]);
  } finally {
    stop.abort();
  }
}

describe('pauseToGather', () => {
  it('does not pause after an empty receive, whose long poll waited already, nor after a full batch', async () => {
    const signal = new AbortController().signal;
    assert.equal(await settlesWithin(pauseToGather(0, 10, signal, 60_000), 2_000), 'returned');
    assert.equal(await settlesWithin(pauseToGather(10, 10, signal, 60_000), 2_000), 'returned');
    // A batch larger than asked for (an adapter returning more) counts as full too.
    assert.equal(await settlesWithin(pauseToGather(11, 10, signal, 60_000), 2_000), 'returned');
  });

  it('pauses for the gather time after a partial batch', async () => {
    const signal = new AbortController().signal;
    assert.equal(await settlesWithin(pauseToGather(3, 10, signal, 60_000), 200), 'still waiting');
    const started = performance.now();
    await pauseToGather(1, 10, signal, 50);
    // Timers may fire up to a millisecond early on rounding; never much earlier.
    assert.ok(performance.now() - started >= 48, `paused only ${(performance.now() - started).toFixed(1)} ms`);
  });

  it('ends the pause as soon as the loop is stopped', async () => {
    const stopping = new AbortController();
    const pause = pauseToGather(1, 10, stopping.signal, 60_000);
    setTimeout(() => stopping.abort(), 10);
    assert.equal(await settlesWithin(pause, 5_000), 'returned');
    assert.ok(GATHER_MS > 0 && GATHER_MS <= 250, 'a result waits at most a quarter second to be shown');
  });
});

describe('a consumer loop that gathers, on the SQLite queue', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  let provider: SqliteQueueProvider;

  before(async () => {
    temp = await makeTempDir('icaas-loop-gather-');
    provider = SqliteQueueProvider.open(path.join(temp.dir, 'queues.db'));
  });

  after(async () => {
    await provider.close();
    await temp.cleanup();
  });

  it('takes messages that trickle in during the pause in one receive, not one receive each', async () => {
    const queue = provider.queue('trickle');
    const received: number[] = [];
    const trickle: Promise<unknown>[] = [];
    const loop = every({ name: 'test consumer', intervalMs: 0, log: silentLogger() }, async (signal) => {
      const messages = await queue.receive({ maxMessages: 10, waitSeconds: 1, signal });
      if (messages.length > 0) {
        received.push(messages.length);
        await queue.deleteBatch(messages.map((message) => message.receiptHandle));
      }
      if (received.length === 1 && messages.length > 0) {
        // Nine more arrive one by one, 5 ms apart, all due before the pause (GATHER_MS) ends:
        // a consumer that received again at once would take them a poll (25-50 ms) at a time.
        for (let i = 1; i <= 9; i++) trickle.push(sleep(5 * i).then(() => queue.send(`later ${i}`)));
      }
      await pauseToGather(messages.length, 10, signal);
    });
    try {
      await queue.send('first');
      await waitFor(`all ten messages received (so far ${JSON.stringify(received)})`, () => received.reduce((sum, count) => sum + count, 0) === 10, { timeoutMs: 10_000 });
      await Promise.all(trickle);
      assert.deepEqual(received, [1, 9]);
    } finally {
      await loop.stop();
    }
  });
});
