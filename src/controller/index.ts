/** The controllers as one long-running service: the launch loop and the monitor loop. */
import path from 'node:path';
import { EventLog } from '../event-log.js';
import { CONTROLLER_HEALTH_EVERY_MS, CONTROLLER_HEALTH_KEY, type ControllerHealth, type LoopHealth, type ScalingStatus } from '../health.js';
import { silentLogger, type Logger } from '../log.js';
import { noticeDelaySeconds, parseMonitorNotice, type MonitorNotice } from '../messages.js';
import { ServiceMetrics } from '../metrics.js';
import type { Queue } from '../queue/port.js';
import type { Runtime } from '../runtime.js';
import { endWaitingImages, launchTick, ScalingMeasurements, StartFailures, type LaunchTick, type StartFailureState } from './launch.js';
import { canonicalPolicyName, policyByName } from './policy.js';
import { every, FailureLog, pauseToGather, type Loop } from './loop.js';
import { MONITOR_RECEIVE_MAX, monitorTick } from './monitor.js';


export interface Controllers {
  /** The loops' health, as also published in the output bucket. */
  health(): LoopHealth[];
  /** The launch policy's last decision, as also published in the output bucket. */
  scaling(): ScalingStatus | undefined;
  /** New images are waiting: the launch controller looks now instead of at its next tick. */
  imagesQueued(): void;
  stop(): Promise<void>;
}

export interface ControllerOptions {
  /** The web tier's output phase, when it runs in this process: see MonitorOptions.recorded. */
  recorded?: (imageId: string) => boolean;
  /** The web tier's uploads about to end, when it runs in this process: see LaunchOptions.incoming. */
  incoming?: () => number;
}

/** `metrics`: the process's registry, shared with the web tier when it runs in this process too. */
export function startControllers(runtime: Runtime, logger: Logger = silentLogger(), metrics = new ServiceMetrics(), options: ControllerOptions = {}): Controllers {
  const { config } = runtime;
  const log = logger.child({ component: 'launch' });
  const counted = metrics.controller;
  metrics.watchShared(runtime);
  let publisher: Loop | undefined;
  const publish = () => publisher?.wake();

  const workers = new FailureLog('workers', logger.child({ component: 'workers' }), publish);
  const startFailures = new StartFailures({
    threshold: config.startFailures,
    timeoutMs: config.startFailureTimeoutSeconds * 1000,
    // The notice of an image a worker took just before it died arrives this much later.
    judgeAfterMs: 2_000 + noticeDelaySeconds(config) * 1000,
    ...(runtime.compute.startFailure ? { explain: (id: string) => runtime.compute.startFailure!(id) } : {}),
    onChange: (state) => reportStartFailures(workers, state),
    onFailures: (count) => counted.instancesFailedAtStart(count),
  });

  const policyName = canonicalPolicyName(config.policy);
  const policy = policyByName(policyName);
  const events = new EventLog(config.data, (error) => logger.error({ component: 'events', file: path.join(config.data, 'events.jsonl'), err: error }, 'cannot write the event log'));
  events.record({ type: 'run', at: Date.now(), component: 'controller', policy: policyName, maxInstances: runtime.compute.maxInstances, capacity: runtime.compute.capacity ?? runtime.compute.maxInstances, idleWaitSeconds: config.idleWaitSeconds, compute: config.compute });
  const measurements = new ScalingMeasurements(events, (startupMs) => counted.instanceReady(startupMs));
  let scaling: ScalingStatus | undefined;
  let scalingPublishedAt = 0;
  let scalingDirty = false;
  const noteScaling = (tick: LaunchTick) => {
    const { observation: seen, decision } = tick;
    const next: ScalingStatus = {
      policy: policyName,
      capacity: seen.capacity,
      max: seen.max,
      backlog: seen.backlog,
      inFlight: seen.inFlight,
      target: decision.target,
      drainMs: decision.drainMs,
      serviceMs: Math.round(seen.serviceMs),
      startupMs: Math.round(seen.startupMs),
      measured: tick.measured,
      reason: decision.reason,
      at: Date.now(),
    };
    if (!scaling || scaling.reason !== next.reason || scaling.target !== next.target || scaling.backlog !== next.backlog) scalingDirty = true;
    scaling = next;
    // Published when it changes, at most once a second: the page follows the tier's size.
    if (scalingDirty && next.at - scalingPublishedAt >= 1000) {
      scalingPublishedAt = next.at;
      scalingDirty = false;
      publish();
    }
  };

  let lastLaunch = '';
  const terminateFailures = new Map<string, string>();
  const launch = every({ name: 'launch controller', intervalMs: config.launchIntervalMs, log, onHealthChange: publish }, async () => {
    const tick = await launchTick(runtime.queues.launch, runtime.compute, { policy, measurements, startFailures, ...(options.incoming ? { incoming: options.incoming } : {}) });
    noteScaling(tick);
    counted.launched(tick.started);
    for (const { id, reason, detail } of tick.deadlines?.terminated ?? []) {
      counted.deadlineTerminated(reason);
      log.warn({ instanceId: id, reason, detail }, 'instance terminated');
      terminateFailures.delete(id);
    }
    // A terminate that keeps failing is retried every tick but reported once per distinct error.
    for (const { id, detail, error } of tick.deadlines?.failed ?? []) {
      if (terminateFailures.get(id) !== error) log.error({ instanceId: id, detail, error }, 'cannot terminate instance; retrying every tick');
      terminateFailures.set(id, error);
    }
    if (tick.started > 0) {
      const { backlog, starting, idle, busy, max } = tick.observation;
      const fields = { started: tick.started, waiting: backlog, starting, idle, busy, max, reason: tick.decision.reason };
      const key = JSON.stringify(fields);
      if (key !== lastLaunch) log.info(fields, 'instances started');
      lastLaunch = key;
    }
    const { reason } = startFailures.state();
    if (reason && startFailures.shouldEndWaiting()) {
      const ended = await endWaitingImages({ launchQueue: runtime.queues.launch, outputQueue: runtime.queues.output, store: runtime.store, outputBucket: config.outputBucket, reason });
      if (ended > 0) log.error({ ended, reason }, 'waiting images ended as errors');
    }
  });

  const monitorOptions = {
    store: runtime.store,
    outputBucket: config.outputBucket,
    // Each notice names the instance that took an image: proof that workers start fine.
    queues: {
      ...runtime.queues,
      monitor: noticingInstances(runtime.queues.monitor, (notice, firstReceipt) => {
        startFailures.tookImage(notice.instanceId);
        // A notice comes back every check: its wait is counted on the first receipt only.
        if (firstReceipt && notice.queuedAt !== undefined) counted.imageTaken(notice.startedAt - notice.queuedAt);
      }),
    },
    compute: runtime.compute,
    deadlineSeconds: config.deadlineSeconds,
    checkSeconds: config.monitorCheckSeconds,
    maxAttempts: config.maxAttempts,
    log: logger.child({ component: 'monitor' }),
    ...(options.recorded ? { recorded: options.recorded } : {}),
  };
  // The monitor long-polls, so its loop needs no pause between ticks but the one that lets a batch gather.
  const monitor = every({ name: 'monitor controller', intervalMs: 0, log: monitorOptions.log, onHealthChange: publish }, async (signal) => {
    const summary = await monitorTick(monitorOptions, 1, signal);
    counted.retried(summary.retried);
    counted.hungTerminated(summary.terminated);
    await pauseToGather(summary.received, MONITOR_RECEIVE_MAX, signal);
  });

  const health = (): LoopHealth[] => [launch.health(), monitor.health(), workers.health()];
  // The web tier may be another process: it learns the controllers' health from the bucket.
  let bucketReady = config.store !== 'fs';
  publisher = every({ name: 'controller health report', intervalMs: CONTROLLER_HEALTH_EVERY_MS, log: logger.child({ component: 'controller' }) }, async () => {
    // A fresh data folder has no bucket folders until the web tier starts; an S3 bucket
    // comes from provisioning and is never created here.
    if (!bucketReady) {
      await runtime.store.ensureBucket(config.outputBucket);
      bucketReady = true;
    }
    const report: ControllerHealth = { writtenAt: Date.now(), loops: health(), ...(scaling ? { scaling } : {}) };
    await runtime.store.put(config.outputBucket, CONTROLLER_HEALTH_KEY, Buffer.from(JSON.stringify(report)), { contentType: 'application/json' });
  });

  counted.watchScaling(() => scaling);
  const loops: Loop[] = [launch, monitor, publisher];
  return {
    health,
    scaling: () => scaling,
    imagesQueued: () => launch.wake(),
    async stop() {
      await Promise.all(loops.map((loop) => loop.stop()));
      await events.close();
    },
  };
}

function reportStartFailures(workers: FailureLog, state: StartFailureState): void {
  if (state.failing && state.reason) workers.failed(new Error(state.reason), 'start failure');
  else workers.succeeded('working again: an instance took an image after failures at start');
}

/** The monitor queue, showing `onNotice` each notice received and whether it is its first receipt. */
function noticingInstances(queue: Queue, onNotice: (notice: MonitorNotice, firstReceipt: boolean) => void): Queue {
  return {
    name: queue.name,
    send: (body, options) => queue.send(body, options),
    sendBatch: (bodies, options) => queue.sendBatch(bodies, options),
    async receive(options) {
      const messages = await queue.receive(options);
      for (const message of messages) {
        try {
          onNotice(parseMonitorNotice(message.body), message.receiveCount === 1);
        } catch {
          // The monitor reports malformed notices itself.
        }
      }
      return messages;
    },
    delete: (handle) => queue.delete(handle),
    deleteBatch: (handles) => queue.deleteBatch(handles),
    changeVisibility: (handle, seconds) => queue.changeVisibility(handle, seconds),
    counts: () => queue.counts(),
  };
}
