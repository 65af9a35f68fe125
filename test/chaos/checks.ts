/**
 * The invariants a chaos run checks once every image has finished: nothing accepted is lost,
 * each image has one final result (in the API and in the output bucket, and both agree),
 * each result reached the live clients once, the instance maximum held, and no image ran
 * more attempts than allowed. Each check reads what the service wrote, not what it says.
 */
import { parseImageResult, resultKey } from '../../src/messages.js';
import { attemptClaimSchema } from '../../src/outcomes.js';
import type { ObjectStore } from '../../src/storage/port.js';
import type { Follower } from './follower.js';
import { sleep } from './options.js';

export type Accepted = Map<string, { batchId: string; name: string }>;
export type BatchView = { images: { id: string; name: string; status: string; attempts: number }[] };

const isFinal = (status: string): boolean => status === 'done' || status === 'error';

/** Polls every batch until none has an unfinished image, or the time is up; returns the last view of each. */
export async function waitForBatches(url: string, batches: Set<string>, timeoutSeconds: number, failures: string[]): Promise<Map<string, BatchView>> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  for (;;) {
    const views = new Map<string, BatchView>();
    let open = 0;
    for (const batchId of batches) {
      try {
        const batch = (await (await fetch(`${url}/api/batches/${batchId}`)).json()) as BatchView;
        views.set(batchId, batch);
        open += batch.images.filter((image) => !isFinal(image.status)).length;
      } catch {
        open++;
      }
    }
    if (open === 0) return views;
    if (Date.now() > deadline) {
      failures.push(`${open} images still unfinished after ${timeoutSeconds}s`);
      return views;
    }
    await sleep(500);
  }
}

/** The streams may lag a moment behind the API: waits up to 10 s for them to show every accepted image. */
export async function waitForStreams(followers: Follower[], acceptedCount: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const shown = followers.reduce((sum, follower) => sum + new Set([...follower.onStream.keys(), ...follower.afterReset]).size, 0);
    if (shown >= acceptedCount) return;
    await sleep(200);
  }
}

export interface ApiOutcome {
  /** Every image the API lists, by id. */
  byId: Map<string, { status: string; batchId: string }>;
  final: number;
  ok: number;
  errors: number;
  /** Accepted images the API does not list. */
  lost: number;
  /** Images listed twice in one batch. */
  duplicateIds: number;
  /** Images the API lists that no answer reached a client for (the web tier was killed mid-upload). */
  unacknowledged: { images: number; unfinished: number };
}

/** What the API shows of the accepted images. */
export function checkApi(views: Map<string, BatchView>, accepted: Accepted): ApiOutcome {
  const outcome: ApiOutcome = { byId: new Map(), final: 0, ok: 0, errors: 0, lost: 0, duplicateIds: 0, unacknowledged: { images: 0, unfinished: 0 } };
  for (const [batchId, batch] of views) {
    const seen = new Set<string>();
    for (const image of batch.images) {
      if (seen.has(image.id)) outcome.duplicateIds++;
      seen.add(image.id);
      outcome.byId.set(image.id, { status: image.status, batchId });
      if (!accepted.has(image.id)) {
        outcome.unacknowledged.images++;
        if (!isFinal(image.status)) outcome.unacknowledged.unfinished++;
      }
    }
  }
  for (const [id] of accepted) {
    const image = outcome.byId.get(id);
    if (!image) outcome.lost++;
    else if (image.status === 'done') (outcome.final++, outcome.ok++);
    else if (image.status === 'error') (outcome.final++, outcome.errors++);
  }
  return outcome;
}

export interface BucketOutcome {
  results: number;
  missing: number;
  disagree: number;
}

/** Each accepted image's result object in the output bucket, and whether it agrees with the API. */
export async function checkResultObjects(store: ObjectStore, outputBucket: string, accepted: Accepted, api: ApiOutcome, details: string[]): Promise<BucketOutcome> {
  const bucket: BucketOutcome = { results: 0, missing: 0, disagree: 0 };
  for (const [id, { batchId, name }] of accepted) {
    const object = await store.get(outputBucket, resultKey(id));
    const status = api.byId.get(id)?.status;
    if (!object) {
      bucket.missing++;
      details.push(`${id} (${name}, batch ${batchId}): ${status ?? 'not listed'} in the API, no result object`);
      continue;
    }
    bucket.results++;
    const result = parseImageResult(object.body.toString('utf8'));
    if ((result.status === 'ok' ? 'done' : 'error') !== status) {
      bucket.disagree++;
      details.push(`${id} (${name}, batch ${batchId}): ${status ?? 'not listed'} in the API, result object ${JSON.stringify(result)}`);
    }
  }
  return bucket;
}

/** Images stored by an upload that was cut off before its manifest: never queued or shown. */
export async function countOrphanImages(store: ObjectStore, inputBucket: string): Promise<number> {
  const listed = new Set<string>();
  for await (const object of store.list(inputBucket, 'batches/')) {
    const manifest = await store.get(inputBucket, object.key);
    for (const image of (JSON.parse(manifest!.body.toString('utf8')) as { images: { key: string }[] }).images) listed.add(image.key);
  }
  let orphans = 0;
  for await (const object of store.list(inputBucket, 'images/')) if (!listed.has(object.key)) orphans++;
  return orphans;
}

export interface AttemptsReport {
  limit: number;
  /** The most attempts any image's result records, or any retry claim names. */
  maxSeen: number;
  /** Retries claimed (attempt markers), over all images. */
  retries: number;
  /** Images whose result or claims go past the limit. */
  overLimit: number;
}

/**
 * Attempts per image from the output bucket: the attempt count of each result and the
 * retry claims (attempts/<image>/<n>, one per retry sent). Neither may pass the limit.
 */
export async function countAttempts(store: ObjectStore, outputBucket: string, imageIds: Iterable<string>, limit: number, details: string[]): Promise<AttemptsReport> {
  const report: AttemptsReport = { limit, maxSeen: 0, retries: 0, overLimit: 0 };
  for (const id of imageIds) {
    let most = 0;
    const object = await store.get(outputBucket, resultKey(id));
    if (object) most = parseImageResult(object.body.toString('utf8')).attempts;
    const claimed: number[] = [];
    for await (const marker of store.list(outputBucket, `attempts/${id}/`)) {
      const claim = await store.get(outputBucket, marker.key);
      if (!claim) continue;
      claimed.push(attemptClaimSchema.parse(JSON.parse(claim.body.toString('utf8'))).attempt);
    }
    report.retries += claimed.length;
    most = Math.max(most, ...claimed);
    report.maxSeen = Math.max(report.maxSeen, most);
    if (most > limit) {
      report.overLimit++;
      details.push(`${id}: ${most} attempts (claims ${claimed.sort((a, b) => a - b).join(', ') || 'none'}), over the limit of ${limit}`);
    }
  }
  return report;
}

export interface StreamOutcome {
  /** Accepted images whose result reached a live client, as an event or by a reload. */
  shown: number;
  onStream: number;
  afterReset: number;
  shownTwice: number;
  notShown: number;
  resets: number;
  reconnects: number;
}

/** What the live clients saw: each accepted image's result once, as an event or after a reset. */
export function checkStreams(followers: Follower[], accepted: Accepted): StreamOutcome {
  const stream: StreamOutcome = { shown: 0, onStream: 0, afterReset: 0, shownTwice: 0, notShown: 0, resets: 0, reconnects: 0 };
  const shownIds = new Set<string>();
  for (const follower of followers) {
    stream.resets += follower.resets;
    stream.reconnects += follower.reconnects;
    for (const [id, count] of follower.onStream) {
      shownIds.add(id);
      stream.onStream++;
      if (count > 1) stream.shownTwice++;
    }
    for (const id of follower.afterReset) {
      if (!follower.onStream.has(id)) (stream.afterReset++, shownIds.add(id));
    }
  }
  for (const [id] of accepted) {
    if (shownIds.has(id)) stream.shown++;
    else stream.notShown++;
  }
  return stream;
}

export interface InstancePeaks {
  max: number;
  peakStatus: number;
  peakRegistry: number;
  peakProcesses: number;
}

/** Everything that broke an invariant, one line each. */
export function invariantFailures(input: {
  expectedImages: number;
  accepted: number;
  api: ApiOutcome;
  bucket: BucketOutcome;
  stream: StreamOutcome;
  malformedFrames: string[];
  instances: InstancePeaks;
  attempts: AttemptsReport;
}): string[] {
  const { api, bucket, stream, instances, attempts } = input;
  const failures: string[] = [];
  if (input.accepted !== input.expectedImages) failures.push(`${input.accepted} of ${input.expectedImages} images were accepted`);
  if (api.lost > 0) failures.push(`${api.lost} accepted images are missing from their batch`);
  if (api.final !== input.accepted) failures.push(`${input.accepted - api.final} accepted images have no final result`);
  if (api.duplicateIds > 0) failures.push(`${api.duplicateIds} images appear twice in a batch`);
  if (bucket.missing > 0) failures.push(`${bucket.missing} accepted images have no result object in the output bucket`);
  if (bucket.disagree > 0) failures.push(`${bucket.disagree} result objects disagree with the API`);
  if (stream.shownTwice > 0) failures.push(`${stream.shownTwice} results were shown twice on the live stream`);
  if (stream.notShown > 0) failures.push(`${stream.notShown} results never reached the live client`);
  if (input.malformedFrames.length > 0) failures.push(`the live stream sent frames a browser would misread: ${input.malformedFrames.slice(0, 3).join('; ')}`);
  if (api.unacknowledged.unfinished > 0) failures.push(`${api.unacknowledged.unfinished} images of unacknowledged uploads never finished`);
  for (const [what, peak] of [['status', instances.peakStatus], ['registry', instances.peakRegistry], ['processes', instances.peakProcesses]] as const) {
    if (peak > instances.max) failures.push(`instances peaked at ${peak} (${what}), over the maximum of ${instances.max}`);
    // Images were classified, so instances ran: a peak of 0 means the sampler saw nothing, and would pass the check above whatever happened.
    if (peak === 0 && api.final > 0) failures.push(`no instance was ever seen (${what}): the sampling is broken`);
  }
  if (attempts.overLimit > 0) failures.push(`${attempts.overLimit} images ran more than ${attempts.limit} attempts`);
  return failures;
}
