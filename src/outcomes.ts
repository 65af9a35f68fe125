/**
 * What the output bucket records about each image, and the rules that keep it consistent
 * whatever the interleaving of workers and monitors, duplicates and crashes included.
 *
 * - `results/<imageId>.json`, the final result: the first valid one wins. Every result is
 *   written create-if-absent, so a late duplicate (an `ok` after the monitor's `error`, or a
 *   second worker given the same attempt) can never replace what a user has already been
 *   shown; the loser reads back the stored one instead. A stored result that does not
 *   validate counts as absent, and is replaced only in the very version that was read.
 * - `attempts/<imageId>/<n>`, the claim on retry n (n ≥ 2): the monitor creates it,
 *   create-if-absent, before it sends attempt n, so of any number of monitors looking at the
 *   same expired attempt exactly one sends the next. It records which monitor notice it was
 *   made for and whether the launch message has gone out, so a claim left by a monitor that
 *   died before sending can be taken over (see monitor.ts). A worker given attempt n while
 *   attempt n+1 is claimed holds a stale duplicate and drops it.
 *
 * Claims stay after the image ends: they are a few bytes each, and they are what lets the
 * chaos run check that no image ran more attempts than allowed.
 */
import { z } from 'zod';
import { type ImageResult, InvalidMessageError, imageResultSchema, parseImageResult, resultKey } from './messages.js';
import { PreconditionFailedError, type ObjectStore } from './storage/port.js';

export const attemptKey = (imageId: string, attempt: number): string => `attempts/${imageId}/${attempt}`;

export type StoredResult =
  | { valid: true; result: ImageResult; etag: string }
  | { valid: false; reason: string; etag: string };

/** The stored final result, valid or not, or null when there is none. */
export async function readFinalResult(store: ObjectStore, bucket: string, imageId: string): Promise<StoredResult | null> {
  const stored = await store.get(bucket, resultKey(imageId));
  if (!stored) return null;
  try {
    return { valid: true, result: parseImageResult(stored.body.toString('utf8')), etag: stored.etag };
  } catch (error) {
    if (!(error instanceof InvalidMessageError)) throw error;
    return { valid: false, reason: error.message, etag: stored.etag };
  }
}

/** Rounds of "someone else changed it meanwhile" before giving up; each needs another writer's success. */
const MAX_WRITE_ROUNDS = 5;

/**
 * Stores `result` unless a valid final result is already there. Returns the result that
 * counts from now on and whether it is this one. An invalid stored result is replaced.
 */
export async function storeFirstResult(store: ObjectStore, bucket: string, result: ImageResult): Promise<{ won: boolean; result: ImageResult }> {
  // Never store what readers would reject: it would leave the image without a final result.
  imageResultSchema.parse(result);
  const body = Buffer.from(JSON.stringify(result));
  let condition: { ifNoneMatch: '*' } | { ifMatch: string } = { ifNoneMatch: '*' };
  for (let round = 1; round <= MAX_WRITE_ROUNDS; round++) {
    try {
      await store.put(bucket, resultKey(result.imageId), body, { contentType: 'application/json', ...condition });
      return { won: true, result };
    } catch (error) {
      if (!(error instanceof PreconditionFailedError)) throw error;
    }
    const current = await readFinalResult(store, bucket, result.imageId);
    if (current?.valid) return { won: false, result: current.result };
    condition = current ? { ifMatch: current.etag } : { ifNoneMatch: '*' };
  }
  throw new Error(`the result of ${result.imageId} kept changing under ${MAX_WRITE_ROUNDS} attempts to store it`);
}

export const attemptClaimSchema = z.object({
  imageId: z.string(),
  attempt: z.number().int().min(2),
  /** The monitor notice (queue message id) whose expiry this retry answers. */
  noticeId: z.string(),
  /** That notice's receive count when the claim was made or last taken over. */
  receiveCount: z.number().int().min(1),
  /** True once the launch message for this attempt has been sent. */
  sent: z.boolean(),
  /** Wall-clock time of the claim, for people reading the bucket only. */
  claimedAt: z.number(),
});
export type AttemptClaim = z.infer<typeof attemptClaimSchema>;

export async function readClaim(store: ObjectStore, bucket: string, imageId: string, attempt: number): Promise<{ claim: AttemptClaim; etag: string } | null> {
  const stored = await store.get(bucket, attemptKey(imageId, attempt));
  if (!stored) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(stored.body.toString('utf8'));
  } catch {
    parsed = undefined;
  }
  const checked = attemptClaimSchema.safeParse(parsed);
  // Unreadable claims still claim: treating one as absent could send the attempt twice.
  const claim: AttemptClaim = checked.success
    ? checked.data
    : { imageId, attempt, noticeId: '', receiveCount: 1, sent: true, claimedAt: stored.lastModified.getTime() };
  return { claim, etag: stored.etag };
}

/**
 * Writes a claim: create-if-absent, or, with `replacing`, only over that version of it.
 * Returns the new version's etag, or null when another writer got there first.
 */
export async function writeClaim(store: ObjectStore, bucket: string, claim: AttemptClaim, replacing?: string): Promise<string | null> {
  try {
    const { etag } = await store.put(bucket, attemptKey(claim.imageId, claim.attempt), Buffer.from(JSON.stringify(claim)), {
      contentType: 'application/json',
      ...(replacing === undefined ? { ifNoneMatch: '*' as const } : { ifMatch: replacing }),
    });
    return etag;
  } catch (error) {
    if (error instanceof PreconditionFailedError) return null;
    throw error;
  }
}
