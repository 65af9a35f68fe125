/**
 * Monitor controller: watches every image an instance has started. Each notice stays in
 * flight on the monitor queue and comes back every check interval; when an image has no
 * result by its deadline (or its instance is gone), the instance is terminated and the
 * image goes back to the launch queue, until the last attempt ends it as an error.
 *
 * Any number of monitors may run, and one may be slower than the check interval, so the
 * same notice (or two notices for one attempt, after a worker crash) can be looked at
 * twice at once. Two rules keep that harmless (see ../outcomes.ts): a retry is sent only by
 * the monitor whose create-if-absent of its claim succeeds, and the error result is written
 * create-if-absent like every result, so the first final result stands.
 */
import { clock as systemClock, type Clock } from '../clock.js';
import type { Compute } from '../compute/port.js';
import { silentLogger, type Logger } from '../log.js';
import { type ImageResult, type LaunchMessage, type MonitorNotice, InvalidMessageError, parseMonitorNotice } from '../messages.js';
import { readClaim, readFinalResult, storeFirstResult, writeClaim, type AttemptClaim } from '../outcomes.js';
import { QueueError, SQS_LIMITS, type Queue, type ReceivedMessage } from '../queue/port.js';
import type { ObjectStore } from '../storage/port.js';

export interface MonitorOptions {
  store: ObjectStore;
  outputBucket: string;
  queues: { launch: Queue; monitor: Queue; output: Queue };
  compute: Compute;
  deadlineSeconds: number;
  checkSeconds: number;
  maxAttempts: number;
  /** Default: silent. */
  log?: Logger;
  clock?: Clock;
  /**
   * Whether the output phase of this process has recorded the image's final result (`icaas
   * start`, where both run in one process). Such a notice is let go at once, without
   * reading the result back or announcing it again: the output phase learned of it from an
   * announcement, sent only after the result was stored, or from the bucket itself, and the
   * announcement is for the output phase. It stays safe across a power cut: the queue file
   * keeps a prefix of its commits, so if this delete survives, so does the announcement the
   * output phase saw, and a restarted web tier reads results from the bucket anyway.
   */
  recorded?: (imageId: string) => boolean;
}

export interface MonitorTickSummary {
  received: number;
  finished: number;
  retried: number;
  failed: number;
  /** Notices of attempts whose retry another monitor (or an earlier check) had already sent. */
  superseded: number;
  /** Instances terminated because they held an image past the deadline. */
  terminated: number;
}

/** Notices taken per receive: SQS's most. */
export const MONITOR_RECEIVE_MAX = SQS_LIMITS.maxMessages;

export async function monitorTick(options: MonitorOptions, waitSeconds: number, signal?: AbortSignal): Promise<MonitorTickSummary> {
  const summary: MonitorTickSummary = { received: 0, finished: 0, retried: 0, failed: 0, superseded: 0, terminated: 0 };
  const messages = await options.queues.monitor.receive({
    maxMessages: MONITOR_RECEIVE_MAX,
    waitSeconds,
    visibilityTimeoutSeconds: options.checkSeconds,
    ...(signal ? { signal } : {}),
  });
  if (messages.length === 0) return summary;
  summary.received = messages.length;
  const alive = new Set((await options.compute.list()).filter((instance) => instance.state !== 'stopped').map((instance) => instance.id));
  const finished: Finished = { results: [], handles: [] };
  try {
    for (const message of messages) {
      const outcome = await checkNoticeUnlessTaken(options, message, alive, finished, () => summary.terminated++);
      if (outcome !== 'waiting') summary[outcome]++;
    }
  } finally {
    await settleFinished(options, finished);
  }
  return summary;
}

/** Notices whose image has its result: announced, then deleted, together at the end of the tick. */
interface Finished {
  results: ImageResult[];
  handles: string[];
}

/**
 * The instance stores the result, then announces it on the output queue. An instance that
 * dies between the two leaves a result nobody is told about: the web tier would show the
 * image unfinished until it next restarts and reads the bucket. The monitor cannot tell
 * whether the announcement went out, so it sends it again before it lets go of the
 * notice; the output phase records the first and ignores the other. A tick's results go
 * out in one batch and its notices are deleted in another: two writes, not two per image.
 * The batch asks for no disk flush (a flush per tick held the process, web tier included,
 * for up to tens of milliseconds while workers were flushing results): a power cut that
 * undoes it also undoes the deletes after it, and the notices come back to be checked again.
 */
async function settleFinished(options: MonitorOptions, finished: Finished): Promise<void> {
  if (finished.handles.length === 0) return;
  if (finished.results.length > 0) await options.queues.output.sendBatch(finished.results.map((result) => JSON.stringify({ type: 'result', result })), { flush: false });
  await options.queues.monitor.deleteBatch(finished.handles);
}

type Outcome = 'waiting' | 'finished' | 'retried' | 'failed' | 'superseded';

/**
 * A notice whose check outlasted its visibility timeout has been received again, maybe by
 * another monitor; this one's receipt handle is then stale and that check is the one that
 * counts. Its writes were conditional, so nothing it did conflicts.
 */
async function checkNoticeUnlessTaken(options: MonitorOptions, message: ReceivedMessage, alive: Set<string>, finished: Finished, terminated: () => void): Promise<Outcome> {
  try {
    return await checkNotice(options, message, alive, finished, terminated);
  } catch (error) {
    if (error instanceof QueueError && error.code === 'not-in-flight') return 'waiting';
    throw error;
  }
}

async function checkNotice(options: MonitorOptions, message: ReceivedMessage, alive: Set<string>, finished: Finished, terminated: () => void): Promise<Outcome> {
  const { queues } = options;
  const log = options.log ?? silentLogger();
  let notice: MonitorNotice;
  try {
    notice = parseMonitorNotice(message.body);
  } catch (error) {
    if (!(error instanceof InvalidMessageError)) throw error;
    log.warn({ messageId: message.id, reason: error.message }, 'malformed monitor notice dropped');
    await queues.monitor.delete(message.receiptHandle);
    return 'finished';
  }
  if (options.recorded?.(notice.imageId)) {
    finished.handles.push(message.receiptHandle);
    return 'finished';
  }
  const stored = await readFinalResult(options.store, options.outputBucket, notice.imageId);
  if (stored?.valid) return finish(finished, message, stored.result);
  if (stored) {
    // Its instance has finished with the image, badly: no point waiting or killing it.
    noticeLog(log, notice).warn({ reason: stored.reason }, 'stored result not valid; the attempt counts as failed');
    return conclude(options, message, notice, `attempt ${notice.attempt} stored an invalid result`);
  }
  const instanceGone = !alive.has(notice.instanceId);
  if (noticeAgeSeconds(options, notice, message) < options.deadlineSeconds && !instanceGone) {
    await queues.monitor.changeVisibility(message.receiptHandle, options.checkSeconds);
    return 'waiting';
  }
  const reason = instanceGone
    ? `instance ${notice.instanceId} stopped while holding the image`
    : `no result within ${options.deadlineSeconds}s on instance ${notice.instanceId}`;
  if (!instanceGone) {
    try {
      await options.compute.terminate(notice.instanceId);
      // Other notices of this tick on the same instance (the image before, whose result the
      // hang held up) find it gone instead of terminating it again.
      alive.delete(notice.instanceId);
      terminated();
    } catch (error) {
      noticeLog(log, notice).error({ err: error }, 'cannot terminate instance');
    }
  }
  // Checked again after the instance is gone: a result written just before the kill counts.
  const after = await readFinalResult(options.store, options.outputBucket, notice.imageId);
  if (after?.valid) return finish(finished, message, after.result);
  return conclude(options, message, notice, reason);
}

/**
 * How long the image has been on its instance. The notice's start time comes from the
 * worker's wall clock and `now` from this monitor's, so a clock step (or two machines that
 * disagree) would shift it: a step back would let a hung image live on by the size of the
 * step, a step forward would kill a healthy one early. The receive count bounds it from
 * both sides without any clock: every receive hides the notice for a full check interval,
 * so at the k-th receive at least (k-1) intervals have passed, and normally less than one
 * more. A monitor that fell behind thus grants at most one deadline extra, never less.
 */
function noticeAgeSeconds(options: MonitorOptions, notice: MonitorNotice, message: ReceivedMessage): number {
  const now = (options.clock ?? systemClock).now();
  const floor = (message.receiveCount - 1) * options.checkSeconds;
  return Math.min(Math.max((now - notice.startedAt) / 1000, floor), floor + options.checkSeconds);
}

function finish(finished: Finished, message: ReceivedMessage, result: ImageResult): 'finished' {
  finished.results.push(result);
  finished.handles.push(message.receiptHandle);
  return 'finished';
}

/** The attempt has failed: the next one, or the error result after the last. */
async function conclude(options: MonitorOptions, message: ReceivedMessage, notice: MonitorNotice, reason: string): Promise<Outcome> {
  if (notice.attempt >= options.maxAttempts) return failImage(options, message, notice, reason);
  return retry(options, message, notice, reason);
}

async function failImage(options: MonitorOptions, message: ReceivedMessage, notice: MonitorNotice, reason: string): Promise<Outcome> {
  const { queues } = options;
  const error: ImageResult = {
    status: 'error',
    imageId: notice.imageId,
    batchId: notice.batchId,
    name: notice.name,
    attempts: notice.attempt,
    instanceId: notice.instanceId,
    error: `failed after ${notice.attempt} attempt${notice.attempt === 1 ? '' : 's'}; last: ${reason}`,
    finishedAt: (options.clock ?? systemClock).now(),
  };
  const { won, result } = await storeFirstResult(options.store, options.outputBucket, error);
  // A loser announces the result that stands, in case its writer died before announcing it.
  await queues.output.send(JSON.stringify({ type: 'result', result }));
  await queues.monitor.delete(message.receiptHandle);
  if (!won) return 'finished';
  noticeLog(options.log ?? silentLogger(), notice).warn({ name: notice.name, reason }, 'image failed after its last attempt');
  return 'failed';
}

/**
 * Sends attempt n+1, at most once across all monitors: only the holder of its claim sends
 * it, and marks the claim sent afterwards. A claim still unsent after the notice it was
 * made for has come back `takeoverReceives` more times belongs to a monitor that died
 * between claiming and sending (those steps take milliseconds), and is taken over.
 */
async function retry(options: MonitorOptions, message: ReceivedMessage, notice: MonitorNotice, reason: string): Promise<Outcome> {
  const { queues, store, outputBucket } = options;
  const log = noticeLog(options.log ?? silentLogger(), notice);
  const attempt = notice.attempt + 1;
  const claim: AttemptClaim = {
    imageId: notice.imageId,
    attempt,
    noticeId: message.id,
    receiveCount: message.receiveCount,
    sent: false,
    claimedAt: (options.clock ?? systemClock).now(),
  };
  const existing = await readClaim(store, outputBucket, notice.imageId, attempt);
  if (existing?.claim.sent) {
    await queues.monitor.delete(message.receiptHandle);
    log.debug({ reason, next: attempt }, 'attempt ended; its retry was already sent');
    return 'superseded';
  }
  const takeoverReceives = Math.max(2, Math.ceil(options.deadlineSeconds / options.checkSeconds));
  const abandoned = existing !== null && existing.claim.noticeId === message.id && message.receiveCount >= existing.claim.receiveCount + takeoverReceives;
  const etag = existing === null || abandoned ? await writeClaim(store, outputBucket, claim, existing?.etag) : null;
  if (etag === null) {
    // Another monitor holds the claim and may be sending right now: look again next check.
    await queues.monitor.changeVisibility(message.receiptHandle, options.checkSeconds);
    return 'waiting';
  }
  const launch: LaunchMessage = {
    type: 'launch',
    imageId: notice.imageId,
    batchId: notice.batchId,
    name: notice.name,
    key: notice.key,
    attempt,
    queuedAt: claim.claimedAt,
  };
  // Resent before the notice is deleted, for the same reason the worker orders its steps.
  await queues.launch.send(JSON.stringify(launch));
  if ((await writeClaim(store, outputBucket, { ...claim, sent: true }, etag)) === null) {
    log.warn({ next: attempt }, 'retry claim taken over while it was sent; that attempt may run twice');
  }
  await queues.monitor.delete(message.receiptHandle);
  log.warn({ name: notice.name, reason, next: attempt, maxAttempts: options.maxAttempts }, 'image retried');
  return 'retried';
}

/** Every line about a notice carries its image, batch, instance and attempt as fields. */
function noticeLog(log: Logger, notice: MonitorNotice): Logger {
  return log.child({ imageId: notice.imageId, batchId: notice.batchId, instanceId: notice.instanceId, attempt: notice.attempt });
}
