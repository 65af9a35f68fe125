/**
 * What the worker loop does per image, counted on the real embedded adapters (SQLite
 * queues, file store, process registry) wrapped in counting proxies, with the real
 * classifier: the writes it makes, what it does ahead while an image is classified, and
 * how it treats a message it took ahead.
 */
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadClassifier } from '../../src/classifier/index.js';
import type { Classifier } from '../../src/classifier/port.js';
import type { InstanceReport } from '../../src/compute/port.js';
import { ProcessCompute } from '../../src/compute/process.js';
import { inputKey, noticeDelaySeconds, parseMonitorNotice, parseOutputMessage, resultKey, type LaunchMessage } from '../../src/messages.js';
import type { Queue } from '../../src/queue/port.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { runWorker, PROGRESS_AFTER_MS, type WorkerOptions } from '../../src/worker/worker.js';
import { drainQueue as drain, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

/** Records every call of `target`'s methods as `name(args)`, then runs it unchanged. */
function counted<T extends object>(target: T, calls: { method: string; args: unknown[] }[], before?: (method: string, args: unknown[]) => Promise<void>): T {
  return new Proxy(target, {
    get(object, property, receiver) {
      const value = Reflect.get(object, property, receiver);
      if (typeof value !== 'function' || typeof property !== 'string') return value;
      return async (...args: unknown[]) => {
        calls.push({ method: property, args });
        if (before) await before(property, args);
        return (value as (...a: unknown[]) => unknown).apply(object, args);
      };
    },
  });
}

describe('worker loop, per image', async () => {
  const temp = await makeTempDir();
  const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
  let classifier: Classifier;
  let store: FsObjectStore;
  let provider: SqliteQueueProvider;
  let compute: ProcessCompute;
  let queues: { launch: Queue; monitor: Queue; output: Queue };
  let run = 0;

  before(async () => {
    classifier = (await loadClassifier({ allowDownload: false })).classifier;
  });
  beforeEach(async () => {
    const dir = path.join(temp.dir, String(++run));
    store = new FsObjectStore(path.join(dir, 'buckets'));
    await store.ensureBucket('in-bucket');
    await store.ensureBucket('out-bucket');
    provider = new SqliteQueueProvider(path.join(dir, 'queues.db'));
    queues = { launch: provider.queue('launch'), monitor: provider.queue('monitor'), output: provider.queue('output') };
    compute = new ProcessCompute({ registryPath: path.join(dir, 'instances.db'), maxInstances: 5 });
  });
  after(async () => {
    await classifier?.close();
    await temp.cleanup();
  });

  const options = (): WorkerOptions => ({
    instanceId: 'i-count', store, inputBucket: 'in-bucket', outputBucket: 'out-bucket', queues, compute, classifier, idleWaitSeconds: 0.3,
  });
  /** Image ids, each optionally with its attempt: 'p2@2'. */
  const enqueue = async (...images: string[]) => {
    for (const image of images) {
      const [imageId, attempt] = image.split('@') as [string, string | undefined];
      const key = inputKey('b1', imageId);
      await store.put('in-bucket', key, tench, { contentType: 'image/jpeg' });
      const message: LaunchMessage = { type: 'launch', imageId, batchId: 'b1', name: `${imageId}.jpg`, key, attempt: Number(attempt ?? 1), queuedAt: Date.now() };
      await queues.launch.send(JSON.stringify(message));
    }
  };

  it('makes one notice, one launch delete, one result message and one registry report per image; idle only when out of work, with the service time', async () => {
    await enqueue('c1', 'c2', 'c3', 'c4');
    const calls = { launch: [], monitor: [], output: [], compute: [] } as Record<'launch' | 'monitor' | 'output' | 'compute', { method: string; args: unknown[] }[]>;
    const summary = await runWorker({
      ...options(),
      queues: { launch: counted(queues.launch, calls.launch), monitor: counted(queues.monitor, calls.monitor), output: counted(queues.output, calls.output) },
      compute: counted(compute, calls.compute),
    });
    assert.deepEqual(summary, { processed: 4, reason: 'idle' });
    const named = (list: { method: string }[], method: string) => list.filter((call) => call.method === method).length;
    assert.equal(named(calls.monitor, 'send'), 4);
    assert.equal(named(calls.launch, 'delete'), 4);
    assert.equal(named(calls.output, 'send'), 4, 'results only: no progress notes for quick images');
    const reports = calls.compute.filter((call) => call.method === 'report').map((call) => call.args[1] as InstanceReport);
    assert.deepEqual(reports.map((report) => report.state === 'busy' ? `busy ${report.imageId}` : report.state), ['idle', 'busy c1', 'busy c2', 'busy c3', 'busy c4', 'idle']);
    const last = reports[reports.length - 1]!;
    assert.equal(last.processed, 4);
    assert.ok(typeof last.serviceMs === 'number' && last.serviceMs > 0, JSON.stringify(last));
    assert.deepEqual(await queues.launch.counts(), { visible: 0, inFlight: 0, delayed: 0 });
  });

  it('sends the monitor notice hidden for the monitor check interval, when asked', async () => {
    await enqueue('n1');
    let seenWhileClassifying: { visible: number; delayed: number } | undefined;
    const classify = classifier.classify.bind(classifier);
    const watching: Classifier = { ...classifier, classify: async (image, k) => {
      const counts = await queues.monitor.counts();
      seenWhileClassifying = { visible: counts.visible, delayed: counts.delayed };
      return classify(image, k);
    } };
    await runWorker({ ...options(), classifier: watching, noticeDelaySeconds: 2 });
    assert.deepEqual(seenWhileClassifying, { visible: 0, delayed: 1 });
    const notice = await waitFor('the notice to become visible', async () => (await queues.monitor.receive({ waitSeconds: 1 }))[0], { timeoutMs: 10_000 });
    assert.equal(parseMonitorNotice(notice.body).imageId, 'n1');
    await queues.monitor.delete(notice.receiptHandle);
    assert.equal(noticeDelaySeconds({ monitorCheckSeconds: 2.7 }), 2);
    assert.equal(noticeDelaySeconds({ monitorCheckSeconds: 0.5 }), 0);
    assert.equal(noticeDelaySeconds({ monitorCheckSeconds: 5000 }), 900, 'at most what SQS allows');
  });

  it('stores a result while the next first attempt is classified', async () => {
    await enqueue('f1', 'f2');
    let classifying = 0;
    const classify = classifier.classify.bind(classifier);
    const watching: Classifier = { ...classifier, classify: async (image, k) => {
      classifying++;
      return classify(image, k);
    } };
    // f1's result lands only once f2's classification has begun: a worker that waited for
    // the store before classifying f2 would never get there.
    const slowStore = counted(store, [], async (method, args) => {
      if (method === 'put' && args[1] === resultKey('f1')) await waitFor('the next image to be classified', () => classifying >= 2, { timeoutMs: 10_000 });
    });
    const summary = await runWorker({ ...options(), classifier: watching, store: slowStore });
    assert.equal(summary.processed, 2);
    assert.ok(await store.head('out-bucket', resultKey('f1')));
  });

  it('announces a result as soon as it is stored, while the next image is still being classified', async () => {
    await enqueue('a1', 'a2');
    const announced: string[] = [];
    const output = counted(queues.output, [], async (_method, args) => {
      const message = parseOutputMessage(args[0] as string);
      if (message.type === 'result') announced.push(message.result.imageId);
    });
    let calls = 0;
    const classify = classifier.classify.bind(classifier);
    // a2's classification goes on only once a1 is announced: a worker that announces a
    // result when it next looks, after the next image, never gets there.
    const watching: Classifier = { ...classifier, classify: async (image, k) => {
      if (++calls === 2) await waitFor('a1 to be announced while a2 is classified', () => announced.includes('a1'), { timeoutMs: 10_000 });
      return classify(image, k);
    } };
    const summary = await runWorker({ ...options(), classifier: watching, queues: { ...queues, output } });
    assert.equal(summary.processed, 2);
    assert.deepEqual(announced, ['a1', 'a2']);
  });

  it('classifies on while up to three results are being stored, and waits for the oldest before a fourth', async () => {
    await enqueue('d1', 'd2', 'd3', 'd4', 'd5');
    const events: string[] = [];
    let classified = 0;
    const classify = classifier.classify.bind(classifier);
    const watching: Classifier = { ...classifier, classify: async (image, k) => {
      events.push(`start #${events.filter((event) => event.startsWith('start')).length + 1}`);
      const predictions = await classify(image, k);
      classified++;
      return predictions;
    } };
    // No result is stored until four images are classified: a worker that waited for each
    // store before the next image would never get there.
    const slowStore = new Proxy(store, {
      get(object, property, receiver) {
        const value = Reflect.get(object, property, receiver);
        if (property !== 'put') return typeof value === 'function' ? value.bind(object) : value;
        return async (bucket: string, key: string, ...rest: unknown[]) => {
          if (bucket === 'out-bucket') await waitFor('four images to be classified', () => classified >= 4, { timeoutMs: 10_000 });
          const stored = await (value as (...a: unknown[]) => Promise<unknown>).call(object, bucket, key, ...rest);
          if (key === resultKey('d1')) events.push('stored d1');
          return stored;
        };
      },
    });
    const summary = await runWorker({ ...options(), classifier: watching, store: slowStore });
    assert.equal(summary.processed, 5);
    // d2-d4 were classified while d1's result was still being stored; d5 only after it was.
    assert.deepEqual(events, ['start #1', 'start #2', 'start #3', 'start #4', 'stored d1', 'start #5']);
    for (const id of ['d1', 'd2', 'd3', 'd4', 'd5']) assert.ok(await store.head('out-bucket', resultKey(id)), id);
  });

  it('takes the next message and reads its image while an image is classified; stores the result before a retried image is classified and announces it meanwhile', async () => {
    // p2 is a retry: it may be what brought a worker down before, so p1 must be safe first.
    await enqueue('p1', 'p2@2', 'p3');
    const classified: string[] = [];
    const inFlightAfter: number[] = [];
    const storedBefore: boolean[] = [];
    const classify = classifier.classify.bind(classifier);
    const watching: Classifier = { ...classifier, classify: async (image, k) => {
      // A hang or crash in here must not cost the image before an attempt: it is stored.
      if (classified.length === 1) storedBefore.push((await store.head('out-bucket', resultKey('p1'))) !== null);
      const predictions = await classify(image, k);
      inFlightAfter.push((await queues.launch.counts()).inFlight);
      classified.push(`#${classified.length + 1}`);
      return predictions;
    } };
    // The first result may be announced only once the second image is being classified: a
    // worker that announces before it starts the next image never gets there.
    const output = counted(queues.output, [], async (_method, args) => {
      const message = parseOutputMessage(args[0] as string);
      if (message.type === 'result' && message.result.imageId === 'p1') await waitFor('the second image to be classified', () => classified.length >= 2, { timeoutMs: 10_000 });
    });
    const summary = await runWorker({ ...options(), classifier: watching, queues: { ...queues, output } });
    assert.equal(summary.processed, 3);
    assert.deepEqual(storedBefore, [true]);
    // After each of the first two images, the next message was already taken (its own
    // message is deleted only with its result, so two are in flight). After the last, its
    // own, and p2's if that delete, which trails p2's store, has not happened yet.
    assert.deepEqual(inFlightAfter.slice(0, 2), [2, 2]);
    assert.ok(inFlightAfter[2] === 1 || inFlightAfter[2] === 2, String(inFlightAfter[2]));
  });

  it('does not start a message taken ahead too long ago: by then it may be another worker\'s', async () => {
    await enqueue('h1', 'h2');
    const { log, entries } = capturingLogger();
    // The slow worker takes h2 ahead, hidden for 1 s, while it spends 1.5 s on h1.
    const slow = runWorker({ ...options(), instanceId: 'i-slow', prefetchVisibilitySeconds: 1, faults: { delayMs: 1_500 }, log });
    await waitFor('h2 to be taken ahead', async () => (await queues.launch.counts()).inFlight === 2);
    const other = runWorker({ ...options(), instanceId: 'i-other', idleWaitSeconds: 3 });
    const [slowSummary, otherSummary] = await Promise.all([slow, other]);
    assert.deepEqual([slowSummary.processed, otherSummary.processed], [1, 1]);
    const notices = (await drain(queues.monitor)).map(parseMonitorNotice);
    assert.deepEqual(notices.map((notice) => `${notice.imageId} ${notice.instanceId}`).sort(), ['h1 i-slow', 'h2 i-other']);
    assert.equal(logged(entries, { msg: 'taken ahead too long ago; left to come back to the queue', imageId: 'h2' }).length, 1, showLog(entries));
  });

  it(`sends a progress note and deletes the launch message of an image still in hand after ${PROGRESS_AFTER_MS} ms`, async () => {
    await enqueue('slow');
    const order: string[] = [];
    const launch = counted(queues.launch, [], async (method) => {
      if (method === 'delete') order.push('launch deleted');
    });
    const output = counted(queues.output, [], async (_method, args) => {
      order.push(`output ${parseOutputMessage(args[0] as string).type}`);
    });
    const summary = await runWorker({ ...options(), queues: { ...queues, launch, output }, faults: { delayMs: PROGRESS_AFTER_MS + 500 } });
    assert.equal(summary.processed, 1);
    assert.deepEqual(order, ['launch deleted', 'output progress', 'output result']);
  });
});
