/**
 * --retention: the web tier deletes batches in which nothing has happened for that long,
 * through the same path as DELETE, and keeps those whose images still wait for a result.
 * On the file store and on the S3 adapter (s3rver).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, loadConfig } from '../../src/config.js';
import { resultKey, type ImageResult } from '../../src/messages.js';
import type { Runtime } from '../../src/runtime.js';
import { startSweeper } from '../../src/web/retention.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';
import { startLocalS3 } from './s3-fixture.js';
import { drainQueue, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));

describe('the retention option', () => {
  it('takes durations in seconds, minutes, hours or days, and is off by default', () => {
    const parse = (value: string) => loadConfig({ argv: ['--retention', value], env: {} }).config.retentionSeconds;
    assert.equal(loadConfig({ argv: [], env: {} }).config.retentionSeconds, 0);
    assert.equal(parse('7d'), 7 * 86_400);
    assert.equal(parse('12h'), 12 * 3600);
    assert.equal(parse('1.5h'), 5400);
    assert.equal(parse('30m'), 1800);
    assert.equal(parse('45s'), 45);
    assert.equal(parse('90'), 90);
    assert.equal(parse('0'), 0);
    assert.equal(loadConfig({ argv: [], env: { ICAAS_RETENTION: '2d' } }).config.retentionSeconds, 2 * 86_400);
    for (const bad of ['-1d', '7 days', '7D', 'd', '1w', '1e3', 'forever', '']) {
      assert.throws(() => parse(bad), (error: unknown) => error instanceof ConfigError && /duration such as/.test(error.message), bad);
    }
  });
});

describe('the sweep schedule', () => {
  it('backs off after failures (from twice the interval), logs a repeated error once, and says when it works again', async () => {
    const times: number[] = [];
    const { log, entries } = capturingLogger();
    let failing = true;
    const sweeper = startSweeper(async () => {
      times.push(performance.now());
      if (failing) throw new Error('the bucket is unreachable');
    }, 20, log);
    try {
      await waitFor('five failed sweeps', () => times.length >= 5);
      failing = false;
      await waitFor('a sweep that works', () => logged(entries, { msg: 'loop working again', loop: 'retention sweep' }).length > 0);
    } finally {
      await sweeper.stop();
    }
    // After the i-th failure the wait is at least half its ceiling, 2 x 20 ms x 2^(i-1).
    for (let i = 1; i < 5; i++) assert.ok(times[i]! - times[i - 1]! >= 20 * 2 ** (i - 1) - 2, `gap ${i}: ${times[i]! - times[i - 1]!} ms`);
    // Five failures: the first is logged as it happens, the rest as one count on recovery.
    assert.equal(logged(entries, { msg: 'loop failing', loop: 'retention sweep', problem: 'the bucket is unreachable' }).length, 1, showLog(entries));
    assert.ok(entries.length <= 3, showLog(entries));
  });
});

function retentionSuite(storeName: string, setupStore: () => Promise<{ flags: string[]; stop(): Promise<void> }>) {
  describe(`retention sweep (${storeName} store)`, async () => {
    const temp = await makeTempDir();
    let store: { flags: string[]; stop(): Promise<void> } | undefined;
    let tier: InProcessWebTier;
    let runtime: Runtime;
    let url: string;
    const { log, entries } = capturingLogger();
    before(async () => {
      store = await setupStore();
      tier = await startInProcessWebTier(temp.dir, [...store.flags, '--retention', '2s'], log);
      ({ runtime, url } = tier);
    });
    after(async () => {
      await tier?.stop();
      await store?.stop();
      await temp.cleanup();
    });

    const upload = async () => {
      const form = new FormData();
      form.append('images', new Blob([tench]), 'r.jpg');
      const response = await fetch(`${url}/api/images`, { method: 'POST', body: form });
      assert.equal(response.status, 202);
      return (await response.json()) as { batchId: string; images: { id: string }[] };
    };
    const finish = async (imageId: string, batchId: string) => {
      const result: ImageResult = {
        status: 'ok', imageId, batchId, name: 'r.jpg', attempts: 1, instanceId: 'i-test',
        label: 'tench', probability: 0.9, top5: [{ label: 'tench', probability: 0.9 }], durationMs: 5, finishedAt: Date.now(),
      };
      await runtime.store.put(runtime.config.outputBucket, resultKey(imageId), Buffer.from(JSON.stringify(result)));
      await runtime.queues.output.send(JSON.stringify({ type: 'result', result }));
    };
    const exists = async (batchId: string) => (await fetch(`${url}/api/batches/${batchId}`)).status === 200;
    const keysOf = async (batchId: string, imageId: string) => {
      const keys: string[] = [];
      for (const bucket of [runtime.config.inputBucket, runtime.config.outputBucket]) {
        for await (const object of runtime.store.list(bucket)) if (object.key.includes(batchId) || object.key.includes(imageId)) keys.push(object.key);
      }
      return keys;
    };

    it('deletes batches idle for longer than the retention, and keeps those still waiting for results until they are done and idle', async () => {
      // Uploaded first, so every sweep that finds the second one old finds this one old too.
      const waiting = await upload();
      const done = await upload();
      await drainQueue(runtime.queues.launch);
      await finish(done.images[0]!.id, done.batchId);
      await waitFor('the result', async () => ((await (await fetch(`${url}/api/batches/${done.batchId}`)).json()) as { done: number }).done === 1);

      await waitFor('the idle batch to be deleted', async () => !(await exists(done.batchId)), { timeoutMs: 20_000 });
      await waitFor('its objects to be gone', async () => (await keysOf(done.batchId, done.images[0]!.id)).length === 0);
      await waitFor('the deletion in the log', () => logged(entries, { msg: 'batch deleted after the retention', component: 'retention', batchId: done.batchId }).length > 0);
      assert.ok(await exists(waiting.batchId), 'the batch with an image still waiting is kept');
      assert.ok((await keysOf(waiting.batchId, waiting.images[0]!.id)).length > 0);

      await finish(waiting.images[0]!.id, waiting.batchId);
      await waitFor('the other batch to be deleted once done and idle', async () => !(await exists(waiting.batchId)), { timeoutMs: 20_000 });
      await waitFor('its objects to be gone', async () => (await keysOf(waiting.batchId, waiting.images[0]!.id)).length === 0);
    });
  });
}

retentionSuite('file', async () => ({ flags: [], stop: async () => {} }));
retentionSuite('S3', startLocalS3);
