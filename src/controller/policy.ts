/**
 * The launch decision, as pure functions of what the launch controller observes, so the
 * same code runs in the controller, in unit tests and in `icaas simulate`.
 *
 * Two policies:
 * - `drain-time` (the default) models cost: it starts an instance only when that shortens
 *   the expected time to drain the backlog, counting the new instance's start-up and the
 *   capacity that can usefully run at once (on one machine, CPU-bound workers beyond the
 *   core count add start-up cost and no throughput).
 * - `queue-match`, the original rule: as many instances as waiting messages, up to the
 *   maximum.
 */
export const POLICY_NAMES = ['drain-time', 'queue-match'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];
export const DEFAULT_POLICY: PolicyName = 'drain-time';

export interface ScalingObservation {
  /** Images waiting in the launch queue, visible now. */
  backlog: number;
  /**
   * Images of uploads still arriving that are expected to be queued within a worker's idle
   * wait (see web/incoming.ts); planned for like the backlog, so that workers start while
   * the upload ends instead of after. Absent (0) where the web tier is another process.
   */
  incoming?: number;
  /** Launch messages an instance has received and not yet deleted (about to be worked on). */
  inFlight: number;
  starting: number;
  idle: number;
  busy: number;
  /**
   * How long ago each starting instance was started, in ms. Fewer entries than `starting`
   * (or none) means unknown ages; those are taken as half-way through their start-up.
   */
  startingAgesMs?: number[];
  /** The most instances that may exist at once, counting those still starting. */
  max: number;
  /** How many instances can usefully run at once (process adapter: cores; EC2: the maximum). */
  capacity: number;
  /** Expected time one instance spends per image, in ms (measured, or the adapter's prior). */
  serviceMs: number;
  /** Expected time from an instance's start to its first report, in ms (measured, or the prior). */
  startupMs: number;
  /**
   * Capacity one start takes from running instances, in instance-ms (a local process's
   * start-up burns CPU the workers would use; an EC2 start costs the running ones nothing).
   */
  startCostMs?: number;
}

export interface ScalingDecision {
  /** Instances to start now. */
  start: number;
  /** Instances that will exist after the start (not stopped), at most the maximum. */
  target: number;
  /** Expected time to drain the backlog with the target, in ms; null when there is nothing to drain. */
  drainMs: number | null;
  /** Why the tier has this size, in one line a user can read. */
  reason: string;
}

export type ScalingPolicy = (observation: ScalingObservation) => ScalingDecision;

/** A start must shorten the drain by this fraction (and by MIN_GAIN_MS) to be worth it: noise in the measured times must not add instances. */
const MIN_GAIN_FRACTION = 0.01;
const MIN_GAIN_MS = 50;
/** A busy instance is taken to be half-way through its image. */
const BUSY_REMAINING_FRACTION = 0.5;

export function policyByName(name: string): ScalingPolicy {
  switch (name) {
    case 'drain-time':
    case 'default':
      return drainTimePolicy;
    case 'queue-match':
      return queueMatchPolicy;
    default:
      throw new RangeError(`unknown policy ${JSON.stringify(name)}: choose one of ${POLICY_NAMES.join(', ')} (or default)`);
  }
}

/** The default is also reachable as "default", so scripts need not know its name. */
export function canonicalPolicyName(name: string): PolicyName {
  policyByName(name);
  return name === 'default' ? DEFAULT_POLICY : (name as PolicyName);
}

/** The original rule: every waiting message meets a free (idle or starting) instance. */
export const queueMatchPolicy: ScalingPolicy = (observation) => {
  validate(observation);
  const { starting, idle, busy, max } = observation;
  const backlog = waitingImages(observation);
  const existing = starting + idle + busy;
  const start = Math.max(0, Math.min(backlog - starting - idle, max - existing));
  const target = existing + start;
  const drainMs = backlog + observation.inFlight + busy > 0 ? expectedDrainMs(observation, start) : null;
  return { start, target, drainMs: finite(drainMs), reason: `queue-match: one instance per waiting image, at most ${max}` };
};

/**
 * Starts instances one at a time while each shortens the expected drain time by a margin;
 * with nothing running and work waiting it always starts one.
 */
export const drainTimePolicy: ScalingPolicy = (observation) => {
  validate(observation);
  const { inFlight, starting, idle, busy, max, capacity } = observation;
  const backlog = waitingImages(observation);
  const existing = starting + idle + busy;
  const room = Math.max(0, max - existing);
  const work = backlog + inFlight + busy;
  if (work === 0) return { start: 0, target: existing, drainMs: null, reason: 'nothing waiting' };
  let start = 0;
  let drain = expectedDrainMs(observation, 0);
  // Only waiting images (incoming ones included) can use a new instance: never more starts
  // than those. An image in flight is held by an instance, or by one that is gone, and then
  // comes back into the backlog when its visibility timeout ends: an instance started for
  // it now would find nothing to take and stop (on EC2, after a boot that is billed).
  const useful = Math.min(room, Math.max(0, backlog - idle - starting));
  while (start < useful) {
    const next = expectedDrainMs(observation, start + 1);
    const gain = drain - next;
    // A start burns startCostMs of the shared cores: it must save at least that much, or
    // the model's error decides (a handful of images on one machine is done sooner by one).
    if (!(gain > Math.max(MIN_GAIN_MS, observation.startCostMs ?? 0, MIN_GAIN_FRACTION * (Number.isFinite(drain) ? drain : next)))) break;
    start++;
    drain = next;
  }
  const target = existing + start;
  let reason: string;
  const arriving = observation.incoming ? ` (${observation.incoming} of the images still arriving)` : '';
  if (start > 0) reason = `starting ${start}: shortens the expected drain to ${seconds(drain)}${arriving}`;
  else if (room === 0 && useful === 0 && backlog > 0 && existing >= max) reason = `at the maximum of ${max}`;
  else if (existing >= capacity && backlog > 0) reason = `at capacity: ${capacity} can usefully run at once`;
  else if (backlog > 0) reason = `a start would not finish sooner: ${seconds(observation.startupMs)} to start vs ${seconds(drain)} to drain`;
  else reason = 'the waiting images are taken';
  return { start, target, drainMs: finite(drain), reason };
};

/**
 * Expected time (ms) to finish the backlog, the in-flight images and what busy instances
 * hold, if `extra` instances were started now. A fluid model: the work is images × service
 * time, done at a rate of min(available instances, capacity) instance-ms per ms, where
 * running instances are available now, starting ones when their start-up ends and new ones
 * after a full start-up. Infinity when no instance would ever be available.
 */
export function expectedDrainMs(observation: ScalingObservation, extra: number): number {
  const { inFlight, starting, idle, busy, capacity, serviceMs, startupMs } = observation;
  const backlog = waitingImages(observation);
  let work = (backlog + inFlight + busy * BUSY_REMAINING_FRACTION) * serviceMs + extra * (observation.startCostMs ?? 0);
  if (work <= 0) return 0;
  const arrivals: number[] = [];
  const ages = observation.startingAgesMs ?? [];
  for (let i = 0; i < starting; i++) {
    const age = ages[i];
    arrivals.push(Math.max(0, age === undefined ? startupMs / 2 : startupMs - age));
  }
  for (let i = 0; i < extra; i++) arrivals.push(startupMs);
  arrivals.sort((a, b) => a - b);
  let available = idle + busy;
  let now = 0;
  for (const at of arrivals) {
    const rate = Math.min(available, capacity);
    if (rate > 0 && now + work / rate <= at) return now + work / rate;
    work -= rate * (at - now);
    now = at;
    available++;
  }
  const rate = Math.min(available, capacity);
  return rate > 0 ? now + work / rate : Infinity;
}

/** Images waiting for an instance: those queued and those of uploads about to end. */
function waitingImages(observation: ScalingObservation): number {
  return observation.backlog + (observation.incoming ?? 0);
}

function validate(observation: ScalingObservation): void {
  const { backlog, inFlight, starting, idle, busy, max, capacity, serviceMs, startupMs } = observation;
  for (const [name, value] of Object.entries({ backlog, incoming: observation.incoming ?? 0, inFlight, starting, idle, busy, max })) {
    if (!Number.isInteger(value) || value < 0) throw new RangeError(`${name} must be a whole number >= 0, got ${value}`);
  }
  if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`capacity must be a whole number >= 1, got ${capacity}`);
  for (const [name, value] of Object.entries({ serviceMs, startupMs, startCostMs: observation.startCostMs ?? 0 })) {
    if (!Number.isFinite(value) || value < 0) throw new RangeError(`${name} must be a number >= 0, got ${value}`);
  }
}

function finite(value: number | null): number | null {
  return value === null || !Number.isFinite(value) ? null : Math.round(value);
}

function seconds(ms: number): string {
  return Number.isFinite(ms) ? `${(ms / 1000).toFixed(1)} s` : 'never';
}
