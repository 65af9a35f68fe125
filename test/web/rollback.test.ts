/** An upload whose launch messages cannot all be sent is not accepted and leaves nothing. */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from '../../src/config.js';
import type { Queue } from '../../src/queue/port.js';
import { openRuntime } from '../../src/runtime.js';
import { startWebTier } from '../../src/web/index.js';
import { makeTempDir, sharedImagesDir } from '../helpers.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

describe('upload rollback', async () => {
  const temp = await makeTempDir();
  const { config } = loadConfig({ argv: ['--host', '127.0.0.1', '--port', '0', '--data', temp.dir], env: {} });
  const runtime = await openRuntime(config);
  // The real queue, failing from the third send on, as a full disk or a lost connection would.
  const realLaunch = runtime.queues.launch;
  let sends = 0;
  const send = async (body: string) => {
    if (++sends > 2) throw new Error(`disk I/O error on ${temp.dir}/queues.db`);
    return realLaunch.send(body);
  };
  const failingLaunch: Queue = Object.assign(Object.create(realLaunch) as Queue, {
    send,
    // Part of the batch goes out before the failure, as with SQS batches of 10.
    sendBatch: async (bodies: string[]) => {
      const ids: string[] = [];
      for (const body of bodies) ids.push(await send(body));
      return ids;
    },
  });
  runtime.queues.launch = failingLaunch;
  const { log, entries } = capturingLogger();
  const web = await startWebTier(runtime, log);
  after(async () => {
    await web.stop();
    await runtime.close();
    await temp.cleanup();
  });

  it('answers 503 without revealing paths, and deletes what it stored', async () => {
    const image = await readFile(path.join(sharedImagesDir, 'n01530575_brambling.JPEG'));
    const form = new FormData();
    for (let i = 0; i < 5; i++) form.append('images', new Blob([image]), `${i}.jpg`);
    const response = await fetch(`${web.url}/api/images`, { method: 'POST', body: form });
    assert.equal(response.status, 503);
    const text = await response.text();
    assert.match(text, /could not be queued; nothing was stored/);
    assert.ok(!text.includes(temp.dir), 'the answer names no path of the machine');
    const failed = logged(entries, { msg: 'upload failed', level: 'error', component: 'web' });
    assert.ok(failed.some((entry) => JSON.stringify(entry.err).includes('disk I/O error')), `the cause is in the log:\n${showLog(entries)}`);
    const left: string[] = [];
    for await (const object of runtime.store.list(config.inputBucket)) left.push(object.key);
    assert.deepEqual(left, []);
  });
});
