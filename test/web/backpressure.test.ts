/**
 * Back-pressure: once the launch queue holds --max-queued images, uploads (and the
 * synchronous endpoint) get 429 with Retry-After, before their body is read, and store
 * nothing. In-process on the real embedded adapters.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Runtime } from '../../src/runtime.js';
import type { WebTier } from '../../src/web/index.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';
import { drainQueue, makeTempDir, sharedImagesDir } from '../helpers.js';

const MAX_QUEUED = 4;
const MAX_FILES = 6;

describe('back-pressure', async () => {
  const temp = await makeTempDir();
  let runtime: Runtime;
  let web: WebTier;
  let url: string;
  const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));

  let tier: InProcessWebTier | undefined;
  before(async () => {
    tier = await startInProcessWebTier(temp.dir, ['--max-queued', String(MAX_QUEUED), '--max-files', String(MAX_FILES), '--max-instances', '2']);
    ({ runtime, web, url } = tier);
  });
  after(async () => {
    await tier?.stop();
    await temp.cleanup();
  });

  const upload = async (count: number, extra = Buffer.alloc(0)) => {
    const form = new FormData();
    for (let i = 0; i < count; i++) form.append('images', new Blob([tench]), `${i}.jpg`);
    if (extra.length) form.append('padding', new Blob([extra]), 'padding.bin');
    const response = await fetch(`${url}/api/images`, { method: 'POST', body: form });
    return { status: response.status, retryAfter: response.headers.get('retry-after'), body: (await response.json()) as any };
  };
  const waiting = async () => {
    const counts = await runtime.queues.launch.counts();
    return counts.visible + counts.delayed;
  };
  const stored = async () => {
    let count = 0;
    for await (const _ of runtime.store.list(runtime.config.inputBucket, 'images/')) count++;
    return count;
  };

  it('accepts while the queue is under the limit; one request may take it past the limit by its own size', async () => {
    assert.equal((await upload(3)).status, 202);
    assert.equal(await waiting(), 3);
    // 3 < 4: still accepted, and the whole request goes in.
    const big = await upload(MAX_FILES);
    assert.equal(big.status, 202);
    assert.equal(await waiting(), 3 + MAX_FILES);
  });

  it('answers 429 with Retry-After once the queue is at the limit, storing nothing, even for a large body', async () => {
    const storedBefore = await stored();
    const refused = await upload(2);
    assert.equal(refused.status, 429);
    assert.match(refused.retryAfter ?? '', /^[1-9]\d*$/);
    assert.match(refused.body.error, new RegExp(`the launch queue holds ${3 + MAX_FILES} images, at its limit of ${MAX_QUEUED}; retry in ${refused.retryAfter}s`));
    // The answer comes before the body is read; a client still sending 8 MB hears it.
    const large = await upload(MAX_FILES, Buffer.alloc(8 * 1024 * 1024, 7));
    assert.equal(large.status, 429);
    // The synchronous endpoint is refused the same way.
    const form = new FormData();
    form.append('image', new Blob([tench]), 'sync.jpg');
    const sync = await fetch(`${url}/`, { method: 'POST', body: form });
    assert.equal(sync.status, 429);
    assert.ok(sync.headers.get('retry-after'));
    await sync.text();
    assert.equal(await stored(), storedBefore);
    assert.equal(await waiting(), 3 + MAX_FILES);
  });

  it('accepts again once the queue is below the limit', async () => {
    // Two received and kept in flight, as a worker holds them: they no longer count as waiting.
    const held = await runtime.queues.launch.receive({ maxMessages: 2, visibilityTimeoutSeconds: 60 });
    assert.equal(held.length, 2);
    const taken = await runtime.queues.launch.receive({ maxMessages: 3 + MAX_FILES - 2 - (MAX_QUEUED - 1) });
    for (const message of taken) await runtime.queues.launch.delete(message.receiptHandle);
    assert.equal(await waiting(), MAX_QUEUED - 1);
    assert.equal((await upload(1)).status, 202);
    assert.equal((await upload(1)).status, 429);
    for (const message of held) await runtime.queues.launch.delete(message.receiptHandle);
    await drainQueue(runtime.queues.launch);
  });

  it('bounds the overshoot of concurrent uploads by their number times the per-request file limit', async () => {
    await drainQueue(runtime.queues.launch);
    const answers = await Promise.all(Array.from({ length: 3 }, () => upload(MAX_FILES)));
    const accepted = answers.filter((answer) => answer.status === 202).length;
    assert.ok(answers.every((answer) => answer.status === 202 || answer.status === 429));
    assert.ok(accepted >= 1);
    assert.ok(await waiting() <= MAX_QUEUED - 1 + 3 * MAX_FILES);
    assert.equal(await waiting(), accepted * MAX_FILES);
    await drainQueue(runtime.queues.launch);
  });
});
