import assert from 'node:assert/strict';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import Database from '../../src/sqlite-driver.js';
import { QueueError } from '../../src/queue/port.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { resetWallClock, stepWallClock } from '../clock-step.js';
import { makeTempDir, waitFor } from '../helpers.js';
import { queueContract } from './contract.js';

queueContract(
  'sqlite',
  async () => {
    const temp = await makeTempDir('icaas-sqlite-queue-');
    const provider = new SqliteQueueProvider(path.join(temp.dir, 'queues.db'));
    return {
      provider,
      async cleanup() {
        await provider.close();
        await temp.cleanup();
      },
    };
  },
  // Timers are in milliseconds here, so the contract's waits can be short.
  { minVisibilitySeconds: 0.3 },
);

const isQueueError = (code: QueueError['code'], pattern?: RegExp) => (error: unknown): boolean => {
  assert.ok(error instanceof QueueError, `expected a QueueError, got ${String(error)}`);
  assert.equal(error.code, code, error.message);
  if (pattern) assert.match(error.message, pattern);
  return true;
};

describe('SqliteQueueProvider', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  let fileCount = 0;
  const opened: SqliteQueueProvider[] = [];
  const freshFile = (): string => path.join(temp.dir, `queues-${++fileCount}.db`);
  const open = (file: string, options?: ConstructorParameters<typeof SqliteQueueProvider>[1]): SqliteQueueProvider => {
    const provider = new SqliteQueueProvider(file, options);
    opened.push(provider);
    return provider;
  };

  before(async () => {
    temp = await makeTempDir('icaas-sqlite-queue-');
  });
  after(async () => {
    for (const provider of opened) await provider.close();
    await temp.cleanup();
  });

  it('keeps messages, their state and receive counts across close and reopen', async () => {
    const file = freshFile();
    const first = open(file);
    const queue = first.queue('jobs');
    const ids = [await queue.send('a'), await queue.send('b'), await queue.send('c')];
    const delayedId = await queue.send('delayed', { delaySeconds: 900 });
    const [inFlight] = await queue.receive({ visibilityTimeoutSeconds: 600 });
    assert.equal(inFlight?.id, ids[0]);
    await first.close();

    const second = open(file);
    const reopened = second.queue('jobs');
    assert.deepEqual(await reopened.counts(), { visible: 2, inFlight: 1, delayed: 1 });
    const messages = await reopened.receive({ maxMessages: 10 });
    assert.deepEqual(messages.map((message) => [message.id, message.body, message.receiveCount]), [[ids[1], 'b', 1], [ids[2], 'c', 1]]);
    // The in-flight message is still hidden, and its handle still works after the reopen.
    await reopened.changeVisibility(inFlight!.receiptHandle, 0);
    const [again] = await reopened.receive();
    assert.deepEqual([again?.id, again?.receiveCount], [ids[0], 2]);
    assert.ok(!messages.some((message) => message.id === delayedId));
  });

  it('two providers on one file see each other\'s messages and never both get one', async () => {
    const file = freshFile();
    const a = open(file).queue('shared');
    const b = open(file).queue('shared');
    const id = await a.send('from a');
    const [message] = await b.receive({ waitSeconds: 5 });
    assert.equal(message?.id, id);
    assert.deepEqual(await a.counts(), { visible: 0, inFlight: 1, delayed: 0 });
    await a.delete(message!.receiptHandle);
    assert.deepEqual(await b.counts(), { visible: 0, inFlight: 0, delayed: 0 });

    const sent = new Set<string>();
    for (let i = 0; i < 60; i++) sent.add(await (i % 2 ? a : b).send(`m${i}`));
    const receivers = Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b));
    const got: string[] = [];
    await Promise.all(
      receivers.map(async (queue) => {
        for (;;) {
          const batch = await queue.receive({ maxMessages: 7, waitSeconds: 0.2, visibilityTimeoutSeconds: 60 });
          if (batch.length === 0) return;
          got.push(...batch.map((m) => m.id));
        }
      }),
    );
    assert.equal(got.length, sent.size, 'a message was handed out twice, or one was missed');
    assert.deepEqual(new Set(got), sent);
  });

  it('leaves the message alone when deleted with a stale receipt handle', async () => {
    const queue = open(freshFile()).queue('stale');
    const id = await queue.send('survivor');
    const [first] = await queue.receive({ visibilityTimeoutSeconds: 0.05 });
    const [second] = await queue.receive({ waitSeconds: 5 });
    assert.equal(second?.receiveCount, 2);
    await queue.delete(first!.receiptHandle);
    assert.deepEqual(await queue.counts(), { visible: 0, inFlight: 1, delayed: 0 });
    await queue.changeVisibility(second!.receiptHandle, 0);
    const [third] = await queue.receive();
    assert.deepEqual([third?.id, third?.receiveCount], [id, 3]);
  });

  it('receives exactly maxMessages when there are enough, oldest first, with distinct unguessable handles', async () => {
    const queue = open(freshFile()).queue('order');
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await queue.send(`m${i}`));
    const batch = await queue.receive({ maxMessages: 3, visibilityTimeoutSeconds: 60 });
    assert.deepEqual(batch.map((message) => message.id), ids.slice(0, 3));
    const handles = new Set(batch.map((message) => message.receiptHandle));
    assert.equal(handles.size, 3);
    for (const handle of handles) assert.ok(handle.length >= 32, `handle ${handle} is short enough to guess`);
    const rest = await queue.receive({ maxMessages: 10 });
    assert.deepEqual(rest.map((message) => message.id), ids.slice(3));
  });

  it('orders by the time a message became visible, then by sending', async () => {
    const queue = open(freshFile()).queue('order');
    // Times are in milliseconds; each step starts on a later one so the order is certain.
    const nextMillisecond = (): Promise<unknown> => {
      const now = Date.now();
      return waitFor('the clock to move on', () => Date.now() > now, { intervalMs: 1 });
    };
    const first = await queue.send('first');
    const second = await queue.send('second');
    const [received] = await queue.receive({ visibilityTimeoutSeconds: 60 });
    assert.equal(received?.id, first);
    await nextMillisecond();
    const third = await queue.send('third');
    await nextMillisecond();
    // Released now: visible after "third" became visible, before "fourth" is sent.
    await queue.changeVisibility(received!.receiptHandle, 0);
    await nextMillisecond();
    const fourth = await queue.send('fourth');
    const all = await queue.receive({ maxMessages: 10 });
    assert.deepEqual(all.map((message) => message.id), [second, third, first, fourth]);
  });

  it('uses the visibility timeout given to the provider or the queue', async () => {
    const file = freshFile();
    const provider = open(file, { visibilityTimeoutSeconds: 0.1 });
    const short = provider.queue('short');
    await short.send('x');
    const [a] = await short.receive();
    const [b] = await short.receive({ waitSeconds: 5 });
    assert.deepEqual([a?.receiveCount, b?.receiveCount], [1, 2]);

    const long = provider.queue('long', { visibilityTimeoutSeconds: 60 });
    await long.send('y');
    await long.receive();
    assert.deepEqual(await long.receive({ waitSeconds: 0.3 }), []);
    assert.throws(() => new SqliteQueueProvider(freshFile(), { visibilityTimeoutSeconds: -1 }), isQueueError('invalid-argument'));
    assert.throws(() => provider.queue('q', { visibilityTimeoutSeconds: 50_000 }), isQueueError('invalid-argument'));
  });

  it('does not hold the event loop during a long poll', async () => {
    const queue = open(freshFile()).queue('idle');
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    try {
      const messages = await queue.receive({ waitSeconds: 0.5 });
      assert.deepEqual(messages, []);
    } finally {
      clearInterval(timer);
    }
    assert.ok(ticks >= 10, `a 10 ms timer ran only ${ticks} times during a 500 ms long poll`);
  });

  it('close ends a long poll with nothing, and later operations fail clearly', async () => {
    const provider = new SqliteQueueProvider(freshFile());
    const queue = provider.queue('closing');
    const started = Date.now();
    const pending = queue.receive({ waitSeconds: 20 });
    await delay(100);
    await provider.close();
    assert.deepEqual(await pending, []);
    assert.ok(Date.now() - started < 5_000);
    await provider.close();
    const closed = isQueueError('unavailable', /closed/);
    await assert.rejects(queue.send('x'), closed);
    await assert.rejects(queue.receive(), closed);
    await assert.rejects(queue.delete('handle'), closed);
    await assert.rejects(queue.changeVisibility('handle', 1), closed);
    await assert.rejects(queue.counts(), closed);
    assert.throws(() => provider.queue('other'), closed);
  });

  it('waits out another connection\'s write lock within a long poll, and reports it when there is no time left', async () => {
    const file = freshFile();
    const queue = open(file, { busyTimeoutMs: 50 }).queue('locked');
    await queue.send('behind the lock');
    const blocker = new Database(file);
    try {
      blocker.prepare('BEGIN IMMEDIATE').run();
      await assert.rejects(queue.send('refused'), isQueueError('unavailable', /locked/));
      await assert.rejects(queue.receive(), isQueueError('unavailable', /locked/));
      const pending = queue.receive({ waitSeconds: 5 });
      await delay(300);
      blocker.prepare('COMMIT').run();
      const messages = await pending;
      assert.deepEqual(messages.map((message) => message.body), ['behind the lock']);
      // Reads go on under WAL even while another connection writes.
      blocker.prepare('BEGIN IMMEDIATE').run();
      assert.deepEqual(await queue.counts(), { visible: 0, inFlight: 1, delayed: 0 });
      blocker.prepare('COMMIT').run();
    } finally {
      blocker.close();
    }
  });

  it('refuses a file written by a newer schema', () => {
    const file = freshFile();
    const db = new Database(file);
    db.pragma('user_version = 99');
    db.close();
    assert.throws(() => new SqliteQueueProvider(file), /newer version/);
  });

  it('refuses an empty or non-string receipt handle', async () => {
    const queue = open(freshFile()).queue('handles');
    await assert.rejects(queue.delete(''), isQueueError('invalid-argument'));
    await assert.rejects(queue.changeVisibility(42 as unknown as string, 1), isQueueError('invalid-argument'));
  });
});

describe('SqliteQueueProvider when the wall clock is stepped', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  let provider: SqliteQueueProvider;
  let other: SqliteQueueProvider;
  let run = 0;

  before(async () => {
    temp = await makeTempDir('icaas-sqlite-clock-');
  });
  after(async () => {
    resetWallClock();
    await temp.cleanup();
  });

  /** Two connections to one file, as two processes would have. */
  const openPair = (): void => {
    const file = path.join(temp.dir, `clock-${++run}.db`);
    provider = new SqliteQueueProvider(file);
    other = new SqliteQueueProvider(file);
  };
  const closePair = async (): Promise<void> => {
    resetWallClock();
    await provider.close();
    await other.close();
  };

  it('a step back hides no visible message and delays nothing that was due', async () => {
    openPair();
    try {
      const queue = provider.queue('q');
      await queue.send('due');
      stepWallClock(-30_000);
      assert.deepEqual(await queue.counts(), { visible: 1, inFlight: 0, delayed: 0 }, 'still counted visible');
      const [message] = await other.queue('q').receive();
      assert.equal(message?.body, 'due', 'a message visible before the step stays visible');
    } finally {
      await closePair();
    }
  });

  it('a message received while the clock is back is not released early once it is right again', async () => {
    openPair();
    try {
      const queue = provider.queue('q');
      await queue.send('work');
      stepWallClock(-30_000);
      const [received] = await queue.receive({ visibilityTimeoutSeconds: 10 });
      assert.ok(received, 'received while stepped back');
      await queue.send('sent while back');
      resetWallClock();
      // Another process, or this one after NTP puts the clock right: the 10 s are not over.
      const seen = await other.queue('q').receive({ maxMessages: 10 });
      assert.deepEqual(seen.map((m) => m.body), ['sent while back'], 'the in-flight message is still hidden');
      assert.equal((await queue.counts()).inFlight, 2);
    } finally {
      await closePair();
    }
  });

  it('an in-flight message comes back within its timeout plus the step, never before its timeout', async () => {
    openPair();
    try {
      const queue = provider.queue('q');
      await queue.send('work');
      const [received] = await queue.receive({ visibilityTimeoutSeconds: 0.5 });
      assert.ok(received);
      const started = performance.now();
      stepWallClock(-1_500);
      const again = await waitFor('the message to come back', async () => (await other.queue('q').receive())[0], { timeoutMs: 10_000, intervalMs: 20 });
      const waitedMs = performance.now() - started;
      assert.equal(again.id, received.id);
      assert.ok(waitedMs >= 450, `not released before its timeout (after ${waitedMs.toFixed(0)} ms)`);
      assert.ok(waitedMs < 0.5 * 1000 + 1_500 + 2_000, `hidden no longer than timeout plus step (${waitedMs.toFixed(0)} ms)`);
    } finally {
      await closePair();
    }
  });

  it('a step forward ends timeouts early by at most the step, and stepping back after it hides nothing longer', async () => {
    openPair();
    try {
      const queue = provider.queue('q');
      await queue.send('a');
      await queue.send('b');
      const [a] = await queue.receive({ visibilityTimeoutSeconds: 60 });
      stepWallClock(30_000);
      assert.equal((await queue.counts()).inFlight, 1, 'a 60 s timeout outlives a 30 s step');
      const [b] = await queue.receive({ visibilityTimeoutSeconds: 0.2 });
      assert.equal(b?.body, 'b');
      resetWallClock();
      // b's 0.2 s were counted from the later time, which the file keeps: it comes back
      // only once the clock has caught up, i.e. after at most the step.
      assert.deepEqual(await other.queue('q').receive(), [], 'b is still in flight after the step back');
      assert.equal((await queue.counts()).inFlight, 2);
      assert.ok(a);
    } finally {
      await closePair();
    }
  });
});
