/**
 * The discrete-event loop. Between events every rate is constant, so the loop jumps from
 * one event to the next: an arrival, a launch-controller tick, the end of a start-up phase,
 * an image finishing at the current processor share, or an idle instance timing out.
 *
 * Every tick does what the real launch controller does (src/controller/launch.ts): it
 * builds the queue counts and the instance listing, feeds the listing to the same
 * ScalingMeasurements, builds the observation with the same scalingObservation, calls the
 * policy and starts what it says, never past the maximum.
 */
import { ScalingMeasurements, scalingObservation } from '../controller/launch.js';
import { canonicalPolicyName, policyByName, type PolicyName } from '../controller/policy.js';
import type { QueueCounts } from '../queue/port.js';
import { Cluster, EPSILON_MS, type SimImage } from './cluster.js';
import type { Distribution } from './distributions.js';
import { SimInputError } from './errors.js';
import { summarize, type RunSummary } from './metrics.js';
import { stream } from './random.js';
import { traceImages, type Trace } from './traces.js';

export interface SimSettings {
  trace: Trace;
  policy: string;
  max: number;
  capacity: number;
  startup: Distribution;
  service: Distribution;
  startCostMs: number;
  startupPriorMs: number;
  idleWaitMs: number;
  launchIntervalMs: number;
  seed: number;
}

/** The tier as the controller saw it after one tick's decision. */
export interface TickSample {
  at: number;
  starting: number;
  idle: number;
  busy: number;
  /** Images visible in the launch queue. */
  waiting: number;
  /** Instances started by this tick. */
  started: number;
}

export interface SimRun extends RunSummary {
  policy: PolicyName;
  timeline: TickSample[];
  /** Every image with its arrival, start and finish. */
  records: readonly SimImage[];
  /** Finishes counted as they happened: equal to `images` when each finished exactly once. */
  finishEvents: number;
  /** When the last instance stopped, ms. */
  endMs: number;
}

/** No instance for this long while images wait means the policy will never start one. */
const STUCK_MS = 10 * 60_000;
/** Coinciding events settle in a few steps at one instant; thousands mean a bug, not a busy moment. */
const MAX_STALLED_STEPS = 10_000;

export function simulate(settings: SimSettings): SimRun {
  const policyName = canonicalPolicyName(settings.policy);
  const policy = policyByName(policyName);
  if (traceImages(settings.trace) === 0) throw new SimInputError(`--trace ${settings.trace.spec}: no arrivals`);
  const cluster = new Cluster({ capacity: settings.capacity, idleWaitMs: settings.idleWaitMs, startCostMs: settings.startCostMs });
  const compute = { maxInstances: settings.max, capacity: settings.capacity, startupPriorMs: settings.startupPriorMs, startCostMs: settings.startCostMs };
  const measurements = new ScalingMeasurements();
  const startupRandom = stream(settings.seed, 'startup');
  const serviceRandom = stream(settings.seed, 'service');
  const images: SimImage[] = [];
  const timeline: TickSample[] = [];
  const { trace } = settings;
  const total = traceImages(trace);
  const openTimes = trace.kind === 'open' ? trace.times : [];
  let nextOpen = 0;
  let finished = 0;
  let now = 0;
  let tickCount = 0;
  let lastActiveAt = 0;
  let previous = -1;
  let stalled = 0;

  // Service times are drawn in arrival order, so every policy sees the same images.
  const arrive = (at: number) => {
    const image: SimImage = { index: images.length, arrivedAt: at, serviceMs: settings.service.sample(serviceRandom) };
    images.push(image);
    cluster.enqueue(image);
  };
  if (trace.kind === 'closed') for (let i = 0; i < trace.clients; i++) arrive(0);

  const tick = () => {
    const counts: QueueCounts = { visible: cluster.waiting, inFlight: 0, delayed: 0 };
    const listing = cluster.list(now);
    measurements.observe(listing, now);
    const observation = scalingObservation(counts, listing, compute, measurements, now);
    const decision = policy(observation);
    const room = Math.max(0, settings.max - cluster.active);
    const count = Math.min(Math.max(0, decision.start), room);
    const startups = Array.from({ length: count }, () => settings.startup.sample(startupRandom));
    measurements.launched(cluster.launch(startups, now), now);
    timeline.push({ at: now, ...cluster.countByState(), waiting: cluster.waiting, started: count });
  };

  for (;;) {
    const nextArrival = nextOpen < openTimes.length ? openTimes[nextOpen]! : Infinity;
    const nextTick = tickCount * settings.launchIntervalMs;
    const next = Math.max(now, Math.min(nextArrival, nextTick, cluster.nextEventAt(now)));
    cluster.advance(next - now);
    now = next;
    const answered = cluster.completeDue(now).length;
    finished += answered;
    // A synchronous client sends its next request the moment it has its answer.
    if (trace.kind === 'closed') for (let i = 0; i < answered && images.length < total; i++) arrive(now);
    while (nextOpen < openTimes.length && openTimes[nextOpen]! <= now + EPSILON_MS) arrive(openTimes[nextOpen++]!);
    cluster.dispatch(now);
    cluster.stopIdle(now);
    if (nextTick <= now + EPSILON_MS) {
      tick();
      tickCount++;
    }
    const active = cluster.active;
    // Every image was sent and taken and every instance has stopped: nothing can happen any more.
    if (images.length === total && cluster.waiting === 0 && active === 0) break;
    stalled = next === previous ? stalled + 1 : 0;
    previous = next;
    if (stalled > MAX_STALLED_STEPS) throw new Error(`simulation stalled at ${now} ms: events keep falling due without taking effect`);
    if (active > 0 || cluster.waiting === 0) lastActiveAt = now;
    else if (now - lastActiveAt > STUCK_MS) throw new SimInputError(`policy ${policyName} started no instance for ${STUCK_MS / 60_000} simulated minutes while ${cluster.waiting} images waited`);
  }
  return { policy: policyName, ...summarize(images, cluster, timeline, now), timeline, records: images, finishEvents: finished, endMs: now };
}
