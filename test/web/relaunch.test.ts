/**
 * An upload whose web tier died after storing its manifest but before sending every launch
 * message: the next web tier sends them, once, for the images that have no result.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from '../../src/config.js';
import { batchManifestKey, batchManifestSchema, inputKey, parseLaunchMessage, resultKey, type BatchManifest, type ImageResult } from '../../src/messages.js';
import { openRuntime } from '../../src/runtime.js';
import { startWebTier } from '../../src/web/index.js';
import { drainQueue, makeTempDir, sharedImagesDir } from '../helpers.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

describe('interrupted uploads', async () => {
  const temp = await makeTempDir();
  const { config } = loadConfig({ argv: ['--host', '127.0.0.1', '--port', '0', '--data', temp.dir], env: {} });
  const runtime = await openRuntime(config);
  after(async () => {
    await runtime.close();
    await temp.cleanup();
  });

  it('sends the missing launch messages when the web tier starts, and marks the manifest', async () => {
    const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
    await runtime.store.ensureBucket(config.inputBucket);
    await runtime.store.ensureBucket(config.outputBucket);
    const batchId = 'BATCHBATCHBATCH1';
    const manifest: BatchManifest = { batchId, createdAt: Date.now(), images: [], launched: false };
    for (const imageId of ['image-one', 'image-two', 'image-three']) {
      const key = inputKey(batchId, imageId);
      await runtime.store.put(config.inputBucket, key, tench, { contentType: 'image/jpeg' });
      manifest.images.push({ imageId, name: `${imageId}.jpg`, key, size: tench.length, contentType: 'image/jpeg' });
    }
    const manifestKey = batchManifestKey(batchId, 'upload1');
    // What an upload stores before its launch messages: the marker, then the manifest.
    await runtime.store.put(config.inputBucket, `pending/${batchId}/upload1`, Buffer.alloc(0));
    await runtime.store.put(config.inputBucket, manifestKey, Buffer.from(JSON.stringify(manifest)));
    // One image did get its launch message before the crash, and has its result already.
    const result: ImageResult = { status: 'ok', imageId: 'image-one', batchId, name: 'image-one.jpg', attempts: 1, instanceId: 'i-1', label: 'tench', probability: 0.9, top5: [], durationMs: 1, finishedAt: Date.now() };
    await runtime.store.put(config.outputBucket, resultKey('image-one'), Buffer.from(JSON.stringify(result)));
    // A manifest from before the mark existed counts as launched.
    const old = { batchId: 'OLDBATCHOLDBATCH', createdAt: Date.now(), images: [{ imageId: 'old-image', name: 'old.jpg', key: inputKey('OLDBATCHOLDBATCH', 'old-image'), size: 1, contentType: 'image/jpeg' }] };
    await runtime.store.put(config.inputBucket, batchManifestKey(old.batchId, 'upload0'), Buffer.from(JSON.stringify(old)));

    const { log, entries } = capturingLogger();
    let web = await startWebTier(runtime, log);
    try {
      const launches = (await drainQueue(runtime.queues.launch)).map(parseLaunchMessage);
      assert.deepEqual(launches.map((launch) => [launch.imageId, launch.batchId, launch.attempt]).sort(), [['image-three', batchId, 1], ['image-two', batchId, 1]]);
      const relaunched = logged(entries, { msg: 'upload interrupted before all its images were queued: queued them again', component: 'web', level: 'warn' });
      assert.equal(relaunched[0]?.queued, 2, showLog(entries));
      assert.equal(typeof relaunched[0]?.batchId, 'string', showLog(entries));
      const stored = await runtime.store.get(config.inputBucket, manifestKey);
      assert.equal(batchManifestSchema.parse(JSON.parse(stored!.body.toString('utf8'))).launched, true);
      assert.equal(await runtime.store.head(config.inputBucket, `pending/${batchId}/upload1`), null, 'the marker is gone');
      const batch = (await (await fetch(`${web.url}/api/batches/${batchId}`)).json()) as { total: number; done: number };
      assert.deepEqual([batch.total, batch.done], [3, 1]);
    } finally {
      await web.stop();
    }
    // Once marked, a later start sends nothing again.
    web = await startWebTier(runtime);
    try {
      assert.deepEqual(await drainQueue(runtime.queues.launch), []);
    } finally {
      await web.stop();
    }
  });

  it('marks the manifest of a normal upload launched once its messages are out', async () => {
    const web = await startWebTier(runtime);
    try {
      const form = new FormData();
      form.append('images', new Blob([await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'))]), 'a.jpg');
      const response = await fetch(`${web.url}/api/images`, { method: 'POST', body: form });
      assert.equal(response.status, 202);
      const { batchId } = (await response.json()) as { batchId: string };
      const manifests = [];
      for await (const object of runtime.store.list(config.inputBucket, `batches/${batchId}/`)) {
        const stored = await runtime.store.get(config.inputBucket, object.key);
        manifests.push(batchManifestSchema.parse(JSON.parse(stored!.body.toString('utf8'))));
      }
      assert.equal(manifests.length, 1);
      assert.equal(manifests[0]!.launched, true);
      const markers = [];
      for await (const object of runtime.store.list(config.inputBucket, 'pending/')) markers.push(object.key);
      assert.deepEqual(markers, [], 'no marker is left once the messages are out');
      assert.equal((await drainQueue(runtime.queues.launch)).length, 1);
    } finally {
      await web.stop();
    }
  });
});
