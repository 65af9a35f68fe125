/**
 * The monitor controller on the real embedded adapters, with real processes as instances.
 */
import { describe, it, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Compute } from '../../src/compute/port.js';
import { ProcessCompute } from '../../src/compute/process.js';
import { monitorTick, type MonitorOptions } from '../../src/controller/monitor.js';
import { parseImageResult, parseLaunchMessage, parseOutputMessage, resultKey, type ImageResult, type LaunchMessage, type MonitorNotice } from '../../src/messages.js';
import { attemptClaimSchema, attemptKey } from '../../src/outcomes.js';
import type { Queue } from '../../src/queue/port.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { resetWallClock, stepWallClock } from '../clock-step.js';
import { drainQueue as drain, makeTempDir, waitFor } from '../helpers.js';

const sleeper = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'compute', 'sleeper-process.js');

describe('monitor controller', async () => {
  const temp = await makeTempDir();
  let run = 0;
  let dir: string;
  let options: MonitorOptions;
  let compute: ProcessCompute;
  let provider: SqliteQueueProvider;
  /** Connections of a second monitor, as another controller process would open them. */
  const others: Array<{ close(): Promise<void> }> = [];

  beforeEach(async () => {
    dir = path.join(temp.dir, String(++run));
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
    resetWallClock();
    for (const instance of await compute.list()) await compute.terminate(instance.id);
    for (const other of others.splice(0)) await other.close();
    await compute.close();
    await provider.close();
  });
  after(() => temp.cleanup());

  const startInstance = async () => {
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list()).find((instance) => instance.id === id)?.state === 'idle');
    return id!;
  };
  const notify = async (instanceId: string, attempt: number, startedAt = Date.now(), imageId = 'img') => {
    const notice: MonitorNotice = { type: 'monitor', imageId, batchId: 'b', name: `${imageId}.jpg`, key: `images/b/${imageId}`, attempt, instanceId, startedAt };
    await options.queues.monitor.send(JSON.stringify(notice));
  };
  const okResult = (imageId: string, attempts = 1): ImageResult => ({
    status: 'ok', imageId, batchId: 'b', name: `${imageId}.jpg`, attempts, instanceId: 'i-x', label: 'tench', probability: 0.5, top5: [], durationMs: 1, finishedAt: Date.now(),
  });
  /** Another monitor on its own connections to the same files, as a second controller process has. */
  const secondMonitor = (overrides: Partial<MonitorOptions> = {}): MonitorOptions => {
    const otherProvider = new SqliteQueueProvider(path.join(dir, 'queues.db'));
    const otherCompute = new ProcessCompute({ registryPath: path.join(dir, 'instances.db'), maxInstances: 5, workerCommand: { script: sleeper, args: [path.join(dir, 'instances.db')] } });
    others.push(otherProvider, otherCompute);
    return {
      ...options,
      store: new FsObjectStore(path.join(dir, 'buckets')),
      queues: { launch: otherProvider.queue('launch'), monitor: otherProvider.queue('monitor'), output: otherProvider.queue('output') },
      compute: otherCompute,
      ...overrides,
    };
  };
  /** Runs every monitor's loop at once until no notice is left; returns the errors their ticks threw. */
  const runUntilSettled = async (monitors: MonitorOptions[], timeoutMs = 20_000): Promise<unknown[]> => {
    const errors: unknown[] = [];
    let stop = false;
    const loops = monitors.map(async (monitor) => {
      while (!stop) {
        try {
          await monitorTick(monitor, 0.05);
        } catch (error) {
          errors.push(error);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
    });
    try {
      await waitFor('every notice to be settled', async () => {
        const counts = await options.queues.monitor.counts();
        return counts.visible + counts.inFlight + counts.delayed === 0;
      }, { timeoutMs, intervalMs: 20 });
    } finally {
      stop = true;
      await Promise.all(loops);
    }
    return errors;
  };
  /** The launch messages sent, checked to hold each (image, attempt) at most once and no attempt past the maximum. */
  const launchesOncePerAttempt = async (): Promise<LaunchMessage[]> => {
    const launches = (await drain(options.queues.launch)).map(parseLaunchMessage);
    const seen = new Set<string>();
    for (const launch of launches) {
      const id = `${launch.imageId}#${launch.attempt}`;
      assert.ok(!seen.has(id), `attempt ${launch.attempt} of ${launch.imageId} was sent twice`);
      seen.add(id);
      assert.ok(launch.attempt <= options.maxAttempts, `attempt ${launch.attempt} of ${launch.imageId} passes the maximum`);
    }
    return launches;
  };
  /** Every claim in the bucket, as image -> attempts claimed; none may pass the maximum, all must be sent. */
  const claims = async (): Promise<Map<string, number[]>> => {
    const byImage = new Map<string, number[]>();
    for await (const object of options.store.list('out-bucket', 'attempts/')) {
      const claim = attemptClaimSchema.parse(JSON.parse((await options.store.get('out-bucket', object.key))!.body.toString()));
      assert.ok(claim.attempt <= options.maxAttempts, `claim ${object.key} passes the maximum`);
      assert.equal(claim.sent, true, `claim ${object.key} was sent`);
      byImage.set(claim.imageId, [...(byImage.get(claim.imageId) ?? []), claim.attempt]);
    }
    return byImage;
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
    await options.store.put('out-bucket', resultKey('img'), Buffer.from(JSON.stringify(okResult('img'))));
    await settle();
    assert.deepEqual(await drain(options.queues.launch), []);
    assert.equal((await compute.list())[0]?.state, 'idle');
  });

  it('keeps watching an image within its deadline', async () => {
    const instance = await startInstance();
    await notify(instance, 1);
    const summary = await monitorTick(options, 0.5);
    assert.deepEqual(summary, { received: 1, finished: 0, retried: 0, failed: 0, superseded: 0, terminated: 0 });
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

  it('counts a hung instance terminated once, however many of its images are overdue in one check', async () => {
    const instance = await startInstance();
    // The image it finished before the one it hangs on: its result was still being stored.
    await notify(instance, 1, Date.now() - 5000, 'before');
    await notify(instance, 1, Date.now() - 4000, 'hung');
    // Sent together, the two come back together at every check.
    let terminated = 0;
    let retried = 0;
    await waitFor('both images to be sent back', async () => {
      const summary = await monitorTick(options, 0.5);
      terminated += summary.terminated;
      retried += summary.retried;
      return retried === 2;
    }, { timeoutMs: 10_000, intervalMs: 0 });
    assert.equal(terminated, 1);
    assert.equal((await compute.list()).find((i) => i.id === instance)?.state, 'stopped');
    assert.deepEqual((await drain(options.queues.launch)).map(parseLaunchMessage).map((launch) => [launch.imageId, launch.attempt]).sort(), [['before', 2], ['hung', 2]]);
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

  it('lets go of an image whose result its own output phase has recorded, without reading or announcing it again', async () => {
    const instance = await startInstance();
    await notify(instance, 1, Date.now(), 'recorded');
    await notify(instance, 1, Date.now(), 'unrecorded');
    const stored: ImageResult = { status: 'ok', imageId: 'unrecorded', batchId: 'b', name: 'unrecorded.jpg', attempts: 1, instanceId: instance, label: 'tench', probability: 0.5, top5: [], durationMs: 1, finishedAt: Date.now() };
    await options.store.put('out-bucket', resultKey('unrecorded'), Buffer.from(JSON.stringify(stored)));
    // Only the output phase knows of 'recorded' (its result is not in the bucket here, so a
    // read would keep watching it); 'unrecorded' is announced again as before.
    const asked: string[] = [];
    options = { ...options, recorded: (imageId) => (asked.push(imageId), imageId === 'recorded') };
    await settle();
    assert.deepEqual(asked.sort(), ['recorded', 'unrecorded']);
    assert.deepEqual((await drain(options.queues.output)).map(parseOutputMessage), [{ type: 'result', result: stored }]);
    assert.deepEqual(await drain(options.queues.launch), []);
    assert.equal((await compute.list()).find((i) => i.id === instance)?.state, 'idle', 'no instance is terminated');
  });

  it('two monitors over duplicate notices of every attempt send each retry once and never pass the last attempt', async () => {
    // Two notices per attempt, as a crash between notice and delete leaves; instances gone.
    const images = Array.from({ length: 6 }, (_, i) => ({ imageId: `img${i}`, attempt: (i % 3) + 1 }));
    for (const { imageId, attempt } of images) {
      await notify('i-gone', attempt, Date.now(), imageId);
      await notify('i-gone', attempt, Date.now(), imageId);
    }
    await runUntilSettled([options, secondMonitor()]);
    const launches = await launchesOncePerAttempt();
    for (const { imageId, attempt } of images) {
      const sent = launches.filter((launch) => launch.imageId === imageId).map((launch) => launch.attempt);
      assert.deepEqual(sent, attempt < 3 ? [attempt + 1] : [], `retries of ${imageId} (notices of attempt ${attempt})`);
      const stored = await options.store.get('out-bucket', resultKey(imageId));
      if (attempt === 3) assert.equal(stored && parseImageResult(stored.body.toString()).status, 'error', `${imageId} ended as an error`);
      else assert.equal(stored, null, `${imageId} has no result yet`);
    }
    const claimed = await claims();
    for (const { imageId, attempt } of images) assert.deepEqual(claimed.get(imageId) ?? [], attempt < 3 ? [attempt + 1] : []);
    // Both monitors may announce the error result, but it is the same result.
    const announced = (await drain(options.queues.output)).map(parseOutputMessage).flatMap((m) => (m.type === 'result' ? [m.result] : []));
    for (const { imageId } of images.filter((image) => image.attempt === 3)) {
      const mine = announced.filter((result) => result.imageId === imageId);
      assert.ok(mine.length >= 1 && mine.every((result) => JSON.stringify(result) === JSON.stringify(mine[0])), `one error result for ${imageId}`);
    }
  });

  it('a monitor slower than the check interval and a second one never send one attempt twice', async () => {
    const instances = [await startInstance(), await startInstance(), await startInstance()];
    for (const [i, instance] of instances.entries()) await notify(instance, 1, Date.now() - 60_000, `hung${i}`);
    // Terminating takes five check intervals here, as a slow cloud API can.
    const slowCompute: Compute = Object.create(compute, {
      terminate: { value: async (id: string) => { await new Promise((resolve) => setTimeout(resolve, 1_000)); await compute.terminate(id); } },
    });
    await runUntilSettled([{ ...options, compute: slowCompute }, secondMonitor()], 30_000);
    const launches = await launchesOncePerAttempt();
    assert.deepEqual(launches.map((launch) => `${launch.imageId}#${launch.attempt}`).sort(), ['hung0#2', 'hung1#2', 'hung2#2']);
    for (const instance of instances) assert.equal((await compute.list()).find((i) => i.id === instance)?.state, 'stopped');
  });

  it('a claim left by a monitor that died before sending the retry is taken over, and the retry sent once', async () => {
    await notify('i-gone', 1);
    // The first monitor claims attempt 2, then dies before the launch message goes out.
    const failingLaunch: Queue = Object.create(options.queues.launch, { send: { value: async () => { throw new Error('killed before sending'); } } });
    await assert.rejects(monitorTick({ ...options, queues: { ...options.queues, launch: failingLaunch } }, 0.5), /killed before sending/);
    const claim = attemptClaimSchema.parse(JSON.parse((await options.store.get('out-bucket', attemptKey('img', 2)))!.body.toString()));
    assert.equal(claim.sent, false);
    await runUntilSettled([secondMonitor(), options]);
    assert.deepEqual((await launchesOncePerAttempt()).map((launch) => launch.attempt), [2]);
    assert.deepEqual(await claims(), new Map([['img', [2]]]));
  });

  it('a stored result that is not valid does not end the watch: the image is retried, or ends as an error', async () => {
    const invalid = { ...okResult('bad1'), durationMs: -5 };
    await options.store.put('out-bucket', resultKey('bad1'), Buffer.from(JSON.stringify(invalid)));
    await options.store.put('out-bucket', resultKey('bad3'), Buffer.from(JSON.stringify({ ...invalid, imageId: 'bad3', attempts: 3 })));
    const instance = await startInstance();
    await notify(instance, 1, Date.now(), 'bad1');
    await notify(instance, 3, Date.now(), 'bad3');
    await runUntilSettled([options]);
    assert.deepEqual((await launchesOncePerAttempt()).map((launch) => `${launch.imageId}#${launch.attempt}`), ['bad1#2']);
    const replaced = parseImageResult((await options.store.get('out-bucket', resultKey('bad3')))!.body.toString());
    assert.equal(replaced.status, 'error', 'the invalid result of the last attempt is replaced by a valid error result');
    assert.equal((await compute.list()).find((i) => i.id === instance)?.state, 'idle', 'an instance that finished (badly) is not killed');
  });

  it('a hung image still ends after its deadline when the worker\'s clock is 30 s ahead of the monitor\'s', async () => {
    const instance = await startInstance();
    await notify(instance, 1, Date.now() + 30_000);
    await settle();
    assert.equal((await compute.list()).find((i) => i.id === instance)?.state, 'stopped');
    assert.deepEqual((await launchesOncePerAttempt()).map((launch) => launch.attempt), [2]);
  });

  it('an image is not ended before its deadline when the worker\'s clock is 30 s behind the monitor\'s', async () => {
    const instance = await startInstance();
    await notify(instance, 1, Date.now() - 30_000);
    const summary = await monitorTick(options, 0.5);
    assert.deepEqual([summary.received, summary.retried, summary.failed], [1, 0, 0], 'the first check waits');
    assert.equal((await compute.list()).find((i) => i.id === instance)?.state, 'idle');
    await settle();
    assert.deepEqual((await launchesOncePerAttempt()).map((launch) => launch.attempt), [2], 'and it does end, after the deadline');
  });

  it('a hung image ends within its deadline plus the step when every clock steps back mid-watch', async () => {
    const instance = await startInstance();
    await notify(instance, 1);
    await monitorTick(options, 0.5);
    const started = performance.now();
    stepWallClock(-3_000);
    await settle();
    const tookMs = performance.now() - started;
    assert.equal((await compute.list()).find((i) => i.id === instance)?.state, 'stopped');
    assert.deepEqual((await launchesOncePerAttempt()).map((launch) => launch.attempt), [2]);
    assert.ok(tookMs < (options.deadlineSeconds + options.checkSeconds) * 1000 + 3_000 + 3_000, `ended ${tookMs.toFixed(0)} ms after the step`);
  });
});
