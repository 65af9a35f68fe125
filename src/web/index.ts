/** The web tier as one service: HTTP server, output phase and status broadcasts. */
import path from 'node:path';
import { every, pauseToGather, type Loop } from '../controller/loop.js';
import { EventLog } from '../event-log.js';
import { CONTROLLER_HEALTH_KEY, CONTROLLER_HEALTH_STALE_MS, describeProblem, errorDetail, parseControllerHealth, type LoopHealth, type ScalingStatus } from '../health.js';
import { silentLogger, type Logger } from '../log.js';
import { ServiceMetrics } from '../metrics.js';
import { projectRoot, type Runtime } from '../runtime.js';
import type { ObjectStore } from '../storage/port.js';
import { finishInterruptedDeletions } from './deletion.js';
import { IncomingUploads } from './incoming.js';
import { OUTPUT_RECEIVE_MAX, outputTick, ResultsIndex } from './results.js';
import { startSweeper, sweepExpiredBatches, sweepIntervalMs } from './retention.js';
import { createWebServer, trustProxyOption, type WebServer } from './server.js';
import { findPendingLaunches, relaunch } from './upload.js';

export interface WebTier {
  server: WebServer;
  index: ResultsIndex;
  /** Uploads still arriving: the images expected from those about to end. */
  incoming: IncomingUploads;
  url: string;
  /** Stops taking uploads (503) while everything else keeps answering. */
  drain(): void;
  /** Stops taking uploads, then closes the server and the output phase. */
  stop(): Promise<void>;
}

/** `metrics`: the process's registry, shared with the controllers when they run in this process too. */
export interface WebTierOptions {
  /** Told when an upload's images are queued (the launch controller of this process). */
  onQueued?: () => void;
  /** Told when an upload about to end starts counting as incoming (the same). */
  onIncoming?: () => void;
}

export async function startWebTier(runtime: Runtime, logger: Logger = silentLogger(), metrics = new ServiceMetrics(), options: WebTierOptions = {}): Promise<WebTier> {
  const { config } = runtime;
  const log = logger.child({ component: 'web' });
  // Refused before anything is opened: the setting would let clients name their own address.
  trustProxyOption(config.trustProxy);
  await Promise.all([runtime.store.ensureBucket(config.inputBucket), runtime.store.ensureBucket(config.outputBucket)]);
  // Batches are read when first asked for; only the markers of unfinished work are read now.
  const index = new ResultsIndex(runtime.store, config.inputBucket, config.outputBucket, {
    maxImages: config.maxLoadedImages,
    onResult: (result, sinceAcceptedMs) => metrics.web.resultRecorded(result, sinceAcceptedMs),
  });
  const deletion = { store: runtime.store, inputBucket: config.inputBucket, outputBucket: config.outputBucket, index };
  for (const batchId of await finishInterruptedDeletions(deletion)) log.info({ batchId }, 'finished deleting a batch a previous web tier had started');
  for (const pending of await findPendingLaunches(runtime.store, config.inputBucket)) {
    // Before listening, so no upload of this process can be mistaken for an interrupted one.
    const sent = await relaunch(pending, { store: runtime.store, inputBucket: config.inputBucket, launchQueue: runtime.queues.launch, index });
    log.warn({ batchId: pending.manifest.batchId, queued: sent }, 'upload interrupted before all its images were queued: queued them again');
  }
  const loops: Loop[] = [];
  const controllers = controllerReportReader(runtime.store, config.outputBucket);
  const health = async (): Promise<LoopHealth[]> => [...loops.map((loop) => loop.health()), ...(await controllers()).loops];
  const scaling = async (): Promise<ScalingStatus | undefined> => (await controllers()).scaling;
  const events = new EventLog(config.data, (error) => logger.error({ component: 'events', data: config.data, err: error }, 'cannot write the event log'));
  events.record({ type: 'run', at: Date.now(), component: 'web' });
  // A worker started for an upload about to end waits this long for its images.
  const incoming = new IncomingUploads(config.idleWaitSeconds * 1000, options.onIncoming);
  const server = await createWebServer({ runtime, index, uiDir: path.join(projectRoot, 'dist', 'ui'), logger, health, scaling, events, metrics, incoming, ...(options.onQueued ? { onQueued: options.onQueued } : {}) });
  // A result for an image of a deleted batch is kept until the monitor has surely seen it.
  const orphanGraceSeconds = 2 * (config.deadlineSeconds + config.monitorCheckSeconds);
  const resultsLog = logger.child({ component: 'results' });
  const output: Loop = every({ name: 'output phase', intervalMs: 0, log: resultsLog }, async (signal) => {
    const received = await outputTick(index, runtime.queues.output, 1, signal, { orphanGraceSeconds, log: resultsLog, events });
    await pauseToGather(received, OUTPUT_RECEIVE_MAX, signal);
  });
  const retentionLog = logger.child({ component: 'retention' });
  const sweeper: Loop | undefined = config.retentionSeconds > 0
    ? startSweeper(async () => {
      const swept = await sweepExpiredBatches(deletion, config.retentionSeconds);
      // One line per batch, so each batch's story can be found by its id.
      for (const batchId of swept.deleted) retentionLog.info({ batchId, retentionSeconds: config.retentionSeconds }, 'batch deleted after the retention');
    }, sweepIntervalMs(config.retentionSeconds), retentionLog)
    : undefined;
  const statusLoop: Loop = every({ name: 'status broadcast', intervalMs: 1000, log }, async () => {
    if (server.hub.clientCount > 0) server.hub.broadcastStatus(await server.status());
  });
  loops.push(output, statusLoop, ...(sweeper ? [sweeper] : []));
  const address = await server.app.listen({ host: config.host, port: config.port });
  const url = publicUrl(address, config.host);
  return {
    server,
    index,
    incoming,
    url,
    drain: () => server.drain(),
    async stop() {
      server.drain();
      server.cancelWaits();
      server.hub.closeAll();
      await server.app.close();
      await Promise.all([output.stop(), statusLoop.stop(), sweeper?.stop()]);
      await events.close();
    },
  };
}

/**
 * The controllers' health and scaling decision as they last published them, read at most
 * once a second however many clients ask. A report that stopped coming is itself the
 * problem to show (and its scaling decision is then left out: it no longer holds).
 */
function controllerReportReader(store: ObjectStore, bucket: string): () => Promise<{ loops: LoopHealth[]; scaling?: ScalingStatus }> {
  let cached: { at: number; report: Promise<{ loops: LoopHealth[]; scaling?: ScalingStatus }> } | undefined;
  const read = async (): Promise<{ loops: LoopHealth[]; scaling?: ScalingStatus }> => {
    let object;
    try {
      object = await store.get(bucket, CONTROLLER_HEALTH_KEY);
    } catch (error) {
      return { loops: [{ loop: 'controllers', ok: false, problem: `cannot read the controllers' health report: ${describeProblem(error)}`, detail: errorDetail(error) }] };
    }
    // None yet: no controller has run against these buckets, or it is only starting.
    if (!object) return { loops: [] };
    const report = parseControllerHealth(object.body.toString('utf8'));
    if (!report) return { loops: [{ loop: 'controllers', ok: false, problem: `the controllers' health report (${CONTROLLER_HEALTH_KEY} in bucket ${bucket}) is not valid` }] };
    const age = Date.now() - report.writtenAt;
    if (age > CONTROLLER_HEALTH_STALE_MS) {
      return { loops: [{ loop: 'controllers', ok: false, problem: `no report from the controllers for ${Math.round(age / 1000)} s: is icaas controller (or icaas start) running?`, since: report.writtenAt }] };
    }
    return { loops: report.loops, ...(report.scaling ? { scaling: report.scaling } : {}) };
  };
  return () => {
    const now = Date.now();
    if (!cached || now - cached.at >= 1000) cached = { at: now, report: read() };
    return cached.report;
  };
}

/** The address as a user would type it: localhost stays localhost. */
function publicUrl(address: string, host: string): string {
  const url = new URL(address);
  if (host === 'localhost' || host === '127.0.0.1' || host === '::1') url.hostname = host === '::1' ? '[::1]' : host;
  return url.toString().replace(/\/$/, '');
}
