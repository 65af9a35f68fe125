/**
 * One queue file shared by real OS processes: each message goes to exactly one receiver
 * while it is in flight, and comes back to another process once its timeout ends.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { makeTempDir, waitFor } from '../helpers.js';

const receiverScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'receiver-process.js');

interface ReceiverEvent {
  event: 'ready' | 'message' | 'done';
  id?: string;
  receiveCount?: number;
  at?: number;
}

interface Receiver {
  child: ChildProcess;
  events: ReceiverEvent[];
  stderr: () => string;
  exitCode: () => number | null | undefined;
  messages: () => ReceiverEvent[];
}

describe('a queue file shared by OS processes', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  let file: string;
  let provider: SqliteQueueProvider;
  const children: ChildProcess[] = [];

  const startReceiver = (queue: string, ...flags: string[]): Receiver => {
    const child = spawn(process.execPath, [receiverScript, file, queue, ...flags], { stdio: ['pipe', 'pipe', 'pipe'] });
    children.push(child);
    const events: ReceiverEvent[] = [];
    let stderr = '';
    let exitCode: number | null | undefined;
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    createInterface({ input: child.stdout! }).on('line', (line) => events.push(JSON.parse(line) as ReceiverEvent));
    child.on('exit', (code) => (exitCode = code));
    return {
      child,
      events,
      stderr: () => stderr,
      exitCode: () => exitCode,
      messages: () => events.filter((event) => event.event === 'message'),
    };
  };
  /** Waits until every receiver has exited, and checks that each one succeeded. */
  const finished = async (receivers: Receiver[]): Promise<void> => {
    await waitFor('the receivers to exit', () => receivers.every((receiver) => receiver.exitCode() !== undefined), { timeoutMs: 30_000 });
    for (const receiver of receivers) {
      assert.equal(receiver.exitCode(), 0, `receiver ${receiver.child.pid} failed: ${receiver.stderr()}`);
      // The exit can be seen before the last line is read from the pipe.
      await waitFor('the receiver to report done', () => receiver.events.some((event) => event.event === 'done'), { timeoutMs: 5_000 });
    }
  };

  before(async () => {
    temp = await makeTempDir('icaas-queue-processes-');
    file = path.join(temp.dir, 'queues.db');
    provider = new SqliteQueueProvider(file);
  });
  after(async () => {
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    await provider?.close();
    await temp?.cleanup();
  });

  it('hands each of 200 messages to exactly one of 4 racing processes', async (t) => {
    const queue = provider.queue('race');
    const sent = new Set<string>();
    for (let i = 0; i < 200; i++) sent.add(await queue.send(JSON.stringify({ n: i })));

    // Different batch sizes, so the claims of different processes interleave.
    const receivers = ['10', '7', '3', '1'].map((batch) => startReceiver('race', '--barrier', '--batch', batch, '--visibility', '60', '--wait', '0.5'));
    await waitFor('all receivers to open the file', () => receivers.every((receiver) => receiver.events.some((event) => event.event === 'ready')), { timeoutMs: 20_000 });
    for (const receiver of receivers) receiver.child.stdin!.write('go\n');
    await finished(receivers);

    const got = receivers.flatMap((receiver) => receiver.messages().map((event) => event.id!));
    t.diagnostic(`messages per process: ${receivers.map((receiver) => receiver.messages().length).join(', ')}`);
    const duplicates = got.filter((id, index) => got.indexOf(id) !== index);
    assert.deepEqual(duplicates, [], 'messages handed to more than one receiver');
    assert.deepEqual(new Set(got), sent);
    assert.ok(receivers.every((receiver) => receiver.messages().every((event) => event.receiveCount === 1)));
    assert.deepEqual(await queue.counts(), { visible: 0, inFlight: 200, delayed: 0 });
  });

  it('gives a message that was not deleted to another process once its visibility timeout ends', async () => {
    const queue = provider.queue('redelivery');
    const id = await queue.send('not deleted');
    const first = startReceiver('redelivery', '--once', '--visibility', '1', '--wait', '10');
    await finished([first]);
    const [taken] = first.messages();
    assert.deepEqual([taken?.id, taken?.receiveCount], [id, 1]);
    assert.deepEqual(await queue.counts(), { visible: 0, inFlight: 1, delayed: 0 });

    const second = startReceiver('redelivery', '--once', '--visibility', '60', '--wait', '10');
    await finished([second]);
    const [retaken] = second.messages();
    assert.deepEqual([retaken?.id, retaken?.receiveCount], [id, 2]);
    const hiddenFor = retaken!.at! - taken!.at!;
    assert.ok(hiddenFor >= 900, `received again ${hiddenFor} ms after the first receive, within its 1 s visibility timeout`);
  });
});
