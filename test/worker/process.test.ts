/**
 * A real `icaas worker` process, started by the process compute adapter as the launch
 * controller starts one, on a data folder of its own: what it reports, and what a crash
 * leaves behind while it holds a message taken ahead.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ProcessCompute } from '../../src/compute/process.js';
import { configToEnv, loadConfig } from '../../src/config.js';
import { inputKey, parseMonitorNotice, resultKey, type LaunchMessage } from '../../src/messages.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { cliPath, drainQueue, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';

describe('a real worker process', () => {
  const cleanups: (() => Promise<void>)[] = [];
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  /** A data folder with the given images queued, and an adapter that starts workers on it. */
  async function setUp(names: string[], faults: Record<string, string> = {}) {
    const temp = await makeTempDir('icaas-worker-process-');
    // A check interval under a second, so the notices are not delayed and can be read at once.
    const { config } = loadConfig({ argv: ['--data', temp.dir, '--idle-wait', '1', '--monitor-check', '0.5'], env: {} });
    const store = new FsObjectStore(path.join(temp.dir, 'buckets'));
    await store.ensureBucket(config.inputBucket);
    await store.ensureBucket(config.outputBucket);
    const provider = new SqliteQueueProvider(path.join(temp.dir, 'queues.db'));
    const queues = { launch: provider.queue('launch'), monitor: provider.queue('monitor'), output: provider.queue('output') };
    const env = Object.fromEntries(Object.entries({ ...configToEnv(config), ...faults }).filter(([, value]) => value !== ''));
    const compute = new ProcessCompute({
      registryPath: path.join(temp.dir, 'instances.db'), maxInstances: 2, workerCommand: { script: cliPath, args: ['worker'] }, workerEnv: env, logDir: path.join(temp.dir, 'logs'),
    });
    cleanups.push(async () => {
      for (const instance of await compute.list()) await compute.terminate(instance.id).catch(() => {});
      await compute.close();
      await provider.close();
      await temp.cleanup();
    });
    const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
    for (const name of names) {
      const key = inputKey('b1', name);
      await store.put(config.inputBucket, key, tench, { contentType: 'image/jpeg' });
      const message: LaunchMessage = { type: 'launch', imageId: name, batchId: 'b1', name: `${name}.jpg`, key, attempt: 1, queuedAt: Date.now() };
      await queues.launch.send(JSON.stringify(message));
    }
    const stoppedAll = () => waitFor('the worker to stop', async () => (await compute.list()).every((instance) => instance.state === 'stopped'), { timeoutMs: 60_000 });
    return { config, store, queues, compute, stoppedAll, log: async (id: string) => readFile(path.join(temp.dir, 'logs', `${id}.log`), 'utf8') };
  }

  it('reports its moving average of the time per image, kept by the registry', async () => {
    const { compute, stoppedAll, log } = await setUp(['r1', 'r2', 'r3']);
    const [id] = await compute.start(1);
    await stoppedAll();
    const instance = (await compute.list()).find((listed) => listed.id === id);
    assert.equal(instance?.processed, 3, await log(id!));
    assert.ok(typeof instance?.serviceMs === 'number' && instance.serviceMs > 0 && instance.serviceMs < 60_000, JSON.stringify(instance));
  });

  it('killed while it holds a message taken ahead, loses nothing: that message comes back when its timeout ends', async () => {
    // k1 finishes; crash-me is started (its notice is out) with k3 taken ahead, then the
    // process is killed 300 ms into crash-me. (crash-me's launch message is back too; the
    // monitor, not tested here, would find it stale once it has retried the image.)
    const { config, store, queues, compute, stoppedAll, log } = await setUp(['k1', 'crash-me', 'k3'], { ICAAS_TEST_CRASH_ON: 'crash-me', ICAAS_TEST_DELAY_MS: '300' });
    const [id] = await compute.start(1);
    await stoppedAll();
    const notices = (await drainQueue(queues.monitor)).map(parseMonitorNotice).map((notice) => notice.imageId);
    assert.ok(await store.head(config.outputBucket, resultKey("k1")), `${await log(id!)} notices: ${notices}`);
    assert.equal(await store.head(config.outputBucket, resultKey('k3')), null, 'k3 was never started');
    // The monitor has crash-me: it retries it once it finds the instance gone.
    assert.deepEqual(notices, ['k1', 'crash-me']);
    // k3 is hidden, not lost: it comes back when its 30 s visibility timeout ends. Rather
    // than wait, look 31 s ahead: a queue connection whose clock is that far on.
    // k1's launch message may be back too: its result was stored while crash-me ran, and
    // the delete trails the store (k1 is then a stale duplicate, dropped unclassified).
    const counts = await queues.launch.counts();
    assert.ok(counts.visible === 0 && counts.delayed === 0 && (counts.inFlight === 2 || counts.inFlight === 3), JSON.stringify(counts));
    const ahead = new SqliteQueueProvider(path.join(config.data, 'queues.db'), { clock: { now: () => Date.now() + 31_000, monotonic: () => performance.now() } });
    cleanups.push(() => ahead.close());
    const comeBack = (await ahead.queue('launch').receive({ maxMessages: 10 })).map((message) => ({ message, imageId: JSON.parse(message.body).imageId as string }));
    assert.deepEqual(comeBack.map(({ imageId }) => imageId).filter((imageId) => imageId !== 'k1').sort(), ['crash-me', 'k3']);
    const back = comeBack.find(({ imageId }) => imageId === 'k3')!.message;
    for (const { message, imageId } of comeBack) if (imageId !== 'k3') await ahead.queue('launch').delete(message.receiptHandle);
    await ahead.queue('launch').changeVisibility(back.receiptHandle, 0);
    const [again] = await compute.start(1);
    await stoppedAll();
    assert.ok(await store.head(config.outputBucket, resultKey('k3')), await log(again!));
  });
});
