/**
 * Runs the real service (`icaas start`) as a child process on a free port with its own
 * data folder, and watches it through its public API.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { batchSchema, statusSnapshotSchema, uploadAcceptedSchema, uploadRefusedSchema, type Batch, type ErrorResult, type Image, type OkResult, type StatusSnapshot } from '../../src/api-schemas.js';
import Database from '../../src/sqlite-driver.js';
import type { EmulatedDeployment } from '../cloud/deployment.js';
import { cliPath, makeTempDir, serverSentEvents, sharedImagesDir, waitFor } from '../helpers.js';
import { listeningUrl } from '../log-capture.js';

export interface ServiceOptions {
  maxInstances?: number;
  idleWaitSeconds?: number;
  deadlineSeconds?: number;
  monitorCheckSeconds?: number;
  env?: Record<string, string>;
  extraArgs?: string[];
  /** Reuse a data folder (restart tests). */
  dataDir?: string;
  /** Run in the distributed shape on this emulated deployment (S3 and SQS on the emulator, local workers). */
  cloud?: EmulatedDeployment;
  /** How often the instance count is sampled from /api/status (default 100 ms; benchmarks sample less, to load the service less). */
  sampleEveryMs?: number;
}

export interface Service {
  url: string;
  /** The `icaas start` process; its worker instances are its children. */
  pid: number;
  dataDir: string;
  output(): string;
  /** Every instance count seen by the sampler, and the peak. */
  samples: number[];
  peak(): number;
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Kills the service and any worker it left, and removes the data folder unless reused. */
  cleanup(): Promise<void>;
  pidOf(instanceId: string): number | undefined;
  activeInstances(): Promise<number>;
}

export async function startService(options: ServiceOptions = {}): Promise<Service> {
  const temp = options.dataDir ? undefined : await makeTempDir('icaas-e2e-');
  const dataDir = options.dataDir ?? temp!.dir;
  const defaults: [string, string][] = [
    ['--host', '127.0.0.1'], ['--port', '0'], ['--data', dataDir],
    ['--max-instances', String(options.maxInstances ?? 20)],
    ['--idle-wait', String(options.idleWaitSeconds ?? 2)],
    ['--deadline', String(options.deadlineSeconds ?? 30)],
    ['--monitor-check', String(options.monitorCheckSeconds ?? 0.5)],
    ['--launch-interval', '200'],
  ];
  const given = [...(options.cloud?.args ?? []), ...(options.extraArgs ?? [])];
  // A flag the caller gives replaces the default: icaas refuses a flag given twice.
  const overridden = new Set(given.filter((arg) => arg.startsWith('--')).map((arg) => arg.split('=')[0]));
  const args = [
    cliPath, 'start',
    ...defaults.filter(([flag]) => !overridden.has(flag)).flat(),
    ...given,
  ];
  const child: ChildProcess = spawn(process.execPath, args, {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...options.cloud?.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let url: string;
  try {
    url = await waitFor('the service to print its address', () => {
      if (child.exitCode !== null) throw new Error(`service exited with ${child.exitCode}:\n${output}`);
      return listeningUrl(output);
    }, { timeoutMs: 30_000 });
  } catch (error) {
    child.kill('SIGKILL');
    await temp?.cleanup();
    throw error;
  }

  const registry = path.join(dataDir, 'instances.db');
  const samples: number[] = [];
  const activeInstances = async () => {
    const response = await fetch(`${url}/api/status`);
    const status = (await response.json()) as StatusSnapshot;
    return status.instances.filter((instance) => instance.state !== 'stopped').length;
  };
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      try {
        samples.push(await activeInstances());
      } catch {
        // The service may be restarting; the next sample counts.
      }
      await new Promise((resolve) => setTimeout(resolve, options.sampleEveryMs ?? 100));
    }
  })();

  const workerPids = (): number[] => {
    try {
      const db = new Database(registry, { readonly: true, fileMustExist: true });
      try {
        return (db.prepare(`SELECT pid FROM instances WHERE pid IS NOT NULL AND state != 'stopped'`).all() as { pid: number }[]).map((row) => row.pid);
      } finally {
        db.close();
      }
    } catch {
      return [];
    }
  };

  return {
    url,
    pid: child.pid!,
    dataDir,
    output: () => output,
    samples,
    // Without a single sample, a peak of 0 would pass every "at most" check.
    peak: () => {
      if (samples.length === 0) throw new Error(`the instance count was never sampled from ${url}/api/status`);
      return Math.max(...samples);
    },
    activeInstances,
    pidOf(instanceId: string) {
      const db = new Database(registry, { readonly: true });
      try {
        return (db.prepare(`SELECT pid FROM instances WHERE id = ?`).get(instanceId) as { pid: number } | undefined)?.pid;
      } finally {
        db.close();
      }
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      sampling = false;
      await sampler;
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
    async cleanup() {
      sampling = false;
      await sampler;
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      for (const pid of workerPids()) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
      await temp?.cleanup();
    },
  };
}

export interface LabelledImage {
  file: string;
  label: string;
}

export async function sharedImages(): Promise<LabelledImage[]> {
  const csv = await readFile(path.join(sharedImagesDir, 'labels.csv'), 'utf8');
  const labels = new Map<string, string>();
  for (const line of csv.trim().split('\n').slice(1)) {
    const [file, , ...label] = line.split(',');
    labels.set(file!, label.join(',').replace(/^"|"$/g, ''));
  }
  const files = (await readdir(sharedImagesDir)).filter((name) => labels.has(name)).sort();
  return files.map((file) => ({ file, label: labels.get(file)! }));
}

/**
 * Posts the files as one upload. The answer is checked against the API's schema (accepted
 * or refused, by its status) before it is returned: a test that reads a field the schema
 * does not promise fails here.
 */
export async function uploadForm(url: string, files: { name: string; body: Buffer }[], query = ''): Promise<{ status: number; body: any }> {
  const form = new FormData();
  for (const file of files) form.append('images', new Blob([file.body]), file.name);
  const response = await fetch(`${url}/api/images${query}`, { method: 'POST', body: form });
  const body: unknown = await response.json();
  (response.status === 202 ? uploadAcceptedSchema : uploadRefusedSchema).strict().parse(body);
  return { status: response.status, body };
}

export async function readShared(file: string): Promise<Buffer> {
  return readFile(path.join(sharedImagesDir, file));
}

/** A batch as the API shows it, with each result's fields readable whether it is a label or an error. */
export type BatchResult = Omit<Batch, 'images'> & { images: (Omit<Image, 'result'> & { result?: Partial<OkResult & ErrorResult> })[] };

/** The batch, checked against the API's schema. */
export async function getBatch(url: string, batchId: string): Promise<BatchResult> {
  const response = await fetch(`${url}/api/batches/${batchId}`);
  if (!response.ok) throw new Error(`GET batch ${batchId}: ${response.status}`);
  return batchSchema.strict().parse(await response.json());
}

export async function waitForBatch(url: string, batchId: string, timeoutMs = 120_000, intervalMs = 200): Promise<BatchResult> {
  return waitFor(`batch ${batchId} to finish`, async () => {
    const batch = await getBatch(url, batchId);
    return batch.done + batch.errors === batch.total ? batch : undefined;
  }, { timeoutMs, intervalMs });
}

/** Waits for an instance that holds an image of the batch, and kills its worker process. */
export async function killBusyWorker(service: Service, batchId: string): Promise<{ id: string; imageId: string }> {
  const victim = await waitFor('an instance to hold an image', async () => {
    const status = statusSnapshotSchema.parse(await (await fetch(`${service.url}/api/status?batch=${batchId}`)).json());
    return status.instances.find((instance) => instance.state === 'busy' && instance.imageId);
  }, { timeoutMs: 60_000, intervalMs: 20 });
  const pid = service.pidOf(victim.id);
  if (!pid) throw new Error(`instance ${victim.id} holds an image but has no pid in the registry`);
  process.kill(pid, 'SIGKILL');
  return { id: victim.id, imageId: victim.imageId! };
}

/**
 * Follows the live stream as the page does, to check that each result is shown once. A new
 * stream carries only what is recorded after it opens, so once it says hello the batch is
 * read, as the page reloads it then; results already final in that read are shown by it.
 * `finals` counts each image's final events on the stream; `shown()` is the number of
 * images shown final either way. It throws what broke the stream (a refused connection, a
 * malformed frame) rather than letting a wait for it time out without a reason.
 */
export function followEvents(url: string, batchId: string): { finals: Map<string, number>; shown(): number; close(): void } {
  const finals = new Map<string, number>();
  const finalAtOpen = new Set<string>();
  const controller = new AbortController();
  let failure: unknown;
  void (async () => {
    try {
      const response = await fetch(`${url}/api/events?batch=${batchId}`, { signal: controller.signal });
      if (!response.ok) throw new Error(`the event stream answered ${response.status}`);
      for await (const { event, data } of serverSentEvents(response.body!)) {
        if (event === 'hello') {
          for (const image of (await getBatch(url, batchId)).images) {
            if (image.status === 'done' || image.status === 'error') finalAtOpen.add(image.id);
          }
        }
        if (event !== 'image') continue;
        const image = JSON.parse(data) as Image;
        if (image.status === 'done' || image.status === 'error') finals.set(image.id, (finals.get(image.id) ?? 0) + 1);
      }
      if (!controller.signal.aborted) throw new Error('the event stream ended while it was followed');
    } catch (error) {
      // Aborting at the end of the test is how it stops; anything else is a failure.
      if (!controller.signal.aborted) failure = error;
    }
  })();
  return {
    finals,
    shown() {
      if (failure) throw failure;
      return new Set([...finalAtOpen, ...finals.keys()]).size;
    },
    close() {
      controller.abort();
      if (failure) throw failure;
    },
  };
}
