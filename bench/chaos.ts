/**
 * Chaos run: the embedded service as separate processes (`icaas web`, `icaas controller`,
 * worker processes) sharing one data folder, while many clients upload images, a random
 * worker instance is killed (SIGKILL) every second, and the web tier and the controllers
 * are each killed (SIGKILL) and restarted once mid-run. At the end it checks and prints:
 * every accepted image has exactly one final result (API and output bucket), none is
 * lost, no result was shown twice on the live event stream (followed across the web-tier
 * restart with Last-Event-ID), the instance count never exceeded the maximum, and no
 * image ran more attempts than allowed (its result and the retry claims in the output
 * bucket). Variants: `--controllers 2` runs two controller processes at once against the
 * one data folder (the first is the one killed and restarted); `--clock-step=-30` steps
 * the wall clock of every process (web, controllers, workers) back 30 s mid-run, through
 * the clock file that ICAAS_TEST_CLOCK_FILE names (see src/clock.ts).
 *
 *   npm run chaos [-- --images 500 --clients 50 --duration 60 --max-instances 20]
 *   npm run chaos -- --controllers 2
 *   npm run chaos -- --clock-step=-30
 *   node dist/bench/chaos.js --help
 *
 * Exit status 0 when every check holds, 1 otherwise. `test/e2e/chaos.test.ts` runs a short
 * version inside `npm test`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import Database from '../src/sqlite-driver.js';
import { parseImageResult, resultKey } from '../src/messages.js';
import { attemptClaimSchema } from '../src/outcomes.js';
import { FsObjectStore } from '../src/storage/fs.js';
import { S3ObjectStore } from '../src/storage/s3.js';
import type { ObjectStore } from '../src/storage/port.js';
import { provisionEmulated, type EmulatedDeployment } from '../test/cloud/deployment.js';
import { startEmulatorProcess } from '../test/cloud/emulator.js';
import { cliPath, makeTempDir, serverSentEvents, sharedImagesDir } from '../test/helpers.js';

export interface ChaosOptions {
  images: number;
  clients: number;
  /** Seconds over which the clients spread their uploads. */
  durationSeconds: number;
  maxInstances: number;
  /** Milliseconds between worker kills; 0 for none. */
  killEveryMs: number;
  /**
   * Kill only workers that hold an image. Killing one still starting counts towards the
   * start-failure hold-back (a crash loop looks the same), which, when workers start slowly,
   * can hold back starts longer than the run allows; this keeps the run about the queues.
   */
  killBusyOnly: boolean;
  restartWeb: boolean;
  restartControllers: boolean;
  /** Most files per upload request (each request takes 1 to this many). */
  filesPerRequest: number;
  /** Seconds to wait, after the uploads, for every image to finish. */
  timeoutSeconds: number;
  /** Keep the data folder (buckets, queues, registry, worker logs) for a look afterwards. */
  keep: boolean;
  /** Controller processes running at once against the one data folder. */
  controllers: number;
  /** Milliseconds by which every process's wall clock is stepped mid-run (negative: back); 0 for none. */
  clockStepMs: number;
  /** The service's --max-attempts. */
  maxAttempts: number;
  /**
   * The service's --policy. queue-match by default: it drives the tier to its maximum,
   * which is what the check that the maximum holds under kills and restarts needs.
   */
  policy: string;
  /**
   * Run in the distributed shape on this deployment (S3 and SQS on the protocol emulator,
   * local workers) instead of on files and SQLite.
   */
  cloud?: EmulatedDeployment;
  log: (line: string) => void;
}

export const DEFAULT_CHAOS: ChaosOptions = {
  images: 500,
  clients: 50,
  durationSeconds: 60,
  maxInstances: 20,
  policy: 'queue-match',
  killEveryMs: 1000,
  killBusyOnly: false,
  restartWeb: true,
  restartControllers: true,
  filesPerRequest: 4,
  timeoutSeconds: 300,
  keep: false,
  controllers: 1,
  clockStepMs: 0,
  maxAttempts: 3,
  log: () => {},
};

export interface ChaosReport {
  options: Omit<ChaosOptions, 'log'>;
  seconds: number;
  uploads: { requests: number; accepted: number; retried: number; refusedConnection: number; reset: number; busy: number; shuttingDown: number; serverErrors: number };
  accepted: number;
  final: number;
  ok: number;
  errors: number;
  lost: number;
  duplicateIds: number;
  bucket: { results: number; missing: number; disagree: number };
  stream: { shown: number; onStream: number; afterReset: number; shownTwice: number; notShown: number; resets: number; reconnects: number };
  /** Images stored by requests the client never got an answer to (not accepted), and whether they all finished. */
  unacknowledged: { images: number; unfinished: number; orphans: number };
  instances: { max: number; peakStatus: number; peakRegistry: number; peakProcesses: number };
  /** Attempts per image, from the results and the retry claims in the output bucket. */
  attempts: AttemptsReport;
  /** When the wall clock was stepped, in seconds from the start; null when it was not. */
  clockSteppedAt: number | null;
  killed: { workers: number; web: number; controllers: number };
  failures: string[];
  /** The images behind the failures, for a look at what went wrong. */
  details: string[];
  dataDir?: string;
}

interface ImageFile {
  name: string;
  body: Buffer;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export interface AttemptsReport {
  limit: number;
  /** The most attempts any image's result records, or any retry claim names. */
  maxSeen: number;
  /** Retries claimed (attempt markers), over all images. */
  retries: number;
  /** Images whose result or claims go past the limit. */
  overLimit: number;
}

/** One part of the service (`icaas web` or `icaas controller`) as a child process. */
class Part {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  output = '';

  constructor(
    readonly name: 'web' | 'controller',
    private readonly args: () => string[],
    private readonly ready: RegExp,
    private readonly env: Record<string, string> = {},
  ) {}

  async start(timeoutMs = 60_000): Promise<RegExpExecArray> {
    const child = spawn(process.execPath, [cliPath, this.name, ...this.args()], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    const from = this.output.length;
    child.stdout!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = this.ready.exec(this.output.slice(from));
      if (match) return match;
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`icaas ${this.name} exited while starting:\n${this.output.slice(from)}`);
      if (Date.now() > deadline) throw new Error(`icaas ${this.name} did not start within ${timeoutMs} ms:\n${this.output.slice(from)}`);
      await sleep(20);
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill(signal);
    await this.exited;
  }
}

/** Live worker processes of this data folder, found in /proc (the registry may lag behind). */
function workerProcesses(dataDir: string): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((entry) => /^\d+$/.test(entry));
  } catch {
    return pids;
  }
  const marker = `ICAAS_DATA=${dataDir}\u0000`;
  for (const entry of entries) {
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      // A zombie (killed, not yet reaped) has an empty command line: it runs nothing.
      if (!cmdline.includes(`${cliPath}\u0000worker\u0000`)) continue;
      if (!readFileSync(`/proc/${entry}/environ`, 'utf8').includes(marker)) continue;
      pids.push(Number(entry));
    } catch {
      // Gone meanwhile, or not ours to read.
    }
  }
  return pids;
}

/** The registry's non-stopped instances with their pids. */
function registryInstances(registryPath: string): { id: string; pid: number | null; state: string }[] {
  try {
    const db = new Database(registryPath, { readonly: true, fileMustExist: true });
    try {
      return db.prepare(`SELECT id, pid, state FROM instances WHERE state != 'stopped'`).all() as { id: string; pid: number | null; state: string }[];
    } finally {
      db.close();
    }
  } catch {
    return [];
  }
}

function killGroup(pid: number): boolean {
  try {
    process.kill(-pid, 'SIGKILL');
    return true;
  } catch {
    try {
      process.kill(pid, 'SIGKILL');
      return true;
    } catch {
      return false;
    }
  }
}

async function sharedImageFiles(): Promise<ImageFile[]> {
  const names = readdirSync(sharedImagesDir).filter((name) => /\.jpe?g$/i.test(name)).sort();
  return Promise.all(names.map(async (name) => ({ name, body: await readFile(path.join(sharedImagesDir, name)) })));
}

interface Follower {
  /** Final results seen per image id, on the stream. */
  onStream: Map<string, number>;
  /** Images first seen final in a reload (once connected, or after a reset). */
  afterReset: Set<string>;
  resets: number;
  reconnects: number;
  stop(): Promise<void>;
}

/**
 * Follows one batch's event stream the way the page does: loads the batch once the stream
 * is open (the stream carries only what happens after it connects), reconnects after any
 * failure with the last event id it saw, as EventSource does, and on `reset` reloads.
 */
function followBatch(url: () => string, batchId: string): Follower {
  const onStream = new Map<string, number>();
  const afterReset = new Set<string>();
  const follower: Follower = { onStream, afterReset, resets: 0, reconnects: 0, stop: async () => {} };
  const controller = new AbortController();
  let lastEventId: string | undefined;
  const reload = async () => {
    for (let attempt = 0; attempt < 50 && !controller.signal.aborted; attempt++) {
      try {
        const response = await fetch(`${url()}/api/batches/${batchId}`, { signal: controller.signal });
        if (!response.ok) throw new Error(String(response.status));
        const batch = (await response.json()) as { images: { id: string; status: string }[] };
        for (const image of batch.images) {
          if ((image.status === 'done' || image.status === 'error') && !onStream.has(image.id)) afterReset.add(image.id);
        }
        return;
      } catch {
        await sleep(200);
      }
    }
  };
  const running = (async () => {
    while (!controller.signal.aborted) {
      try {
        const response = await fetch(`${url()}/api/events?batch=${batchId}`, {
          headers: lastEventId ? { 'last-event-id': lastEventId } : {},
          signal: controller.signal,
        });
        if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
        if (lastEventId === undefined) await reload();
        for await (const { id, event, data } of serverSentEvents(response.body)) {
          if (id !== undefined) lastEventId = id;
          if (event === 'image') {
            const image = JSON.parse(data) as { id: string; status: string };
            if (image.status === 'done' || image.status === 'error') onStream.set(image.id, (onStream.get(image.id) ?? 0) + 1);
          } else if (event === 'reset') {
            follower.resets++;
            await reload();
          }
        }
      } catch {
        // Connection refused or cut (the web tier is down or restarting): retry below.
      }
      if (controller.signal.aborted) break;
      follower.reconnects++;
      await sleep(200);
    }
  })();
  follower.stop = async () => {
    controller.abort();
    await running;
  };
  return follower;
}

/**
 * The clock file every process reads its wall-clock offset from (src/clock.ts), or none when
 * the run does not step the clock. Starts at no offset.
 */
async function prepareClockFile(dataDir: string, options: ChaosOptions): Promise<Record<string, string>> {
  if (options.clockStepMs === 0) return {};
  const file = path.join(dataDir, 'clock-offset');
  await writeFile(file, '0');
  return { ICAAS_TEST_CLOCK_FILE: file };
}

/** Steps every process's wall clock once, midway through the uploads; resolves with when (seconds from `started`). */
async function stepClockMidRun(env: Record<string, string>, options: ChaosOptions, started: number, log: (line: string) => void): Promise<number | null> {
  const file = env.ICAAS_TEST_CLOCK_FILE;
  if (!file) return null;
  await sleep(options.durationSeconds * 1000 * 0.5);
  await writeFile(file, String(options.clockStepMs));
  log(`stepped every process's wall clock by ${options.clockStepMs / 1000}s`);
  return (performance.now() - started) / 1000;
}

/**
 * Attempts per image from the output bucket: the attempt count of each result and the
 * retry claims (attempts/<image>/<n>, one per retry sent). Neither may pass the limit.
 */
async function countAttempts(store: ObjectStore, outputBucket: string, imageIds: Iterable<string>, limit: number, details: string[]): Promise<AttemptsReport> {
  const report: AttemptsReport = { limit, maxSeen: 0, retries: 0, overLimit: 0 };
  for (const id of imageIds) {
    let most = 0;
    const object = await store.get(outputBucket, resultKey(id));
    if (object) most = parseImageResult(object.body.toString('utf8')).attempts;
    const claimed: number[] = [];
    for await (const marker of store.list(outputBucket, `attempts/${id}/`)) {
      const claim = await store.get(outputBucket, marker.key);
      if (!claim) continue;
      claimed.push(attemptClaimSchema.parse(JSON.parse(claim.body.toString('utf8'))).attempt);
    }
    report.retries += claimed.length;
    most = Math.max(most, ...claimed);
    report.maxSeen = Math.max(report.maxSeen, most);
    if (most > limit) {
      report.overLimit++;
      details.push(`${id}: ${most} attempts (claims ${claimed.sort((a, b) => a - b).join(', ') || 'none'}), over the limit of ${limit}`);
    }
  }
  return report;
}

/** The buckets as the service wrote them, read directly rather than through its API. */
function openCheckStore(dataDir: string, cloud: EmulatedDeployment | undefined): ObjectStore {
  if (!cloud) return new FsObjectStore(path.join(dataDir, 'buckets'));
  return new S3ObjectStore({ region: cloud.emulator.region, endpoint: cloud.emulator.endpoint, forcePathStyle: true, credentials: cloud.emulator.credentials });
}

export async function runChaos(input: Partial<ChaosOptions> = {}): Promise<ChaosReport> {
  const options: ChaosOptions = { ...DEFAULT_CHAOS, ...input };
  const { log } = options;
  const started = performance.now();
  const temp = await makeTempDir('icaas-chaos-');
  const dataDir = temp.dir;
  const registryPath = path.join(dataDir, 'instances.db');
  let port = 0;
  const common = () => [
    '--host', '127.0.0.1', '--data', dataDir,
    '--max-instances', String(options.maxInstances), '--max-attempts', String(options.maxAttempts), '--policy', options.policy,
    '--idle-wait', '2', '--deadline', '30', '--monitor-check', '0.5', '--launch-interval', '200',
    ...(options.cloud?.args ?? []),
  ];
  const clockEnv = { ...options.cloud?.env, ...(await prepareClockFile(dataDir, options)) };
  const buckets = options.cloud ? { input: options.cloud.settings.inputBucket, output: options.cloud.settings.outputBucket } : { input: 'icaas-input', output: 'icaas-output' };
  // The parts log JSON lines (their output is a pipe); pino writes a line's fields before its msg.
  const web = new Part('web', () => [...common(), '--port', String(port)], /"url":"(http:\/\/[^"]+)","msg":"listening"/, clockEnv);
  const allControllers = Array.from({ length: options.controllers }, () => new Part('controller', common, /"msg":"model found"/, clockEnv));
  // The first is the one killed and restarted; any others keep running throughout.
  const controllers = allControllers[0]!;
  const failures: string[] = [];
  const killed = { workers: 0, web: 0, controllers: 0 };
  const uploads = { requests: 0, accepted: 0, retried: 0, refusedConnection: 0, reset: 0, busy: 0, shuttingDown: 0, serverErrors: 0 };
  const instances = { max: options.maxInstances, peakStatus: 0, peakRegistry: 0, peakProcesses: 0 };
  const followers: Follower[] = [];
  let stopBackground = false;
  const background: Promise<void>[] = [];

  try {
    const [, address] = await web.start();
    const url = address!;
    port = Number(new URL(url).port);
    for (const part of allControllers) await part.start();
    log(`service up at ${url} with ${allControllers.length} controller process${allControllers.length === 1 ? '' : 'es'}, data in ${dataDir}`);
    const clockStep = stepClockMidRun(clockEnv, options, started, log);

    // Samplers: status (as users see it), the registry, and the processes themselves.
    background.push((async () => {
      while (!stopBackground) {
        instances.peakRegistry = Math.max(instances.peakRegistry, registryInstances(registryPath).length);
        instances.peakProcesses = Math.max(instances.peakProcesses, workerProcesses(dataDir).length);
        await sleep(50);
      }
    })());
    background.push((async () => {
      while (!stopBackground) {
        try {
          const status = (await (await fetch(`${url}/api/status`)).json()) as { instances: { state: string }[] };
          instances.peakStatus = Math.max(instances.peakStatus, status.instances.filter((instance) => instance.state !== 'stopped').length);
        } catch {
          // The web tier is restarting.
        }
        await sleep(100);
      }
    })());
    // The killer: a random live worker every killEveryMs.
    if (options.killEveryMs > 0) {
      background.push((async () => {
        while (!stopBackground) {
          await sleep(options.killEveryMs);
          const candidates = registryInstances(registryPath).filter((instance) => instance.pid !== null && (!options.killBusyOnly || instance.state === 'busy'));
          const victim = candidates[Math.floor(Math.random() * candidates.length)];
          if (!victim) continue;
          try {
            // The command line names the instance: a recycled pid is never killed by mistake.
            if (!readFileSync(`/proc/${victim.pid}/cmdline`, 'utf8').includes(victim.id)) continue;
          } catch {
            continue;
          }
          if (killGroup(victim.pid!)) killed.workers++;
        }
      })());
    }

    // The clients: each uploads its share in requests of 1..filesPerRequest files into one
    // batch, spread over the duration, retrying what never got an answer.
    const pool = await sharedImageFiles();
    const accepted = new Map<string, { batchId: string; name: string }>();
    const batches = new Set<string>();
    const uploadStart = Date.now();
    let inFlight = 0;
    const clientWork = Array.from({ length: options.clients }, (_, client) => {
      const mine: ImageFile[] = [];
      for (let i = client; i < options.images; i += options.clients) {
        const source = pool[i % pool.length]!;
        mine.push({ name: `c${client}-${i}-${source.name}`, body: source.body });
      }
      return mine;
    });
    // Time between one client's requests, so that its requests span the duration.
    const requestsPerClient = Math.max(1, options.images / options.clients / ((1 + options.filesPerRequest) / 2));
    const gapMs = (options.durationSeconds * 1000) / requestsPerClient;

    const client = async (index: number) => {
      const files = clientWork[index]!;
      let batchId: string | undefined;
      let next = 0;
      // Staggered starts, so the uploads are spread over the whole duration.
      await sleep(Math.random() * gapMs);
      while (next < files.length) {
        const take = Math.min(files.length - next, 1 + Math.floor(Math.random() * options.filesPerRequest));
        const chunk = files.slice(next, next + take);
        for (let attempt = 0; ; attempt++) {
          if (attempt > 0) uploads.retried++;
          if (attempt > 200) throw new Error(`client ${index}: an upload failed 200 times`);
          const form = new FormData();
          for (const file of chunk) form.append('images', new Blob([file.body], { type: 'image/jpeg' }), file.name);
          uploads.requests++;
          let response: Response;
          inFlight++;
          try {
            response = await fetch(`${url}/api/images${batchId ? `?batch=${batchId}` : ''}`, { method: 'POST', body: form });
          } catch (error) {
            const code = ((error as Error).cause as { code?: string } | undefined)?.code;
            if (code === 'ECONNREFUSED') uploads.refusedConnection++;
            else uploads.reset++;
            await sleep(200 + Math.random() * 300);
            continue;
          } finally {
            inFlight--;
          }
          let body: { batchId?: string; images?: { id: string; name: string }[]; rejected?: unknown[]; error?: string };
          try {
            body = (await response.json()) as typeof body;
          } catch {
            // The answer was cut off: the upload is not known to be accepted.
            uploads.reset++;
            await sleep(200);
            continue;
          }
          if (response.status === 202) {
            batchId = body.batchId!;
            batches.add(batchId);
            for (const image of body.images ?? []) accepted.set(image.id, { batchId, name: image.name });
            if ((body.rejected ?? []).length > 0) failures.push(`client ${index}: real images were rejected: ${JSON.stringify(body.rejected)}`);
            uploads.accepted++;
            if (!followers[index]) followers[index] = followBatch(() => url, batchId);
            break;
          }
          const retryAfter = Number(response.headers.get('retry-after') ?? '1');
          if (response.status === 429 || response.status === 503) {
            if (response.status === 429) uploads.busy++;
            else uploads.shuttingDown++;
            await sleep(Math.min(5, Math.max(0.2, retryAfter)) * 1000);
            continue;
          }
          if (response.status >= 500) {
            uploads.serverErrors++;
            await sleep(500);
            continue;
          }
          throw new Error(`client ${index}: upload answered ${response.status}: ${JSON.stringify(body)}`);
        }
        next += take;
        if (next < files.length) await sleep(gapMs * (0.5 + Math.random()));
      }
    };

    // The restarts, at about two fifths and three fifths of the upload phase, each once
    // images are being classified, so that results land while the part is down.
    const working = async (share: number, duringUpload: boolean) => {
      await sleep(Math.max(0, uploadStart + options.durationSeconds * 1000 * share - Date.now()));
      while (registryInstances(registryPath).length === 0 && accepted.size < options.images) await sleep(100);
      // The web tier goes down in the middle of an upload when there is one to catch.
      for (let waited = 0; duringUpload && inFlight === 0 && waited < 3000; waited += 5) await sleep(5);
    };
    const restarts = (async () => {
      if (options.restartWeb) {
        await working(0.4, true);
        log(`killing the web tier (SIGKILL) with ${accepted.size} images accepted`);
        await web.kill('SIGKILL');
        killed.web++;
        await sleep(1500);
        await web.start();
        log('web tier restarted');
      }
      if (options.restartControllers) {
        await working(0.6, false);
        log(`killing the controllers (SIGKILL) with ${accepted.size} images accepted`);
        await controllers.kill('SIGKILL');
        killed.controllers++;
        await sleep(1500);
        await controllers.start();
        log('controllers restarted');
      }
    })();

    await Promise.all([...clientWork.map((_, index) => client(index)), restarts, clockStep]);
    log(`uploads done after ${((Date.now() - uploadStart) / 1000).toFixed(1)}s: ${accepted.size} images accepted in ${batches.size} batches`);

    // Wait until every batch is complete (the killer keeps going meanwhile).
    const deadline = Date.now() + options.timeoutSeconds * 1000;
    type Batch = { images: { id: string; name: string; status: string; attempts: number }[] };
    let views = new Map<string, Batch>();
    for (;;) {
      views = new Map();
      let open = 0;
      for (const batchId of batches) {
        try {
          const batch = (await (await fetch(`${url}/api/batches/${batchId}`)).json()) as Batch;
          views.set(batchId, batch);
          open += batch.images.filter((image) => image.status !== 'done' && image.status !== 'error').length;
        } catch {
          open++;
        }
      }
      if (open === 0) break;
      if (Date.now() > deadline) {
        failures.push(`${open} images still unfinished after ${options.timeoutSeconds}s`);
        break;
      }
      await sleep(500);
    }
    stopBackground = true;
    await Promise.all(background);
    // The streams may lag a moment behind the API.
    const streamDeadline = Date.now() + 10_000;
    while (Date.now() < streamDeadline) {
      const shown = followers.reduce((sum, follower) => sum + (follower ? new Set([...follower.onStream.keys(), ...follower.afterReset]).size : 0), 0);
      if (shown >= accepted.size) break;
      await sleep(200);
    }
    await Promise.all(followers.filter(Boolean).map((follower) => follower.stop()));

    // Checks.
    const byId = new Map<string, { status: string; batchId: string }>();
    const unacknowledged = { images: 0, unfinished: 0, orphans: 0 };
    let duplicateIds = 0;
    for (const [batchId, batch] of views) {
      const seen = new Set<string>();
      for (const image of batch.images) {
        if (seen.has(image.id)) duplicateIds++;
        seen.add(image.id);
        byId.set(image.id, { status: image.status, batchId });
        if (!accepted.has(image.id)) {
          unacknowledged.images++;
          if (image.status !== 'done' && image.status !== 'error') unacknowledged.unfinished++;
        }
      }
    }
    let final = 0;
    let ok = 0;
    let errors = 0;
    let lost = 0;
    for (const [id] of accepted) {
      const image = byId.get(id);
      if (!image) lost++;
      else if (image.status === 'done') (final++, ok++);
      else if (image.status === 'error') (final++, errors++);
    }
    const store = openCheckStore(dataDir, options.cloud);
    const bucket = { results: 0, missing: 0, disagree: 0 };
    const details: string[] = [];
    for (const [id, { batchId, name }] of accepted) {
      const object = await store.get(buckets.output, resultKey(id));
      const api = byId.get(id)?.status;
      if (!object) {
        bucket.missing++;
        details.push(`${id} (${name}, batch ${batchId}): ${api ?? 'not listed'} in the API, no result object`);
        continue;
      }
      bucket.results++;
      const result = parseImageResult(object.body.toString('utf8'));
      if ((result.status === 'ok' ? 'done' : 'error') !== api) {
        bucket.disagree++;
        details.push(`${id} (${name}, batch ${batchId}): ${api ?? 'not listed'} in the API, result object ${JSON.stringify(result)}`);
      }
    }
    // Images stored by an upload that was cut off before its manifest: never queued or shown.
    const listed = new Set<string>();
    for await (const object of store.list(buckets.input, 'batches/')) {
      const manifest = await store.get(buckets.input, object.key);
      for (const image of (JSON.parse(manifest!.body.toString('utf8')) as { images: { key: string }[] }).images) listed.add(image.key);
    }
    for await (const object of store.list(buckets.input, 'images/')) if (!listed.has(object.key)) unacknowledged.orphans++;
    const attempts = await countAttempts(store, buckets.output, accepted.keys(), options.maxAttempts, details);
    await store.close();
    const stream = { shown: 0, onStream: 0, afterReset: 0, shownTwice: 0, notShown: 0, resets: 0, reconnects: 0 };
    const shownIds = new Set<string>();
    for (const follower of followers.filter(Boolean)) {
      stream.resets += follower.resets;
      stream.reconnects += follower.reconnects;
      for (const [id, count] of follower.onStream) {
        shownIds.add(id);
        stream.onStream++;
        if (count > 1) stream.shownTwice++;
      }
      for (const id of follower.afterReset) {
        if (!follower.onStream.has(id)) (stream.afterReset++, shownIds.add(id));
      }
    }
    for (const [id] of accepted) {
      if (shownIds.has(id)) stream.shown++;
      else stream.notShown++;
    }

    if (accepted.size !== options.images) failures.push(`${accepted.size} of ${options.images} images were accepted`);
    if (lost > 0) failures.push(`${lost} accepted images are missing from their batch`);
    if (final !== accepted.size) failures.push(`${accepted.size - final} accepted images have no final result`);
    if (duplicateIds > 0) failures.push(`${duplicateIds} images appear twice in a batch`);
    if (bucket.missing > 0) failures.push(`${bucket.missing} accepted images have no result object in the output bucket`);
    if (bucket.disagree > 0) failures.push(`${bucket.disagree} result objects disagree with the API`);
    if (stream.shownTwice > 0) failures.push(`${stream.shownTwice} results were shown twice on the live stream`);
    if (stream.notShown > 0) failures.push(`${stream.notShown} results never reached the live client`);
    if (unacknowledged.unfinished > 0) failures.push(`${unacknowledged.unfinished} images of unacknowledged uploads never finished`);
    for (const [what, peak] of [['status', instances.peakStatus], ['registry', instances.peakRegistry], ['processes', instances.peakProcesses]] as const) {
      if (peak > options.maxInstances) failures.push(`instances peaked at ${peak} (${what}), over the maximum of ${options.maxInstances}`);
    }
    if (attempts.overLimit > 0) failures.push(`${attempts.overLimit} images ran more than ${options.maxAttempts} attempts`);
    if (options.restartWeb && killed.web !== 1) failures.push('the web tier was not restarted');
    if (options.restartControllers && killed.controllers !== 1) failures.push('the controllers were not restarted');
    if (failures.length > 0) {
      // What the service said last is usually where a failure starts to make sense.
      for (const part of [web, ...allControllers]) {
        details.push(`last lines of icaas ${part.name}:`, ...part.output.trimEnd().split('\n').slice(-25).map((line) => `  ${line}`));
      }
    }

    const { log: _log, ...shown } = options;
    return {
      options: shown,
      seconds: (performance.now() - started) / 1000,
      uploads,
      accepted: accepted.size,
      final,
      ok,
      errors,
      lost,
      duplicateIds,
      bucket,
      stream,
      unacknowledged,
      instances,
      attempts,
      clockSteppedAt: await clockStep,
      killed,
      failures,
      details,
      ...(options.keep ? { dataDir } : {}),
    };
  } finally {
    stopBackground = true;
    await Promise.allSettled(background);
    await Promise.allSettled(followers.filter(Boolean).map((follower) => follower.stop()));
    await web.kill('SIGKILL');
    for (const part of allControllers) await part.kill('SIGKILL');
    // Workers are detached from the controller: find and kill every one of this data folder.
    for (let round = 0; round < 20; round++) {
      const pids = [...new Set([...workerProcesses(dataDir), ...registryInstances(registryPath).map((instance) => instance.pid).filter((pid): pid is number => pid !== null)])];
      const live = pids.filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/environ`, 'utf8').includes(`ICAAS_DATA=${dataDir}\u0000`);
        } catch {
          return false;
        }
      });
      if (live.length === 0) break;
      for (const pid of live) killGroup(pid);
      await sleep(100);
    }
    if (!options.keep) await temp.cleanup();
  }
}

export function formatReport(report: ChaosReport): string {
  const { options: o, uploads: u, stream: s, instances: i, bucket: b, killed: k } = report;
  return [
    `chaos: ${o.images} images by ${o.clients} clients over ${o.durationSeconds}s, at most ${o.maxInstances} instances`,
    `faults: ${k.workers} worker instances killed (one every ${o.killEveryMs / 1000}s), web tier killed and restarted ${k.web}x, controllers ${k.controllers}x; ${o.controllers} controller process${o.controllers === 1 ? '' : 'es'} at once`,
    ...(report.clockSteppedAt !== null ? [`clock: every process's wall clock stepped by ${o.clockStepMs / 1000}s at ${report.clockSteppedAt.toFixed(1)}s`] : []),
    `uploads: ${u.accepted} requests accepted; ${u.retried} retried (${u.refusedConnection} connection refused, ${u.reset} cut off, ${u.shuttingDown} 503, ${u.busy} 429, ${u.serverErrors} 5xx)`,
    `accepted images: ${report.accepted}; with one final result: ${report.final} (${report.ok} ok, ${report.errors} error); lost: ${report.lost}; listed twice: ${report.duplicateIds}`,
    `output bucket: ${b.results} result objects, ${b.missing} missing, ${b.disagree} disagreeing with the API`,
    `live stream: ${s.shown} of ${report.accepted} results shown (${s.onStream} as events, ${s.afterReset} by a reload on connecting or after a reset), ${s.shownTwice} shown twice, ${s.notShown} never shown; ${s.resets} resets, ${s.reconnects} reconnects`,
    `unacknowledged uploads: ${report.unacknowledged.images} images accepted without an answer reaching the client (${report.unacknowledged.unfinished} unfinished), ${report.unacknowledged.orphans} stored before the upload was cut off (never queued)`,
    `instances: peak ${i.peakStatus} in /api/status, ${i.peakRegistry} in the registry, ${i.peakProcesses} worker processes; maximum ${i.max}`,
    `attempts: at most ${report.attempts.maxSeen} per image (limit ${report.attempts.limit}); ${report.attempts.retries} retries claimed; ${report.attempts.overLimit} images over the limit`,
    `took ${report.seconds.toFixed(1)}s`,
    ...(report.dataDir ? [`data kept in ${report.dataDir}`] : []),
    report.failures.length === 0 ? 'PASS: every check holds' : `FAIL:\n${[...report.failures, ...report.details].map((line) => `  - ${line}`).join('\n')}`,
  ].join('\n');
}

function clockStepSeconds(value: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || Math.abs(parsed) > 3600) throw new Error(`--clock-step must be a number of seconds within an hour either way, got ${value}`);
  return parsed;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      images: { type: 'string', default: String(DEFAULT_CHAOS.images) },
      clients: { type: 'string', default: String(DEFAULT_CHAOS.clients) },
      duration: { type: 'string', default: String(DEFAULT_CHAOS.durationSeconds) },
      'max-instances': { type: 'string', default: String(DEFAULT_CHAOS.maxInstances) },
      'kill-every': { type: 'string', default: String(DEFAULT_CHAOS.killEveryMs / 1000) },
      'files-per-request': { type: 'string', default: String(DEFAULT_CHAOS.filesPerRequest) },
      timeout: { type: 'string', default: String(DEFAULT_CHAOS.timeoutSeconds) },
      'no-restarts': { type: 'boolean', default: false },
      controllers: { type: 'string', default: String(DEFAULT_CHAOS.controllers) },
      'clock-step': { type: 'string', default: '0' },
      'max-attempts': { type: 'string', default: String(DEFAULT_CHAOS.maxAttempts) },
      policy: { type: 'string', default: DEFAULT_CHAOS.policy },
      keep: { type: 'boolean', default: false },
      cloud: { type: 'boolean', default: false },
      'kill-busy-only': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write([
      'npm run chaos -- [options]   (or: node dist/bench/chaos.js [options])',
      '',
      `  --images N             images to upload (default ${DEFAULT_CHAOS.images}; the 100 shared images, repeated)`,
      `  --clients N            concurrent clients (default ${DEFAULT_CHAOS.clients})`,
      `  --duration S           seconds over which the uploads are spread (default ${DEFAULT_CHAOS.durationSeconds})`,
      `  --max-instances N      the service's instance limit (default ${DEFAULT_CHAOS.maxInstances})`,
      `  --kill-every S         seconds between worker kills, 0 for none (default ${DEFAULT_CHAOS.killEveryMs / 1000})`,
      `  --files-per-request N  most files per upload request (default ${DEFAULT_CHAOS.filesPerRequest})`,
      `  --timeout S            seconds to wait for every image after the uploads (default ${DEFAULT_CHAOS.timeoutSeconds})`,
      '  --no-restarts          do not kill and restart the web tier and the controllers',
      `  --controllers N        controller processes at once against the one data folder (default ${DEFAULT_CHAOS.controllers})`,
      '  --clock-step=S         step every process\'s wall clock by S seconds midway through the uploads (e.g. --clock-step=-30; the = is needed for a negative S); 0 for none',
      `  --max-attempts N       the service's attempts per image (default ${DEFAULT_CHAOS.maxAttempts})`,
      `  --policy NAME          the service's scaling policy (default ${DEFAULT_CHAOS.policy}: it drives the tier to its maximum)`,
      '  --keep                 keep the data folder (buckets, queues, registry, worker logs) afterwards',
      '  --kill-busy-only       kill only workers that hold an image (not those still starting)',
      '  --cloud                the distributed shape: S3 and SQS on a protocol emulator on loopback, local workers',
      '',
    ].join('\n'));
    return 0;
  }
  const number = (name: string, value: string, min: number) => {
    const parsed = Number(value);
    if (!Number.isFinite(parsed) || parsed < min) throw new Error(`--${name} must be a number of at least ${min}, got ${value}`);
    return parsed;
  };
  const emulator = values.cloud ? await startEmulatorProcess() : undefined;
  const cloud = emulator ? await provisionEmulated(emulator, { name: 'chaos' }) : undefined;
  const report = await runChaos({
    ...(cloud ? { cloud } : {}),
    images: Math.round(number('images', values.images, 1)),
    clients: Math.round(number('clients', values.clients, 1)),
    durationSeconds: number('duration', values.duration, 1),
    maxInstances: Math.round(number('max-instances', values['max-instances'], 1)),
    killEveryMs: number('kill-every', values['kill-every'], 0) * 1000,
    killBusyOnly: values['kill-busy-only'],
    filesPerRequest: Math.round(number('files-per-request', values['files-per-request'], 1)),
    timeoutSeconds: number('timeout', values.timeout, 1),
    controllers: Math.round(number('controllers', values.controllers, 1)),
    clockStepMs: clockStepSeconds(values['clock-step']) * 1000,
    maxAttempts: Math.round(number('max-attempts', values['max-attempts'], 1)),
    policy: values.policy,
    restartWeb: !values['no-restarts'],
    restartControllers: !values['no-restarts'],
    keep: values.keep,
    log: (line) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`),
  }).finally(() => emulator?.stop());
  process.stdout.write(`${formatReport(report)}\n`);
  return report.failures.length === 0 ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then((code) => (process.exitCode = code), (error: unknown) => {
    process.stderr.write(`chaos: ${(error as Error)?.stack ?? String(error)}\n`);
    process.exitCode = 1;
  });
}
