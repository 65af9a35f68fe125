/**
 * The web tier in-process on the real embedded adapters (file buckets, SQLite queues),
 * with the HTTP API exercised over a real socket.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseLaunchMessage, resultKey, type ImageResult } from '../../src/messages.js';
import type { Runtime } from '../../src/runtime.js';
import type { WebTier } from '../../src/web/index.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';
import { drainQueue, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';
import { parseServerSentEvents } from '../sse.js';

describe('HTTP API', async () => {
  const temp = await makeTempDir();
  let runtime: Runtime;
  let web: WebTier;
  let url: string;
  const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));

  let tier: InProcessWebTier | undefined;
  before(async () => {
    tier = await startInProcessWebTier(temp.dir, ['--max-files', '5', '--max-file-bytes', String(tench.length + 10)]);
    ({ runtime, web, url } = tier);
  });
  after(async () => {
    await tier?.stop();
    await temp.cleanup();
  });

  const upload = async (files: { name: string; body: Buffer; field?: string }[], query = '') => {
    const form = new FormData();
    for (const file of files) form.append(file.field ?? 'images', new Blob([file.body]), file.name);
    const response = await fetch(`${url}/api/images${query}`, { method: 'POST', body: form });
    return { status: response.status, headers: response.headers, body: (await response.json()) as any };
  };

  /** Plays the worker's part for one image: writes its result and announces it. */
  const finish = async (imageId: string, label: string) => {
    const image = web.index.image(imageId)!;
    const result: ImageResult = {
      status: 'ok', imageId, batchId: image.batchId, name: image.name, attempts: 1, instanceId: 'i-test',
      label, probability: 0.9, top5: [{ label, probability: 0.9 }], durationMs: 5, finishedAt: Date.now(),
    };
    await runtime.store.put(runtime.config.outputBucket, resultKey(imageId), Buffer.from(JSON.stringify(result)));
    await runtime.queues.output.send(JSON.stringify({ type: 'result', result }));
  };

  const drainLaunchQueue = () => drainQueue(runtime.queues.launch);

  it('accepts images under any field name, stores them and queues one launch message each', async () => {
    const { status, body } = await upload([
      { name: 'a.jpg', body: tench, field: 'first' },
      { name: 'b.jpg', body: tench, field: 'second' },
    ]);
    assert.equal(status, 202);
    assert.equal(typeof body.batchId, 'string');
    assert.deepEqual(body.images.map((image: any) => [image.name, image.status]), [['a.jpg', 'queued'], ['b.jpg', 'queued']]);
    assert.deepEqual(body.rejected, []);
    const launches = (await drainLaunchQueue()).map(parseLaunchMessage);
    assert.deepEqual(launches.map((launch) => launch.imageId).sort(), body.images.map((image: any) => image.id).sort());
    assert.ok(launches.every((launch) => launch.attempt === 1 && launch.batchId === body.batchId));
    const input = await fetch(`${url}/api/images/${body.images[0].id}/input`);
    assert.equal(input.headers.get('content-type'), 'image/jpeg');
    assert.deepEqual(Buffer.from(await input.arrayBuffer()), tench);
  });

  it('keeps folder paths in names and undoes the browser escaping of quotes', async () => {
    const { body } = await upload([{ name: 'trip/day 1/say %22cheese%22.jpg', body: tench }]);
    assert.equal(body.images[0].name, 'trip/day 1/say "cheese".jpg');
    await drainLaunchQueue();
  });

  it('reports batch and image state, with results recorded once', async () => {
    const { body } = await upload([{ name: 'x.jpg', body: tench }, { name: 'y.jpg', body: tench }]);
    await drainLaunchQueue();
    let batch = await (await fetch(`${url}/api/batches/${body.batchId}`)).json() as any;
    assert.deepEqual({ total: batch.total, done: batch.done, errors: batch.errors }, { total: 2, done: 0, errors: 0 });
    const [first, second] = body.images;
    await finish(first.id, 'tench');
    await finish(first.id, 'goldfish'); // a duplicate final result: ignored
    await finish(second.id, 'tench');
    batch = await waitFor('both results', async () => {
      const current = await (await fetch(`${url}/api/batches/${body.batchId}`)).json() as any;
      return current.done === 2 ? current : undefined;
    });
    const image = await (await fetch(`${url}/api/images/${first.id}`)).json() as any;
    assert.equal(image.status, 'done');
    assert.equal(image.result.label, 'tench');
    assert.equal(image.result.instanceId, 'i-test');
    assert.deepEqual(image.result.top5, [{ label: 'tench', probability: 0.9 }]);
    assert.equal((await fetch(`${url}/api/images/nope`)).status, 404);
    assert.equal((await fetch(`${url}/api/batches/nope`)).status, 404);
  });

  it('rejects bad files one by one with reasons, storing nothing for them', async () => {
    const { status, body } = await upload([
      { name: 'ok.jpg', body: tench },
      { name: 'text.jpg', body: Buffer.from('plain text pretending to be a JPEG') },
      { name: 'empty.png', body: Buffer.alloc(0) },
      { name: 'big.jpg', body: Buffer.concat([tench, Buffer.alloc(100)]) },
    ]);
    assert.equal(status, 202);
    assert.equal(body.images.length, 1);
    assert.deepEqual(body.rejected.map((rejection: any) => rejection.name), ['text.jpg', 'empty.png', 'big.jpg']);
    assert.match(body.rejected[0].reason, /not an image/);
    assert.match(body.rejected[1].reason, /empty/);
    assert.match(body.rejected[2].reason, /larger than/);
    const batchImages = [];
    for await (const object of runtime.store.list(runtime.config.inputBucket, `images/${body.batchId}/`)) batchImages.push(object.key);
    assert.equal(batchImages.length, 1);
    await drainLaunchQueue();
  });

  it('answers 400 when no file is accepted, and 413 over the file-count limit, leaving nothing behind', async () => {
    const none = await upload([{ name: 'a.txt', body: Buffer.from('hello') }]);
    assert.equal(none.status, 400);
    assert.equal(none.body.rejected.length, 1);
    const before: string[] = [];
    for await (const object of runtime.store.list(runtime.config.inputBucket)) before.push(object.key);
    const many = await upload(Array.from({ length: 6 }, (_, i) => ({ name: `${i}.jpg`, body: tench })));
    assert.equal(many.status, 413);
    assert.match(many.body.error, /at most 5/);
    const afterKeys: string[] = [];
    for await (const object of runtime.store.list(runtime.config.inputBucket)) afterKeys.push(object.key);
    assert.deepEqual(afterKeys, before);
    assert.deepEqual(await drainLaunchQueue(), []);
    const notMultipart = await fetch(`${url}/api/images`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(notMultipart.status, 415);
  });

  it('adds to an existing batch with ?batch=', async () => {
    const first = await upload([{ name: 'one.jpg', body: tench }]);
    const more = await upload([{ name: 'two.jpg', body: tench }], `?batch=${first.body.batchId}`);
    assert.equal(more.status, 202);
    assert.equal(more.body.batchId, first.body.batchId);
    const batch = await (await fetch(`${url}/api/batches/${first.body.batchId}`)).json() as any;
    assert.deepEqual(batch.images.map((image: any) => image.name), ['one.jpg', 'two.jpg']);
    assert.equal((await upload([{ name: 'x.jpg', body: tench }], '?batch=unknown')).status, 404);
    await drainLaunchQueue();
  });

  it('answers the synchronous endpoint with name:label, or JSON when asked', async () => {
    const post = (accept?: string) => {
      const form = new FormData();
      form.append('file', new Blob([tench]), 'test_0.JPEG');
      return fetch(`${url}/`, { method: 'POST', body: form, headers: accept ? { accept } : {} });
    };
    const pending = [post(), post('application/json')];
    await waitFor('two launch messages', async () => (await runtime.queues.launch.counts()).visible === 2);
    for (const body of await drainLaunchQueue()) await finish(parseLaunchMessage(body).imageId, 'tench');
    const [text, json] = await Promise.all(pending);
    assert.equal(text!.status, 200);
    assert.equal(text!.headers.get('content-type'), 'text/plain; charset=utf-8');
    assert.equal(await text!.text(), 'test_0:tench');
    assert.equal(json!.status, 200);
    const image = await json!.json() as any;
    assert.equal(image.result.label, 'tench');
  });

  it('serves status, health, metrics, security headers and JSON 404s', async () => {
    const status = await (await fetch(`${url}/api/status`)).json() as any;
    assert.equal(status.max, 20);
    for (const queue of ['launch', 'monitor', 'output']) assert.deepEqual(Object.keys(status.queues[queue]).sort(), ['delayed', 'inFlight', 'visible']);
    assert.ok(Array.isArray(status.instances));
    const health = await fetch(`${url}/healthz`);
    assert.equal(health.status, 200);
    assert.match(health.headers.get('content-security-policy') ?? '', /script-src 'self'/);
    assert.equal(health.headers.get('x-content-type-options'), 'nosniff');
    const metrics = await (await fetch(`${url}/metrics`)).text();
    assert.match(metrics, /icaas_queue_messages\{queue="launch",state="visible"\} \d+/);
    const missing = await fetch(`${url}/nope`);
    assert.equal(missing.status, 404);
    assert.match((await missing.json() as any).error, /no route/);
  });

  it('streams image events and replays what a reconnecting client missed', async () => {
    const { body } = await upload([{ name: 'live.jpg', body: tench }]);
    await drainLaunchQueue();
    const read = async (headers: Record<string, string>, until: (text: string) => boolean) => {
      const controller = new AbortController();
      const response = await fetch(`${url}/api/events?batch=${body.batchId}`, { headers, signal: controller.signal });
      assert.equal(response.headers.get('content-type'), 'text/event-stream; charset=utf-8');
      let text = '';
      const decoder = new TextDecoder();
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        text += decoder.decode(chunk, { stream: true });
        if (until(text)) break;
      }
      controller.abort();
      return text;
    };
    const hello = await read({}, (text) => parseServerSentEvents(text).events.some((event) => event.event === 'hello'));
    const startId = parseServerSentEvents(hello).events.find((event) => event.event === 'hello')!.id!;
    await finish(body.images[0].id, 'tench');
    await waitFor('the result to be recorded', () => web.index.image(body.images[0].id)?.status === 'done');
    const replay = await read({ 'last-event-id': startId }, (text) => text.includes('"status":"done"'));
    const images = parseServerSentEvents(replay).events.filter((event) => event.event === 'image');
    assert.equal(images.length, 1);
    assert.equal((JSON.parse(images[0]!.data) as { name: string }).name, 'live.jpg');
  });
});
