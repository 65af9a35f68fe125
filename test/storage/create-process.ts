/**
 * A writer in its own OS process, for the test of create-if-absent across processes.
 *
 *   node create-process.js <store root> <bucket> <writer name> <key count>
 *
 * It prints {"event":"ready"} once started, waits for a line on stdin (so several writers
 * can be set racing at the same moment), then tries to create keys k0..k<count-1>, all at once in a
 * random order, with ifNoneMatch and prints {"event":"done","won":[...]} with the keys it created.
 */
import { createInterface } from 'node:readline';
import { FsObjectStore } from '../../src/storage/fs.js';
import { PreconditionFailedError } from '../../src/storage/port.js';

const [root, bucket, writer, count] = process.argv.slice(2);

// The test runner also runs every file under test/ on its own, without arguments.
if (root !== undefined && bucket !== undefined && writer !== undefined && count !== undefined) {
  setTimeout(() => process.exit(2), 120_000).unref();
  process.stdout.write(`${JSON.stringify({ event: 'ready' })}\n`);
  await goSignal();
  const store = new FsObjectStore(root);
  const won: string[] = [];
  // Each writer takes the keys in its own random order, so every writer wins some of them
  // and each key sees creates arriving from several processes at about the same time.
  const keys = Array.from({ length: Number(count) }, (_, i) => `k${i}`).sort(() => Math.random() - 0.5);
  await Promise.all(
    keys.map(async (key) => {
      try {
        await store.put(bucket, key, Buffer.from(writer), { ifNoneMatch: '*', metadata: { writer } });
        won.push(key);
      } catch (error) {
        if (!(error instanceof PreconditionFailedError)) throw error;
      }
    }),
  );
  process.stdout.write(`${JSON.stringify({ event: 'done', won })}\n`);
}

function goSignal(): Promise<void> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: process.stdin });
    const early = (): void => reject(new Error('stdin closed before the go signal'));
    lines.once('close', early);
    lines.once('line', () => {
      lines.off('close', early);
      lines.close();
      process.stdin.destroy();
      resolve();
    });
  });
}
