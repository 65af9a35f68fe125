/**
 * The web tier's own event stream, read by the spec's parser: every frame it writes is one a
 * browser's EventSource reads as intended (no field it would ignore or misread), and its
 * ids, retry and comments are what a reconnecting client needs.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { resultKey, type ImageResult } from '../../src/messages.js';
import { drainQueue, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';
import { parseServerSentEvents, serverSentEvents, type ParsedStream } from '../sse.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';

interface Read extends ParsedStream {
  raw: string;
}

/** Reads a stream until `enough` holds for the events so far; fails when it does not within the time. */
async function readEvents(url: string, headers: Record<string, string>, enough: (read: Read) => boolean, timeoutMs = 10_000): Promise<Read> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error(`the stream did not deliver what was awaited within ${timeoutMs} ms`)), timeoutMs);
  const read: Read = { events: [], retries: [], comments: [], raw: '' };
  try {
    const response = await fetch(url, { headers, signal: controller.signal });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'text/event-stream; charset=utf-8');
    const decoder = new TextDecoder();
    async function* keepingText(): AsyncGenerator<Uint8Array> {
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        read.raw += decoder.decode(chunk, { stream: true });
        yield chunk;
      }
    }
    for await (const event of serverSentEvents(keepingText(), { onRetry: (ms) => read.retries.push(ms), onComment: (text) => read.comments.push(text) })) {
      read.events.push(event);
      if (enough(read)) break;
    }
    assert.ok(enough(read), `the stream ended before what was awaited: ${read.raw}`);
    return read;
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
}

describe('the event stream, as EventSource reads it', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  let tier: InProcessWebTier;
  before(async () => {
    temp = await makeTempDir();
    tier = await startInProcessWebTier(temp.dir);
  });
  after(async () => {
    await tier?.stop();
    await temp?.cleanup();
  });

  it('hello, image, status and reset frames parse whole, with ids a reconnect can resume from', async () => {
    const form = new FormData();
    form.append('images', new Blob([await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'))]), 'stream.jpg');
    const upload = (await (await fetch(`${tier.url}/api/images`, { method: 'POST', body: form })).json()) as { batchId: string; images: { id: string }[] };
    await drainQueue(tier.runtime.queues.launch);
    const events = `${tier.url}/api/events?batch=${upload.batchId}`;

    const first = await readEvents(events, {}, ({ events }) => events.some((event) => event.event === 'hello'));
    assert.deepEqual(first.retries, [1000], 'the stream sets the reconnection delay');
    assert.ok(first.comments.includes('connected'), `comments: ${JSON.stringify(first.comments)}`);
    const hello = first.events.find((event) => event.event === 'hello')!;
    assert.match(hello.id ?? '', /^[0-9a-f]+:\d+$/);
    const { epoch } = JSON.parse(hello.data) as { epoch: string };
    assert.equal(hello.id!.split(':')[0], epoch);

    // The image's result, then a reconnect from the hello: the result is replayed with its own id.
    const imageId = upload.images[0]!.id;
    const result: ImageResult = {
      status: 'ok', imageId, batchId: upload.batchId, name: 'stream.jpg', attempts: 1, instanceId: 'i-test',
      label: 'tench', probability: 0.9, top5: [{ label: 'tench', probability: 0.9 }], durationMs: 5, finishedAt: Date.now(),
    };
    await tier.runtime.store.put(tier.runtime.config.outputBucket, resultKey(imageId), Buffer.from(JSON.stringify(result)));
    await tier.runtime.queues.output.send(JSON.stringify({ type: 'result', result }));
    await waitFor('the result to be recorded', () => tier.web.index.image(imageId)?.status === 'done');
    const resumed = await readEvents(events, { 'last-event-id': hello.id! }, ({ events }) =>
      events.some((event) => event.event === 'image') && events.some((event) => event.event === 'status'), 20_000);
    const images = resumed.events.filter((event) => event.event === 'image');
    assert.equal(images.length, 1, 'the missed result is replayed once');
    assert.match(images[0]!.id ?? '', new RegExp(`^${epoch}:\\d+$`));
    assert.equal(Number(images[0]!.id!.split(':')[1]) > Number(hello.id!.split(':')[1]), true, 'the image id comes after the hello');
    const image = JSON.parse(images[0]!.data) as { id: string; status: string };
    assert.deepEqual([image.id, image.status], [imageId, 'done']);
    const status = resumed.events.find((event) => event.event === 'status')!;
    assert.equal(status.id, undefined, 'a status event moves no resume point');
    assert.equal(typeof JSON.parse(status.data), 'object');

    // An id of another process gets a reset that carries an id of this one.
    const reset = await readEvents(events, { 'last-event-id': 'abcdef01:3' }, ({ events }) => events.some((event) => event.event === 'reset'));
    const resetEvent = reset.events.find((event) => event.event === 'reset')!;
    assert.equal(resetEvent.id!.split(':')[0], epoch);
    assert.equal(typeof (JSON.parse(resetEvent.data) as { reason: string }).reason, 'string');

    // Read whole, the text gives the same events as read chunk by chunk.
    for (const read of [first, resumed, reset]) {
      const whole = parseServerSentEvents(read.raw);
      assert.deepEqual(whole.events.slice(0, read.events.length), read.events);
      for (const event of whole.events) assert.doesNotThrow(() => JSON.parse(event.data), `${event.event} data is JSON: ${event.data}`);
    }
  });
});
