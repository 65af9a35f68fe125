/**
 * The instance loop: one image at a time. The order of steps is what makes the service
 * lose nothing: the monitor notice is sent before the launch message is deleted, so a
 * crash between the two can duplicate work but never drop an image. Duplicates stay
 * harmless (see ../outcomes.ts): an attempt already superseded by a claimed retry is
 * dropped before it starts, and the result is stored create-if-absent, so a duplicate that
 * finishes second neither replaces nor announces its own result.
 */
import { Backoff, sleep } from '../backoff.js';
import type { Classifier } from '../classifier/port.js';
import { FailureLog } from '../controller/loop.js';
import { ImageDecodeError } from '../classifier/port.js';
import type { Compute } from '../compute/port.js';
import { clock as systemClock, type Clock } from '../clock.js';
import {
  type ImageResult,
  type LaunchMessage,
  type MonitorNotice,
  type OutputMessage,
  InvalidMessageError,
  parseLaunchMessage,
} from '../messages.js';
import { attemptKey, readFinalResult, storeFirstResult } from '../outcomes.js';
import type { Queue, ReceivedMessage } from '../queue/port.js';
import type { ObjectStore } from '../storage/port.js';

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
  /** How long a received launch message stays hidden before the notice takes over. */
  launchVisibilitySeconds?: number;
  log?: (line: string) => void;
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

export async function runWorker(options: WorkerOptions): Promise<WorkerSummary> {
  const { instanceId, queues, compute, log = () => {} } = options;
  let processed = 0;
  await compute.report(instanceId, { state: 'idle', imageId: null, processed });
  const receive = receiver(options, log);
  for (;;) {
    if (options.signal?.aborted) return { processed, reason: 'stopped' };
    const messages = await receive();
    if (messages === 'stopped') return { processed, reason: 'stopped' };
    const message = messages[0];
    if (!message) {
      if (options.signal?.aborted) return { processed, reason: 'stopped' };
      log(`no work after waiting ${options.idleWaitSeconds}s; stopping (${processed} images processed)`);
      return { processed, reason: 'idle' };
    }
    let launch: LaunchMessage;
    try {
      launch = parseLaunchMessage(message.body);
    } catch (error) {
      if (!(error instanceof InvalidMessageError)) throw error;
      log(`dropping malformed launch message ${message.id}: ${error.message}`);
      await queues.launch.delete(message.receiptHandle);
      continue;
    }
    const stale = await staleDelivery(options, launch);
    if (stale) {
      log(`${launch.imageId} (${launch.name}, attempt ${launch.attempt}): dropped, ${stale}`);
      await queues.launch.delete(message.receiptHandle);
      continue;
    }
    const clock = options.clock ?? systemClock;
    const startedAt = clock.now();
    const started = clock.monotonic();
    const notice: MonitorNotice = {
      type: 'monitor',
      imageId: launch.imageId,
      batchId: launch.batchId,
      name: launch.name,
      key: launch.key,
      attempt: launch.attempt,
      instanceId,
      startedAt,
    };
    await queues.monitor.send(JSON.stringify(notice));
    await queues.launch.delete(message.receiptHandle);
    await compute.report(instanceId, { state: 'busy', imageId: launch.imageId, processed });
    await sendOutput(queues.output, {
      type: 'progress',
      imageId: launch.imageId,
      batchId: launch.batchId,
      instanceId,
      attempt: launch.attempt,
      at: startedAt,
    });

    const { result: own, classifyMs } = await classifyOne(options, launch, started);
    const { won, result } = await storeFirstResult(options.store, options.outputBucket, own);
    // The loser announces the result that stands (its writer may have died before
    // announcing it); the output phase keeps the first announcement of each image.
    await sendOutput(queues.output, { type: 'result', result });
    processed++;
    const elapsed = Math.round(clock.monotonic() - started);
    const outcome = own.status === 'ok' ? `${own.label} ${own.probability.toFixed(3)}` : `error: ${own.error}`;
    log(`${launch.imageId} (${launch.name}, attempt ${launch.attempt}): ${outcome} in ${elapsed} ms (classification ${classifyMs.toFixed(1)} ms)${won ? '' : `; not stored, the image already had its result (${result.status})`}`);
    await compute.report(instanceId, { state: 'idle', imageId: null, processed });
  }
}

/**
 * Receives from the launch queue, retrying failures with growing waits and logging a
 * repeated one once, until they have lasted `receiveFailureLimitMs`: then the error ends
 * the worker. 'stopped' when the worker was asked to stop meanwhile.
 */
function receiver(options: WorkerOptions, log: (line: string) => void): () => Promise<ReceivedMessage[] | 'stopped'> {
  const failures = new FailureLog('launch queue', log);
  const backoff = new Backoff({ initialMs: 250, maxMs: 5_000 });
  const limitMs = options.receiveFailureLimitMs ?? 30_000;
  return async () => {
    for (;;) {
      try {
        const messages = await options.queues.launch.receive({
          maxMessages: 1,
          waitSeconds: options.idleWaitSeconds,
          visibilityTimeoutSeconds: options.launchVisibilitySeconds ?? 30,
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
async function staleDelivery(options: WorkerOptions, launch: LaunchMessage): Promise<string | null> {
  const stored = await readFinalResult(options.store, options.outputBucket, launch.imageId);
  if (stored?.valid) return 'the image already has its final result';
  if (await options.store.head(options.outputBucket, attemptKey(launch.imageId, launch.attempt + 1))) return `attempt ${launch.attempt + 1} has already been claimed`;
  return null;
}

/** `started` is on the monotonic clock, so a wall-clock step cannot make a duration negative. */
async function classifyOne(options: WorkerOptions, launch: LaunchMessage, started: number): Promise<{ result: ImageResult; classifyMs: number }> {
  const clock = options.clock ?? systemClock;
  const base = { imageId: launch.imageId, batchId: launch.batchId, name: launch.name, attempts: launch.attempt, instanceId: options.instanceId };
  let classifyMs = 0;
  const failed = (error: string) => ({ result: { status: 'error', ...base, error, finishedAt: clock.now() } as ImageResult, classifyMs });
  const image = await options.store.get(options.inputBucket, launch.key);
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
  if (faults?.delayMs) await new Promise((resolve) => setTimeout(resolve, faults.delayMs));
  if (faults?.crashOn && name.includes(faults.crashOn)) process.kill(process.pid, 'SIGKILL');
  if (faults?.hangOn && name.includes(faults.hangOn)) {
    // Block the event loop the way a stuck native decoder would: only a kill ends it.
    for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
  }
}

async function sendOutput(queue: Queue, message: OutputMessage): Promise<void> {
  await queue.send(JSON.stringify(message));
}
