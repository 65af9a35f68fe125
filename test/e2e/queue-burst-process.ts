/**
 * Hammers a queue file with sends, receives and deletes until it is killed, for the test
 * that kills processes mid-write.
 *
 *   node queue-burst-process.js <queue file> <tag>
 *
 * It reports on stdout (synchronous for pipes on Linux, so a line printed is a line the
 * parent sees even if the process dies right after): "S body" once a send has returned,
 * "R body" when a message has been received, "D body" once its delete has returned.
 */
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';

const [file, tag] = process.argv.slice(2);

// The test runner also runs every file under test/ on its own, without arguments.
if (file !== undefined && tag !== undefined) {
  // Never outlive a test run that died without killing this process.
  setTimeout(() => process.exit(2), 60_000).unref();
  const queue = new SqliteQueueProvider(file).queue('burst');
  const out = (line: string) => process.stdout.write(`${line}\n`);
  out('ready');
  for (let n = 0; ; n++) {
    // A pause of up to a millisecond between operations: a tight loop would hold the write
    // lock almost all the time and starve the other process until its busy timeout.
    await new Promise((resolve) => setTimeout(resolve, Math.random()));
    const body = `${tag}-${n}`;
    await queue.send(body);
    out(`S ${body}`);
    if (n % 2 === 1) {
      const messages = await queue.receive({ maxMessages: 3, visibilityTimeoutSeconds: 30 });
      for (const message of messages) {
        out(`R ${message.body}`);
        await queue.delete(message.receiptHandle);
        out(`D ${message.body}`);
      }
    }
  }
}
