/**
 * The web tier's /metrics, in process on the real embedded adapters: uploads, rejections,
 * results as they arrive on the output queue, live-event clients and the shared gauges,
 * read back through the Prometheus text format.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseLaunchMessage, resultKey, type ImageResult, type LaunchMessage } from '../../src/messages.js';
import { REJECTION_REASONS } from '../../src/metrics.js';
import { drainQueue, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';
import { capturingLogger, logged } from '../log-capture.js';
import { scrape, type Exposition } from '../metrics-text.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';

describe('web tier metrics', async () => {
  const temp = await makeTempDir();
  const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
  let tier: InProcessWebTier;
  const capture = capturingLogger('debug');
  const metrics = () => scrape(`${tier.url}/metrics`);

  before(async () => {
    tier = await startInProcessWebTier(temp.dir, [], capture.log);
  });
  after(async () => {
    await tier?.stop();
    await temp.cleanup();
  });

  const upload = async (files: { name: string; body: Buffer }[]) => {
    const form = new FormData();
    for (const file of files) form.append('images', new Blob([file.body]), file.name);
    const response = await fetch(`${tier.url}/api/images`, { method: 'POST', body: form });
    return { status: response.status, body: (await response.json()) as { batchId: string; images: { id: string }[]; rejected: { reason: string }[] } };
  };

  /** Plays the worker's part: stores the result and announces it on the output queue. */
  const announce = async (launch: LaunchMessage, outcome: { durationMs: number } | { error: string }) => {
    const base = { imageId: launch.imageId, batchId: launch.batchId, name: launch.name, attempts: 1, finishedAt: Date.now() };
    const result: ImageResult = 'error' in outcome
      ? { status: 'error', ...base, error: outcome.error }
      : { status: 'ok', ...base, instanceId: 'i-test', label: 'tench', probability: 0.9, top5: [], durationMs: outcome.durationMs };
    await tier.runtime.store.put(tier.runtime.config.outputBucket, resultKey(launch.imageId), Buffer.from(JSON.stringify(result)));
    await tier.runtime.queues.output.send(JSON.stringify({ type: 'result', result }));
  };

  const delta = (after: Exposition, before: Exposition, name: string, labels?: Record<string, string>) => after.value(name, labels) - before.value(name, labels);

  it('counts accepted images and rejected files by reason, and shows the queue they wait in', async () => {
    const before = await metrics();
    const { status, body } = await upload([
      { name: 'a.jpg', body: tench },
      { name: 'notes.jpg', body: Buffer.from('this is text, not an image') },
      { name: 'b.jpg', body: tench },
      { name: 'empty.png', body: Buffer.alloc(0) },
      { name: 'c.jpg', body: tench },
      { name: 'truncated.jpg', body: tench.subarray(0, Math.floor(tench.length / 2)) },
    ]);
    assert.equal(status, 202, JSON.stringify(body));
    assert.equal(body.images.length, 3);
    assert.equal(body.rejected.length, 3);
    // A request whose only file is refused still counts the file, by its reason.
    assert.equal((await upload([{ name: 'notes.txt', body: Buffer.from('text') }])).status, 400);

    const after = await metrics();
    assert.equal(delta(after, before, 'icaas_images_accepted_total'), 3);
    const rejected = Object.fromEntries(REJECTION_REASONS.map((reason) => [reason, delta(after, before, 'icaas_images_rejected_total', { reason })]));
    assert.deepEqual(rejected, { empty: 1, not_an_image: 2, too_large: 0, too_many_pixels: 0, unreadable: 0, corrupt: 1 });
    // Every reason is exposed from the start, so a rate over it exists before the first rejection.
    assert.equal(after.all('icaas_images_rejected_total').length, REJECTION_REASONS.length);
    assert.equal(after.value('icaas_queue_messages', { queue: 'launch', state: 'visible' }), 3);
    assert.equal(after.value('icaas_images', { status: 'queued' }), 3);
    assert.equal(after.value('icaas_loaded_batches'), 1);
  });

  it('counts each result once as it arrives, with its classification time and its time since upload', async () => {
    const before = await metrics();
    const launches = (await drainQueue(tier.runtime.queues.launch)).map(parseLaunchMessage);
    assert.equal(launches.length, 3);
    const [first, second, third] = launches as [LaunchMessage, LaunchMessage, LaunchMessage];
    await announce(first, { durationMs: 250 });
    await announce(second, { durationMs: 500 });
    await announce(third, { error: 'the image could not be decoded' });
    // A duplicate announcement (a monitor re-announcing, or a second attempt's) counts nothing.
    await announce(first, { durationMs: 999 });
    await waitFor('the results to be recorded', () => tier.web.index.totals().queued === 0);
    await waitFor('the output queue to be drained', async () => {
      const counts = await tier.runtime.queues.output.counts();
      return counts.visible + counts.inFlight === 0;
    });

    const after = await metrics();
    assert.equal(delta(after, before, 'icaas_images_finished_total', { outcome: 'ok' }), 2);
    assert.equal(delta(after, before, 'icaas_images_finished_total', { outcome: 'error' }), 1);
    assert.equal(delta(after, before, 'icaas_classification_seconds_count'), 2);
    assert.ok(Math.abs(delta(after, before, 'icaas_classification_seconds_sum') - 0.75) < 1e-9, 'the classification times are the results\' own');
    assert.equal(after.value('icaas_classification_seconds_bucket', { le: '0.25' }) - before.value('icaas_classification_seconds_bucket', { le: '0.25' }), 1);
    assert.equal(delta(after, before, 'icaas_upload_to_result_seconds_count', { outcome: 'ok' }), 2);
    assert.equal(delta(after, before, 'icaas_upload_to_result_seconds_count', { outcome: 'error' }), 1);
    assert.ok(delta(after, before, 'icaas_upload_to_result_seconds_sum', { outcome: 'ok' }) > 0);
    assert.equal(after.value('icaas_images', { status: 'done' }), 2);
    assert.equal(after.value('icaas_images', { status: 'error' }), 1);
    // The log tells the first result from the repeat, like the counters.
    assert.equal(logged(capture.entries, { msg: 'result recorded', imageId: first.imageId }).length, 1);
    assert.equal(logged(capture.entries, { msg: 'repeated result ignored', imageId: first.imageId }).length, 1);
  });

  it('follows live-event clients: connected now, and connections in all', async () => {
    const before = await metrics();
    const batchId = (await upload([{ name: 'd.jpg', body: tench }])).body.batchId;
    const stream = new AbortController();
    const response = await fetch(`${tier.url}/api/events?batch=${batchId}`, { signal: stream.signal });
    assert.equal(response.status, 200);
    const during = await waitFor('the client to be counted', async () => {
      const now = await metrics();
      return now.value('icaas_event_clients') === 1 ? now : undefined;
    });
    assert.equal(delta(during, before, 'icaas_event_connections_total'), 1);
    stream.abort();
    const after = await waitFor('the client to be gone', async () => {
      const now = await metrics();
      return now.value('icaas_event_clients') === 0 ? now : undefined;
    });
    assert.equal(delta(after, before, 'icaas_event_connections_total'), 1, 'a counter keeps the connection that ended');
    assert.equal(after.value('icaas_event_slow_disconnects_total'), 0);
    assert.equal(after.types.get('icaas_event_buffered_bytes'), 'gauge');
  });

  it('has help on every metric, process metrics under the service prefix, and no label that names an image or batch', async () => {
    const exposition = await metrics();
    for (const name of ['icaas_process_cpu_user_seconds_total', 'icaas_process_resident_memory_bytes', 'icaas_nodejs_eventloop_lag_seconds']) {
      assert.ok(exposition.types.has(name), `${name} is exposed`);
    }
    const families = [...exposition.types.keys()];
    assert.ok(families.every((name) => name.startsWith('icaas_')), families.filter((name) => !name.startsWith('icaas_')).join(', '));
    const labelNames = new Set(exposition.samples.flatMap((sample) => Object.keys(sample.labels)));
    for (const name of labelNames) assert.ok(!/image|batch|instance|id$/i.test(name), `label ${name} would grow without bound`);
    // A web tier alone serves no controller metrics: a zero there would be a lie.
    assert.ok(!exposition.types.has('icaas_instance_launches_total'));
  });
});
