/**
 * The retention sweep: deletes batches in which nothing happened (no upload, no result) for
 * longer than the retention, through the same path as DELETE /api/batches/:id. It lists the
 * manifests (their keys and times only) and reads just the batches that look old enough;
 * a batch with images still waiting for a result is left for a later sweep.
 */
import { every, type Loop } from '../controller/loop.js';
import type { Logger } from '../log.js';
import type { ObjectStore } from '../storage/port.js';
import { deleteBatch, finishInterruptedDeletions, type DeletionContext } from './deletion.js';

/** Most batches deleted by one sweep, so a first sweep over years of data stays short. */
const MAX_DELETIONS_PER_SWEEP = 1000;

export interface SweepSummary {
  deleted: string[];
  /** Old by their manifests, but still waiting for results or active since. */
  kept: number;
}

export async function sweepExpiredBatches(context: DeletionContext, retentionSeconds: number, now = Date.now()): Promise<SweepSummary> {
  const cutoff = now - retentionSeconds * 1000;
  const summary: SweepSummary = { deleted: await finishInterruptedDeletions(context), kept: 0 };
  for await (const batchId of batchesUploadedBefore(context.store, context.inputBucket, cutoff)) {
    const outcome = await deleteBatch(context, batchId, { inactiveSince: cutoff });
    if (outcome.outcome === 'deleted') summary.deleted.push(batchId);
    else if (outcome.outcome !== 'missing') summary.kept++;
    if (summary.deleted.length >= MAX_DELETIONS_PER_SWEEP) break;
  }
  return summary;
}

/** Batches whose newest manifest was stored before the cutoff, from the listing alone. */
async function* batchesUploadedBefore(store: ObjectStore, bucket: string, cutoff: number): AsyncGenerator<string> {
  let current: string | undefined;
  let newest = 0;
  // Keys are listed in order, so one batch's manifests come together.
  for await (const object of store.list(bucket, 'batches/')) {
    const batchId = object.key.split('/')[1];
    if (batchId === undefined) continue;
    if (batchId !== current) {
      if (current !== undefined && newest < cutoff) yield current;
      current = batchId;
      newest = 0;
    }
    newest = Math.max(newest, object.lastModified.getTime());
  }
  if (current !== undefined && newest < cutoff) yield current;
}

/** How often to sweep: a quarter of the retention, between 1 s and 5 min. */
export function sweepIntervalMs(retentionSeconds: number): number {
  return Math.min(300_000, Math.max(1000, (retentionSeconds * 1000) / 4));
}

/**
 * Runs the sweep now and then every interval, as one of the web tier's loops: after a
 * failure it waits longer each time (from twice the interval up to an hour) and logs a
 * repeated error once; it says when a sweep works again.
 */
export function startSweeper(sweep: () => Promise<void>, intervalMs: number, log: Logger): Loop {
  return every({ name: 'retention sweep', intervalMs, log, backoff: { initialMs: 2 * intervalMs, maxMs: Math.max(2 * intervalMs, 3_600_000) } }, sweep);
}
