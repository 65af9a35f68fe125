/**
 * The web tier reads batches when they are asked for, not all at start, and keeps a
 * bounded number of images in memory: least recently used finished batches are dropped,
 * batches with images still waiting or with event-stream clients are kept.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from '../../src/config.js';
import { batchManifestKey, inputKey, parseLaunchMessage, resultKey, type BatchManifest, type ImageResult } from '../../src/messages.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { startWebTier, type WebTier } from '../../src/web/index.js';
import { drainQueue, makeTempDir, recording, serverSentEvents, sharedImagesDir, waitFor } from '../helpers.js';

const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));

describe('lazy batch index', async () => {
  const temp = await makeTempDir();
  let runtime: Runtime;
  let web: WebTier;
  const calls: string[] = [];

  const start = async (flags: string[] = []) => {
    const { config } = loadConfig({ argv: ['--host', '127.0.0.1', '--port', '0', '--data', temp.dir, ...flags], env: {} });
    runtime = await openRuntime(config);
    runtime.store = recording(runtime.store, calls);
    web = await startWebTier(runtime);
  };
  const stop = async () => {
    await web.stop();
    await runtime.close();
  };
  before(() => start());
  after(async () => {
    await stop();
    await temp.cleanup();
  });

  const upload = async (count: number) => {
    const form = new FormData();
    for (let i = 0; i < count; i++) form.append('images', new Blob([tench]), `${i}.jpg`);
    const response = await fetch(`${web.url}/api/images`, { method: 'POST', body: form });
    assert.equal(response.status, 202);
    return (await response.json()) as { batchId: string; images: { id: string }[] };
  };
  const finish = async (imageId: string, batchId: string, label = 'tench') => {
    const result: ImageResult = {
      status: 'ok', imageId, batchId, name: 'x.jpg', attempts: 1, instanceId: 'i-test',
      label, probability: 0.9, top5: [{ label, probability: 0.9 }], durationMs: 5, finishedAt: Date.now(),
    };
    await runtime.store.put(runtime.config.outputBucket, resultKey(imageId), Buffer.from(JSON.stringify(result)));
    await runtime.queues.output.send(JSON.stringify({ type: 'result', result }));
  };
  const batchOf = async (batchId: string) => {
    const response = await fetch(`${web.url}/api/batches/${batchId}`);
    return { status: response.status, body: (await response.json()) as { done: number; total: number; images: { id: string; status: string }[] } };
  };
  const settled = () => waitFor('the output queue to be empty', async () => {
    const counts = await runtime.queues.output.counts();
    return counts.visible + counts.inFlight === 0;
  });

  let finished: { batchId: string; images: { id: string }[] }[] = [];
  let waiting: { batchId: string; images: { id: string }[] };

  it('reads no manifest and no result at start, only the markers of unfinished work', async () => {
    finished = [await upload(2), await upload(2), await upload(1)];
    waiting = await upload(1);
    await drainQueue(runtime.queues.launch);
    for (const batch of finished) for (const image of batch.images) await finish(image.id, batch.batchId);
    await settled();
    // An upload that died after storing its manifest, before sending its launch message,
    // as an earlier version wrote it (marked `launched: false`).
    const interrupted: BatchManifest = { batchId: 'INTERRUPTEDBATCH', createdAt: Date.now(), launched: false, images: [{ imageId: 'interrupted-image', name: 'i.jpg', key: inputKey('INTERRUPTEDBATCH', 'interrupted-image'), size: tench.length, contentType: 'image/jpeg' }] };
    await runtime.store.put(runtime.config.inputBucket, interrupted.images[0]!.key, tench);
    await runtime.store.put(runtime.config.inputBucket, 'pending/INTERRUPTEDBATCH/upload1', Buffer.alloc(0));
    await runtime.store.put(runtime.config.inputBucket, batchManifestKey('INTERRUPTEDBATCH', 'upload1'), Buffer.from(JSON.stringify(interrupted)));
    await stop();

    calls.length = 0;
    await start();
    const lists = calls.filter((call) => call.startsWith('list ') && !call.includes('INTERRUPTEDBATCH')).sort();
    assert.deepEqual(lists, ['list deleting/', 'list pending/'], calls.join('\n'));
    const reads = calls.filter((call) => call.startsWith('get '));
    // Only the interrupted upload's manifest (and its batch, to see which images are done).
    assert.ok(reads.every((call) => call.includes('INTERRUPTEDBATCH') || call.includes('interrupted-image')), reads.join('\n'));
    assert.deepEqual((await drainQueue(runtime.queues.launch)).map((body) => parseLaunchMessage(body).imageId), ['interrupted-image']);
    assert.deepEqual(web.index.size(), { batches: 1, images: 1 });
  });

  it('reads a batch the first time the API, the status, the event stream or an output message asks for it', async () => {
    const [first, second, third] = finished;
    assert.equal(web.index.batch(first!.batchId), undefined, 'not read yet');
    const answer = await batchOf(first!.batchId);
    assert.equal(answer.status, 200);
    assert.deepEqual([answer.body.total, answer.body.done], [2, 2]);

    // An image is found through its result, which names its batch.
    const image = await fetch(`${web.url}/api/images/${second!.images[1]!.id}`);
    assert.equal(image.status, 200);
    assert.equal(((await image.json()) as { status: string }).status, 'done');
    assert.ok(web.index.batch(second!.batchId));

    await fetch(`${web.url}/api/status?batch=${third!.batchId}`);
    assert.ok(web.index.batch(third!.batchId));

    // The batch still waiting: its result arrives while an event stream follows it.
    const controller = new AbortController();
    const stream = await fetch(`${web.url}/api/events?batch=${waiting.batchId}`, { signal: controller.signal });
    assert.equal(web.index.batch(waiting.batchId)?.total, 1, 'read before the stream starts');
    const events: { event: string; data: string }[] = [];
    let streamFailure: unknown;
    const reading = (async () => {
      try {
        for await (const event of serverSentEvents(stream.body!)) events.push(event);
      } catch (error) {
        // Aborted below; anything else is what the wait reports.
        if (!controller.signal.aborted) streamFailure = error;
      }
    })();
    await finish(waiting.images[0]!.id, waiting.batchId);
    await waitFor('the result on the stream', () => {
      if (streamFailure) throw streamFailure;
      return events.some((event) => event.event === 'image' && (JSON.parse(event.data) as { status: string }).status === 'done');
    });
    controller.abort();
    await reading;

    // A progress note for an image of a batch nobody asked for reads that batch.
    const fresh = await upload(1);
    await drainQueue(runtime.queues.launch);
    await stop();
    await start();
    await runtime.queues.output.send(JSON.stringify({ type: 'progress', imageId: fresh.images[0]!.id, batchId: fresh.batchId, instanceId: 'i-7', attempt: 1, at: Date.now() }));
    await waitFor('the batch to be read for the note', () => web.index.image(fresh.images[0]!.id)?.status === 'processing');
    await finish(fresh.images[0]!.id, fresh.batchId);
    await waitFor('the result', async () => (await batchOf(fresh.batchId)).body.done === 1);
  });

  it('keeps at most the bound of images of finished batches, but never drops a batch with waiting images or event-stream clients', async () => {
    await stop();
    await start(['--max-loaded-images', '6']);
    const pending = await upload(2);
    const watched = finished[0]!;
    const controller = new AbortController();
    const stream = await fetch(`${web.url}/api/events?batch=${watched.batchId}`, { signal: controller.signal });
    assert.equal(stream.status, 200);
    const others: { batchId: string; images: { id: string }[] }[] = [];
    for (let i = 0; i < 6; i++) others.push(await upload(2));
    await drainQueue(runtime.queues.launch);
    for (const batch of others) for (const image of batch.images) await finish(image.id, batch.batchId);
    await settled();
    // Read every finished batch again, oldest first, so each is the most recent in turn.
    for (const batch of [...finished, ...others]) assert.equal((await batchOf(batch.batchId)).status, 200);

    const size = web.index.size();
    // Pinned: the waiting batch (2 images) and the watched one (2); they count towards the
    // bound, so one more batch of 2 fits.
    assert.ok(web.index.batch(pending.batchId), 'the batch with waiting images stays');
    assert.ok(web.index.batch(watched.batchId), 'the batch with a client stays');
    assert.ok(size.images <= 6, `the index holds ${size.images} images in ${size.batches} batches`);
    assert.ok(web.index.batch(others.at(-1)!.batchId), 'the most recently read batch stays');
    assert.equal(web.index.batch(others[0]!.batchId), undefined, 'the least recently read batch is dropped');

    // A dropped batch is read again when asked, whole and right.
    const again = await batchOf(others[0]!.batchId);
    assert.deepEqual([again.status, again.body.total, again.body.done], [200, 2, 2]);
    // The waiting batch still gets its results, and its stream would see them.
    for (const image of pending.images) await finish(image.id, pending.batchId);
    await waitFor('the waiting batch to finish', async () => (await batchOf(pending.batchId)).body.done === 2);
    controller.abort();
    await waitFor('the stream to close', () => web.server.hub.clientCount === 0);
    assert.ok(web.index.size().images <= 6, `after the last pin goes: ${JSON.stringify(web.index.size())}`);
    const metrics = await (await fetch(`${web.url}/metrics`)).text();
    assert.match(metrics, /icaas_loaded_batches \d+/);
  });
});
