/**
 * Faults of the real service (`icaas start`, worker processes): an image that crashes its
 * decoder, and a graceful stop (SIGTERM) in the middle of a batch followed by a restart.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import Database from '../../src/sqlite-driver.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { waitFor } from '../helpers.js';
import { getBatch, readShared, sharedImages, startService, uploadForm, waitForBatch, type Service } from './harness.js';
import { logged, parseLogLines } from '../log-capture.js';

describe('faults of the real service', { concurrency: false }, () => {
  const services: Service[] = [];
  after(async () => {
    // Newest first: a restarted service shares its data folder with the one before it.
    for (const service of services.reverse()) await service.cleanup();
  });

  it('ends an image that crashes its worker as an error after 3 attempts, and finishes the rest', async () => {
    const service = await startService({ maxInstances: 3, idleWaitSeconds: 2, env: { ICAAS_TEST_CRASH_ON: 'crash-me' } });
    services.push(service);
    const images = (await sharedImages()).slice(60, 66);
    const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
    files.splice(2, 0, { name: 'crash-me.jpg', body: await readShared(images[0]!.file) });
    const upload = await uploadForm(service.url, files);
    assert.equal(upload.status, 202);
    const batch = await waitForBatch(service.url, upload.body.batchId, 90_000);
    const crashed = batch.images.find((image) => image.name === 'crash-me.jpg')!;
    assert.equal(crashed.status, 'error');
    assert.equal(crashed.attempts, 3);
    assert.match(crashed.result?.error ?? '', /failed after 3 attempts; last: instance i-[0-9a-f]+ stopped while holding the image/);
    assert.equal(batch.done, 6, JSON.stringify(batch.images.filter((image) => image.status !== 'done')));
    assert.equal(batch.errors, 1);
    assert.ok(service.peak() <= 3, `peak ${service.peak()}`);
  });

  it('on SIGTERM refuses uploads, lets instances finish the image in hand and exits; a restart finishes the rest', async () => {
    // Each image takes 2.5 s, so both instances hold one when the signal comes.
    const first = await startService({ maxInstances: 2, idleWaitSeconds: 5, env: { ICAAS_TEST_DELAY_MS: '2500' } });
    services.push(first);
    const images = (await sharedImages()).slice(70, 78);
    const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
    const upload = await uploadForm(first.url, files);
    assert.equal(upload.status, 202);
    const batchId = upload.body.batchId as string;
    const held = await waitFor('both instances to hold an image', async () => {
      const status = (await (await fetch(`${first.url}/api/status?batch=${batchId}`)).json()) as { instances: { state: string; imageId?: string }[] };
      const busy = status.instances.filter((instance) => instance.state === 'busy' && instance.imageId);
      return busy.length === 2 ? busy.map((instance) => instance.imageId!) : undefined;
    }, { timeoutMs: 60_000, intervalMs: 50 });

    const stopped = first.stop('SIGTERM');
    await waitFor('the service to start stopping', () => logged(parseLogLines(first.output()), { msg: 'stopping', signal: 'SIGTERM' }).length > 0, { timeoutMs: 5000, intervalMs: 10 });
    // Still answering while the instances finish, but no longer taking uploads.
    const refused = await uploadForm(first.url, [files[0]!]);
    assert.equal(refused.status, 503, JSON.stringify(refused.body));
    assert.match(refused.body.error, /shutting down/);
    const sync = new FormData();
    sync.append('image', new Blob([files[0]!.body]), 'sync.jpg');
    const syncAnswer = await fetch(`${first.url}/`, { method: 'POST', body: sync });
    assert.equal(syncAnswer.status, 503);
    assert.equal(syncAnswer.headers.get('retry-after'), '5');
    await syncAnswer.text();
    assert.equal((await getBatch(first.url, batchId)).total, 8, 'reads are still answered');
    await stopped;
    const lines = parseLogLines(first.output());
    assert.equal(logged(lines, { msg: 'workers stopped', workers: 2, killed: 0 }).length, 1, first.output());
    assert.equal(lines.at(-1)?.msg, 'stopped', first.output());

    // Every worker is gone, and each finished the image it held, on its first attempt.
    const registry = new Database(path.join(first.dataDir, 'instances.db'), { readonly: true });
    try {
      const alive = registry.prepare(`SELECT id FROM instances WHERE state != 'stopped'`).all();
      assert.deepEqual(alive, []);
    } finally {
      registry.close();
    }

    // The results in the output bucket at the stop: the two held images, not the rest. (An
    // instance that finished its image just before its stop signal reached it may have
    // taken and finished one more.)
    const store = new FsObjectStore(path.join(first.dataDir, 'buckets'));
    const finished: string[] = [];
    for await (const object of store.list('icaas-output', 'results/')) finished.push(object.key.slice('results/'.length, -'.json'.length));
    await store.close();
    for (const id of held) assert.ok(finished.includes(id), `image ${id} held at SIGTERM was finished`);
    assert.ok(finished.length <= 4, `${finished.length} images finished during the stop`);

    const second = await startService({ dataDir: first.dataDir, maxInstances: 2, idleWaitSeconds: 2 });
    services.push(second);
    // Nothing queued was lost: the restarted service finishes every image, each once.
    const batch = await waitForBatch(second.url, batchId, 90_000);
    assert.equal(batch.total, 8);
    assert.equal(batch.done, 8, JSON.stringify(batch.images.filter((image) => image.status !== 'done')));
    // Each on its first attempt: the held ones finished during the stop, the rest after it.
    assert.deepEqual(batch.images.map((image) => image.attempts), Array(8).fill(1));
  });
});
