/**
 * Workers that fail at start (here real `icaas worker` processes configured with a model
 * that does not exist): the launch controller stops starting them, says why in the status
 * with the worker's own last words, and after the timeout ends waiting images as errors.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from '../../src/sqlite-driver.js';
import path from 'node:path';
import { loadConfig } from '../../src/config.js';
import { startControllers, type Controllers } from '../../src/controller/index.js';
import type { LoopHealth } from '../../src/health.js';
import { parseImageResult, resultKey, type LaunchMessage, type MonitorNotice } from '../../src/messages.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { startWebTier, type WebTier } from '../../src/web/index.js';
import { ServiceMetrics } from '../../src/metrics.js';
import { makeTempDir, waitFor } from '../helpers.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';
import { scrape } from '../metrics-text.js';

describe('workers that fail at start', async () => {
  const temp = await makeTempDir();
  const { log, entries } = capturingLogger('info');
  let runtime: Runtime | undefined;
  let controllers: Controllers | undefined;
  let web: WebTier | undefined;
  after(async () => {
    await controllers?.stop();
    await web?.stop();
    for (const instance of (await runtime?.compute.list()) ?? []) await runtime!.compute.terminate(instance.id).catch(() => {});
    await runtime?.close();
    await temp.cleanup();
  });

  const spawned = () => {
    const db = new Database(path.join(temp.dir, 'instances.db'), { readonly: true });
    try {
      return (db.prepare('SELECT COUNT(*) AS n FROM instances').get() as { n: number }).n;
    } finally {
      db.close();
    }
  };
  const workersHealth = async (): Promise<LoopHealth | undefined> => {
    const { health } = (await (await fetch(`${web!.url}/api/status`)).json()) as { health: LoopHealth[] };
    return health.find((entry) => entry.loop === 'workers');
  };
  const launch = (imageId: string): LaunchMessage => ({ type: 'launch', imageId, batchId: 'b1', name: `${imageId}.jpg`, key: `images/b1/${imageId}`, attempt: 1, queuedAt: Date.now() });

  // When the hold-back began, and how many workers had been spawned by then.
  let heldAt = 0;
  let spawnedWhenHeld = 0;
  it('holds back starts and shows why, with the last lines of the worker log', async () => {
    const { config } = loadConfig({
      argv: ['--host', '127.0.0.1', '--port', '0', '--data', temp.dir, '--model', path.join(temp.dir, 'gone.onnx'), '--max-instances', '3',
        // A check interval under a second: notices are not delayed, so a stopped instance
        // is judged 2 s after it is seen gone, and the bound on spawns below holds.
        '--launch-interval', '100', '--start-failures', '3', '--start-failure-timeout', '6', '--monitor-check', '0.5'],
      env: {},
    });
    runtime = await openRuntime(config);
    // One registry for both, as `icaas start` has: the web tier's /metrics shows the controllers'.
    const metrics = new ServiceMetrics();
    web = await startWebTier(runtime, log, metrics);
    await runtime.queues.launch.send(JSON.stringify(launch('waiting1')));
    controllers = startControllers(runtime, log, metrics);

    const failing = await waitFor('the status to say workers fail at start', async () => {
      const workers = await workersHealth();
      return workers?.ok === false ? workers : undefined;
    }, { timeoutMs: 60_000, intervalMs: 100 });
    assert.match(failing.problem ?? '', /^workers fail at start: .*gone\.onnx/);
    assert.match(failing.problem ?? '', /does not exist/);
    const counted = await scrape(`${web.url}/metrics`);
    const failures = counted.value('icaas_instance_start_failures_total');
    assert.ok(failures >= 3, `the failures before the hold-back are counted (${failures})`);
    assert.ok(failures <= counted.value('icaas_instance_launches_total'), 'no more failures than launches');

    // Held back: no start for at least the first backoff (2.5 s or more).
    const before = spawned();
    heldAt = performance.now();
    spawnedWhenHeld = before;
    await sleep(2000);
    assert.ok(spawned() - before <= 1, `no new workers while held back (${before} before, ${spawned()} after)`);
    const failureLines = logged(entries, { msg: 'loop failing', loop: 'workers', component: 'workers' });
    assert.equal(failureLines.length, 1, `logged once:\n${showLog(entries)}`);
    assert.match(String(failureLines[0]!.problem), /^workers fail at start: .*gone\.onnx/);
  });

  it('ends waiting images as errors with the reason once the timeout has passed', async () => {
    await runtime!.queues.launch.send(JSON.stringify(launch('waiting2')));
    // The web tier's output phase takes the announcements; the results are in the bucket.
    const errors = await waitFor('both waiting images to end as errors', async () => {
      const found: string[] = [];
      for (const imageId of ['waiting1', 'waiting2']) {
        const stored = await runtime!.store.get(runtime!.config.outputBucket, resultKey(imageId));
        const result = stored && parseImageResult(stored.body.toString('utf8'));
        if (result?.status === 'error') found.push(result.error);
      }
      return found.length === 2 ? found : undefined;
    }, { timeoutMs: 60_000, intervalMs: 200 });
    for (const error of errors) assert.match(error, /^workers fail at start: .*gone\.onnx/);
    const ended = logged(entries, { msg: 'waiting images ended as errors', component: 'launch' });
    assert.ok(ended.some((entry) => entry.ended === 2 && /^workers fail at start/.test(String(entry.reason))), showLog(entries));
    assert.equal((await runtime!.queues.launch.counts()).visible, 0);
    // Once held back, at most one probe per backoff (5 s or more): unguarded, three failing
    // workers a second would be replaced. (How many start before the hold depends on how
    // fast a worker fails against the 2 s a gone instance waits to be judged.)
    const heldSeconds = (performance.now() - heldAt) / 1000;
    const allowed = spawnedWhenHeld + 1 + Math.ceil(heldSeconds / 5);
    assert.ok(spawned() <= allowed, `spawned ${spawned() - spawnedWhenHeld} workers in the ${heldSeconds.toFixed(1)} s held back (at most ${allowed - spawnedWhenHeld})`);
  });

  it('clears when an instance takes an image', async () => {
    const notice: MonitorNotice = { type: 'monitor', imageId: 'waiting1', batchId: 'b1', name: 'waiting1.jpg', key: 'images/b1/waiting1', attempt: 1, instanceId: 'i-000000000001', startedAt: Date.now() };
    await runtime!.queues.monitor.send(JSON.stringify(notice));
    await waitFor('the workers entry to be ok again', async () => (await workersHealth())?.ok === true, { timeoutMs: 15_000 });
    assert.ok(logged(entries, { msg: 'loop working again', loop: 'workers' }).some((entry) => /an instance took an image/.test(String(entry.how))), showLog(entries));
  });
});
