/**
 * The SQLite queue file survives a kill at any moment: processes that send, receive and
 * delete as fast as they can are killed (SIGKILL) mid-burst, several times over the same
 * file; after each round the file passes SQLite's integrity check, is still in WAL mode,
 * and holds every message whose send returned, unless an acknowledged delete removed it.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from '../../src/sqlite-driver.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { makeTempDir, waitFor } from '../helpers.js';

const burster = path.join(path.dirname(fileURLToPath(import.meta.url)), 'queue-burst-process.js');

interface Burst {
  child: ChildProcess;
  lines: string[];
  exited: Promise<void>;
}

function startBurst(file: string, tag: string): Burst {
  const child = spawn(process.execPath, [burster, file, tag], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    const text = partial + chunk.toString('utf8');
    const parts = text.split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  return { child, lines, exited };
}

describe('SQLite queue killed mid-write', async () => {
  const temp = await makeTempDir('icaas-queue-kill-');
  const file = path.join(temp.dir, 'queues.db');
  const running: Burst[] = [];
  after(async () => {
    for (const burst of running) burst.child.kill('SIGKILL');
    await Promise.all(running.map((burst) => burst.exited));
    await temp.cleanup();
  });

  it('keeps its integrity and every acknowledged send across kills at random moments', async () => {
    const sent = new Set<string>();
    const received = new Set<string>();
    const deleted = new Set<string>();
    const rounds = 6;
    for (let round = 0; round < rounds; round++) {
      const bursts = [startBurst(file, `r${round}a`), startBurst(file, `r${round}b`)];
      running.push(...bursts);
      // Let both get going, then kill each at its own random moment within the burst.
      await waitFor('both processes to be sending', () => bursts.every((burst) => burst.lines.filter((line) => line.startsWith('S ')).length >= 20), { timeoutMs: 20_000, intervalMs: 5 });
      await Promise.all(bursts.map(async (burst) => {
        await new Promise((resolve) => setTimeout(resolve, Math.random() * 150));
        burst.child.kill('SIGKILL');
        await burst.exited;
      }));
      running.splice(0);
      for (const burst of bursts) {
        assert.equal(burst.child.signalCode, 'SIGKILL', 'killed, not finished');
        for (const line of burst.lines) {
          const [kind, body] = [line.slice(0, 1), line.slice(2)];
          if (kind === 'S') sent.add(body);
          else if (kind === 'R') received.add(body);
          else if (kind === 'D') deleted.add(body);
        }
      }

      const db = new Database(file, { readonly: false });
      try {
        assert.equal(db.pragma('integrity_check', { simple: true }), 'ok', `integrity after round ${round + 1}`);
        assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
        const present = new Set((db.prepare(`SELECT body FROM messages WHERE queue = 'burst'`).all() as { body: string }[]).map((row) => row.body));
        for (const body of sent) {
          if (deleted.has(body)) assert.ok(!present.has(body), `${body} was deleted (acknowledged) but is back`);
          // Received but its delete not acknowledged: the kill may have landed either side of the commit.
          else if (!received.has(body)) assert.ok(present.has(body), `${body} was sent (acknowledged) but is lost`);
        }
      } finally {
        db.close();
      }
    }
    assert.ok(sent.size > rounds * 40, `${sent.size} sends`);
    assert.ok(deleted.size > rounds * 10, `${deleted.size} deletes`);

    // Still a working queue: what is left can be received and deleted.
    const provider = new SqliteQueueProvider(file);
    try {
      const queue = provider.queue('burst');
      await queue.send('after');
      let drained = 0;
      for (;;) {
        const messages = await queue.receive({ maxMessages: 10, visibilityTimeoutSeconds: 0 });
        if (messages.length === 0) break;
        for (const message of messages) await queue.delete(message.receiptHandle);
        drained += messages.length;
      }
      assert.ok(drained >= 1);
    } finally {
      await provider.close();
    }
  });
});
