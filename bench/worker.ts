/**
 * What one worker instance spends per image beside classifying it, run on demand (never by
 * `npm test`):
 *
 *   npm run build && node dist/bench/worker.js [--images 300] [--runs 1] [--steps]
 *
 * Fills the embedded queue (a real SQLite queue file and a real file store in a fresh data
 * folder) with N images, the 100 shared ones repeated, as the web tier does (the image in
 * the input bucket, one launch message each), then starts ONE real `icaas worker` process
 * through the process compute adapter, exactly as the launch controller starts one, and
 * waits until it has emptied the queue and stopped itself.
 *
 * Per image at steady state (the first 20 images left out as warm-up): wall time, from the
 * spacing of the results' `finishedAt`; classification (decode + inference, the time inside
 * `classifier.classify`) from the worker's own log line; bookkeeping = wall - classification;
 * their ratio; the worker's peak resident memory (VmHWM, sampled from /proc while it runs).
 *
 * --steps then runs the worker loop once more in this process, on the same real adapters
 * wrapped in timers, and prints the time spent in each queue, store, registry and
 * classifier call per image: where the bookkeeping goes. Calls may overlap, so the sum of
 * the rows can exceed the wall time.
 *
 * Prints a table and one JSON line (`{"bench":"worker",...}`) per run.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import Database from '../src/sqlite-driver.js';
import { loadClassifier } from '../src/classifier/index.js';
import type { Compute } from '../src/compute/port.js';
import { loadConfig, type Config } from '../src/config.js';
import { inputKey, parseImageResult, resultKey, type ImageResult, type LaunchMessage } from '../src/messages.js';
import type { Queue } from '../src/queue/port.js';
import { openRuntime, type Runtime } from '../src/runtime.js';
import type { ObjectStore } from '../src/storage/port.js';
import { newId } from '../src/web/upload.js';
import { runWorker } from '../src/worker/worker.js';
import { makeTempDir, sharedImagesDir } from '../test/helpers.js';
import { sharedImages } from '../test/e2e/harness.js';
import { logged, parseLogLines } from '../test/log-capture.js';

const WARM_UP = 20;

const { values } = parseArgs({
  options: {
    images: { type: 'string', default: '300' },
    runs: { type: 'string', default: '1' },
    steps: { type: 'boolean', default: false },
  },
});
const total = Number(values.images);
const runs = Number(values.runs);
if (!Number.isInteger(total) || total <= WARM_UP + 1) throw new Error(`--images must be a whole number above ${WARM_UP + 1}, got ${values.images}`);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a whole number of at least 1, got ${values.runs}`);

interface Measured {
  images: number;
  perImageMs: number;
  classifyMs: number;
  bookkeepingMs: number;
  bookkeepingRatio: number;
  peakRssMb: number;
  /** From the worker's start to its exit, start-up included. */
  totalSeconds: number;
}

async function openBenchRuntime(dataDir: string): Promise<{ config: Config; runtime: Runtime }> {
  // Idle wait 1 s: the worker stops soon after the queue is empty; maxInstances 1: one worker.
  // Debug: the worker logs each image's classification time, which is read back below.
  const { config } = loadConfig({ argv: ['--data', dataDir, '--idle-wait', '1', '--max-instances', '1', '--log-level', 'debug'], env: {} });
  const runtime = await openRuntime(config);
  await Promise.all([runtime.store.ensureBucket(config.inputBucket), runtime.store.ensureBucket(config.outputBucket)]);
  return { config, runtime };
}

/** As the web tier: each image in the input bucket, then one launch message per image. */
async function fill(store: ObjectStore, bucket: string, launch: Queue, files: { name: string; body: Buffer }[], count: number): Promise<void> {
  const batchId = newId();
  const queuedAt = Date.now();
  for (let i = 0; i < count; i++) {
    const file = files[i % files.length]!;
    const imageId = newId();
    const key = inputKey(batchId, imageId);
    await store.put(bucket, key, file.body, { contentType: 'image/jpeg', metadata: { batch: batchId, name: encodeURIComponent(file.name) } });
    const message: LaunchMessage = { type: 'launch', imageId, batchId, name: file.name, key, attempt: 1, queuedAt };
    await launch.send(JSON.stringify(message));
  }
}

function workerPid(registryPath: string, id: string): number | undefined {
  const db = new Database(registryPath, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare(`SELECT pid FROM instances WHERE id = ?`).get(id) as { pid: number | null } | undefined)?.pid ?? undefined;
  } finally {
    db.close();
  }
}

/** VmHWM of a live process in MB, or undefined once it is gone. */
function peakRssMb(pid: number): number | undefined {
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

async function runProcessWorker(files: { name: string; body: Buffer }[]): Promise<Measured> {
  const temp = await makeTempDir('icaas-bench-worker-');
  try {
    const { config, runtime } = await openBenchRuntime(temp.dir);
    try {
      await fill(runtime.store, config.inputBucket, runtime.queues.launch, files, total);
      const started = performance.now();
      const [id] = await runtime.compute.start(1);
      if (!id) throw new Error('the compute adapter started no worker');
      const registry = path.join(config.data, 'instances.db');
      let pid: number | undefined;
      let peak = 0;
      for (;;) {
        pid ??= workerPid(registry, id);
        if (pid !== undefined) peak = Math.max(peak, peakRssMb(pid) ?? 0);
        const instance = (await runtime.compute.list()).find((listed) => listed.id === id);
        if (!instance || instance.state === 'stopped') break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const totalSeconds = (performance.now() - started) / 1000;
      const log = await readFile(path.join(config.data, 'logs', `${id}.log`), 'utf8');
      const classifyByImage = new Map<string, number>();
      for (const line of logged(parseLogLines(log), { msg: 'image classified' })) classifyByImage.set(String(line.imageId), Number(line.classifyMs));
      const results = await readResults(runtime.store, config.outputBucket, runtime.queues.launch, [...classifyByImage.keys()]);
      if (results.length !== total) throw new Error(`the worker finished ${results.length} of ${total} images; its log:\n${log.slice(-2000)}`);
      return { ...steadyState(results, (result) => classifyByImage.get(result.imageId)), peakRssMb: peak, totalSeconds };
    } finally {
      await runtime.close();
    }
  } finally {
    await temp.cleanup();
  }
}

async function readResults(store: ObjectStore, bucket: string, launch: Queue, imageIds: string[]): Promise<ImageResult[]> {
  const counts = await launch.counts();
  if (counts.visible + counts.inFlight + counts.delayed > 0) throw new Error(`the launch queue is not empty: ${JSON.stringify(counts)}`);
  const results: ImageResult[] = [];
  for (const imageId of imageIds) {
    const stored = await store.get(bucket, resultKey(imageId));
    if (stored) results.push(parseImageResult(stored.body.toString('utf8')));
  }
  return results.sort((a, b) => a.finishedAt - b.finishedAt);
}

/** Per-image figures over the results after the warm-up, in the order they finished. */
function steadyState(results: ImageResult[], classifyMsOf: (result: ImageResult) => number | undefined): Omit<Measured, 'peakRssMb' | 'totalSeconds'> {
  const errors = results.filter((result) => result.status !== 'ok');
  if (errors.length > 0) throw new Error(`${errors.length} images ended as errors, e.g. ${JSON.stringify(errors[0])}`);
  const steady = results.slice(WARM_UP);
  const perImageMs = (steady[steady.length - 1]!.finishedAt - steady[0]!.finishedAt) / (steady.length - 1);
  // The first steady result's classification happened before the span measured above.
  const classified = steady.slice(1).map((result) => {
    const ms = classifyMsOf(result);
    if (ms === undefined) throw new Error(`no classification time logged for ${result.imageId}`);
    return ms;
  });
  const classifyMs = classified.reduce((sum, ms) => sum + ms, 0) / classified.length;
  return { images: results.length, perImageMs, classifyMs, bookkeepingMs: perImageMs - classifyMs, bookkeepingRatio: (perImageMs - classifyMs) / classifyMs };
}

/** Wraps every method of `target` so its calls are timed under `prefix.method`. */
function timed<T extends object>(target: T, prefix: string, timings: Map<string, { calls: number; ms: number }>): T {
  return new Proxy(target, {
    get(object, property, receiver) {
      const value = Reflect.get(object, property, receiver);
      if (typeof value !== 'function' || typeof property !== 'string') return value;
      return (...args: unknown[]) => {
        const started = performance.now();
        const record = () => {
          const entry = timings.get(`${prefix}.${property}`) ?? { calls: 0, ms: 0 };
          entry.calls++;
          entry.ms += performance.now() - started;
          timings.set(`${prefix}.${property}`, entry);
        };
        const returned = (value as (...a: unknown[]) => unknown).apply(object, args);
        if (returned instanceof Promise) return returned.finally(record);
        record();
        return returned;
      };
    },
  });
}

async function runSteps(files: { name: string; body: Buffer }[]): Promise<void> {
  const temp = await makeTempDir('icaas-bench-worker-');
  const { classifier } = await loadClassifier({ allowDownload: false });
  try {
    const { config, runtime } = await openBenchRuntime(temp.dir);
    try {
      await fill(runtime.store, config.inputBucket, runtime.queues.launch, files, total);
      const timings = new Map<string, { calls: number; ms: number }>();
      const queues = {
        launch: timed(runtime.queues.launch, 'launch queue', timings),
        monitor: timed(runtime.queues.monitor, 'monitor queue', timings),
        output: timed(runtime.queues.output, 'output queue', timings),
      };
      const started = performance.now();
      const summary = await runWorker({
        instanceId: 'i-bench',
        store: timed(runtime.store, 'store', timings),
        inputBucket: config.inputBucket,
        outputBucket: config.outputBucket,
        queues,
        compute: timed<Compute>(runtime.compute, 'registry', timings),
        classifier: timed(classifier, 'classifier', timings),
        idleWaitSeconds: 0,
      });
      const wallMs = performance.now() - started;
      console.log(`\nin-process worker loop, ${summary.processed} images in ${(wallMs / 1000).toFixed(1)} s, ${(wallMs / summary.processed).toFixed(2)} ms per image (warm-up included); time in each call per image:`);
      console.log('call                         | calls/image | ms/call | ms/image');
      const rows = [...timings].sort((a, b) => b[1].ms - a[1].ms);
      for (const [name, { calls, ms }] of rows) {
        console.log(`${name.padEnd(28)} | ${(calls / summary.processed).toFixed(2).padStart(11)} | ${(ms / calls).toFixed(2).padStart(7)} | ${(ms / summary.processed).toFixed(2).padStart(8)}`);
      }
    } finally {
      await runtime.close();
    }
  } finally {
    await classifier.close();
    await temp.cleanup();
  }
}

const images = await sharedImages();
const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readFile(path.join(sharedImagesDir, image.file)) })));
const measured: Measured[] = [];
for (let run = 1; run <= runs; run++) {
  const result = await runProcessWorker(files);
  measured.push(result);
  console.log(`run ${run}: one \`icaas worker\` process, ${result.images} images (${images.length} shared images repeated), ${result.totalSeconds.toFixed(1)} s from start to exit`);
  console.log('per image (steady state) | wall ms | classification ms | bookkeeping ms | bookkeeping / classification | peak RSS MB');
  console.log(`${' '.repeat(24)} | ${result.perImageMs.toFixed(2).padStart(7)} | ${result.classifyMs.toFixed(2).padStart(17)} | ${result.bookkeepingMs.toFixed(2).padStart(14)} | ${result.bookkeepingRatio.toFixed(3).padStart(28)} | ${result.peakRssMb.toFixed(0).padStart(11)}`);
  const round = (value: number, digits = 2) => Number(value.toFixed(digits));
  console.log(JSON.stringify({
    bench: 'worker',
    images: result.images,
    perImageMs: round(result.perImageMs),
    classifyMs: round(result.classifyMs),
    bookkeepingMs: round(result.bookkeepingMs),
    bookkeepingRatio: round(result.bookkeepingRatio, 3),
    peakRssMb: round(result.peakRssMb, 0),
  }));
}
if (values.steps) await runSteps(files);
