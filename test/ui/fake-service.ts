/**
 * The real web server (routes, upload checks, live events, security headers, the built
 * page) over an in-memory back end with a simulated worker tier. Page tests use it for
 * what the real pipeline cannot produce on demand: a thousand images in seconds, a
 * dropped event stream, a full queue, an API key.
 */
import path from 'node:path';
import type { Compute, InstanceInfo } from '../../src/compute/port.js';
import { loadConfig } from '../../src/config.js';
import { parseLaunchMessage, type ImageResult } from '../../src/messages.js';
import type { Queue, QueueCounts, ReceivedMessage } from '../../src/queue/port.js';
import type { Runtime } from '../../src/runtime.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { ResultsIndex } from '../../src/web/results.js';
import { createWebServer, type WebServer } from '../../src/web/server.js';
import { makeTempDir, projectRoot } from '../helpers.js';

export interface FakeOptions {
  maxInstances?: number;
  /** Milliseconds one simulated instance spends on an image. */
  msPerImage?: number;
  apiKeys?: string[];
  /** Names that end as errors after three attempts. */
  failNames?: RegExp;
  /** Launch-queue depth at which uploads get 429. */
  maxQueued?: number;
}

export interface FakeService {
  url: string;
  server: WebServer;
  index: ResultsIndex;
  /** Pretends the launch queue holds this many more messages (for 429). */
  extraQueued: number;
  /** Holds the simulated workers (images stay queued) while true. */
  paused: boolean;
  /** Ends every live-event connection, as a proxy or network drop would. */
  dropStreams(): void;
  close(): Promise<void>;
}

class MemoryQueue implements Queue {
  readonly messages: string[] = [];
  extra = 0;
  inFlight = 0;
  constructor(readonly name: string) {}
  async send(body: string): Promise<string> {
    this.messages.push(body);
    return String(this.messages.length);
  }
  async sendBatch(bodies: string[]): Promise<string[]> {
    return Promise.all(bodies.map((body) => this.send(body)));
  }
  async receive(): Promise<ReceivedMessage[]> {
    const body = this.messages.shift();
    return body === undefined ? [] : [{ id: '1', body, receiptHandle: '1', receiveCount: 1, sentAt: Date.now() }];
  }
  async delete(): Promise<void> {}
  async deleteBatch(): Promise<void> {}
  async changeVisibility(): Promise<void> {}
  async counts(): Promise<QueueCounts> {
    return { visible: this.messages.length + this.extra, inFlight: this.inFlight, delayed: 0 };
  }
}

const LABELS = ['tabby cat', 'golden retriever', 'tench', 'goldfish', 'espresso', 'mountain bike', 'lighthouse', 'daisy', 'volcano', 'red panda', 'balloon', 'snorkel'];

function fakeResult(name: string, seed: number): { label: string; probability: number; top5: { label: string; probability: number }[] } {
  let hash = seed;
  for (const char of name) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  const first = hash % LABELS.length;
  const p1 = 0.45 + (hash % 50) / 100;
  const rest = 1 - p1;
  const shares = [0.5, 0.25, 0.15, 0.1];
  const top5 = [{ label: LABELS[first]!, probability: Number(p1.toFixed(4)) }];
  shares.forEach((share, i) => top5.push({ label: LABELS[(first + i + 1) % LABELS.length]!, probability: Number((rest * share).toFixed(4)) }));
  return { label: top5[0]!.label, probability: top5[0]!.probability, top5 };
}

export async function startFakeService(options: FakeOptions = {}): Promise<FakeService> {
  const temp = await makeTempDir('icaas-ui-');
  const maxInstances = options.maxInstances ?? 4;
  const msPerImage = options.msPerImage ?? 150;
  const argv = ['--data', temp.dir, '--max-instances', String(maxInstances), '--max-queued', String(options.maxQueued ?? 100_000)];
  if (options.apiKeys?.length) argv.push('--api-keys', options.apiKeys.join(','));
  const { config } = loadConfig({ argv, env: {} });
  const store = new FsObjectStore(path.join(temp.dir, 'buckets'));
  await store.ensureBucket(config.inputBucket);
  await store.ensureBucket(config.outputBucket);
  const queues = { launch: new MemoryQueue('launch'), monitor: new MemoryQueue('monitor'), output: new MemoryQueue('output') };

  const instances = new Map<string, InstanceInfo & { idleSince: number }>();
  let nextInstance = 1;
  const compute: Compute = {
    maxInstances,
    async start() {
      return [];
    },
    async list() {
      return [...instances.values()].map(({ idleSince: _idle, ...info }) => ({ ...info }));
    },
    async terminate(id) {
      instances.delete(id);
    },
    async report() {},
    async enforceDeadlines() {
      return { terminated: [], failed: [] };
    },
    async close() {},
  };
  const runtime: Runtime = {
    config,
    store,
    queueProvider: { queue: (name) => queues[name as keyof typeof queues], close: async () => {} },
    queues,
    compute,
    describe: () => [],
    close: async () => {},
  };
  const index = new ResultsIndex(store, config.inputBucket, config.outputBucket);
  const server = await createWebServer({ runtime, index, uiDir: path.join(projectRoot, 'dist', 'ui') });
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const address = server.app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;

  const fake: FakeService = {
    url: `http://127.0.0.1:${port}`,
    server,
    index,
    extraQueued: 0,
    paused: false,
    dropStreams: () => server.hub.closeAll(),
    async close() {
      clearInterval(tick);
      clearInterval(statusTimer);
      server.hub.closeAll();
      await server.app.close();
      await temp.cleanup();
    },
  };

  // The simulated tier: start instances while messages wait, one image per instance, stop when idle.
  const attempts = new Map<string, number>();
  const tick = setInterval(() => {
    queues.launch.extra = fake.extraQueued;
    const now = Date.now();
    if (fake.paused) return;
    const waiting = queues.launch.messages.length;
    const free = [...instances.values()].filter((instance) => instance.state === 'idle' || instance.state === 'starting').length;
    for (let i = 0; i < Math.min(waiting - free, maxInstances - instances.size); i++) {
      const id = `sim-${String(nextInstance++).padStart(3, '0')}`;
      instances.set(id, { id, state: 'starting', startedAt: now, processed: 0, idleSince: now });
    }
    for (const instance of instances.values()) {
      if (instance.state === 'starting' && now - instance.startedAt > 300) {
        instance.state = 'idle';
        instance.idleSince = now;
      }
      if (instance.state !== 'idle') continue;
      const body = queues.launch.messages.shift();
      if (body === undefined) {
        if (now - instance.idleSince > 1500) instances.delete(instance.id);
        continue;
      }
      const launch = parseLaunchMessage(body);
      const attempt = (attempts.get(launch.imageId) ?? 0) + 1;
      attempts.set(launch.imageId, attempt);
      instance.state = 'busy';
      instance.imageId = launch.imageId;
      queues.monitor.inFlight++;
      index.recordProgress(launch.imageId, instance.id, attempt);
      setTimeout(() => {
        queues.monitor.inFlight--;
        const fails = options.failNames?.test(launch.name) ?? false;
        if (fails && attempt < 3) {
          queues.launch.messages.push(JSON.stringify({ ...launch, attempt: attempt + 1 }));
        } else {
          const base = { imageId: launch.imageId, batchId: launch.batchId, name: launch.name, attempts: attempt, finishedAt: Date.now() };
          const result: ImageResult = fails
            ? { status: 'error', ...base, instanceId: instance.id, error: `the image could not be classified after ${attempt} attempts: instance ${instance.id} stopped responding` }
            : { status: 'ok', ...base, instanceId: instance.id, durationMs: msPerImage, ...fakeResult(launch.name, 7) };
          index.recordResult(result);
        }
        instance.processed = (instance.processed ?? 0) + 1;
        delete instance.imageId;
        instance.state = 'idle';
        instance.idleSince = Date.now();
      }, msPerImage);
    }
  }, 50);
  const statusTimer = setInterval(() => {
    void server.status().then((status) => server.hub.broadcastStatus(status));
  }, 1000);
  return fake;
}
