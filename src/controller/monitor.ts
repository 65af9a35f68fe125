/**
 * Monitor controller: watches every image an instance has started. Each notice stays in
 * flight on the monitor queue and comes back every check interval; when an image has no
 * result by its deadline (or its instance is gone), the instance is terminated and the
 * image goes back to the launch queue, until the last attempt ends it as an error.
 */
import type { Compute } from '../compute/port.js';
import {
  type ImageResult,
  type LaunchMessage,
  type MonitorNotice,
  InvalidMessageError,
  parseImageResult,
  parseMonitorNotice,
  resultKey,
} from '../messages.js';
import type { Queue, ReceivedMessage } from '../queue/port.js';
import type { ObjectStore } from '../storage/port.js';

export interface MonitorOptions {
  store: ObjectStore;
  outputBucket: string;
  queues: { launch: Queue; monitor: Queue; output: Queue };
  compute: Compute;
  deadlineSeconds: number;
  checkSeconds: number;
  maxAttempts: number;
  log?: (line: string) => void;
}

export interface MonitorTickSummary {
  received: number;
  finished: number;
  retried: number;
  failed: number;
}

export async function monitorTick(options: MonitorOptions, waitSeconds: number, signal?: AbortSignal): Promise<MonitorTickSummary> {
  const summary: MonitorTickSummary = { received: 0, finished: 0, retried: 0, failed: 0 };
  const messages = await options.queues.monitor.receive({
    maxMessages: 10,
    waitSeconds,
    visibilityTimeoutSeconds: options.checkSeconds,
    ...(signal ? { signal } : {}),
  });
  if (messages.length === 0) return summary;
  summary.received = messages.length;
  const alive = new Set((await options.compute.list()).filter((instance) => instance.state !== 'stopped').map((instance) => instance.id));
  for (const message of messages) {
    const outcome = await checkNotice(options, message, alive);
    if (outcome !== 'waiting') summary[outcome]++;
  }
  return summary;
}

type Outcome = 'waiting' | 'finished' | 'retried' | 'failed';

async function checkNotice(options: MonitorOptions, message: ReceivedMessage, alive: Set<string>): Promise<Outcome> {
  const { queues, log = () => {} } = options;
  let notice: MonitorNotice;
  try {
    notice = parseMonitorNotice(message.body);
  } catch (error) {
    if (!(error instanceof InvalidMessageError)) throw error;
    log(`dropping malformed monitor notice ${message.id}: ${error.message}`);
    await queues.monitor.delete(message.receiptHandle);
    return 'finished';
  }
  const hasResult = async () => (await options.store.head(options.outputBucket, resultKey(notice.imageId))) !== null;
  /**
   * The instance stores the result, then announces it on the output queue. An instance that
   * dies between the two leaves a result nobody is told about: the web tier would show the
   * image unfinished until it next restarts and reads the bucket. The monitor cannot tell
   * whether the announcement went out, so it sends it again before it lets go of the
   * notice; the output phase records the first and ignores the other.
   */
  const finish = async () => {
    const stored = await options.store.get(options.outputBucket, resultKey(notice.imageId));
    if (stored) {
      try {
        await queues.output.send(JSON.stringify({ type: 'result', result: parseImageResult(stored.body.toString('utf8')) }));
      } catch (error) {
        if (!(error instanceof InvalidMessageError)) throw error;
        log(`${notice.imageId}: the stored result is not valid (${error.message}); not announced again`);
      }
    }
    await queues.monitor.delete(message.receiptHandle);
    return 'finished' as const;
  };
  if (await hasResult()) return finish();
  const ageSeconds = (Date.now() - notice.startedAt) / 1000;
  const instanceGone = !alive.has(notice.instanceId);
  if (ageSeconds < options.deadlineSeconds && !instanceGone) {
    const next = Math.min(options.checkSeconds, options.deadlineSeconds - ageSeconds);
    await queues.monitor.changeVisibility(message.receiptHandle, Math.max(0.1, next));
    return 'waiting';
  }

  const reason = instanceGone
    ? `instance ${notice.instanceId} stopped while holding the image`
    : `no result within ${options.deadlineSeconds}s on instance ${notice.instanceId}`;
  if (!instanceGone) {
    try {
      await options.compute.terminate(notice.instanceId);
    } catch (error) {
      log(`could not terminate ${notice.instanceId}: ${(error as Error).message}`);
    }
  }
  // Checked again after the instance is gone: a result written just before the kill counts.
  if (await hasResult()) return finish();
  if (notice.attempt >= options.maxAttempts) {
    const result: ImageResult = {
      status: 'error',
      imageId: notice.imageId,
      batchId: notice.batchId,
      name: notice.name,
      attempts: notice.attempt,
      instanceId: notice.instanceId,
      error: `failed after ${notice.attempt} attempt${notice.attempt === 1 ? '' : 's'}; last: ${reason}`,
      finishedAt: Date.now(),
    };
    await options.store.put(options.outputBucket, resultKey(notice.imageId), Buffer.from(JSON.stringify(result)), { contentType: 'application/json' });
    await queues.output.send(JSON.stringify({ type: 'result', result }));
    await queues.monitor.delete(message.receiptHandle);
    log(`${notice.imageId} (${notice.name}): ${result.error}`);
    return 'failed';
  }
  const retry: LaunchMessage = {
    type: 'launch',
    imageId: notice.imageId,
    batchId: notice.batchId,
    name: notice.name,
    key: notice.key,
    attempt: notice.attempt + 1,
    queuedAt: Date.now(),
  };
  // Resent before the notice is deleted, for the same reason the worker orders its steps.
  await queues.launch.send(JSON.stringify(retry));
  await queues.monitor.delete(message.receiptHandle);
  log(`${notice.imageId} (${notice.name}): ${reason}; retrying, attempt ${retry.attempt} of ${options.maxAttempts}`);
  return 'retried';
}
