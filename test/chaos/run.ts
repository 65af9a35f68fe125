/**
 * A chaos run: the service as separate processes (`icaas web`, `icaas controller`, worker
 * processes) sharing one data folder, while many clients upload images, a random worker
 * instance is killed (SIGKILL) every second, and the web tier and the controllers are each
 * killed and restarted once mid-run; then every invariant is checked (see checks.ts).
 * `npm run chaos` (bench/chaos.ts) runs a long one, `test/e2e/chaos.test.ts` short ones.
 *
 * The parts: processes.ts starts and kills the service's processes, faults.ts injects the
 * faults, uploader.ts is the clients, follower.ts a live client of each batch, checks.ts
 * the invariants and report.ts the outcome.
 */
import path from 'node:path';
import { FsObjectStore } from '../../src/storage/fs.js';
import type { ObjectStore } from '../../src/storage/port.js';
import { S3ObjectStore } from '../../src/storage/s3.js';
import type { EmulatedDeployment } from '../cloud/deployment.js';
import { makeTempDir } from '../helpers.js';
import { checkApi, checkResultObjects, checkStreams, countAttempts, countOrphanImages, invariantFailures, waitForBatches, waitForStreams, type Accepted, type BatchView, type InstancePeaks } from './checks.js';
import { killWorkersAtRandom, prepareClockFile, restartWebAndControllers, stepClockMidRun, type Killed } from './faults.js';
import { followBatch, type Follower } from './follower.js';
import { DEFAULT_CHAOS, sleep, type ChaosOptions } from './options.js';
import { killAllWorkers, registryInstances, ServicePart, workerProcesses } from './processes.js';
import type { ChaosReport } from './report.js';
import { sharedImageFiles, Uploader } from './uploader.js';

export { DEFAULT_CHAOS, type ChaosOptions } from './options.js';
export { formatReport, type AttemptsReport, type ChaosReport } from './report.js';

/** The service under test: its processes, where it keeps its state, and its buckets. */
interface Service {
  dataDir: string;
  registryPath: string;
  web: ServicePart;
  controllers: ServicePart[];
  buckets: { input: string; output: string };
  clockEnv: Record<string, string>;
}

/** Loops that run alongside the uploads (samplers, the worker killer) until stopped. */
class Background {
  stopped = false;
  private readonly tasks: Promise<void>[] = [];

  add(task: Promise<void>): void {
    this.tasks.push(task);
  }

  every(intervalMs: number, step: () => void | Promise<void>): void {
    this.add((async () => {
      while (!this.stopped) {
        await step();
        await sleep(intervalMs);
      }
    })());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.allSettled(this.tasks);
  }
}

async function prepareService(dataDir: string, options: ChaosOptions): Promise<Service & { port: { value: number } }> {
  const port = { value: 0 };
  const common = () => [
    '--host', '127.0.0.1', '--data', dataDir,
    '--max-instances', String(options.maxInstances), '--max-attempts', String(options.maxAttempts), '--policy', options.policy,
    '--idle-wait', '2', '--deadline', '30', '--monitor-check', '0.5', '--launch-interval', '200',
    ...(options.cloud?.args ?? []),
  ];
  const clockEnv = { ...options.cloud?.env, ...(await prepareClockFile(dataDir, options)) };
  return {
    dataDir,
    registryPath: path.join(dataDir, 'instances.db'),
    // The web tier comes back on the port it first had, so clients find it again.
    // The parts log JSON lines (their output is a pipe); pino writes a line's fields before its msg.
    web: new ServicePart('web', () => [...common(), '--port', String(port.value)], /"url":"(http:\/\/[^"]+)","msg":"listening"/, clockEnv),
    controllers: Array.from({ length: options.controllers }, () => new ServicePart('controller', common, /"msg":"model found"/, clockEnv)),
    buckets: options.cloud ? { input: options.cloud.settings.inputBucket, output: options.cloud.settings.outputBucket } : { input: 'icaas-input', output: 'icaas-output' },
    clockEnv,
    port,
  };
}

/** Starts the web tier, then every controller; resolves with the web tier's address. */
async function startService(service: Service & { port: { value: number } }, log: (line: string) => void): Promise<string> {
  const [, url] = await service.web.start();
  service.port.value = Number(new URL(url!).port);
  for (const part of service.controllers) await part.start();
  const count = service.controllers.length;
  log(`service up at ${url} with ${count} controller process${count === 1 ? '' : 'es'}, data in ${service.dataDir}`);
  return url!;
}

/** Samples the instance count as users see it (/api/status), in the registry and as processes; keeps the peaks. */
function sampleInstances(background: Background, service: Service, url: string, peaks: InstancePeaks): void {
  background.every(50, () => {
    peaks.peakRegistry = Math.max(peaks.peakRegistry, registryInstances(service.registryPath).length);
    peaks.peakProcesses = Math.max(peaks.peakProcesses, workerProcesses(service.dataDir).length);
  });
  background.every(100, async () => {
    try {
      const status = (await (await fetch(`${url}/api/status`)).json()) as { instances: { state: string }[] };
      peaks.peakStatus = Math.max(peaks.peakStatus, status.instances.filter((instance) => instance.state !== 'stopped').length);
    } catch {
      // The web tier is restarting.
    }
  });
}

/**
 * Resolves once the upload phase has reached `share` of its duration and some instance is
 * running; `duringUpload` also waits (up to 3 s) for a request under way, so that a part
 * killed now catches an upload midway.
 */
function busyAtShare(service: Service, uploader: Uploader, options: ChaosOptions) {
  return async (share: number, duringUpload: boolean): Promise<void> => {
    await sleep(Math.max(0, uploader.startedAt + options.durationSeconds * 1000 * share - Date.now()));
    while (registryInstances(service.registryPath).length === 0 && uploader.accepted.size < options.images) await sleep(100);
    for (let waited = 0; duringUpload && uploader.inFlight === 0 && waited < 3000; waited += 5) await sleep(5);
  };
}

/** The buckets as the service wrote them, read directly rather than through its API. */
function openCheckStore(dataDir: string, cloud: EmulatedDeployment | undefined): ObjectStore {
  if (!cloud) return new FsObjectStore(path.join(dataDir, 'buckets'));
  return new S3ObjectStore({ region: cloud.emulator.region, endpoint: cloud.emulator.endpoint, forcePathStyle: true, credentials: cloud.emulator.credentials });
}

interface Observed {
  views: Map<string, BatchView>;
  accepted: Accepted;
  followers: Follower[];
  instances: InstancePeaks;
  killed: Killed;
}

/** Checks every invariant on what the run observed and on the buckets; fills `failures` and `details`. */
async function checkInvariants(service: Service, options: ChaosOptions, observed: Observed, failures: string[], details: string[]) {
  const { accepted, followers } = observed;
  const api = checkApi(observed.views, accepted);
  const store = openCheckStore(service.dataDir, options.cloud);
  let bucket;
  let orphans;
  let attempts;
  try {
    bucket = await checkResultObjects(store, service.buckets.output, accepted, api, details);
    orphans = await countOrphanImages(store, service.buckets.input);
    attempts = await countAttempts(store, service.buckets.output, accepted.keys(), options.maxAttempts, details);
  } finally {
    await store.close();
  }
  const stream = checkStreams(followers, accepted);
  failures.push(...invariantFailures({
    expectedImages: options.images,
    accepted: accepted.size,
    api,
    bucket,
    stream,
    malformedFrames: followers.flatMap((follower) => follower.malformed),
    instances: observed.instances,
    attempts,
  }));
  if (options.restartWeb && observed.killed.web !== 1) failures.push('the web tier was not restarted');
  if (options.restartControllers && observed.killed.controllers !== 1) failures.push('the controllers were not restarted');
  return { api, bucket, stream, attempts, unacknowledged: { ...api.unacknowledged, orphans } };
}

export async function runChaos(input: Partial<ChaosOptions> = {}): Promise<ChaosReport> {
  const options: ChaosOptions = { ...DEFAULT_CHAOS, ...input };
  const { log } = options;
  const started = performance.now();
  const temp = await makeTempDir('icaas-chaos-');
  const service = await prepareService(temp.dir, options);
  const failures: string[] = [];
  const details: string[] = [];
  const killed: Killed = { workers: 0, web: 0, controllers: 0 };
  const instances: InstancePeaks = { max: options.maxInstances, peakStatus: 0, peakRegistry: 0, peakProcesses: 0 };
  // By client: each follows its own batch once its first upload is accepted.
  const followers: Follower[] = [];
  const background = new Background();

  try {
    const url = await startService(service, log);
    const clockStep = stepClockMidRun(service.clockEnv, options, started);
    sampleInstances(background, service, url, instances);
    if (options.killEveryMs > 0) {
      background.add(killWorkersAtRandom(service.registryPath, options.killEveryMs, options.killBusyOnly, killed, () => background.stopped));
    }

    const uploader = new Uploader(url, await sharedImageFiles(), options, (client, batchId) => {
      followers[client] ??= followBatch(() => url, batchId);
    }, failures);
    const restarts = restartWebAndControllers({
      web: service.web,
      controller: service.controllers[0]!,
      options,
      killed,
      busyAt: busyAtShare(service, uploader, options),
      acceptedCount: () => uploader.accepted.size,
    });
    await Promise.all([uploader.run(), restarts, clockStep]);
    log(`uploads done after ${((Date.now() - uploader.startedAt) / 1000).toFixed(1)}s: ${uploader.accepted.size} images accepted in ${uploader.batches.size} batches`);

    // The killer keeps going until every batch is complete.
    const views = await waitForBatches(url, uploader.batches, options.timeoutSeconds, failures);
    await background.stop();
    const following = followers.filter(Boolean);
    await waitForStreams(following, uploader.accepted.size);
    await Promise.all(following.map((follower) => follower.stop()));

    const outcome = await checkInvariants(service, options, { views, accepted: uploader.accepted, followers: following, instances, killed }, failures, details);
    // What the service said last is usually where a failure starts to make sense.
    if (failures.length > 0) for (const part of [service.web, ...service.controllers]) details.push(...part.lastLines(25));

    const { log: _log, ...shown } = options;
    return {
      options: shown,
      seconds: (performance.now() - started) / 1000,
      uploads: uploader.counts,
      accepted: uploader.accepted.size,
      final: outcome.api.final,
      ok: outcome.api.ok,
      errors: outcome.api.errors,
      lost: outcome.api.lost,
      duplicateIds: outcome.api.duplicateIds,
      bucket: outcome.bucket,
      stream: outcome.stream,
      unacknowledged: outcome.unacknowledged,
      instances,
      attempts: outcome.attempts,
      clockSteppedAt: await clockStep,
      killed,
      failures,
      details,
      ...(options.keep ? { dataDir: service.dataDir } : {}),
    };
  } finally {
    await background.stop();
    await Promise.allSettled(followers.filter(Boolean).map((follower) => follower.stop()));
    await service.web.kill('SIGKILL');
    for (const part of service.controllers) await part.kill('SIGKILL');
    await killAllWorkers(service.dataDir, service.registryPath);
    if (!options.keep) await temp.cleanup();
  }
}
