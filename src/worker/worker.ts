/**
 * The instance loop: one image at a time. The order of steps is what makes the service
 * lose nothing: the monitor notice is sent before the launch message is deleted, so a
 * crash between the two can duplicate work but never drop an image. Duplicates stay
 * harmless (see ../outcomes.ts): an attempt already superseded by a claimed retry is
 * dropped before it starts, and the result is stored create-if-absent, so a duplicate that
 * finishes second neither replaces nor announces its own result.
 *
 * What is not classification is kept off the classifier's way. While an image is being
 * classified the worker takes the next launch message ahead (one only, so instances share
 * a short queue fairly; a worker that dies holding it delays it by its visibility timeout,
 * and one that is stopped gives it back at once), checks it and reads its image; and it
 * deletes the launch message, stores and announces an image's result while the next one is
 * being classified. It reports to the compute adapter once per image (busy, naming it) and
 * once when it runs out of work (idle). An image still in hand after PROGRESS_AFTER_MS has
 * its launch message deleted then and gets a progress note; for the usual image the result
 * follows within milliseconds and says the same.
 *
 * The worker's sends (notice, progress, result) ask for no disk flush: a flush per send
 * blocked the worker for milliseconds per image. A power cut undoes only the last commits
 * of a queue file, so a lost send takes everything the worker committed after it along,
 * and each loss is recovered: a lost notice goes with the delete of its launch message,
 * which comes back; a lost result announcement leaves the notice, and the monitor
 * announces a stored result it finds; and a launch message whose image already has a
 * stored result gets that result announced before it is dropped (dropStale).
 */
import { Backoff, sleep } from '../backoff.js';
import { movingAverage } from '../moving-average.js';
import type { Classifier } from '../classifier/port.js';
import { FailureLog } from '../controller/loop.js';
import { ImageDecodeError } from '../classifier/port.js';
import type { Compute, InstanceReport } from '../compute/port.js';
import { clock as systemClock, type Clock } from '../clock.js';
import { silentLogger, type Logger } from '../log.js';
import {
  type ImageResult,
  type LaunchMessage,
  type MonitorNotice,
  type OutputMessage,
  InvalidMessageError,
  parseLaunchMessage,
} from '../messages.js';
import { attemptKey, readFinalResult, storeFirstResult } from '../outcomes.js';
import { QueueError, type Queue, type ReceivedMessage } from '../queue/port.js';
import type { ObjectStore, StoredObject } from '../storage/port.js';

export interface WorkerQueues {
  launch: Queue;
  monitor: Queue;
  output: Queue;
}

export interface WorkerOptions {
  instanceId: string;
  store: ObjectStore;
  inputBucket: string;
  outputBucket: string;
  queues: WorkerQueues;
  compute: Compute;
  classifier: Classifier;
  /** Seconds of an empty long poll after which the instance stops itself. */
  idleWaitSeconds: number;
  /**
   * Seconds the monitor notice stays hidden after it is sent: the monitor's check interval,
   * so that for the usual image, done within it, the monitor looks once and finds the
   * result, instead of also looking at once and putting the notice back. A worker that dies
   * meanwhile is noticed that much later. Whole seconds (SQS delays are); default 0.
   */
  noticeDelaySeconds?: number;
  /** How long a received launch message stays hidden before the notice takes over. */
  launchVisibilitySeconds?: number;
  /**
   * How long a launch message taken ahead, while another image is classified, stays hidden;
   * one held past half of this is not started but left to come back (another worker may
   * have it by then). Default: as a received one. Not shorter in service: once started, its
   * message is deleted only with the result, and it must not come back before the monitor
   * has had time to notice a worker that died holding it.
   */
  prefetchVisibilitySeconds?: number;
  /** Default: silent. Lines about an image carry its imageId, batchId and attempt. */
  log?: Logger;
  /**
   * How long the launch queue may keep failing before the worker gives up with the error
   * (it is retried meanwhile, with growing waits). Default 30 s: a fault that lasts longer
   * is for the operator to see, and an instance that cannot get work should not hold a slot.
   */
  receiveFailureLimitMs?: number;
  /** Stops the loop after the current image (graceful shutdown). */
  signal?: AbortSignal;
  /** Test-only fault injection, by substring of the image's file name. */
  faults?: { hangOn?: string; crashOn?: string; delayMs?: number };
  clock?: Clock;
}

export interface WorkerSummary {
  processed: number;
  reason: 'idle' | 'stopped';
}

/** An image in hand this long gets a progress note, so users see which instance holds it. */
export const PROGRESS_AFTER_MS = 1000;
/** Results stored and announced in the background at once, at most (see Finishing). */
const FINISHING_AT_MOST = 3;
/** A message taken ahead longer ago than this part of its visibility timeout is not started. */
const PREFETCH_START_WITHIN = 0.5;
/** A check for staleness older than this is made again before the image starts. */
const STALE_CHECK_FRESH_MS = 1000;

/** A launch message taken from the queue, checked, with its image read: ready to start. */
interface Taken {
  message: ReceivedMessage;
  launch: LaunchMessage;
  /** Null when the input bucket no longer has it. */
  image: StoredObject | null;
  /** Monotonic: it must not start after this (its visibility timeout is running out). */
  startBy: number;
  checkedAt: number;
}

/** A settled background step: its error, or null. Never rejects, so none goes unhandled. */
type Pending = Promise<unknown>;
const settled = (work: Promise<unknown>): Pending => work.then(() => null, (error: unknown) => error ?? new Error('failed'));
async function rethrow(pending: Pending | undefined): Promise<void> {
  const error = await pending;
  if (error) throw error;
}

export async function runWorker(options: WorkerOptions): Promise<WorkerSummary> {
  const { instanceId, queues, compute } = options;
  const log = options.log ?? silentLogger();
  const clock = options.clock ?? systemClock;
  const tally = { processed: 0, serviceMs: undefined as number | undefined };
  const reporter = reports(compute, instanceId, tally);
  await reporter.idle();
  const take = taker(options, log);
  /** The next message, taken while the current image was classified. */
  let ahead: Promise<Taken | null> | undefined;
  /** The images before: their results being stored, then announced. */
  const finishing = new Finishing(FINISHING_AT_MOST);
  const stopped = () => options.signal?.aborted === true;
  const end = async (reason: WorkerSummary['reason']): Promise<WorkerSummary> => {
    await finishing.done();
    return { processed: tally.processed, reason };
  };
  try {
    for (;;) {
      if (stopped()) return await end('stopped');
      let taken = ahead ? await ahead : null;
      // Not started: the finally below gives it back.
      if (stopped()) return await end('stopped');
      ahead = undefined;
      if (taken && !(await stillStartable(options, taken, clock, log))) taken = null;
      if (!taken) {
        await finishing.done();
        if (stopped()) return await end('stopped');
        await reporter.idle();
        const next = await take(options.idleWaitSeconds, options.launchVisibilitySeconds ?? 30);
        if (next === 'stopped') return await end('stopped');
        if (!next) {
          log.info({ idleWaitSeconds: options.idleWaitSeconds, processed: tally.processed }, 'no work; stopping');
          return await end('idle');
        }
        taken = next;
      }
      const started = clock.monotonic();
      const startedAt = clock.now();
      const { launch } = taken;
      const notice: MonitorNotice = { type: 'monitor', imageId: launch.imageId, batchId: launch.batchId, name: launch.name, key: launch.key, attempt: launch.attempt, instanceId, startedAt, queuedAt: launch.queuedAt };
      await queues.monitor.send(JSON.stringify(notice), { flush: false, ...(options.noticeDelaySeconds ? { delaySeconds: options.noticeDelaySeconds } : {}) });
      await reporter.busy(launch.imageId);
      // Classification is where a worker hangs or crashes, and a result still being stored
      // then is lost: the images before would be retried (an attempt spent) for this one's
      // fault. A first attempt takes that risk, so that the store's disk flushes overlap
      // the classification; a retried image may be the one that brought its worker down
      // before, so the images before wait for their results to be stored. An innocent image
      // that shared a worker with a bad one thus loses at most one attempt, and the retries
      // of the two, which arrive together, cannot sink it again. Announcements may trail:
      // a result stored but never announced is announced by the monitor.
      if (launch.attempt > 1) await finishing.stored();
      const inHand = heldLong(options, taken, { type: 'progress', imageId: launch.imageId, batchId: launch.batchId, instanceId, attempt: launch.attempt, at: startedAt });
      const classifying = classifyOne(options, launch, taken.image, started);
      if (!stopped()) {
        const prefetch = take(0, options.prefetchVisibilitySeconds ?? options.launchVisibilitySeconds ?? 30);
        // Its failure (the queue or store failing) surfaces when it is awaited, next round.
        prefetch.catch(() => undefined);
        ahead = prefetch.then((next) => (next === 'stopped' ? null : next));
      }
      let outcome: { result: ImageResult; classifyMs: number };
      let deleted: boolean;
      try {
        outcome = await classifying;
      } finally {
        deleted = await inHand.stop();
      }
      await finishing.add(finisher(options, { taken, deleted, outcome, started }, clock, tally, log));
    }
  } finally {
    // Whatever ends the loop, the results in flight are stored and announced, and a message
    // taken ahead but never started goes back to the queue at once.
    const error = await finishing.done().then(() => null, (failure: unknown) => failure);
    await release(options, ahead, log);
    if (error) throw error;
  }
}

/**
 * Results being stored and announced, oldest first. Storing one (two disk flushes) takes
 * about as long as classifying the next image, longer when the disk is busy, and waiting for
 * each before going on left the core idle for that long on most images. The bound keeps what
 * a crash costs small: each result not yet stored is an attempt spent for its image.
 */
class Finishing {
  private readonly pending: Finisher[] = [];

  constructor(private readonly atMost: number) {}

  /** Adds one, then waits for the oldest while more than `atMost` are in flight. */
  async add(finisher: Finisher): Promise<void> {
    this.pending.push(finisher);
    while (this.pending.length > this.atMost) await this.pending.shift()!.done();
  }

  /** Resolves once every result in flight is stored; their announcements go on. */
  async stored(): Promise<void> {
    await Promise.all(this.pending.map((finisher) => finisher.stored()));
  }

  /** Waits for every one to be stored and announced, then throws the first failure. */
  async done(): Promise<void> {
    const settled = await Promise.allSettled(this.pending.splice(0).map((finisher) => finisher.done()));
    const failed = settled.find((outcome) => outcome.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

/** An image classified, to be finished. */
interface Classified {
  taken: Taken;
  /** Whether its launch message is already deleted (it was in hand for long). */
  deleted: boolean;
  outcome: { result: ImageResult; classifyMs: number };
  started: number;
}

interface Finisher {
  /** Resolves once the result is stored; its announcement goes on. */
  stored(): Promise<void>;
  /** Resolves once it is stored and announced; rejects with what failed. */
  done(): Promise<void>;
}

/**
 * Finishes an image, starting at once: stores the result (create-if-absent), then deletes
 * the launch message, announces the result that stands and folds the time in.
 */
function finisher(options: WorkerOptions, classified: Classified, clock: Clock, tally: { processed: number; serviceMs: number | undefined }, log: Logger): Finisher {
  const storing = storeFirstResult(options.store, options.outputBucket, classified.outcome.result);
  // Announced as soon as it is stored, not when the loop next looks: the user sees it then,
  // the launch message is deleted then, and the time per image reaches the registry (and
  // the launch policy) with the next report.
  const announcing = storing.then((stored) => announced(options, classified, stored, clock, tally, log));
  // Both are awaited later; their failures must not go unhandled meanwhile.
  storing.catch(() => undefined);
  announcing.catch(() => undefined);
  return {
    async stored() {
      await storing;
    },
    done: () => announcing,
  };
}

async function announced(options: WorkerOptions, { taken, deleted, outcome, started }: Classified, { won, result }: { won: boolean; result: ImageResult }, clock: Clock, tally: { processed: number; serviceMs: number | undefined }, log: Logger): Promise<void> {
  const { launch } = taken;
  const own = outcome.result;
  if (!deleted) await options.queues.launch.delete(taken.message.receiptHandle);
  // The loser announces the result that stands (its writer may have died before
  // announcing it); the output phase keeps the first announcement of each image.
  await sendOutput(options.queues.output, { type: 'result', result });
  tally.processed++;
  const elapsed = clock.monotonic() - started;
  tally.serviceMs = movingAverage(tally.serviceMs, elapsed);
  const said = own.status === 'ok' ? { status: own.status, label: own.label, probability: Number(own.probability.toFixed(3)) } : { status: own.status, error: own.error };
  const fields = { ...said, ms: Math.round(elapsed), classifyMs: Number(outcome.classifyMs.toFixed(1)), ...(won ? {} : { stored: false, standing: result.status }) };
  const line = imageLog(log, launch);
  if (!won) line.info(fields, 'image classified; not stored, it already had its result');
  else if (own.status === 'error') line.warn(fields, 'image failed');
  else line.debug(fields, 'image classified');
}

/**
 * Reports on changes of state only: busy once per image (which also restarts the compute
 * adapter's busy deadline for it), idle when the worker runs out of work. Between two
 * images there is no idle report: the next busy one replaces it.
 */
function reports(compute: Compute, instanceId: string, tally: { processed: number; serviceMs: number | undefined }) {
  let last: string | undefined;
  const send = async (report: InstanceReport): Promise<void> => {
    const full: InstanceReport = { ...report, processed: tally.processed, ...(tally.serviceMs !== undefined ? { serviceMs: Math.round(tally.serviceMs * 10) / 10 } : {}) };
    const key = JSON.stringify(full);
    if (report.state === 'idle' && key === last) return;
    last = key;
    await compute.report(instanceId, full);
  };
  return {
    idle: () => send({ state: 'idle', imageId: null }),
    busy: (imageId: string) => send({ state: 'busy', imageId }),
  };
}

/**
 * What an image still in hand after PROGRESS_AFTER_MS gets: its launch message deleted
 * (the notice has long been sent; left alone it would come back when its visibility timeout
 * ends) and a progress note. A quick image gets neither here: its launch message is
 * deleted with its result, and the result is all users need to see. stop() says whether
 * the launch message was deleted.
 */
function heldLong(options: WorkerOptions, taken: Taken, progress: OutputMessage): { stop(): Promise<boolean> } {
  let work: Pending | undefined;
  const timer = setTimeout(() => {
    work = settled((async () => {
      await options.queues.launch.delete(taken.message.receiptHandle);
      await sendOutput(options.queues.output, progress);
    })());
  }, PROGRESS_AFTER_MS);
  return {
    async stop() {
      clearTimeout(timer);
      if (!work) return false;
      await rethrow(work);
      return true;
    },
  };
}

/**
 * Whether a message taken ahead may still start: not once half its visibility timeout has
 * passed (it may come back to another worker before the notice goes out), and a check for
 * staleness made long ago is made again.
 */
async function stillStartable(options: WorkerOptions, taken: Taken, clock: Clock, log: Logger): Promise<boolean> {
  const { launch } = taken;
  if (clock.monotonic() > taken.startBy) {
    imageLog(log, launch).debug('taken ahead too long ago; left to come back to the queue');
    return false;
  }
  if (clock.monotonic() - taken.checkedAt <= STALE_CHECK_FRESH_MS) return true;
  const stale = await staleDelivery(options, launch);
  if (!stale) return true;
  await dropStale(options, taken.message, launch, stale, log);
  return false;
}

/** Gives a message taken ahead back to the queue at once, instead of when its timeout ends. */
async function release(options: WorkerOptions, ahead: Promise<Taken | null> | undefined, log: Logger): Promise<void> {
  const taken = await ahead?.catch(() => null);
  if (!taken) return;
  try {
    await options.queues.launch.changeVisibility(taken.message.receiptHandle, 0);
  } catch (error) {
    // Back already, or the queue fails: either way it comes back when its timeout ends.
    if (!(error instanceof QueueError)) throw error;
    log.warn({ messageId: taken.message.id, reason: error.message }, 'cannot give back a launch message; it comes back when its visibility timeout ends');
  }
}

/**
 * Takes the next launch message worth starting: receives (long-polling `waitSeconds`),
 * drops malformed messages and stale duplicates, and reads the image. Null when the poll
 * found nothing; 'stopped' when the worker was asked to stop meanwhile.
 */
function taker(options: WorkerOptions, log: Logger): (waitSeconds: number, visibilitySeconds: number) => Promise<Taken | null | 'stopped'> {
  const receive = receiver(options, log);
  const clock = options.clock ?? systemClock;
  return async (waitSeconds, visibilitySeconds) => {
    for (;;) {
      const asked = clock.monotonic();
      const messages = await receive(waitSeconds, visibilitySeconds);
      if (messages === 'stopped') return 'stopped';
      const message = messages[0];
      if (!message) return null;
      let launch: LaunchMessage;
      try {
        launch = parseLaunchMessage(message.body);
      } catch (error) {
        if (!(error instanceof InvalidMessageError)) throw error;
        log.warn({ messageId: message.id, reason: error.message }, 'malformed launch message dropped');
        await options.queues.launch.delete(message.receiptHandle);
        continue;
      }
      const stale = await staleDelivery(options, launch);
      if (stale) {
        await dropStale(options, message, launch, stale, log);
        continue;
      }
      const image = await options.store.get(options.inputBucket, launch.key);
      // Measured from before the receive: the queue's timeout may have started then.
      return { message, launch, image, startBy: asked + visibilitySeconds * 1000 * PREFETCH_START_WITHIN, checkedAt: clock.monotonic() };
    }
  };
}

/**
 * Receives from the launch queue, retrying failures with growing waits and logging a
 * repeated one once, until they have lasted `receiveFailureLimitMs`: then the error ends
 * the worker. 'stopped' when the worker was asked to stop meanwhile.
 */
function receiver(options: WorkerOptions, log: Logger): (waitSeconds: number, visibilitySeconds: number) => Promise<ReceivedMessage[] | 'stopped'> {
  const failures = new FailureLog('launch queue', log);
  const backoff = new Backoff({ initialMs: 250, maxMs: 5_000, jitter: 'equal' });
  const limitMs = options.receiveFailureLimitMs ?? 30_000;
  return async (waitSeconds, visibilitySeconds) => {
    for (;;) {
      try {
        const messages = await options.queues.launch.receive({
          maxMessages: 1,
          waitSeconds,
          visibilityTimeoutSeconds: visibilitySeconds,
          ...(options.signal ? { signal: options.signal } : {}),
        });
        backoff.reset();
        failures.succeeded();
        return messages;
      } catch (error) {
        if (options.signal?.aborted) return 'stopped';
        failures.failed(error);
        if (Date.now() - (failures.failingSince ?? Date.now()) >= limitMs) throw error;
        if (!(await sleep(backoff.next(), options.signal))) return 'stopped';
      }
    }
  };
}

/**
 * Why a launch message is a duplicate not worth starting, or null. An image with a valid
 * final result is done; an attempt whose successor is claimed was already given up by the
 * monitor (this is a second delivery of it, after a crash between notice and delete).
 */
async function staleDelivery(options: WorkerOptions, launch: LaunchMessage): Promise<{ reason: string; standing?: ImageResult } | null> {
  const stored = await readFinalResult(options.store, options.outputBucket, launch.imageId);
  if (stored?.valid) return { reason: 'the image already has its final result', standing: stored.result };
  if (await options.store.head(options.outputBucket, attemptKey(launch.imageId, launch.attempt + 1))) return { reason: `attempt ${launch.attempt + 1} has already been claimed` };
  return null;
}

/**
 * Deletes a launch message not worth starting. When the image already has its result, the
 * result is announced first: this delivery may be the only trace left of an image whose
 * announcement and notice a power cut undid (they are sent without a disk flush; see the
 * top of this file), and the output phase keeps the first announcement of each image anyway.
 */
async function dropStale(options: WorkerOptions, message: ReceivedMessage, launch: LaunchMessage, stale: { reason: string; standing?: ImageResult }, log: Logger): Promise<void> {
  imageLog(log, launch).info({ reason: stale.reason }, 'launch message dropped');
  if (stale.standing) await sendOutput(options.queues.output, { type: 'result', result: stale.standing });
  await options.queues.launch.delete(message.receiptHandle);
}

/** `started` is on the monotonic clock, so a wall-clock step cannot make a duration negative. */
async function classifyOne(options: WorkerOptions, launch: LaunchMessage, image: StoredObject | null, started: number): Promise<{ result: ImageResult; classifyMs: number }> {
  const clock = options.clock ?? systemClock;
  const base = { imageId: launch.imageId, batchId: launch.batchId, name: launch.name, attempts: launch.attempt, instanceId: options.instanceId };
  let classifyMs = 0;
  const failed = (error: string) => ({ result: { status: 'error', ...base, error, finishedAt: clock.now() } as ImageResult, classifyMs });
  if (!image) return failed('the stored image is missing from the input bucket');
  await injectFaults(options.faults, launch.name);
  try {
    const classifyStarted = clock.monotonic();
    const predictions = await options.classifier.classify(image.body, 5);
    classifyMs = clock.monotonic() - classifyStarted;
    const best = predictions[0];
    if (!best) return failed('the classifier returned no labels');
    return { classifyMs, result: {
      status: 'ok',
      ...base,
      label: best.label,
      probability: best.probability,
      top5: predictions.map(({ label, probability }) => ({ label, probability })),
      durationMs: Math.max(0, clock.monotonic() - started),
      finishedAt: clock.now(),
    } };
  } catch (error) {
    // A decode failure is a property of the image: retrying on another instance cannot help.
    if (error instanceof ImageDecodeError) return failed(`the image could not be decoded: ${error.message}`);
    throw error;
  }
}

async function injectFaults(faults: WorkerOptions['faults'], name: string): Promise<void> {
  if (faults?.delayMs) await sleep(faults.delayMs);
  if (faults?.crashOn && name.includes(faults.crashOn)) process.kill(process.pid, 'SIGKILL');
  if (faults?.hangOn && name.includes(faults.hangOn)) {
    // Block the event loop the way a stuck native decoder would: only a kill ends it.
    for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
  }
}

/** Without a disk flush: see the top of this file. */
async function sendOutput(queue: Queue, message: OutputMessage): Promise<void> {
  await queue.send(JSON.stringify(message), { flush: false });
}

/** The fields that let an operator follow one image through the logs. */
function imageLog(log: Logger, launch: LaunchMessage): Logger {
  return log.child({ imageId: launch.imageId, batchId: launch.batchId, attempt: launch.attempt, name: launch.name });
}
