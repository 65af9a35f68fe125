/**
 * Prometheus metrics, one registry per process.
 *
 * Each measurement is taken in the one process that sees it happen, whatever the shape of
 * the deployment (`icaas start` runs the web tier and the controllers in one process;
 * `icaas web` and `icaas controller` run them apart; workers never serve metrics):
 *
 * - the web tier counts uploads, and the results as they arrive on the output queue: that
 *   gives upload-to-result latency on its own clock, and the classification time the
 *   result carries;
 * - the controllers count launches, start-up times, start failures, retries and
 *   terminations, and the time each image waited in the launch queue (from the monitor
 *   notice, which says when the image was queued and when a worker took it);
 * - queue depths and instance counts are shared state, read when Prometheus scrapes, by
 *   every process that serves metrics.
 *
 * No label names an image, a batch or an instance: every label has a small fixed set of values.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Compute, DeadlineReason } from './compute/port.js';
import type { ScalingStatus } from './health.js';
import type { ImageResult } from './messages.js';
import type { Queue } from './queue/port.js';

/** Why an uploaded file was refused, as a label: a fixed set, unlike the reasons shown to users. */
export const REJECTION_REASONS = ['empty', 'not_an_image', 'too_large', 'too_many_pixels', 'unreadable', 'corrupt'] as const;
export type RejectionReason = (typeof REJECTION_REASONS)[number];

const OUTCOMES = ['ok', 'error'] as const;
const DEADLINE_REASONS: readonly DeadlineReason[] = ['start-timeout', 'idle-timeout', 'busy-timeout', 'exit-timeout', 'terminate-retry'];
const INSTANCE_STATES = ['starting', 'idle', 'busy'] as const;
const QUEUE_STATES = ['visible', 'inFlight', 'delayed'] as const;

/** Waits measured in seconds to an hour: a large batch drains for a long time. */
const WAIT_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];
const CLASSIFY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Local processes start in a second or two, EC2 instances in minutes. */
const STARTUP_BUCKETS = [0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600];

export class ServiceMetrics {
  readonly registry = new Registry();
  private webMetrics: WebTierMetrics | undefined;
  private controllerMetrics: ControllerMetrics | undefined;
  private sharedWatched = false;

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'icaas_' });
  }

  /** The web tier's metrics, registered the first time they are asked for. */
  get web(): WebTierMetrics {
    return (this.webMetrics ??= new WebTierMetrics(this.registry));
  }

  /** The controllers' metrics, registered the first time they are asked for. */
  get controller(): ControllerMetrics {
    return (this.controllerMetrics ??= new ControllerMetrics(this.registry));
  }

  /** Queue depths and instances, read at each scrape; registered once however many tiers share the process. */
  watchShared(source: { queues: Record<'launch' | 'monitor' | 'output', Queue>; compute: Pick<Compute, 'list'> }): void {
    if (this.sharedWatched) return;
    this.sharedWatched = true;
    new Gauge({
      name: 'icaas_queue_messages',
      help: 'Approximate messages per queue and state (visible: waiting; inFlight: taken, not yet deleted; delayed: not visible yet). A queue that cannot be read is left out.',
      labelNames: ['queue', 'state'],
      registers: [this.registry],
      async collect() {
        this.reset();
        await Promise.all(Object.entries(source.queues).map(async ([name, queue]) => {
          const counts = await queue.counts().catch(() => undefined);
          if (counts) for (const state of QUEUE_STATES) this.set({ queue: name, state }, counts[state]);
        }));
      },
    });
    new Gauge({
      name: 'icaas_instances',
      help: 'Worker instances by state (starting, idle, busy). Absent when the instances cannot be listed.',
      labelNames: ['state'],
      registers: [this.registry],
      async collect() {
        this.reset();
        const instances = await source.compute.list().catch(() => undefined);
        if (!instances) return;
        for (const state of INSTANCE_STATES) this.set({ state }, instances.filter((instance) => instance.state === state).length);
      },
    });
  }

  /** The exposition text and its content type, for a scrape. */
  async exposition(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/** What the web tier's scrape-time gauges read. */
export interface WebTierState {
  /** Images held in memory, by status. */
  images(): Record<string, number>;
  loadedBatches(): number;
  eventClients(): number;
  eventBufferedBytes(): number;
  eventConnections(): number;
  eventSlowDisconnects(): number;
}

export class WebTierMetrics {
  private readonly accepted: Counter;
  private readonly rejected: Counter<'reason'>;
  private readonly finished: Counter<'outcome'>;
  private readonly uploadToResult: Histogram<'outcome'>;
  private readonly classification: Histogram;

  constructor(private readonly registry: Registry) {
    const registers = [registry];
    this.accepted = new Counter({ name: 'icaas_images_accepted_total', help: 'Images accepted by uploads and queued for classification.', registers });
    this.rejected = new Counter({ name: 'icaas_images_rejected_total', help: `Uploaded files refused, by reason (${REJECTION_REASONS.join(', ')}). Files of a request that failed as a whole are not counted.`, labelNames: ['reason'], registers });
    this.finished = new Counter({ name: 'icaas_images_finished_total', help: 'Images that reached their final result, by outcome (ok, error), counted once each as the results arrive.', labelNames: ['outcome'], registers });
    this.uploadToResult = new Histogram({ name: 'icaas_upload_to_result_seconds', help: 'From an image\'s acceptance to its final result reaching this web tier, by outcome; images accepted before this process started are left out.', labelNames: ['outcome'], buckets: WAIT_BUCKETS, registers });
    this.classification = new Histogram({ name: 'icaas_classification_seconds', help: 'How long a worker held an image it classified: fetching, decoding and inference, as the result reports it.', buckets: CLASSIFY_BUCKETS, registers });
    // Every label value present from the start, so rates and ratios work before the first event.
    for (const reason of REJECTION_REASONS) this.rejected.inc({ reason }, 0);
    for (const outcome of OUTCOMES) this.finished.inc({ outcome }, 0);
  }

  imagesAccepted(count: number): void {
    this.accepted.inc(count);
  }

  imageRejected(reason: RejectionReason): void {
    this.rejected.inc({ reason });
  }

  /** A final result recorded for the first time; `sinceAcceptedMs` when this process accepted the image. */
  resultRecorded(result: ImageResult, sinceAcceptedMs: number | undefined): void {
    this.finished.inc({ outcome: result.status });
    if (sinceAcceptedMs !== undefined) this.uploadToResult.observe({ outcome: result.status }, Math.max(0, sinceAcceptedMs) / 1000);
    if (result.status === 'ok') this.classification.observe(result.durationMs / 1000);
  }

  /** Gauges read from the web tier at each scrape (a later call replaces an earlier one's). */
  watch(state: WebTierState): void {
    const registers = [this.registry];
    for (const name of ['icaas_images', 'icaas_loaded_batches', 'icaas_event_clients', 'icaas_event_buffered_bytes', 'icaas_event_connections_total', 'icaas_event_slow_disconnects_total']) {
      this.registry.removeSingleMetric(name);
    }
    new Gauge({
      name: 'icaas_images',
      help: 'Images of the batches this web tier holds in memory, by status (not every stored image).',
      labelNames: ['status'],
      registers,
      collect() {
        this.reset();
        for (const [status, count] of Object.entries(state.images())) this.set({ status }, count);
      },
    });
    new Gauge({ name: 'icaas_loaded_batches', help: 'Batches this web tier holds in memory.', registers, collect() { this.set(state.loadedBatches()); } });
    new Gauge({ name: 'icaas_event_clients', help: 'Live-event (SSE) clients connected now.', registers, collect() { this.set(state.eventClients()); } });
    new Gauge({ name: 'icaas_event_buffered_bytes', help: 'Bytes written to live-event clients that they have not taken yet.', registers, collect() { this.set(state.eventBufferedBytes()); } });
    new Counter({ name: 'icaas_event_connections_total', help: 'Live-event (SSE) clients that connected.', registers, collect() { countTo(this, state.eventConnections()); } });
    new Counter({ name: 'icaas_event_slow_disconnects_total', help: 'Live-event clients disconnected because they did not keep up.', registers, collect() { countTo(this, state.eventSlowDisconnects()); } });
  }
}

/** A counter whose source keeps its own running total. */
function countTo(counter: Counter, total: number): void {
  counter.reset();
  if (total > 0) counter.inc(total);
}

export class ControllerMetrics {
  private readonly launches: Counter;
  private readonly startup: Histogram;
  private readonly startFailures: Counter;
  private readonly queueWait: Histogram;
  private readonly retries: Counter;
  private readonly hung: Counter;
  private readonly deadlines: Counter<'reason'>;
  private scaling: () => ScalingStatus | undefined = () => undefined;

  constructor(registry: Registry) {
    const registers = [registry];
    this.launches = new Counter({ name: 'icaas_instance_launches_total', help: 'Worker instances the launch controller started.', registers });
    this.startup = new Histogram({ name: 'icaas_instance_startup_seconds', help: 'From an instance\'s launch to its first report as ready.', buckets: STARTUP_BUCKETS, registers });
    this.startFailures = new Counter({ name: 'icaas_instance_start_failures_total', help: 'Instances that stopped without taking an image while images waited (workers failing at start).', registers });
    this.queueWait = new Histogram({ name: 'icaas_queue_wait_seconds', help: 'From an image being queued (uploaded, or sent back for another attempt) to a worker taking it, per attempt.', buckets: WAIT_BUCKETS, registers });
    this.retries = new Counter({ name: 'icaas_retries_total', help: 'Attempts the monitor sent back to the launch queue after an instance hung or stopped holding the image.', registers });
    this.hung = new Counter({ name: 'icaas_hung_instance_terminations_total', help: 'Instances the monitor terminated because they held an image past the deadline.', registers });
    this.deadlines = new Counter({ name: 'icaas_instance_deadline_terminations_total', help: `Instances terminated for overrunning a deadline, by reason (${DEADLINE_REASONS.join(', ')}).`, labelNames: ['reason'], registers });
    for (const reason of DEADLINE_REASONS) this.deadlines.inc({ reason }, 0);
    const scaling = () => this.scaling();
    new Gauge({
      name: 'icaas_desired_instances',
      help: 'Instances the scaling policy wants running at its last decision (absent until its first).',
      registers,
      collect() {
        this.reset();
        const target = scaling()?.target;
        if (target !== undefined) this.set(target);
      },
    });
  }

  launched(count: number): void {
    if (count > 0) this.launches.inc(count);
  }

  instanceReady(startupMs: number): void {
    this.startup.observe(Math.max(0, startupMs) / 1000);
  }

  instancesFailedAtStart(count: number): void {
    if (count > 0) this.startFailures.inc(count);
  }

  /** An image taken by a worker, `waitedMs` after it was queued (clocks of two machines: never below 0). */
  imageTaken(waitedMs: number): void {
    this.queueWait.observe(Math.max(0, waitedMs) / 1000);
  }

  retried(count: number): void {
    if (count > 0) this.retries.inc(count);
  }

  hungTerminated(count: number): void {
    if (count > 0) this.hung.inc(count);
  }

  deadlineTerminated(reason: DeadlineReason): void {
    this.deadlines.inc({ reason });
  }

  /** Where the desired-instances gauge reads the policy's last decision. */
  watchScaling(scaling: () => ScalingStatus | undefined): void {
    this.scaling = scaling;
  }
}

export interface MetricsListener {
  url: string;
  close(): Promise<void>;
}

/**
 * A listener that serves only GET /metrics, for a process without the web tier (`icaas
 * controller`). With API keys configured it asks for one, as the web tier's /metrics does.
 */
export async function serveMetrics(metrics: ServiceMetrics, options: { host: string; port: number; apiKeys: readonly string[] }): Promise<MetricsListener> {
  const keyDigests = options.apiKeys.map(digest);
  const server = http.createServer((request, response) => {
    const pathname = (request.url ?? '/').split('?')[0];
    if (pathname !== '/metrics') return answer(response, 404, 'not found: metrics are at /metrics\n');
    if (request.method !== 'GET' && request.method !== 'HEAD') return answer(response, 405, 'only GET\n', { allow: 'GET, HEAD' });
    if (keyDigests.length > 0) {
      const presented = presentedKey(request);
      if (presented === undefined || !keyDigests.some((expected) => timingSafeEqual(expected, digest(presented)))) {
        return answer(response, 401, presented === undefined ? 'an API key is required: send it as "Authorization: Bearer <key>"\n' : 'the API key is not valid\n', { 'www-authenticate': 'Bearer realm="icaas"' });
      }
    }
    metrics.exposition().then(
      ({ contentType, body }) => answer(response, 200, request.method === 'HEAD' ? '' : body, { 'content-type': contentType }),
      () => answer(response, 500, 'the metrics could not be collected\n'),
    );
  });
  // Keep-alive sockets of a scraper must not hold the process open on shutdown.
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    const failed = (error: Error) => reject(new Error(`cannot serve metrics on ${options.host}:${options.port}: ${error.message}`, { cause: error }));
    server.once('error', failed);
    server.listen(options.port, options.host, () => {
      server.off('error', failed);
      resolve();
    });
  });
  const address = server.address() as { address: string; port: number };
  const host = address.address.includes(':') ? `[${address.address}]` : address.address;
  return {
    url: `http://${host}:${address.port}/metrics`,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

function answer(response: http.ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  response.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'x-content-type-options': 'nosniff', ...headers });
  response.end(body);
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

function presentedKey(request: http.IncomingMessage): string | undefined {
  const authorization = request.headers.authorization;
  if (authorization?.startsWith('Bearer ')) return authorization.slice(7).trim();
  const header = request.headers['x-api-key'];
  return typeof header === 'string' ? header : undefined;
}
