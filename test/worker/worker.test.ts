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
import { inputKey, parseImageResult, parseMonitorNotice, parseOutputMessage, resultKey, type LaunchMessage } from '../../src/messages.js';
import type { Queue } from '../../src/queue/port.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { runWorker, type WorkerOptions } from '../../src/worker/worker.js';
import { drainQueue as drain, makeTempDir, sharedImagesDir } from '../helpers.js';

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
    assert.deepEqual(output.map((message) => message.type), ['progress', 'result', 'progress', 'result']);
    const stored = parseImageResult((await store.get('out-bucket', resultKey('img1')))!.body.toString());
    assert.equal(stored.status, 'ok');
    assert.ok(stored.status === 'ok' && stored.label === 'brambling' && stored.top5.length === 5 && stored.instanceId === 'i-test');
    assert.equal(parseImageResult((await store.get('out-bucket', resultKey('img2')))!.body.toString()).attempts, 2);
  });

  it('skips an image that already has its final result (a duplicate delivery)', async () => {
    await enqueue('dup', 'dup.jpg', tench);
    const existing = { status: 'error', imageId: 'dup', batchId: 'b1', name: 'dup.jpg', attempts: 3, error: 'earlier', finishedAt: 1 };
    await store.put('out-bucket', resultKey('dup'), Buffer.from(JSON.stringify(existing)));
    const summary = await runWorker(options());
    assert.equal(summary.processed, 0);
    assert.deepEqual(await drain(queues.monitor), []);
    assert.equal(parseImageResult((await store.get('out-bucket', resultKey('dup')))!.body.toString()).status, 'error');
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
    const lines: string[] = [];
    const summary = await runWorker({ ...options(), log: (line) => lines.push(line) });
    assert.equal(summary.processed, 1);
    assert.ok(lines.some((line) => /dropping malformed launch message/.test(line)));
  });

  it('stops after the image in hand when asked', async () => {
    await enqueue('s1', 's1.jpg', tench);
    await enqueue('s2', 's2.jpg', tench);
    const stop = new AbortController();
    const summary = await runWorker({ ...options(), signal: stop.signal, log: () => stop.abort() });
    assert.deepEqual(summary, { processed: 1, reason: 'stopped' });
    assert.equal((await queues.launch.counts()).visible, 1);
  });
});
