/**
 * Message retention on the SQLite queue, as SQS's retention period: a message older than
 * the retention is gone, received or not, so a queue nobody consumes stops growing.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from '../../src/sqlite-driver.js';
import { QueueError } from '../../src/queue/port.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { makeTempDir, waitFor } from '../helpers.js';

describe('SQLite queue message retention', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  let files = 0;
  const opened: SqliteQueueProvider[] = [];
  const open = (file: string, options?: ConstructorParameters<typeof SqliteQueueProvider>[1]) => {
    const provider = new SqliteQueueProvider(file, options);
    opened.push(provider);
    return provider;
  };
  const freshFile = () => path.join(temp.dir, `queues-${++files}.db`);
  const rows = (file: string): { body: string }[] => {
    const db = new Database(file, { readonly: true });
    try {
      return db.prepare('SELECT body FROM messages ORDER BY seq').all() as { body: string }[];
    } finally {
      db.close();
    }
  };
  before(async () => {
    temp = await makeTempDir('icaas-sqlite-retention-');
  });
  after(async () => {
    for (const provider of opened) await provider.close();
    await temp.cleanup();
  });

  it('drops messages older than the retention, whether visible, in flight or delayed', async () => {
    const file = freshFile();
    const provider = open(file, { messageRetentionSeconds: 1 });
    const output = provider.queue('output');
    await output.send('unread');
    await output.send('taken');
    await output.send('delayed', { delaySeconds: 60 });
    const taken = await output.receive({ maxMessages: 1, visibilityTimeoutSeconds: 600 });
    assert.equal(taken[0]?.body, 'unread');
    assert.equal(rows(file).length, 3);
    // Sends and receives on any queue of the file sweep it (at most every half retention).
    const other = provider.queue('launch');
    await waitFor('the old messages to be gone', async () => {
      await other.receive();
      return rows(file).length === 0;
    }, { timeoutMs: 10_000 });
    assert.deepEqual(await output.counts(), { visible: 0, inFlight: 0, delayed: 0 });
    await output.send('new');
    assert.deepEqual((await output.receive()).map((message) => message.body), ['new']);
  });

  it('keeps messages for 14 days by default', async () => {
    const file = freshFile();
    const first = open(file);
    const queue = first.queue('output');
    for (const body of ['15 days old', '13 days old', 'new']) await queue.send(body);
    const db = new Database(file);
    try {
      const day = 86_400_000;
      db.prepare('UPDATE messages SET sent_at = ? WHERE body = ?').run(Date.now() - 15 * day, '15 days old');
      db.prepare('UPDATE messages SET sent_at = ? WHERE body = ?').run(Date.now() - 13 * day, '13 days old');
    } finally {
      db.close();
    }
    // Another process opening the file sweeps at its first send.
    const second = open(file);
    await second.queue('output').send('newer');
    assert.deepEqual(rows(file).map((row) => row.body), ['13 days old', 'new', 'newer']);
  });

  it('sweeps a large backlog of expired messages in one go, in rounds', async () => {
    const file = freshFile();
    open(file).queue('output');
    const db = new Database(file);
    try {
      const insert = db.prepare(`INSERT INTO messages (id, queue, body, sent_at, visible_at) VALUES (?, 'output', 'old', ?, ?)`);
      const old = Date.now() - 60_000;
      db.transaction(() => {
        for (let i = 0; i < 4500; i++) insert.run(`old-${i}`, old, old);
      })();
    } finally {
      db.close();
    }
    const provider = open(file, { messageRetentionSeconds: 30 });
    await provider.queue('output').send('fresh');
    assert.deepEqual(rows(file).map((row) => row.body), ['fresh']);
  });

  it('refuses a retention that is not a positive number of seconds', () => {
    for (const retention of [0, -1, Number.NaN]) {
      assert.throws(() => new SqliteQueueProvider(freshFile(), { messageRetentionSeconds: retention }), (error: unknown) => error instanceof QueueError && error.code === 'invalid-argument');
    }
  });
});
