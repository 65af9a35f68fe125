/**
 * A receiver in its own OS process, for the tests of a queue file shared by processes.
 *
 *   node receiver-process.js <queue file> <queue name> [--batch N] [--visibility S] [--wait S] [--once] [--barrier]
 *
 * It reports on stdout, one JSON object a line: {"event":"ready"} once the file is open,
 * {"event":"message",...} for each message received (none are deleted), and
 * {"event":"done"} when a long poll comes back empty (or after one receive with --once).
 * With --barrier it waits for a line on stdin before receiving, so several receivers can
 * be started one by one and then set racing at the same moment.
 */
import { createInterface } from 'node:readline';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';

const [file, queueName, ...flags] = process.argv.slice(2);

// The test runner also runs every file under test/ on its own, without arguments.
if (file !== undefined && queueName !== undefined) {
  // Never outlive a test run that died without stopping this process.
  setTimeout(() => process.exit(2), 120_000).unref();
  await main(file, queueName);
}

function flag(name: string, fallback: number): number {
  const index = flags.indexOf(`--${name}`);
  if (index === -1) return fallback;
  const value = Number(flags[index + 1]);
  if (!Number.isFinite(value)) throw new Error(`--${name} needs a number`);
  return value;
}

function report(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

async function main(file: string, queueName: string): Promise<void> {
  const maxMessages = flag('batch', 10);
  const visibilityTimeoutSeconds = flag('visibility', 60);
  const waitSeconds = flag('wait', 1);
  const once = flags.includes('--once');
  const provider = new SqliteQueueProvider(file);
  const queue = provider.queue(queueName);
  report({ event: 'ready', pid: process.pid });
  if (flags.includes('--barrier')) await goSignal();
  try {
    for (;;) {
      const messages = await queue.receive({ maxMessages, waitSeconds, visibilityTimeoutSeconds });
      const at = Date.now();
      for (const message of messages) report({ event: 'message', id: message.id, receiveCount: message.receiveCount, at });
      if (messages.length === 0 || once) break;
    }
  } finally {
    await provider.close();
  }
  report({ event: 'done' });
}

function goSignal(): Promise<void> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: process.stdin });
    const early = (): void => reject(new Error('stdin closed before the go signal'));
    lines.once('close', early);
    lines.once('line', () => {
      lines.off('close', early);
      lines.close();
      // Let stdin go, so it does not keep this process alive once the work is done.
      process.stdin.destroy();
      resolve();
    });
  });
}
