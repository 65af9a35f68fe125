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
import { drainQueue, makeTempDir, recording, sharedImagesDir } from '../helpers.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

describe('interrupted uploads', async () => {
  const temp = await makeTempDir();
  const { config } = loadConfig({ argv: ['--host', '127.0.0.1', '--port', '0', '--data', temp.dir], env: {} });
  const runtime = await openRuntime(config);
  after(async () => {
    await runtime.close();
    await temp.cleanup();
  });

  it('sends the missing launch messages when the web tier starts, and deletes the marker', async () => {
    const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
    await runtime.store.ensureBucket(config.inputBucket);
    await runtime.store.ensureBucket(config.outputBucket);
    const batchId = 'BATCHBATCHBATCH1';
    const manifest: BatchManifest = { batchId, createdAt: Date.now(), images: [] };
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
    // A manifest without a marker is an upload that finished: nothing is sent for it.
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
      assert.deepEqual(batchManifestSchema.parse(JSON.parse(stored!.body.toString('utf8'))), manifest, 'the manifest is kept as it was');
      assert.equal(await runtime.store.head(config.inputBucket, `pending/${batchId}/upload1`), null, 'the marker is gone');
      const batch = (await (await fetch(`${web.url}/api/batches/${batchId}`)).json()) as { total: number; done: number };
      assert.deepEqual([batch.total, batch.done], [3, 1]);
    } finally {
      await web.stop();
    }
    // Without its marker, a later start sends nothing again.
    web = await startWebTier(runtime);
    try {
      assert.deepEqual(await drainQueue(runtime.queues.launch), []);
    } finally {
      await web.stop();
    }
  });

  it('deletes a marker left beside a manifest an earlier version marked launched, and sends nothing', async () => {
    const batchId = 'MARKEDBATCHMARKE';
    const manifest: BatchManifest = { batchId, createdAt: Date.now(), launched: true, images: [{ imageId: 'marked-image', name: 'm.jpg', key: inputKey(batchId, 'marked-image'), size: 1, contentType: 'image/jpeg' }] };
    await runtime.store.put(config.inputBucket, `pending/${batchId}/upload1`, Buffer.alloc(0));
    await runtime.store.put(config.inputBucket, batchManifestKey(batchId, 'upload1'), Buffer.from(JSON.stringify(manifest)));
    const web = await startWebTier(runtime);
    try {
      assert.deepEqual(await drainQueue(runtime.queues.launch), []);
      assert.equal(await runtime.store.head(config.inputBucket, `pending/${batchId}/upload1`), null, 'the marker is gone');
    } finally {
      await web.stop();
    }
  });

  it('stores a normal upload\'s manifest once, after its marker, and deletes the marker last', async () => {
    const calls: string[] = [];
    const store = runtime.store;
    runtime.store = recording(store, calls);
    const web = await startWebTier(runtime);
    try {
      const form = new FormData();
      form.append('images', new Blob([await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'))]), 'a.jpg');
      calls.length = 0;
      const response = await fetch(`${web.url}/api/images`, { method: 'POST', body: form });
      assert.equal(response.status, 202);
      const { batchId, images } = (await response.json()) as { batchId: string; images: { id: string }[] };
      const launches = (await drainQueue(runtime.queues.launch)).map(parseLaunchMessage);
      assert.deepEqual(launches.map((launch) => launch.imageId), [images[0]!.id]);
      const writes = calls.filter((call) => !call.startsWith('get ') && !call.startsWith('head ') && !call.startsWith('list '));
      const manifestKey = writes.find((call) => call.startsWith(`put batches/${batchId}/`))?.slice('put '.length);
      assert.ok(manifestKey, writes.join('\n'));
      const uploadId = path.basename(manifestKey, '.json');
      const imageWrite = writes.findIndex((call) => call.includes(inputKey(batchId, images[0]!.id)));
      assert.deepEqual(writes.slice(imageWrite + 1), [
        `put pending/${batchId}/${uploadId}`,
        `put ${manifestKey}`,
        `delete pending/${batchId}/${uploadId}`,
      ], writes.join('\n'));
      const manifests = [];
      for await (const object of store.list(config.inputBucket, `batches/${batchId}/`)) {
        const stored = await store.get(config.inputBucket, object.key);
        manifests.push(batchManifestSchema.parse(JSON.parse(stored!.body.toString('utf8'))));
      }
      assert.deepEqual(manifests.map((manifest) => manifest.images.map((image) => image.imageId)), [[images[0]!.id]]);
      const markers = [];
      for await (const object of store.list(config.inputBucket, 'pending/')) markers.push(object.key);
      assert.deepEqual(markers, [], 'no marker is left once the messages are out');
    } finally {
      await web.stop();
      runtime.store = store;
    }
  });
});
