/**
 * DELETE /api/batches/:id: a deleted batch leaves nothing in the buckets or the index, a
 * late result for one of its images does not bring it back, and a deletion cut short by a
 * crash is finished by the next web tier. On the file store and on the S3 adapter (s3rver).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { attemptKey } from '../../src/outcomes.js';
import { batchManifestKey, inputKey, parseLaunchMessage, resultKey, type BatchManifest, type ImageResult } from '../../src/messages.js';
import type { Runtime } from '../../src/runtime.js';
import { startWebTier } from '../../src/web/index.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';
import { startLocalS3 } from './s3-fixture.js';
import { drainQueue, makeTempDir, serverSentEvents, sharedImagesDir, waitFor } from '../helpers.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));

/** Every key in both buckets that mentions one of the strings. */
async function keysMentioning(runtime: Runtime, needles: string[]): Promise<string[]> {
  const found: string[] = [];
  for (const bucket of [runtime.config.inputBucket, runtime.config.outputBucket]) {
    for await (const object of runtime.store.list(bucket)) {
      if (needles.some((needle) => object.key.includes(needle))) found.push(`${bucket}/${object.key}`);
    }
  }
  return found;
}

/** Where the buckets are: flags for the service, and how to stop it afterwards. */
type StoreSetup = () => Promise<{ flags: string[]; stop(): Promise<void> }>;

function deletionSuite(storeName: string, setupStore: StoreSetup) {
  describe(`batch deletion (${storeName} store)`, async () => {
    const temp = await makeTempDir();
    let store: Awaited<ReturnType<StoreSetup>> | undefined;
    let tier: InProcessWebTier;
    let runtime: Runtime;
    let url: string;
    before(async () => {
      store = await setupStore();
      // A short deadline makes the grace period before an orphan result is removed short.
      tier = await startInProcessWebTier(temp.dir, [...store.flags, '--deadline', '1', '--monitor-check', '0.1']);
      ({ runtime, url } = tier);
    });
    after(async () => {
      await tier?.stop();
      await store?.stop();
      await temp.cleanup();
    });

    const upload = async (names: string[], query = '') => {
      const form = new FormData();
      for (const name of names) form.append('images', new Blob([tench]), name);
      const response = await fetch(`${url}/api/images${query}`, { method: 'POST', body: form });
      assert.equal(response.status, 202);
      return (await response.json()) as { batchId: string; images: { id: string }[] };
    };
    /** Plays a worker: stores the image's result and announces it. */
    const finish = async (imageId: string, batchId: string, result: Partial<ImageResult> = {}) => {
      const stored = {
        status: 'ok', imageId, batchId, name: 'x.jpg', attempts: 1, instanceId: 'i-test',
        label: 'tench', probability: 0.9, top5: [{ label: 'tench', probability: 0.9 }], durationMs: 5, finishedAt: Date.now(), ...result,
      } as ImageResult;
      await runtime.store.put(runtime.config.outputBucket, resultKey(imageId), Buffer.from(JSON.stringify(stored)));
      await runtime.queues.output.send(JSON.stringify({ type: 'result', result: stored }));
    };
    const remove = (batchId: string, query = '', headers: Record<string, string> = {}) => fetch(`${url}/api/batches/${batchId}${query}`, { method: 'DELETE', headers });
    const batchStatus = async (batchId: string) => (await fetch(`${url}/api/batches/${batchId}`)).status;

    it('deletes a finished batch: 204, then 404 everywhere, and nothing of it is left in the buckets', async () => {
      const doomed = await upload(['a.jpg', 'b.jpg']);
      const kept = await upload(['c.jpg']);
      await drainQueue(runtime.queues.launch);
      for (const batch of [doomed, kept]) for (const image of batch.images) await finish(image.id, batch.batchId);
      await waitFor('both batches finished', async () => {
        const answers = await Promise.all([doomed, kept].map(async (batch) => (await (await fetch(`${url}/api/batches/${batch.batchId}`)).json()) as { done: number; total: number }));
        return answers.every((answer) => answer.done === answer.total);
      });
      // A retry the monitor claimed for one of them.
      await runtime.store.put(runtime.config.outputBucket, attemptKey(doomed.images[0]!.id, 2), Buffer.from('{}'));
      const doomedIds = [doomed.batchId, ...doomed.images.map((image) => image.id)];
      assert.ok((await keysMentioning(runtime, doomedIds)).length >= 6, 'images, manifest, results and a retry claim are stored');

      const response = await remove(doomed.batchId);
      assert.equal(response.status, 204);
      assert.equal(await response.text(), '');
      assert.equal(await batchStatus(doomed.batchId), 404);
      for (const image of doomed.images) {
        assert.equal((await fetch(`${url}/api/images/${image.id}`)).status, 404);
        assert.equal((await fetch(`${url}/api/images/${image.id}/input`)).status, 404);
      }
      assert.deepEqual(await keysMentioning(runtime, doomedIds), []);
      assert.deepEqual(await keysMentioning(runtime, ['pending/', 'deleting/']), []);
      assert.equal((await remove(doomed.batchId)).status, 404, 'a second delete finds nothing');
      // The other batch is untouched.
      const other = (await (await fetch(`${url}/api/batches/${kept.batchId}`)).json()) as { done: number };
      assert.equal(other.done, 1);
      assert.equal((await fetch(`${url}/api/images/${kept.images[0]!.id}/input`)).status, 200);
    });

    it('refuses (409) while images wait unless forced; a late result for a deleted image is not brought back and its result object is removed', async () => {
      const batch = await upload(['late.jpg']);
      const refused = await remove(batch.batchId);
      assert.equal(refused.status, 409);
      const body = (await refused.json()) as { error: string; waiting: number };
      assert.equal(body.waiting, 1);
      assert.match(body.error, /still waiting.*force=true/);
      assert.equal(await batchStatus(batch.batchId), 200, 'a refused delete changes nothing');
      assert.equal((await remove(batch.batchId, '?force=true')).status, 204);

      // The launch message was still queued: a worker takes it and finds the image gone.
      const [launch] = (await drainQueue(runtime.queues.launch)).map(parseLaunchMessage);
      assert.equal(launch?.imageId, batch.images[0]!.id);
      assert.equal(await runtime.store.get(runtime.config.inputBucket, launch.key), null);
      await finish(launch.imageId, launch.batchId, { status: 'error', error: 'the stored image is missing from the input bucket' } as Partial<ImageResult>);
      await waitFor('the output phase to take the result', async () => (await runtime.queues.output.counts()).inFlight === 1);
      assert.equal(await batchStatus(batch.batchId), 404, 'the result does not bring the batch back');
      assert.equal((await fetch(`${url}/api/images/${launch.imageId}`)).status, 404);
      await waitFor('the orphan result to be removed and its message deleted', async () => {
        const counts = await runtime.queues.output.counts();
        const result = await runtime.store.head(runtime.config.outputBucket, resultKey(launch.imageId));
        return result === null && counts.visible + counts.inFlight === 0;
      }, { timeoutMs: 20_000 });
      assert.deepEqual(await keysMentioning(runtime, [batch.batchId, launch.imageId]), []);
      assert.equal(await batchStatus(batch.batchId), 404);
    });

    it('refuses while an upload into the batch runs; forced, the upload finds the batch deleted and keeps nothing', async () => {
      const batch = await upload(['first.jpg']);
      await drainQueue(runtime.queues.launch);
      await finish(batch.images[0]!.id, batch.batchId);
      await waitFor('the result', async () => ((await (await fetch(`${url}/api/batches/${batch.batchId}`)).json()) as { done: number }).done === 1);
      // An upload into the batch that has sent its first file and then stalls.
      const boundary = 'stalledboundary';
      const head = Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="images"; filename="second.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`);
      const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
      const { port } = new URL(url);
      const request = http.request({ host: '127.0.0.1', port, method: 'POST', path: `/api/images?batch=${batch.batchId}`, headers: { 'content-type': `multipart/form-data; boundary=${boundary}`, 'content-length': head.length + tench.length + tail.length } });
      const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
        request.on('response', (response) => {
          let body = '';
          response.on('data', (chunk: Buffer) => (body += chunk.toString()));
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
        });
        request.on('error', reject);
      });
      request.write(head);
      request.write(tench.subarray(0, 1000));
      await waitFor('the upload to be under way', async () => (await tier.web.index.summary(batch.batchId))?.uploading === 1);
      const busy = await waitFor('the delete to see the upload', async () => {
        const response = await remove(batch.batchId);
        return response.status === 409 ? ((await response.json()) as { uploading: number }) : undefined;
      });
      assert.equal(busy.uploading, 1);
      assert.equal((await remove(batch.batchId, '?force=true')).status, 204);
      request.end(Buffer.concat([tench.subarray(1000), tail]));
      const { status, body } = await answer;
      assert.equal(status, 404, body);
      assert.match(body, /deleted/);
      assert.deepEqual(await keysMentioning(runtime, [batch.batchId]), []);
      assert.equal(await batchStatus(batch.batchId), 404);
      assert.deepEqual(await drainQueue(runtime.queues.launch), [], 'nothing was queued for it');
    });

    it('tells event-stream clients of the batch and lets them go', async () => {
      const batch = await upload(['watched.jpg']);
      await drainQueue(runtime.queues.launch);
      await finish(batch.images[0]!.id, batch.batchId);
      await waitFor('the result', async () => ((await (await fetch(`${url}/api/batches/${batch.batchId}`)).json()) as { done: number }).done === 1);
      const response = await fetch(`${url}/api/events?batch=${batch.batchId}`);
      const events: string[] = [];
      const reading = (async () => {
        for await (const event of serverSentEvents(response.body!)) events.push(event.event);
      })();
      await waitFor('the hello', () => events.includes('hello'));
      assert.equal((await remove(batch.batchId)).status, 204);
      await reading; // The stream ends.
      assert.equal(events.at(-1), 'deleted');
      assert.equal(tier.web.server.hub.clientCount, 0);
    });

    it('answers 404 for unknown or malformed ids and 400 for a malformed force, touching nothing', async () => {
      const batch = await upload(['safe.jpg']);
      await drainQueue(runtime.queues.launch);
      for (const id of ['AAAAAAAAAAAAAAAA', '..', '%2e%2e', 'a%2Fb', '%00', batch.batchId.slice(0, 8), `${batch.batchId}%2F..`, 'x'.repeat(300)]) {
        const response = await remove(id);
        // Ids longer than the router takes are refused before any route runs.
        assert.equal(response.status, id.length > 100 ? 414 : 404, id);
        assert.equal(typeof ((await response.json()) as { error: unknown }).error, 'string');
      }
      for (const force of ['yes', 'TRUE', '1', '', 'true&force=false']) {
        const response = await remove(batch.batchId, `?force=${force}`);
        assert.equal(response.status, 400, force);
      }
      assert.equal(await batchStatus(batch.batchId), 200);
      assert.equal((await remove(batch.batchId, '?force=true')).status, 204);
    });

    it('finishes a deletion that failed midway when asked again, without force', async () => {
      // What a deletion that failed after removing the results leaves: a marker, a manifest
      // and images, whose images now look as if they still waited for a result.
      const batchId = 'FAILEDDELETEBTCH';
      const manifest: BatchManifest = { batchId, createdAt: Date.now(), images: [], launched: true };
      for (const imageId of ['failed-one', 'failed-two']) {
        const key = inputKey(batchId, imageId);
        await runtime.store.put(runtime.config.inputBucket, key, tench, { contentType: 'image/jpeg' });
        manifest.images.push({ imageId, name: `${imageId}.jpg`, key, size: tench.length, contentType: 'image/jpeg' });
      }
      await runtime.store.put(runtime.config.inputBucket, batchManifestKey(batchId, 'upload1'), Buffer.from(JSON.stringify(manifest)));
      await runtime.store.put(runtime.config.inputBucket, `deleting/${batchId}`, Buffer.from('{}'));
      assert.equal((await remove(batchId)).status, 204);
      assert.deepEqual(await keysMentioning(runtime, [batchId, 'failed-one', 'failed-two']), []);
    });

    it('a web tier that starts finishes a deletion that a previous one started', async () => {
      const batchId = 'HALFDELETEDBATCH';
      const manifest: BatchManifest = { batchId, createdAt: Date.now(), images: [], launched: true };
      for (const imageId of ['half-one', 'half-two']) {
        const key = inputKey(batchId, imageId);
        await runtime.store.put(runtime.config.inputBucket, key, tench, { contentType: 'image/jpeg' });
        manifest.images.push({ imageId, name: `${imageId}.jpg`, key, size: tench.length, contentType: 'image/jpeg' });
      }
      await runtime.store.put(runtime.config.inputBucket, batchManifestKey(batchId, 'upload1'), Buffer.from(JSON.stringify(manifest)));
      await finish('half-one', batchId);
      // The deletion had stored its marker and deleted one image when the process died.
      await runtime.store.put(runtime.config.inputBucket, `deleting/${batchId}`, Buffer.from('{}'));
      await runtime.store.delete(runtime.config.inputBucket, inputKey(batchId, 'half-two'));
      await waitFor('the output queue to settle', async () => {
        const counts = await runtime.queues.output.counts();
        return counts.visible + counts.inFlight === 0;
      });

      const { log, entries } = capturingLogger();
      const second = await startWebTier(runtime, log);
      try {
        assert.deepEqual(await keysMentioning(runtime, [batchId, 'half-one', 'half-two']), []);
        assert.equal(logged(entries, { msg: 'finished deleting a batch a previous web tier had started', batchId }).length, 1, showLog(entries));
        assert.equal((await fetch(`${second.url}/api/batches/${batchId}`)).status, 404);
      } finally {
        await second.stop();
      }
    });
  });
}

deletionSuite('file', async () => ({ flags: [], stop: async () => {} }));
deletionSuite('S3', startLocalS3);

describe('batch deletion with API keys', async () => {
  const temp = await makeTempDir();
  const key = 'delete-key-0123456789';
  let tier: InProcessWebTier;
  before(async () => {
    tier = await startInProcessWebTier(temp.dir, ['--api-keys', key]);
  });
  after(async () => {
    await tier?.stop();
    await temp.cleanup();
  });

  it('requires a key, as every API route does', async () => {
    const form = new FormData();
    form.append('images', new Blob([tench]), 'k.jpg');
    const uploaded = await fetch(`${tier.url}/api/images`, { method: 'POST', body: form, headers: { authorization: `Bearer ${key}` } });
    const { batchId } = (await uploaded.json()) as { batchId: string };
    for (const headers of [{}, { authorization: 'Bearer wrong' }] as Record<string, string>[]) {
      const response = await fetch(`${tier.url}/api/batches/${batchId}?force=true`, { method: 'DELETE', headers });
      assert.equal(response.status, 401);
    }
    // Not even with the key in the query string.
    assert.equal((await fetch(`${tier.url}/api/batches/${batchId}?force=true&key=${key}`, { method: 'DELETE' })).status, 401);
    assert.equal((await fetch(`${tier.url}/api/batches/${batchId}`, { headers: { authorization: `Bearer ${key}` } })).status, 200);
    assert.equal((await fetch(`${tier.url}/api/batches/${batchId}?force=true`, { method: 'DELETE', headers: { 'x-api-key': key } })).status, 204);
  });
});
