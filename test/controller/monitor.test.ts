/**
 * The monitor controller on the real embedded adapters, with real processes as instances.
 */
import { describe, it, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ProcessCompute } from '../../src/compute/process.js';
import { monitorTick, type MonitorOptions } from '../../src/controller/monitor.js';
import { parseImageResult, parseLaunchMessage, parseOutputMessage, resultKey, type ImageResult, type MonitorNotice } from '../../src/messages.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { drainQueue as drain, makeTempDir, waitFor } from '../helpers.js';

const sleeper = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'compute', 'sleeper-process.js');

describe('monitor controller', async () => {
  const temp = await makeTempDir();
  let run = 0;
  let options: MonitorOptions;
  let compute: ProcessCompute;
  let provider: SqliteQueueProvider;

  beforeEach(async () => {
    const dir = path.join(temp.dir, String(++run));
    const store = new FsObjectStore(path.join(dir, 'buckets'));
    await store.ensureBucket('out-bucket');
    provider = new SqliteQueueProvider(path.join(dir, 'queues.db'));
    const registryPath = path.join(dir, 'instances.db');
    compute = new ProcessCompute({ registryPath, maxInstances: 5, workerCommand: { script: sleeper, args: [registryPath] } });
    options = {
      store,
      outputBucket: 'out-bucket',
      queues: { launch: provider.queue('launch'), monitor: provider.queue('monitor'), output: provider.queue('output') },
      compute,
      deadlineSeconds: 1,
      checkSeconds: 0.2,
      maxAttempts: 3,
    };
  });
  afterEach(async () => {
    for (const instance of await compute.list()) await compute.terminate(instance.id);
    await compute.close();
    await provider.close();
  });
  after(() => temp.cleanup());

  const startInstance = async () => {
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list()).find((instance) => instance.id === id)?.state === 'idle');
    return id!;
  };
  const notify = async (instanceId: string, attempt: number, startedAt = Date.now()) => {
    const notice: MonitorNotice = { type: 'monitor', imageId: 'img', batchId: 'b', name: 'img.jpg', key: 'images/b/img', attempt, instanceId, startedAt };
    await options.queues.monitor.send(JSON.stringify(notice));
  };
  /** Runs monitor ticks until the notice is settled (no longer in the monitor queue). */
  const settle = async () => {
    await waitFor('the monitor to settle the notice', async () => {
      await monitorTick(options, 0.2);
      const counts = await options.queues.monitor.counts();
      return counts.visible + counts.inFlight + counts.delayed === 0;
    }, { timeoutMs: 15_000, intervalMs: 10 });
  };

  it('deletes the notice once the result is there, and touches nothing else', async () => {
    const instance = await startInstance();
    await notify(instance, 1);
    await options.store.put('out-bucket', resultKey('img'), Buffer.from('{}'));
    await settle();
    assert.deepEqual(await drain(options.queues.launch), []);
    assert.equal((await compute.list())[0]?.state, 'idle');
  });

  it('keeps watching an image within its deadline', async () => {
    const instance = await startInstance();
    await notify(instance, 1);
    const summary = await monitorTick(options, 0.5);
    assert.deepEqual(summary, { received: 1, finished: 0, retried: 0, failed: 0 });
    assert.equal((await options.queues.monitor.counts()).inFlight, 1);
    assert.deepEqual(await drain(options.queues.launch), []);
  });

  it('terminates a hung instance at the deadline and sends the image back with the next attempt', async () => {
    const instance = await startInstance();
    await notify(instance, 1);
    await settle();
    assert.equal((await compute.list()).find((i) => i.id === instance)?.state, 'stopped');
    const [retry] = (await drain(options.queues.launch)).map(parseLaunchMessage);
    assert.deepEqual([retry?.imageId, retry?.attempt, retry?.key], ['img', 2, 'images/b/img']);
  });

  it('retries at once when the instance holding the image is gone', async () => {
    const instance = await startInstance();
    await compute.terminate(instance);
    await notify(instance, 1, Date.now());
    const summary = await monitorTick({ ...options, deadlineSeconds: 3600 }, 0.5);
    assert.equal(summary.retried, 1);
    assert.equal((await drain(options.queues.launch)).map(parseLaunchMessage)[0]?.attempt, 2);
  });

  it('writes an error result after the last attempt instead of retrying', async () => {
    const instance = await startInstance();
    await notify(instance, 3);
    await settle();
    assert.deepEqual(await drain(options.queues.launch), []);
    const stored = parseImageResult((await options.store.get('out-bucket', resultKey('img')))!.body.toString());
    assert.ok(stored.status === 'error' && stored.attempts === 3 && /after 3 attempts/.test(stored.error), JSON.stringify(stored));
    const [announced] = (await drain(options.queues.output)).map(parseOutputMessage);
    assert.equal(announced?.type, 'result');
  });

  it('announces a stored result again, since its instance may have died before announcing it', async () => {
    const instance = await startInstance();
    await notify(instance, 1);
    const result: ImageResult = { status: 'ok', imageId: 'img', batchId: 'b', name: 'img.jpg', attempts: 1, instanceId: instance, label: 'tench', probability: 0.5, top5: [], durationMs: 1, finishedAt: Date.now() };
    await options.store.put('out-bucket', resultKey('img'), Buffer.from(JSON.stringify(result)));
    await compute.terminate(instance);
    await settle();
    const announced = (await drain(options.queues.output)).map(parseOutputMessage);
    assert.deepEqual(announced, [{ type: 'result', result }]);
    assert.deepEqual(await drain(options.queues.launch), [], 'an image with a result is not retried');
  });
});
