/**
 * Deleting a batch: its stored images, manifests, results and markers, from the buckets
 * and from the index. DELETE /api/batches/:id and the retention sweep both come here.
 *
 * A marker, `deleting/<batch>` in the input bucket, is stored first and removed last, so a
 * web tier that dies midway finishes the job when it starts again. The manifests go last of
 * the batch's own objects because they list the images whose results must go too.
 *
 * A launch message for an image of a deleted batch may still be queued (a forced delete):
 * the worker finds the image missing and stores an error result. The output phase sees that
 * no batch lists the image, does not record it, and deletes that result after a grace period
 * (see outputTick), so nothing comes back and nothing is left behind.
 */
import { attemptKey } from '../outcomes.js';
import { batchManifestSchema, resultKey } from '../messages.js';
import type { ObjectStore } from '../storage/port.js';
import { isValidId, mapLimit, type ResultsIndex } from './results.js';
import { PENDING_PREFIX } from './upload.js';

export interface DeletionContext {
  store: ObjectStore;
  inputBucket: string;
  outputBucket: string;
  index: ResultsIndex;
}

export type DeleteOutcome =
  | { outcome: 'deleted'; images: number }
  | { outcome: 'missing' }
  | { outcome: 'busy'; waiting: number; uploading: number }
  | { outcome: 'active'; lastActivity: number };

export interface DeleteOptions {
  /** Deletes even while images wait for a result or an upload into the batch runs. */
  force?: boolean;
  /** Deletes only if nothing happened in the batch after this time (epoch ms). */
  inactiveSince?: number;
}

const DELETING_PREFIX = 'deleting/';

/** The objects of one image in the output bucket, all deleted with its batch. */
/** An image's result and the monitor's claims of its retries (`attempts/<image>/<n>`). */
async function imageOutputKeys(store: ObjectStore, bucket: string, imageId: string): Promise<string[]> {
  return [resultKey(imageId), ...(await keysUnder(store, bucket, `${attemptKey(imageId, 1).replace(/1$/, '')}`))];
}

export async function deleteBatch(context: DeletionContext, batchId: string, options: DeleteOptions = {}): Promise<DeleteOutcome> {
  const summary = await context.index.summary(batchId);
  if (!summary) return { outcome: 'missing' };
  // A deletion that failed midway was decided already: its images whose results are gone
  // would otherwise look like images still waiting.
  const resuming = !options.force && (summary.waiting > 0 || summary.uploading > 0) && (await context.store.head(context.inputBucket, `${DELETING_PREFIX}${batchId}`)) !== null;
  if (!options.force && !resuming && (summary.waiting > 0 || summary.uploading > 0)) {
    return { outcome: 'busy', waiting: summary.waiting, uploading: summary.uploading };
  }
  if (options.inactiveSince !== undefined && summary.lastActivity > options.inactiveSince) {
    return { outcome: 'active', lastActivity: summary.lastActivity };
  }
  await context.store.put(context.inputBucket, `${DELETING_PREFIX}${batchId}`, Buffer.from(JSON.stringify({ batchId, at: Date.now() })), { contentType: 'application/json' });
  context.index.beginDelete(batchId);
  let completed = false;
  try {
    const images = await purgeBatch(context, batchId, summary.imageIds);
    completed = true;
    return { outcome: 'deleted', images };
  } finally {
    context.index.endDelete(batchId, completed);
  }
}

/**
 * Finishes deletions that were started and did not complete: by a previous web tier (run at
 * start, before anything reads the batches) or by a delete that failed midway (run by the
 * retention sweep). Returns the batches it finished.
 */
export async function finishInterruptedDeletions(context: DeletionContext): Promise<string[]> {
  const batchIds: string[] = [];
  for await (const object of context.store.list(context.inputBucket, DELETING_PREFIX)) {
    const batchId = object.key.slice(DELETING_PREFIX.length);
    // One in progress right now is left to finish on its own.
    if (isValidId(batchId) && !context.index.isDeleted(batchId)) batchIds.push(batchId);
  }
  for (const batchId of batchIds) {
    context.index.beginDelete(batchId);
    let completed = false;
    try {
      await purgeBatch(context, batchId, []);
      completed = true;
    } finally {
      context.index.endDelete(batchId, completed);
    }
  }
  return batchIds;
}

/** Deletes every object of the batch; each step can run again after a crash. Returns the images. */
async function purgeBatch(context: DeletionContext, batchId: string, knownImageIds: readonly string[]): Promise<number> {
  const { store, inputBucket, outputBucket } = context;
  const imageIds = new Set(knownImageIds);
  const manifestKeys = await keysUnder(store, inputBucket, `batches/${batchId}/`);
  for (const key of manifestKeys) {
    const stored = await store.get(inputBucket, key);
    const parsed = stored ? batchManifestSchema.safeParse(safeJson(stored.body.toString('utf8'))) : undefined;
    if (parsed?.success) for (const image of parsed.data.images) imageIds.add(image.imageId);
  }
  const deleteEach = (bucket: string, keys: readonly string[]) => mapLimit(keys, 16, (key) => store.delete(bucket, key));
  await deleteEach(inputBucket, await keysUnder(store, inputBucket, `${PENDING_PREFIX}${batchId}/`));
  await deleteEach(outputBucket, (await mapLimit([...imageIds], 16, (imageId) => imageOutputKeys(store, outputBucket, imageId))).flat());
  // Listed rather than taken from the manifests: also removes images an upload stored
  // before it failed, which no manifest names.
  await deleteEach(inputBucket, await keysUnder(store, inputBucket, `images/${batchId}/`));
  await deleteEach(inputBucket, manifestKeys);
  await store.delete(inputBucket, `${DELETING_PREFIX}${batchId}`);
  return imageIds.size;
}

async function keysUnder(store: ObjectStore, bucket: string, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const object of store.list(bucket, prefix)) keys.push(object.key);
  return keys;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
