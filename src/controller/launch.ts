import { Backoff, type BackoffOptions } from '../backoff.js';
import type { Compute, DeadlineSweep, InstanceInfo } from '../compute/port.js';
import { oneLine } from '../health.js';
import { movingAverage } from '../moving-average.js';
import { InvalidMessageError, parseLaunchMessage, type ImageResult, type OutputMessage } from '../messages.js';
import { storeFirstResult } from '../outcomes.js';
import type { Queue } from '../queue/port.js';
import type { ObjectStore } from '../storage/port.js';
import { DEFAULT_POLICY, policyByName, type ScalingDecision, type ScalingObservation, type ScalingPolicy } from './policy.js';
import type { QueueCounts } from '../queue/port.js';
import type { EventSink } from '../event-log.js';

/** What the policy assumes before it has measured anything. */
export const SERVICE_PRIOR_MS = 100;
export const STARTUP_PRIOR_MS = 2_000;

export interface LaunchTick {
  observation: ScalingObservation;
  decision: ScalingDecision;
  /** Whether the service and start-up times are measured (true) or still the priors. */
  measured: { service: boolean; startup: boolean };
  started: number;
  /** Instances the deadline sweep ended, or failed to end, this tick; absent when none. */
  deadlines?: DeadlineSweep;
}

export interface LaunchOptions {
  /** The scaling policy; the default policy when absent. */
  policy?: ScalingPolicy;
  measurements?: ScalingMeasurements;
  startFailures?: StartFailures;
  events?: EventSink;
  /** Images of uploads about to end, when the web tier runs in this process (see web/incoming.ts). */
  incoming?: () => number;
}

/**
 * Learns what the policy needs from the instance listings it is shown: start-up time from
 * instances leaving 'starting', service time from what workers report, both as moving
 * averages; and records launches, instances becoming ready and stopping in the event log.
 */
export class ScalingMeasurements {
  private service: number | undefined;
  private startup: number | undefined;
  /** Last state seen per instance, to notice transitions. */
  private readonly seen = new Map<string, InstanceInfo['state']>();
  /** The service time last folded in per instance, so an unchanged report is not counted twice. */
  private readonly lastService = new Map<string, number>();

  constructor(
    private readonly events: EventSink = { record() {} },
    /** Told each start-up time measured: from an instance's launch to its first report as ready. */
    private readonly onStartup: (startupMs: number) => void = () => {},
  ) {}

  launched(ids: string[], at: number): void {
    for (const id of ids) {
      this.seen.set(id, 'starting');
      this.events.record({ type: 'launch', at, instanceId: id });
    }
  }

  observe(instances: InstanceInfo[], now: number): void {
    const listed = new Set<string>();
    for (const instance of instances) {
      listed.add(instance.id);
      const before = this.seen.get(instance.id);
      if (instance.state !== 'starting' && (before === 'starting' || (before === undefined && instance.readyAt !== undefined))) {
        const readyAt = instance.readyAt ?? now;
        if (instance.state !== 'stopped' || instance.readyAt !== undefined) {
          const startupMs = Math.max(0, readyAt - instance.startedAt);
          this.startup = movingAverage(this.startup, startupMs);
          this.onStartup(startupMs);
          this.events.record({ type: 'ready', at: readyAt, instanceId: instance.id });
        }
      }
      if (instance.state === 'stopped' && before !== undefined && before !== 'stopped') this.events.record({ type: 'stop', at: now, instanceId: instance.id });
      if (instance.serviceMs !== undefined && this.lastService.get(instance.id) !== instance.serviceMs) {
        this.lastService.set(instance.id, instance.serviceMs);
        this.service = movingAverage(this.service, instance.serviceMs);
      }
      this.seen.set(instance.id, instance.state);
    }
    // Gone from the listing: stopped long enough ago to be forgotten by the adapter.
    for (const [id, state] of this.seen) {
      if (listed.has(id)) continue;
      if (state !== 'stopped') this.events.record({ type: 'stop', at: now, instanceId: id });
      this.seen.delete(id);
      this.lastService.delete(id);
    }
  }

  serviceMs(): number | undefined {
    return this.service;
  }

  startupMs(): number | undefined {
    return this.startup;
  }
}

/** The policy's view of the tier, from the queue counts, the instances and what has been measured. */
export function scalingObservation(counts: QueueCounts, instances: InstanceInfo[], compute: Pick<Compute, 'maxInstances' | 'capacity' | 'startupPriorMs' | 'startCostMs'>, measurements: ScalingMeasurements, now: number): ScalingObservation {
  const observation: ScalingObservation = {
    backlog: counts.visible,
    inFlight: counts.inFlight,
    starting: 0,
    idle: 0,
    busy: 0,
    startingAgesMs: [],
    max: compute.maxInstances,
    capacity: Math.max(1, Math.min(compute.capacity ?? compute.maxInstances, compute.maxInstances)),
    serviceMs: measurements.serviceMs() ?? SERVICE_PRIOR_MS,
    startupMs: measurements.startupMs() ?? compute.startupPriorMs ?? STARTUP_PRIOR_MS,
    startCostMs: compute.startCostMs ?? 0,
  };
  for (const instance of instances) {
    if (instance.state === 'stopped') continue;
    observation[instance.state]++;
    if (instance.state === 'starting') observation.startingAgesMs!.push(Math.max(0, now - instance.startedAt));
  }
  return observation;
}

/** One launch-controller tick: observe the queue and the instances, apply the policy. */
export async function launchTick(launchQueue: Queue, compute: Compute, options: LaunchOptions = {}): Promise<LaunchTick> {
  const { startFailures } = options;
  const measurements = options.measurements ?? new ScalingMeasurements(options.events);
  const policy = options.policy ?? policyByName(DEFAULT_POLICY);
  // First, so that slots freed by instances that overran a deadline can be used this tick.
  const deadlines = await compute.enforceDeadlines();
  const [counts, instances] = await Promise.all([launchQueue.counts(), compute.list()]);
  const now = Date.now();
  measurements.observe(instances, now);
  const observation = scalingObservation(counts, instances, compute, measurements, now);
  const incoming = options.incoming?.() ?? 0;
  if (incoming > 0) observation.incoming = incoming;
  await startFailures?.observe(instances, counts.visible);
  const decision = policy(observation);
  let wanted = decision.start;
  if (startFailures) wanted = startFailures.allowed(wanted);
  const ids = wanted > 0 ? await compute.start(wanted) : [];
  measurements.launched(ids, Date.now());
  startFailures?.started(ids);
  const swept = deadlines.terminated.length + deadlines.failed.length > 0;
  const measured = { service: measurements.serviceMs() !== undefined, startup: measurements.startupMs() !== undefined };
  return { observation, decision, measured, started: ids.length, ...(swept ? { deadlines } : {}) };
}

export interface StartFailureOptions {
  /** Instances in a row that stop without taking an image before starts are held back. */
  threshold: number;
  /** How long workers may keep failing at start before waiting images end as errors. */
  timeoutMs: number;
  /** The worker's own last words, where the compute adapter keeps them. */
  explain?: (id: string) => Promise<string | undefined>;
  /** How long starts are held back after a failure; grows while failures go on. */
  backoff?: BackoffOptions;
  /**
   * A stopped instance is judged only this long after it was seen gone, so the notice of
   * an image it took just before it died has time to arrive.
   */
  judgeAfterMs?: number;
  /** Told when the state starts, changes its reason, or clears. */
  onChange?: (state: StartFailureState) => void;
  /** Told how many instances were just judged to have failed at start, below the threshold too. */
  onFailures?: (count: number) => void;
}

export interface StartFailureState {
  failing: boolean;
  /** "workers fail at start: <the last lines of a failed worker's log>". */
  reason?: string;
  since?: number;
  /** Instances in a row that stopped without taking an image. */
  inRow: number;
}

const DEFAULT_HOLD: BackoffOptions = { initialMs: 5_000, maxMs: 60_000 };
const REMEMBERED_WORKERS = 10_000;

/**
 * Notices workers that fail at start (a crash loop): instances that stop without ever
 * taking an image while images wait. After `threshold` of them in a row, no instance is
 * started until a wait has passed that grows with each further failure; then one is
 * started to probe. Any instance that takes an image clears the state.
 */
export class StartFailures {
  /** Instances seen running, and whether each took an image. */
  private readonly watched = new Map<string, { tookImage: boolean }>();
  /** Instances that took an image (from their reports or the monitor's notices). */
  private readonly workedIds = new Set<string>();
  /** Instances seen gone and not yet judged: id to when. */
  private readonly gone = new Map<string, number>();
  private readonly hold: Backoff;
  private inRow = 0;
  private since: number | undefined;
  private holdUntil = 0;
  private probe: string | undefined;
  private reason: string | undefined;
  private readonly judgeAfterMs: number;

  constructor(private readonly options: StartFailureOptions) {
    // Equal jitter: a crash-looping worker is never started again sooner than half the hold.
    this.hold = new Backoff({ jitter: 'equal', ...(options.backoff ?? DEFAULT_HOLD) });
    this.judgeAfterMs = options.judgeAfterMs ?? 2_000;
  }

  state(): StartFailureState {
    return { failing: this.since !== undefined, ...(this.reason ? { reason: this.reason } : {}), ...(this.since !== undefined ? { since: this.since } : {}), inRow: this.inRow };
  }

  /** An instance took an image: workers start fine. */
  tookImage(id: string): void {
    if (this.workedIds.has(id)) return;
    if (this.workedIds.size >= REMEMBERED_WORKERS) this.workedIds.clear();
    this.workedIds.add(id);
    const watched = this.watched.get(id);
    if (watched) watched.tookImage = true;
    this.gone.delete(id);
    if (this.probe === id) this.probe = undefined;
    this.inRow = 0;
    if (this.since === undefined) return;
    this.since = undefined;
    this.reason = undefined;
    this.holdUntil = 0;
    this.hold.reset();
    this.options.onChange?.(this.state());
  }

  started(ids: string[]): void {
    for (const id of ids) this.watched.set(id, { tookImage: false });
    if (this.since !== undefined && ids.length > 0) this.probe = ids[0];
  }

  /** Follows the instances from one listing to the next; `visible` is the images waiting. */
  async observe(instances: InstanceInfo[], visible: number): Promise<void> {
    const now = Date.now();
    const active = new Set<string>();
    for (const instance of instances) {
      if (instance.state === 'stopped') continue;
      active.add(instance.id);
      if (!this.watched.has(instance.id)) this.watched.set(instance.id, { tookImage: false });
      if (instance.state === 'busy' || instance.imageId || (instance.processed ?? 0) > 0) this.tookImage(instance.id);
    }
    for (const id of this.watched.keys()) {
      if (active.has(id)) continue;
      this.watched.delete(id);
      if (!this.workedIds.has(id)) this.gone.set(id, now);
    }
    let failed: string | undefined;
    let failures = 0;
    for (const [id, goneAt] of this.gone) {
      if (now - goneAt < this.judgeAfterMs) continue;
      this.gone.delete(id);
      const wasProbe = this.probe === id;
      if (wasProbe) this.probe = undefined;
      // An instance that stopped while nothing waited may just have found no work.
      if (this.workedIds.has(id) || visible === 0) continue;
      failures++;
      failed = id;
    }
    if (failures > 0) this.options.onFailures?.(failures);
    if (failed !== undefined) await this.failed(failed, failures, now);
  }

  /** How many of the `wanted` instances may start now. */
  allowed(wanted: number): number {
    if (this.since === undefined || wanted === 0) return wanted;
    if (this.probe !== undefined || Date.now() < this.holdUntil) return 0;
    return 1;
  }

  /**
   * Whether waiting images should end as errors now: workers have failed at start for the
   * whole timeout, and the latest failure is fresh (starts are held back because of it),
   * so a fix made meanwhile is always tried by a probe first.
   */
  shouldEndWaiting(): boolean {
    const now = Date.now();
    return this.since !== undefined && now - this.since >= this.options.timeoutMs && this.probe === undefined && now < this.holdUntil;
  }

  private async failed(id: string, count: number, now: number): Promise<void> {
    this.inRow += count;
    if (this.inRow < this.options.threshold) return;
    const entering = this.since === undefined;
    if (entering) this.since = now;
    this.holdUntil = now + this.hold.next();
    const words = await this.options.explain?.(id).catch(() => undefined);
    const reason = `workers fail at start: ${words ? oneLine(words, 1000) : `instance ${id} and ${this.inRow - 1} before it stopped without taking an image; see their logs`}`;
    const changed = entering || reason !== this.reason;
    this.reason = reason;
    if (changed) this.options.onChange?.(this.state());
  }
}

export interface EndWaitingOptions {
  launchQueue: Queue;
  outputQueue: Queue;
  store: ObjectStore;
  outputBucket: string;
  reason: string;
  /** Most messages to take in one call. */
  limit?: number;
}

/**
 * Ends the images waiting on the launch queue as errors with `reason`: an error result
 * in the output bucket (unless the image already has one), announced on the output queue,
 * then the launch message deleted. Returns how many images were ended.
 */
export async function endWaitingImages(options: EndWaitingOptions): Promise<number> {
  const { launchQueue, outputQueue, store, outputBucket, reason } = options;
  const limit = options.limit ?? 1000;
  let ended = 0;
  while (ended < limit) {
    const messages = await launchQueue.receive({ maxMessages: 10, waitSeconds: 0, visibilityTimeoutSeconds: 30 });
    if (messages.length === 0) break;
    for (const message of messages) {
      let launch;
      try {
        launch = parseLaunchMessage(message.body);
      } catch (error) {
        if (!(error instanceof InvalidMessageError)) throw error;
        await launchQueue.delete(message.receiptHandle);
        continue;
      }
      const result: ImageResult = {
        status: 'error',
        imageId: launch.imageId,
        batchId: launch.batchId,
        name: launch.name,
        attempts: launch.attempt,
        error: reason,
        finishedAt: Date.now(),
      };
      // A result that exists (a duplicate message of a finished image) is never replaced.
      const stored = await storeFirstResult(store, outputBucket, result);
      if (stored.won) {
        const output: OutputMessage = { type: 'result', result };
        await outputQueue.send(JSON.stringify(output));
        ended++;
      }
      await launchQueue.delete(message.receiptHandle);
    }
  }
  return ended;
}
