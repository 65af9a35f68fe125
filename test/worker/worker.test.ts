/**
 * The instance loop in-process, on the real embedded adapters and the real classifier.
 */
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadClassifier } from '../../src/classifier/index.js';
import type { Classifier } from '../../src/classifier/port.js';
import { ProcessCompute } from '../../src/compute/process.js';
import { monitorTick, type MonitorOptions } from '../../src/controller/monitor.js';
import { inputKey, parseImageResult, parseMonitorNotice, parseOutputMessage, resultKey, type ImageResult, type LaunchMessage, type MonitorNotice } from '../../src/messages.js';
import { attemptKey } from '../../src/outcomes.js';
import type { Queue } from '../../src/queue/port.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { runWorker, type WorkerOptions } from '../../src/worker/worker.js';
import { resetWallClock, stepWallClock } from '../clock-step.js';
import { drainQueue as drain, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';
import { startInProcessWebTier } from '../web/in-process.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

describe('worker instance loop', async () => {
  const temp = await makeTempDir();
  const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
  const brambling = await readFile(path.join(sharedImagesDir, 'n01530575_brambling.JPEG'));
  let classifier: Classifier;
  let store: FsObjectStore;
  let provider: SqliteQueueProvider;
  let compute: ProcessCompute;
  let queues: { launch: Queue; monitor: Queue; output: Queue };
  let run = 0;
  let dir: string;

  before(async () => {
    classifier = (await loadClassifier({ allowDownload: false })).classifier;
  });
  beforeEach(async () => {
    resetWallClock();
    dir = path.join(temp.dir, String(++run));
    store = new FsObjectStore(path.join(dir, 'buckets'));
    await store.ensureBucket('in-bucket');
    await store.ensureBucket('out-bucket');
    provider = new SqliteQueueProvider(path.join(dir, 'queues.db'));
    queues = { launch: provider.queue('launch'), monitor: provider.queue('monitor'), output: provider.queue('output') };
    compute = new ProcessCompute({ registryPath: path.join(dir, 'instances.db'), maxInstances: 5 });
  });
  after(async () => {
    resetWallClock();
    await classifier?.close();
    await temp.cleanup();
  });

  const options = (): WorkerOptions => ({
    instanceId: 'i-test', store, inputBucket: 'in-bucket', outputBucket: 'out-bucket', queues, compute, classifier, idleWaitSeconds: 0.3,
  });
  const enqueue = async (imageId: string, name: string, body: Buffer | null, attempt = 1) => {
    const key = inputKey('b1', imageId);
    if (body) await store.put('in-bucket', key, body, { contentType: 'image/jpeg' });
    const message: LaunchMessage = { type: 'launch', imageId, batchId: 'b1', name, key, attempt, queuedAt: Date.now() };
    await queues.launch.send(JSON.stringify(message));
  };

  it('classifies each image, notifies the monitor, stores and announces the result, then stops when idle', async () => {
    await enqueue('img1', 'brambling.jpg', brambling);
    await enqueue('img2', 'again.jpg', tench, 2);
    const summary = await runWorker(options());
    assert.deepEqual(summary, { processed: 2, reason: 'idle' });
    assert.deepEqual(await queues.launch.counts(), { visible: 0, inFlight: 0, delayed: 0 });
    const notices = (await drain(queues.monitor)).map(parseMonitorNotice);
    assert.deepEqual(notices.map((notice) => [notice.imageId, notice.attempt, notice.instanceId]), [['img1', 1, 'i-test'], ['img2', 2, 'i-test']]);
    const output = (await drain(queues.output)).map(parseOutputMessage);
    // Quick images get no progress note: their result follows within milliseconds.
    assert.deepEqual(output.map((message) => message.type), ['result', 'result']);
    const stored = parseImageResult((await store.get('out-bucket', resultKey('img1')))!.body.toString());
    assert.equal(stored.status, 'ok');
    assert.ok(stored.status === 'ok' && stored.label === 'brambling' && stored.top5.length === 5 && stored.instanceId === 'i-test');
    assert.equal(parseImageResult((await store.get('out-bucket', resultKey('img2')))!.body.toString()).attempts, 2);
  });

  it('skips an image that already has its final result (a duplicate delivery), announcing that result', async () => {
    await enqueue('dup', 'dup.jpg', tench);
    const existing = { status: 'error', imageId: 'dup', batchId: 'b1', name: 'dup.jpg', attempts: 3, error: 'earlier', finishedAt: 1 };
    await store.put('out-bucket', resultKey('dup'), Buffer.from(JSON.stringify(existing)));
    const summary = await runWorker(options());
    assert.equal(summary.processed, 0);
    assert.deepEqual(await drain(queues.monitor), []);
    assert.equal(parseImageResult((await store.get('out-bucket', resultKey('dup')))!.body.toString()).status, 'error');
    // Announced again: after a power cut this delivery may be all that is left of the image.
    assert.deepEqual((await drain(queues.output)).map(parseOutputMessage), [{ type: 'result', result: existing }]);
  });

  it('ends an undecodable or missing image as an error result without retrying it', async () => {
    await enqueue('bad', 'bad.jpg', Buffer.concat([tench.subarray(0, 3), Buffer.from('not really a jpeg')]));
    await enqueue('gone', 'gone.jpg', null);
    await runWorker(options());
    const bad = parseImageResult((await store.get('out-bucket', resultKey('bad')))!.body.toString());
    assert.ok(bad.status === 'error' && /could not be decoded/.test(bad.error), JSON.stringify(bad));
    const gone = parseImageResult((await store.get('out-bucket', resultKey('gone')))!.body.toString());
    assert.ok(gone.status === 'error' && /missing/.test(gone.error));
  });

  it('drops a malformed launch message and carries on', async () => {
    await queues.launch.send('{"type":"launch","imageId":42}');
    await enqueue('fine', 'fine.jpg', tench);
    const { log, entries } = capturingLogger();
    const summary = await runWorker({ ...options(), log });
    assert.equal(summary.processed, 1);
    assert.equal(logged(entries, { msg: 'malformed launch message dropped', level: 'warn' }).length, 1, showLog(entries));
    // The image that went through is logged with its ids as fields.
    assert.equal(logged(entries, { msg: 'image classified', imageId: 'fine', level: 'debug' }).length, 1, showLog(entries));
  });

  it('stops after the image in hand when asked, and gives back at once the message it took ahead', async () => {
    await enqueue('s1', 's1.jpg', tench);
    await enqueue('s2', 's2.jpg', tench);
    await enqueue('s3', 's3.jpg', tench);
    const stop = new AbortController();
    // Asked to stop once the first image has started (its notice is out) and the next one
    // has been taken ahead.
    const monitor = queues.monitor;
    const stopAfterNotice: Queue = Object.create(monitor, {
      send: { value: async (body: string) => monitor.send(body).finally(() => setImmediate(() => stop.abort())) },
    });
    const classify = classifier.classify.bind(classifier);
    const waitForAhead: Classifier = { ...classifier, classify: async (image, k) => {
      await waitFor('the next message to be taken ahead', async () => (await queues.launch.counts()).inFlight === 1 && stop.signal.aborted);
      return classify(image, k);
    } };
    const summary = await runWorker({ ...options(), classifier: waitForAhead, queues: { ...queues, monitor: stopAfterNotice }, signal: stop.signal });
    assert.deepEqual(summary, { processed: 1, reason: 'stopped' });
    // s2 was taken ahead but never started: visible again now, not when its timeout ends.
    assert.deepEqual(await queues.launch.counts(), { visible: 2, inFlight: 0, delayed: 0 });
    assert.deepEqual((await drain(queues.monitor)).map(parseMonitorNotice).map((notice) => notice.imageId), ['s1']);
    assert.ok(await store.head('out-bucket', resultKey('s1')), 'the image in hand was finished');
  });

  const monitorOptions = (overrides: Partial<MonitorOptions> = {}): MonitorOptions => ({
    store, outputBucket: 'out-bucket', queues, compute, deadlineSeconds: 1, checkSeconds: 0.2, maxAttempts: 3, ...overrides,
  });
  const resultsAnnounced = (messages: string[], imageId: string): ImageResult[] =>
    messages.map(parseOutputMessage).flatMap((m) => (m.type === 'result' && m.result.imageId === imageId ? [m.result] : []));

  it('a launch message delivered again after a crash between notice and delete gives one result and no extra attempt', async () => {
    await enqueue('dup', 'dup.jpg', tench);
    // The first worker sends its notice and dies before deleting the launch message.
    const [first] = await queues.launch.receive({ visibilityTimeoutSeconds: 0.3 });
    assert.ok(first);
    const notice: MonitorNotice = { type: 'monitor', imageId: 'dup', batchId: 'b1', name: 'dup.jpg', key: inputKey('b1', 'dup'), attempt: 1, instanceId: 'i-crashed', startedAt: Date.now() };
    await queues.monitor.send(JSON.stringify(notice));
    // The monitor finds the instance gone and sends attempt 2; attempt 1 comes back too.
    await waitFor('the monitor to retry', async () => (await monitorTick(monitorOptions(), 0.2)).retried === 1, { timeoutMs: 10_000 });
    await waitFor('both launch messages to be visible', async () => (await queues.launch.counts()).visible === 2, { timeoutMs: 5_000 });
    // Two workers take one each at the same moment.
    const slow = { ...options(), faults: { delayMs: 300 } };
    await Promise.all([runWorker({ ...slow, instanceId: 'i-a' }), runWorker({ ...slow, instanceId: 'i-b' })]);
    await waitFor('the monitor to settle', async () => {
      await monitorTick(monitorOptions(), 0.1);
      const counts = await queues.monitor.counts();
      return counts.visible + counts.inFlight + counts.delayed === 0;
    }, { timeoutMs: 15_000, intervalMs: 10 });

    const stored = parseImageResult((await store.get('out-bucket', resultKey('dup')))!.body.toString());
    assert.equal(stored.attempts, 2, 'the result is attempt 2\'s');
    const announced = resultsAnnounced(await drain(queues.output), 'dup');
    assert.ok(announced.length >= 1 && announced.every((result) => JSON.stringify(result) === JSON.stringify(stored)), `only the stored result is announced: ${JSON.stringify(announced)}`);
    assert.equal(await store.head('out-bucket', attemptKey('dup', 3)), null, 'no third attempt was claimed');
    assert.deepEqual(await drain(queues.launch), []);
  });

  it('a late ok after the error result leaves the error, in the bucket and in the API after a web-tier restart', async () => {
    const webDir = path.join(dir, 'web');
    let web = await startInProcessWebTier(webDir);
    try {
      const { store: webStore, queues: webQueues, compute: webCompute, config } = web.runtime;
      const form = new FormData();
      form.append('images', new Blob([tench]), 'late.jpg');
      const uploaded = (await (await fetch(`${web.url}/api/images`, { method: 'POST', body: form })).json()) as { images: { id: string }[] };
      const imageId = uploaded.images[0]!.id;
      // A worker that is slow with its only attempt: the monitor gives up on it first.
      const worker = runWorker({
        instanceId: 'i-late', store: webStore, inputBucket: config.inputBucket, outputBucket: config.outputBucket, queues: webQueues,
        compute: webCompute, classifier, idleWaitSeconds: 0.3, faults: { delayMs: 1_500 },
      });
      const monitor: MonitorOptions = { store: webStore, outputBucket: config.outputBucket, queues: webQueues, compute: webCompute, deadlineSeconds: 1, checkSeconds: 0.2, maxAttempts: 1 };
      await waitFor('the monitor to end the image as an error', async () => (await monitorTick(monitor, 0.2)).failed === 1, { timeoutMs: 10_000 });
      await worker;
      const stored = parseImageResult((await webStore.get(config.outputBucket, resultKey(imageId)))!.body.toString());
      assert.equal(stored.status, 'error', 'the late ok did not replace the error in the bucket');
      const shown = await waitFor('the API to show a final result', async () => {
        const image = (await (await fetch(`${web.url}/api/images/${imageId}`)).json()) as { status: string };
        return image.status === 'done' || image.status === 'error' ? image.status : null;
      });
      assert.equal(shown, 'error');
      await web.stop();
      web = await startInProcessWebTier(webDir);
      const afterRestart = (await (await fetch(`${web.url}/api/images/${imageId}`)).json()) as { status: string };
      assert.equal(afterRestart.status, 'error', 'a restarted web tier shows the same result');
    } finally {
      await web.stop();
    }
  });

  it('a wall clock stepped back 30 s during classification still gives a valid result', async () => {
    await enqueue('step', 'step.jpg', tench);
    const timer = setTimeout(() => stepWallClock(-30_000), 100);
    try {
      const summary = await runWorker({ ...options(), faults: { delayMs: 300 } });
      assert.equal(summary.processed, 1);
    } finally {
      clearTimeout(timer);
      resetWallClock();
    }
    const stored = parseImageResult((await store.get('out-bucket', resultKey('step')))!.body.toString());
    assert.ok(stored.status === 'ok' && stored.durationMs >= 0, JSON.stringify(stored));
    const announced = resultsAnnounced(await drain(queues.output), 'step');
    assert.equal(announced.length, 1, 'the result is announced');
  });
});
