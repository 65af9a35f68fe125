import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryQueueProvider } from '../../src/queue/memory.js';
import { QueueError } from '../../src/queue/port.js';
import { queueContract } from './contract.js';

queueContract(
  'memory',
  async () => {
    const provider = new MemoryQueueProvider();
    return { provider, cleanup: () => provider.close() };
  },
  // Timers are in milliseconds here, so the contract's waits can be short.
  { minVisibilitySeconds: 0.3 },
);

describe('MemoryQueueProvider', () => {
  it('two queue objects of one name share their messages, and never both get one', async () => {
    const provider = new MemoryQueueProvider();
    const a = provider.queue('shared');
    const b = provider.queue('shared');
    const id = await a.send('one');
    const [first] = await b.receive({ visibilityTimeoutSeconds: 60 });
    assert.equal(first?.id, id);
    assert.deepEqual(await a.receive(), []);
    await a.delete(first!.receiptHandle);
    assert.deepEqual(await b.counts(), { visible: 0, inFlight: 0, delayed: 0 });
    await provider.close();
  });

  it('a stale receipt handle leaves the message alone', async () => {
    const provider = new MemoryQueueProvider();
    const queue = provider.queue('stale');
    await queue.send('kept');
    const [first] = await queue.receive({ visibilityTimeoutSeconds: 0 });
    const [second] = await queue.receive({ visibilityTimeoutSeconds: 60 });
    await queue.delete(first!.receiptHandle);
    assert.deepEqual(await queue.counts(), { visible: 0, inFlight: 1, delayed: 0 }, 'the stale delete removed the message');
    await queue.delete(second!.receiptHandle);
    assert.deepEqual(await queue.counts(), { visible: 0, inFlight: 0, delayed: 0 });
    await provider.close();
  });

  it('close ends a long poll at once, and later calls fail as unavailable', async () => {
    const provider = new MemoryQueueProvider();
    const queue = provider.queue('closing');
    const started = Date.now();
    const pending = queue.receive({ waitSeconds: 20 });
    await provider.close();
    assert.deepEqual(await pending, []);
    assert.ok(Date.now() - started < 5000, 'the long poll kept waiting after close');
    await assert.rejects(queue.send('late'), (error: unknown) => error instanceof QueueError && error.code === 'unavailable');
  });

  it('drops messages older than the retention, received or not', async () => {
    let now = 1_000_000;
    const clock = { now: () => now, monotonic: () => now };
    const provider = new MemoryQueueProvider({ messageRetentionSeconds: 60, clock });
    const queue = provider.queue('retained');
    await queue.send('old');
    now += 30_000;
    await queue.send('young');
    now += 31_000;
    const messages = await queue.receive({ maxMessages: 10 });
    assert.deepEqual(messages.map((message) => message.body), ['young']);
    await provider.close();
  });
});
