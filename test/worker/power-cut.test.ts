/**
 * A power cut in the middle of an image, at every point where one can leave the disk.
 *
 * The worker's sends (notice, result announcement) are committed without a disk flush, so a
 * power cut may undo them. SQLite's WAL recovery keeps a prefix of the queue file's commits,
 * and the object store flushes each object before its write returns. So what survives is:
 * the queue file as it was after some commit of the worker's, and the result object if it
 * was written by then. This test copies the queue file after each of the worker's commits
 * and the buckets before and after the result is written, opens every combination that a
 * power cut can leave, runs the monitor and a new worker on it, and checks that the image
 * ends with its result stored and announced and nothing left in the queues.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdir, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { loadClassifier } from '../../src/classifier/index.js';
import type { Classifier } from '../../src/classifier/port.js';
import { ProcessCompute } from '../../src/compute/process.js';
import { monitorTick } from '../../src/controller/monitor.js';
import { inputKey, parseImageResult, parseOutputMessage, resultKey, type LaunchMessage } from '../../src/messages.js';
import type { Queue } from '../../src/queue/port.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import type { ObjectStore } from '../../src/storage/port.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { runWorker } from '../../src/worker/worker.js';
import { drainQueue, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';

const IMAGE = 'cut';
const QUEUE_FILES = ['queues.db', 'queues.db-wal'];

/** Runs `after` once each call of the named methods has returned (the worker waits for it). */
function afterCalls<T extends object>(target: T, methods: string[], after: (method: string, args: unknown[], result: unknown) => Promise<void>): T {
  return new Proxy(target, {
    get(object, property, receiver) {
      const value = Reflect.get(object, property, receiver);
      if (typeof value !== 'function' || typeof property !== 'string' || !methods.includes(property)) return value;
      return async (...args: unknown[]) => {
        const result = await (value as (...a: unknown[]) => Promise<unknown>).apply(object, args);
        await after(property, args, result);
        return result;
      };
    },
  });
}

describe('a power cut during an image', async () => {
  const temp = await makeTempDir();
  const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
  let classifier: Classifier;
  const original = path.join(temp.dir, 'original');
  const snapshots = path.join(temp.dir, 'snapshots');

  /** Copies the queue file (database and write-ahead log, as a cut leaves them) under `name`. */
  const snapshotQueue = async (name: string) => {
    const dir = path.join(snapshots, 'queue', name);
    await mkdir(dir, { recursive: true });
    for (const file of QUEUE_FILES) if (existsSync(path.join(original, file))) await cp(path.join(original, file), path.join(dir, file));
  };
  const snapshotBuckets = async (name: string) => cp(path.join(original, 'buckets'), path.join(snapshots, 'buckets', name), { recursive: true });

  before(async () => {
    classifier = (await loadClassifier({ allowDownload: false })).classifier;
    const store = new FsObjectStore(path.join(original, 'buckets'));
    await store.ensureBucket('in-bucket');
    await store.ensureBucket('out-bucket');
    const provider = new SqliteQueueProvider(path.join(original, 'queues.db'));
    const queues = { launch: provider.queue('launch'), monitor: provider.queue('monitor'), output: provider.queue('output') };
    const compute = new ProcessCompute({ registryPath: path.join(original, 'instances.db'), maxInstances: 5 });
    const key = inputKey('b1', IMAGE);
    await store.put('in-bucket', key, tench, { contentType: 'image/jpeg' });
    const launch: LaunchMessage = { type: 'launch', imageId: IMAGE, batchId: 'b1', name: 'cut.jpg', key, attempt: 1, queuedAt: Date.now() };
    // The upload's send flushes: it is there whatever happens next.
    await queues.launch.send(JSON.stringify(launch));
    await snapshotQueue('accepted');
    await snapshotBuckets('without-result');

    const taken: string[] = [];
    const watchedQueues = {
      launch: afterCalls(queues.launch, ['receive', 'delete'], async (method, _args, result) => {
        if (method === 'receive' && (result as unknown[]).length > 0) await snapshotQueue('received');
        if (method === 'delete') await snapshotQueue('launch-deleted');
        taken.push(method);
      }),
      monitor: afterCalls(queues.monitor, ['send'], async () => snapshotQueue('notice-sent')),
      output: afterCalls(queues.output, ['send'], async () => snapshotQueue('announced')),
    } satisfies Record<string, Queue>;
    const watchedStore = afterCalls<ObjectStore>(store, ['put'], async (_method, args) => {
      if (args[1] === resultKey(IMAGE)) await snapshotBuckets('with-result');
    });
    const summary = await runWorker({
      instanceId: 'i-cut', store: watchedStore, inputBucket: 'in-bucket', outputBucket: 'out-bucket', queues: watchedQueues, compute, classifier,
      idleWaitSeconds: 0.2, launchVisibilitySeconds: 1,
    });
    assert.equal(summary.processed, 1);
    await provider.close();
    await compute.close();
  });
  after(async () => {
    await classifier?.close();
    await temp.cleanup();
  });

  // The result object is flushed before the launch message is deleted: a cut that keeps the
  // delete keeps the result. A cut may keep the result and lose the commits before it, which
  // were not flushed.
  const cuts: [queue: string, buckets: string][] = [
    ['accepted', 'without-result'],
    ['received', 'without-result'],
    ['accepted', 'with-result'],
    ['notice-sent', 'without-result'],
    ['received', 'with-result'],
    ['notice-sent', 'with-result'],
    ['launch-deleted', 'with-result'],
    ['announced', 'with-result'],
  ];

  for (const [queueState, bucketState] of cuts) {
    it(`queue file as after "${queueState}", buckets ${bucketState}: the image ends with its result announced`, async () => {
      const dir = path.join(temp.dir, `after-${queueState}-${bucketState}`);
      await cp(path.join(snapshots, 'queue', queueState), dir, { recursive: true });
      await cp(path.join(snapshots, 'buckets', bucketState), path.join(dir, 'buckets'), { recursive: true });
      const store = new FsObjectStore(path.join(dir, 'buckets'));
      const provider = new SqliteQueueProvider(path.join(dir, 'queues.db'));
      const queues = { launch: provider.queue('launch'), monitor: provider.queue('monitor'), output: provider.queue('output') };
      // A new registry: after the cut, the worker that held the image is gone.
      const compute = new ProcessCompute({ registryPath: path.join(dir, 'instances.db'), maxInstances: 5 });
      const storedBefore = await store.get('out-bucket', resultKey(IMAGE));
      try {
        const announced: string[] = [];
        await waitFor('the monitor and a new worker to settle the image', async () => {
          await monitorTick({ store, outputBucket: 'out-bucket', queues, compute, deadlineSeconds: 5, checkSeconds: 0.2, maxAttempts: 3 }, 0);
          await runWorker({ instanceId: 'i-after', store, inputBucket: 'in-bucket', outputBucket: 'out-bucket', queues, compute, classifier, idleWaitSeconds: 0.2, launchVisibilitySeconds: 1 });
          announced.push(...await drainQueue(queues.output));
          const [launch, monitor] = [await queues.launch.counts(), await queues.monitor.counts()];
          return launch.visible + launch.inFlight + launch.delayed + monitor.visible + monitor.inFlight + monitor.delayed === 0;
        }, { timeoutMs: 20_000, intervalMs: 100 });
        const stored = parseImageResult((await store.get('out-bucket', resultKey(IMAGE)))!.body.toString());
        assert.equal(stored.status, 'ok');
        if (storedBefore) assert.equal(stored.finishedAt, parseImageResult(storedBefore.body.toString()).finishedAt, 'the result written before the cut stands');
        const results = announced.map(parseOutputMessage).flatMap((message) => (message.type === 'result' ? [message.result] : []));
        assert.ok(results.length >= 1, `no announcement of the result after the cut: ${JSON.stringify(announced)}`);
        for (const result of results) assert.deepEqual(result, stored, 'every announcement is of the result that stands');
      } finally {
        await provider.close();
    await compute.close();
      }
    });
  }
});
