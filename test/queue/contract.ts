/**
 * The queue contract: every adapter runs these same tests unchanged, so code written
 * against the port behaves the same on the SQLite file and on SQS.
 *
 * The tests hold only what SQS itself promises. Its counts are approximate and lag, so they
 * are polled until they settle; a short poll may miss messages, so receives that expect a
 * message long-poll; its timers are whole seconds, so every wait, delay and visibility
 * timeout here is a whole multiple of `minVisibilitySeconds` (or a whole number of seconds);
 * and each test uses a queue of its own, named with a random run id, so runs against a real
 * account never see each other's messages.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { QueueError, SQS_LIMITS, type Queue, type QueueCounts, type QueueProvider, type ReceivedMessage } from '../../src/queue/port.js';
import { waitFor } from '../helpers.js';

export interface QueueContractFixture {
  provider: QueueProvider;
  cleanup(): Promise<void>;
}

export interface QueueContractOptions {
  /** A reason to skip the whole suite (for example, no AWS credentials), or false to run it. */
  skip?: string | false;
  /**
   * The shortest visibility timeout (and long-poll wait) the adapter honours, in seconds.
   * The tests that wait for a timeout to pass wait a few of these. Default 1, as SQS.
   */
  minVisibilitySeconds?: number;
  /**
   * Cases an emulator cannot run because it differs from SQS there, each with the reason;
   * the case is reported as skipped with it. Never for the adapters icaas deploys on.
   */
  emulatorDifferences?: {
    /** Characters outside the Basic Multilingual Plane (emoji), which SQS accepts. */
    astralCharacters?: string;
  };
}

/** Long enough that nothing reappears while a test is still running. */
const LONG_VISIBILITY = 60;
/** Long-poll wait for a receive that expects a message: returns as soon as one is there. */
const EXPECT_WAIT = 10;
/** SQS counts can lag by a minute. */
const COUNTS_TIMEOUT_MS = 90_000;

export function queueContract(adapterName: string, setup: () => Promise<QueueContractFixture>, options: QueueContractOptions = {}): void {
  const tick = options.minVisibilitySeconds ?? 1;
  const tickMs = tick * 1000;

  describe(`queue contract: ${adapterName}`, { skip: options.skip || false }, () => {
    let fixture: QueueContractFixture | undefined;
    let queueCount = 0;
    const runId = randomBytes(4).toString('hex');

    const provider = (): QueueProvider => {
      if (!fixture) throw new Error('the queue provider was not set up');
      return fixture.provider;
    };
    const freshQueue = (): Queue => provider().queue(`contract-${runId}-${++queueCount}`);

    /** Long-polls until exactly one message arrives; fails on none or more than one. */
    const receiveOne = async (queue: Queue, visibilityTimeoutSeconds = LONG_VISIBILITY): Promise<ReceivedMessage> => {
      const messages = await queue.receive({ waitSeconds: EXPECT_WAIT, visibilityTimeoutSeconds });
      assert.equal(messages.length, 1, `expected one message from ${queue.name}, got ${messages.length}`);
      return messages[0]!;
    };
    /** A receive that should find nothing: waits `seconds` so a message that shows up late is caught. */
    const assertEmptyFor = async (queue: Queue, seconds: number, why: string): Promise<void> => {
      const messages = await queue.receive({ waitSeconds: seconds, maxMessages: 10 });
      assert.deepEqual(messages.map((message) => message.body), [], why);
    };
    const countsSettle = (queue: Queue, expected: QueueCounts): Promise<unknown> =>
      waitFor(
        `counts of ${queue.name} to be ${JSON.stringify(expected)}`,
        async () => {
          const counts = await queue.counts();
          // Thrown rather than returned, so a timeout reports the counts last seen.
          if (counts.visible !== expected.visible || counts.inFlight !== expected.inFlight || counts.delayed !== expected.delayed) {
            throw new Error(`counts are ${JSON.stringify(counts)}`);
          }
          return true;
        },
        { timeoutMs: COUNTS_TIMEOUT_MS, intervalMs: 100 },
      );
    const isQueueError = (code: QueueError['code']) => (error: unknown): boolean => {
      assert.ok(error instanceof QueueError, `expected a QueueError, got ${String(error)}`);
      assert.equal(error.code, code, `expected code ${code}, got ${error.code}: ${error.message}`);
      return true;
    };

    before(async () => {
      fixture = await setup();
    });
    after(async () => {
      await fixture?.cleanup();
    });

    it('a sent message is received with the same id and body, receive count 1 and its send time', async () => {
      const queue = freshQueue();
      // Unicode, line breaks, quotes: what JSON bodies carry. SQS refuses some control
      // characters, so the body keeps to the characters it accepts.
      const body = JSON.stringify({ name: 'Mañana — 日本.jpg', note: 'line 1\nline 2\t"quoted"' });
      const before = Date.now();
      const id = await queue.send(body);
      assert.equal(typeof id, 'string');
      assert.ok(id.length > 0);
      const message = await receiveOne(queue);
      assert.equal(message.id, id);
      assert.equal(message.body, body);
      assert.equal(message.receiveCount, 1);
      assert.equal(typeof message.receiptHandle, 'string');
      assert.ok(message.receiptHandle.length > 0);
      // Another clock may stamp the message, so allow for some skew.
      assert.ok(Math.abs(message.sentAt - before) < 60_000, `sentAt ${message.sentAt} is far from the send time ${before}`);
      await queue.delete(message.receiptHandle);
    });

    it('characters outside the Basic Multilingual Plane go through intact', { skip: options.emulatorDifferences?.astralCharacters ?? false }, async () => {
      const queue = freshQueue();
      // JSON.stringify leaves them as they are, so a file name with an emoji reaches the queue.
      const body = JSON.stringify({ name: '🐈 cat.jpg', math: '𝔸' });
      await queue.send(body);
      const message = await receiveOne(queue);
      assert.equal(message.body, body);
      await queue.delete(message.receiptHandle);
    });

    it('a body of exactly the maximum size goes through intact', async () => {
      const queue = freshQueue();
      const body = 'x'.repeat(SQS_LIMITS.maxBodyBytes - 2) + 'é';
      assert.equal(Buffer.byteLength(body), SQS_LIMITS.maxBodyBytes);
      await queue.send(body);
      const message = await receiveOne(queue);
      assert.equal(message.body, body);
      await queue.delete(message.receiptHandle);
    });

    it('a long poll on an empty queue returns nothing after about the wait', async () => {
      const queue = freshQueue();
      const waitSeconds = tick;
      const started = Date.now();
      const messages = await queue.receive({ waitSeconds, maxMessages: 10 });
      const elapsed = Date.now() - started;
      assert.deepEqual(messages, []);
      assert.ok(elapsed >= waitSeconds * 1000 * 0.8, `returned after ${elapsed} ms, before most of the ${waitSeconds}s wait`);
      assert.ok(elapsed < waitSeconds * 1000 + 10_000, `returned after ${elapsed} ms, long after the ${waitSeconds}s wait`);
    });

    it('a receive without a wait on an empty queue returns nothing at once', async () => {
      const queue = freshQueue();
      const started = Date.now();
      assert.deepEqual(await queue.receive(), []);
      assert.ok(Date.now() - started < 10_000);
    });

    it('a long poll returns early when a message is sent during the wait', async () => {
      const queue = freshQueue();
      const waitSeconds = 20;
      const started = Date.now();
      const pending = queue.receive({ waitSeconds, visibilityTimeoutSeconds: LONG_VISIBILITY });
      // Sent a little later, so the receive is already waiting when the message arrives.
      await delay(300);
      const id = await queue.send('late arrival');
      const messages = await pending;
      const elapsed = Date.now() - started;
      assert.deepEqual(messages.map((message) => message.id), [id]);
      assert.ok(elapsed < (waitSeconds * 1000) / 2, `the long poll took ${elapsed} ms, as if it had waited out its ${waitSeconds}s`);
      await queue.delete(messages[0]!.receiptHandle);
    });

    it('aborting a long poll resolves it with nothing, and an aborted signal returns at once', async () => {
      const queue = freshQueue();
      const controller = new AbortController();
      const started = Date.now();
      const pending = queue.receive({ waitSeconds: 20, signal: controller.signal });
      await delay(200);
      controller.abort();
      assert.deepEqual(await pending, []);
      assert.ok(Date.now() - started < 10_000, 'the aborted long poll kept waiting');

      await queue.send('left alone');
      const againStarted = Date.now();
      assert.deepEqual(await queue.receive({ waitSeconds: 20, signal: AbortSignal.abort() }), []);
      assert.ok(Date.now() - againStarted < 10_000, 'a receive with an aborted signal waited');
    });

    it('sendBatch sends every message once with its own id, past one SQS batch of 10', async () => {
      const queue = freshQueue();
      const bodies = Array.from({ length: 23 }, (_, i) => JSON.stringify({ i, name: `image-${i}.jpg` }));
      const ids = await queue.sendBatch(bodies);
      assert.equal(ids.length, 23);
      assert.equal(new Set(ids).size, 23, 'ids are distinct');
      assert.deepEqual(await queue.sendBatch([]), []);
      const seen = new Map<string, string>();
      await waitFor('all 23 batched messages to be received', async () => {
        for (const message of await queue.receive({ maxMessages: 10, waitSeconds: 1, visibilityTimeoutSeconds: LONG_VISIBILITY })) {
          assert.ok(!seen.has(message.id), `message ${message.id} handed out twice`);
          seen.set(message.id, message.body);
          await queue.delete(message.receiptHandle);
        }
        return seen.size >= 23;
      });
      // Each id names the body it was returned for.
      assert.deepEqual(ids.map((id) => seen.get(id)), bodies);
    });

    it('delivers a send that asks for no disk flush like any other, alone, delayed and in a batch', async () => {
      const queue = freshQueue();
      await queue.send('unflushed', { flush: false });
      await queue.send('unflushed, delayed', { flush: false, delaySeconds: 1 });
      await queue.sendBatch(['batch 1', 'batch 2'], { flush: false });
      const seen: string[] = [];
      await waitFor('the four unflushed messages', async () => {
        for (const message of await queue.receive({ maxMessages: 10, waitSeconds: 1, visibilityTimeoutSeconds: LONG_VISIBILITY })) {
          seen.push(message.body);
          await queue.delete(message.receiptHandle);
        }
        return seen.length >= 4;
      });
      assert.deepEqual(seen.sort(), ['batch 1', 'batch 2', 'unflushed', 'unflushed, delayed']);
    });

    it('sendBatch refuses the whole batch when one body is invalid, before sending any', async () => {
      const queue = freshQueue();
      const tooBig = 'x'.repeat(SQS_LIMITS.maxBodyBytes + 1);
      await assert.rejects(queue.sendBatch(['fine', tooBig]), isQueueError('invalid-argument'));
      await assert.rejects(queue.sendBatch(['fine', 42 as unknown as string]), isQueueError('invalid-argument'));
      assert.deepEqual(await queue.receive({ waitSeconds: 1 }), [], 'nothing of a refused batch was sent');
    });

    it('deleteBatch removes every message named, past one SQS batch, and ignores stale handles', async () => {
      const queue = freshQueue();
      await queue.sendBatch(Array.from({ length: 13 }, (_, i) => `d${i}`));
      const held: ReceivedMessage[] = [];
      await waitFor('all 13 messages to be received', async () => {
        held.push(...await queue.receive({ maxMessages: 10, waitSeconds: 1, visibilityTimeoutSeconds: LONG_VISIBILITY }));
        return held.length >= 13;
      });
      // One message is let go and received again: its first handle is stale, its second is not.
      const [again] = held.splice(0, 1);
      await queue.changeVisibility(again!.receiptHandle, 0);
      const fresh = await receiveOne(queue);
      await queue.deleteBatch([again!.receiptHandle, ...held.map((message) => message.receiptHandle)]);
      await queue.deleteBatch([]);
      await countsSettle(queue, { visible: 0, inFlight: 1, delayed: 0 });
      await queue.deleteBatch([fresh.receiptHandle]);
      await countsSettle(queue, { visible: 0, inFlight: 0, delayed: 0 });
      await assertEmptyFor(queue, 1, 'a deleted message came back');
    });

    it('a receive returns at most maxMessages, and every message once', async () => {
      const queue = freshQueue();
      const ids = new Set<string>();
      for (let i = 0; i < 5; i++) ids.add(await queue.send(`m${i}`));
      const first = await queue.receive({ maxMessages: 3, waitSeconds: EXPECT_WAIT, visibilityTimeoutSeconds: LONG_VISIBILITY });
      assert.ok(first.length >= 1 && first.length <= 3, `got ${first.length} messages, asked for at most 3`);
      const single = await queue.receive({ waitSeconds: EXPECT_WAIT, visibilityTimeoutSeconds: LONG_VISIBILITY });
      assert.equal(single.length, 1, 'the default is one message');
      const seen = [...first, ...single];
      let largestBatch = 0;
      await waitFor('all five messages to be received', async () => {
        const batch = await queue.receive({ maxMessages: 2, waitSeconds: 1, visibilityTimeoutSeconds: LONG_VISIBILITY });
        largestBatch = Math.max(largestBatch, batch.length);
        seen.push(...batch);
        return seen.length >= 5;
      });
      assert.ok(largestBatch <= 2, `got ${largestBatch} messages, asked for at most 2`);
      const seenIds = seen.map((message) => message.id);
      assert.equal(new Set(seenIds).size, seenIds.length, `a message was handed out twice while in flight: ${seenIds.join(', ')}`);
      assert.deepEqual(new Set(seenIds), ids);
      for (const message of seen) await queue.delete(message.receiptHandle);
    });

    it('a received message is hidden while in flight and comes back after its visibility timeout', async () => {
      const queue = freshQueue();
      const id = await queue.send('comes back');
      const first = await receiveOne(queue, tick);
      const receivedAt = Date.now();
      assert.deepEqual(await queue.receive({ maxMessages: 10 }), [], 'the message was handed out again while in flight');
      const second = await receiveOne(queue);
      const hiddenFor = Date.now() - receivedAt;
      assert.equal(second.id, id);
      assert.equal(second.body, 'comes back');
      assert.equal(second.receiveCount, 2);
      assert.notEqual(second.receiptHandle, first.receiptHandle, 'each receive gives a new receipt handle');
      assert.ok(hiddenFor >= tickMs * 0.8, `the message came back after ${hiddenFor} ms, before its ${tick}s visibility timeout`);
      await queue.delete(second.receiptHandle);
    });

    it('the visibility timeout of a receive defaults to the queue\'s, which outlasts a short wait', async () => {
      const queue = freshQueue();
      await queue.send('default timeout');
      const [message] = await queue.receive({ waitSeconds: EXPECT_WAIT });
      assert.ok(message, 'expected a message');
      // The default (30 s in SQS) is far longer than this wait.
      await assertEmptyFor(queue, tick, 'the message came back before the default visibility timeout');
      await queue.delete(message.receiptHandle);
    });

    it('delete removes the message for good', async () => {
      const queue = freshQueue();
      await queue.send('to delete');
      const message = await receiveOne(queue, tick);
      await queue.delete(message.receiptHandle);
      // Longer than its visibility timeout: a message merely hidden would be back by then.
      await assertEmptyFor(queue, tick * 3, 'a deleted message came back');
      await countsSettle(queue, { visible: 0, inFlight: 0, delayed: 0 });
    });

    it('delete with a stale receipt handle does not fail', async () => {
      const queue = freshQueue();
      await queue.send('received twice');
      const first = await receiveOne(queue, tick);
      const second = await receiveOne(queue);
      assert.equal(second.receiveCount, 2);
      // SQS accepts the old handle and may or may not delete the message; adapters that
      // can tell (the SQLite one) check in their own tests that it is left alone.
      await queue.delete(first.receiptHandle);
      await queue.delete(second.receiptHandle);
      // Deleting twice is harmless too.
      await queue.delete(second.receiptHandle);
    });

    it('changeVisibility to 0 makes an in-flight message visible at once', async () => {
      const queue = freshQueue();
      const id = await queue.send('release');
      const first = await receiveOne(queue, LONG_VISIBILITY);
      await queue.changeVisibility(first.receiptHandle, 0);
      const started = Date.now();
      const second = await receiveOne(queue);
      assert.equal(second.id, id);
      assert.equal(second.receiveCount, 2);
      assert.ok(Date.now() - started < 10_000, 'the released message took long to come back');
      await queue.delete(second.receiptHandle);
    });

    it('changeVisibility shortens a long timeout', async () => {
      const queue = freshQueue();
      const id = await queue.send('shorten');
      const first = await receiveOne(queue, LONG_VISIBILITY);
      await queue.changeVisibility(first.receiptHandle, tick);
      const started = Date.now();
      const second = await receiveOne(queue);
      const elapsed = Date.now() - started;
      assert.equal(second.id, id);
      assert.ok(elapsed < (LONG_VISIBILITY * 1000) / 2, `came back after ${elapsed} ms, as if the timeout had not been shortened`);
      await queue.delete(second.receiptHandle);
    });

    it('changeVisibility extends a short timeout', async () => {
      const queue = freshQueue();
      const id = await queue.send('extend');
      const first = await receiveOne(queue, tick * 2);
      await queue.changeVisibility(first.receiptHandle, LONG_VISIBILITY);
      // Twice the original timeout: without the extension the message would be back.
      await assertEmptyFor(queue, tick * 4, 'the message came back at its original timeout, not the extended one');
      await countsSettle(queue, { visible: 0, inFlight: 1, delayed: 0 });
      await queue.changeVisibility(first.receiptHandle, 0);
      const second = await receiveOne(queue);
      assert.equal(second.id, id);
      await queue.delete(second.receiptHandle);
    });

    it('changeVisibility on a message received again since throws not-in-flight', async () => {
      const queue = freshQueue();
      await queue.send('stale');
      const first = await receiveOne(queue, tick);
      const second = await receiveOne(queue);
      await assert.rejects(queue.changeVisibility(first.receiptHandle, LONG_VISIBILITY), isQueueError('not-in-flight'));
      // The current handle still works, and the stale one did not change the message.
      await queue.changeVisibility(second.receiptHandle, LONG_VISIBILITY);
      await queue.delete(second.receiptHandle);
    });

    it('changeVisibility on a deleted message throws not-in-flight', async () => {
      const queue = freshQueue();
      await queue.send('gone');
      const message = await receiveOne(queue);
      await queue.delete(message.receiptHandle);
      await assert.rejects(queue.changeVisibility(message.receiptHandle, 5), isQueueError('not-in-flight'));
    });

    it('changeVisibility after the visibility timeout lapsed throws not-in-flight', async () => {
      const queue = freshQueue();
      await queue.send('lapsed');
      const message = await receiveOne(queue, tick);
      await countsSettle(queue, { visible: 1, inFlight: 0, delayed: 0 });
      await assert.rejects(queue.changeVisibility(message.receiptHandle, 5), isQueueError('not-in-flight'));
    });

    it('a delayed message stays hidden until its delay passes', async () => {
      const queue = freshQueue();
      const sentAt = Date.now();
      const id = await queue.send('later', { delaySeconds: 1 });
      assert.deepEqual(await queue.receive({ maxMessages: 10 }), [], 'a delayed message was visible at once');
      const message = await receiveOne(queue);
      const elapsed = Date.now() - sentAt;
      assert.equal(message.id, id);
      assert.equal(message.receiveCount, 1);
      assert.ok(elapsed >= 800, `the message arrived ${elapsed} ms after a 1 s delay`);
      await queue.delete(message.receiptHandle);
    });

    it('counts report visible, in-flight and delayed messages', async () => {
      const queue = freshQueue();
      await countsSettle(queue, { visible: 0, inFlight: 0, delayed: 0 });
      await queue.send('visible 1');
      await queue.send('visible 2');
      await countsSettle(queue, { visible: 2, inFlight: 0, delayed: 0 });
      const [received] = await queue.receive({ waitSeconds: EXPECT_WAIT, visibilityTimeoutSeconds: 300 });
      assert.ok(received, 'expected a message');
      // Longer than the counts may take to settle, so it is still delayed when they do.
      await queue.send('delayed', { delaySeconds: 300 });
      await countsSettle(queue, { visible: 1, inFlight: 1, delayed: 1 });
      await queue.changeVisibility(received.receiptHandle, 0);
      await countsSettle(queue, { visible: 2, inFlight: 0, delayed: 1 });
    });

    it('refuses invalid arguments with invalid-argument', async () => {
      const queue = freshQueue();
      const invalid = isQueueError('invalid-argument');
      await assert.rejects(async () => queue.receive({ maxMessages: 11 }), invalid);
      await assert.rejects(async () => queue.receive({ maxMessages: 0 }), invalid);
      await assert.rejects(async () => queue.receive({ maxMessages: 2.5 }), invalid);
      await assert.rejects(async () => queue.receive({ waitSeconds: 21 }), invalid);
      await assert.rejects(async () => queue.receive({ waitSeconds: -1 }), invalid);
      await assert.rejects(async () => queue.receive({ visibilityTimeoutSeconds: -1 }), invalid);
      await assert.rejects(async () => queue.receive({ visibilityTimeoutSeconds: SQS_LIMITS.maxVisibilityTimeoutSeconds + 1 }), invalid);
      await assert.rejects(async () => queue.send('x', { delaySeconds: 901 }), invalid);
      await assert.rejects(async () => queue.send('x', { delaySeconds: -1 }), invalid);
      await assert.rejects(async () => queue.send('x', { delaySeconds: 1.5 }), invalid);
      await assert.rejects(async () => queue.send('x'.repeat(SQS_LIMITS.maxBodyBytes + 1)), invalid);
      // Counted in bytes, not characters: each "é" takes two.
      await assert.rejects(async () => queue.send('é'.repeat(SQS_LIMITS.maxBodyBytes / 2 + 1)), invalid);
      await assert.rejects(async () => queue.changeVisibility('any-handle', -1), invalid);
      await assert.rejects(async () => queue.changeVisibility('any-handle', SQS_LIMITS.maxVisibilityTimeoutSeconds + 1), invalid);
      // None of the refused sends reached the queue.
      await assertEmptyFor(queue, 0, 'a refused send was queued');
    });

    it('refuses queue names SQS would refuse', () => {
      for (const name of ['', 'has space', 'a/b', 'dot.ted', 'ü', 'x'.repeat(81)]) {
        assert.throws(() => provider().queue(name), isQueueError('invalid-argument'), `queue name ${JSON.stringify(name)}`);
      }
    });

    it('queues with different names are independent', async () => {
      const a = freshQueue();
      const b = freshQueue();
      assert.notEqual(a.name, b.name);
      const id = await a.send('only in a');
      await assertEmptyFor(b, tick, 'a message sent to one queue showed up in another');
      await countsSettle(b, { visible: 0, inFlight: 0, delayed: 0 });
      await countsSettle(a, { visible: 1, inFlight: 0, delayed: 0 });
      const message = await receiveOne(a);
      assert.equal(message.id, id);
      await a.delete(message.receiptHandle);
    });
  });
}
