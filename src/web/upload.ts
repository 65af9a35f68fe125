/**
 * Upload of many images in one multipart request. Each file streams to the store as it
 * arrives, checked on the way (see inspect.ts), so a request holds a few small buffers
 * whatever the number and size of its files; a file refused midway is never stored. Launch
 * messages are sent only once the whole request has been read, and if the
 * request fails midway everything it stored is deleted again, so a failed upload leaves
 * nothing behind and queues nothing.
 *
 * A small marker, `pending/<batch>/<upload>`, is stored before the manifest and deleted once
 * every launch message is out; the marker alone says the messages may be missing, so the
 * manifest is written once. If this process dies in between, the next web tier to start
 * lists the markers (only those, not every manifest), and sends the messages again, instead
 * of leaving the images queued forever with no message to carry them. A second launch
 * message for an image is harmless: workers skip images that have a result, and the first
 * final result wins.
 */
import type { EventSink } from '../event-log.js';
import type { Readable } from 'node:stream';
import type { FastifyRequest } from 'fastify';
import type {} from '@fastify/multipart';
import { type BatchManifest, type LaunchMessage, batchManifestKey, batchManifestSchema, inputKey } from '../messages.js';
import type { RejectionReason, WebTierMetrics } from '../metrics.js';
import type { Queue } from '../queue/port.js';
import type { ObjectStore } from '../storage/port.js';
import type { IncomingUpload, IncomingUploads } from './incoming.js';
import { displayName, formatBytes, ImageInspector, ImageRejected, type ImageLimits } from './inspect.js';
import { isValidId, type ResultsIndex } from './results.js';
import { randomToken } from '../random-token.js';

export interface UploadContext {
  store: ObjectStore;
  inputBucket: string;
  launchQueue: Queue;
  index: ResultsIndex;
  limits: ImageLimits & { maxFiles: number };
  /** Where each accepted image's arrival is recorded, for calibrating the simulator. */
  events?: EventSink;
  /** Counts accepted images and refused files, once the request has succeeded. */
  metrics?: Pick<WebTierMetrics, 'imagesAccepted' | 'imageRejected'>;
  /** Told once an upload's launch messages are out (the launch controller, when in this process). */
  onQueued?: () => void;
  /** Uploads still arriving, for the launch controller of this process (see incoming.ts). */
  incoming?: IncomingUploads;
}

/** A stored manifest whose launch messages may not all have been sent. */
export interface PendingLaunch {
  manifest: BatchManifest;
  /** The marker that says so; deleted once every message is out. */
  markerKey: string;
}

/** Where the markers of uploads still sending their launch messages live, in the input bucket. */
export const PENDING_PREFIX = 'pending/';
const pendingKey = (batchId: string, uploadId: string): string => `${PENDING_PREFIX}${batchId}/${uploadId}`;

export interface AcceptedImage {
  id: string;
  name: string;
  status: 'queued';
  size: number;
  contentType: string;
}

export interface UploadOutcome {
  batchId: string;
  images: AcceptedImage[];
  rejected: { name: string; reason: string }[];
}

/** An error the client caused, with the HTTP status to answer. */
export class UploadError extends Error {
  constructor(readonly statusCode: number, message: string, readonly rejected: { name: string; reason: string }[] = [], options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UploadError';
  }
}

export function newId(): string {
  // 12 random bytes, base64url: unguessable, so ids double as capabilities.
  return randomToken(12, 'base64url');
}

export async function receiveUpload(request: FastifyRequest, context: UploadContext, batchId: string, maxFiles = context.limits.maxFiles): Promise<UploadOutcome> {
  if (!request.isMultipart()) throw new UploadError(415, 'expected a multipart/form-data body with one or more image files');
  const declared = Number(request.headers['content-length']);
  const arriving = context.incoming?.begin(Number.isSafeInteger(declared) && declared > 0 ? declared : undefined, maxFiles);
  try {
    return await receiveFiles(request, context, batchId, maxFiles, arriving);
  } finally {
    arriving?.end();
  }
}

async function receiveFiles(request: FastifyRequest, context: UploadContext, batchId: string, maxFiles: number, arriving: IncomingUpload | undefined): Promise<UploadOutcome> {
  const uploadId = newId();
  const stored: string[] = [];
  const images: AcceptedImage[] = [];
  const rejected: { name: string; reason: string }[] = [];
  const rejectedCodes: RejectionReason[] = [];
  const manifest: BatchManifest = { batchId, createdAt: Date.now(), images: [] };
  const manifestKey = batchManifestKey(batchId, uploadId);
  const markerKey = pendingKey(batchId, uploadId);
  let files = 0;
  const commits = new PendingCommits();
  try {
    const parts = request.parts({ limits: { fileSize: context.limits.maxFileBytes, files: maxFiles, fields: 100, parts: maxFiles + 100 } });
    for await (const part of parts) {
      if (part.type !== 'file') continue;
      files++;
      const name = displayName(decodeFormFileName(part.filename));
      const imageId = newId();
      const key = inputKey(batchId, imageId);
      // Listed before it exists, so a failure at any point of the store's write rolls it back.
      stored.push(key);
      const outcome = await storeFile(part.file, key, { batch: batchId, name: encodeURIComponent(name) }, context);
      if ('reason' in outcome) {
        stored.pop();
        rejected.push({ name, reason: outcome.reason });
        rejectedCodes.push(outcome.code);
        continue;
      }
      await commits.add(outcome.committed, outcome.size);
      arriving?.accepted(outcome.size);
      images.push({ id: imageId, name, status: 'queued', size: outcome.size, contentType: outcome.contentType });
      manifest.images.push({ imageId, name, key, size: outcome.size, contentType: outcome.contentType });
    }
    // Every image durably stored before the manifest names it.
    await commits.all();
    if (files === 0) throw new UploadError(400, 'the request holds no files: send images as multipart/form-data file parts');
    if (images.length > 0) {
      if (context.index.isDeleted(batchId)) throw new UploadError(404, `batch ${batchId} was deleted; nothing was stored`);
      // The marker first: a manifest without one would never be found by a restart.
      await context.store.put(context.inputBucket, markerKey, Buffer.alloc(0));
      stored.push(markerKey);
      await context.store.put(context.inputBucket, manifestKey, Buffer.from(JSON.stringify(manifest)), { contentType: 'application/json' });
      stored.push(manifestKey);
    }
  } catch (error) {
    // A write still under way would land after its delete and leave a file behind.
    await commits.settled();
    await Promise.allSettled(stored.map((key) => context.store.delete(context.inputBucket, key)));
    throw toUploadError(error, maxFiles, rejected);
  }
  if (images.length === 0) {
    countFiles(context, 0, rejectedCodes);
    return { batchId, images, rejected };
  }
  const queuedAt = Date.now();
  try {
    await sendLaunches(manifest.images, batchId, queuedAt, context.launchQueue);
  } catch (error) {
    // Not accepted after all: the client hears so and nothing stays stored. A launch
    // message that did go out finds its image gone and ends as an error result for a
    // batch nobody knows, which no one is shown.
    await Promise.allSettled(stored.map((key) => context.store.delete(context.inputBucket, key)));
    // The queue's own message can name files of this machine: it goes to the log only.
    throw new UploadError(503, 'the images could not be queued; nothing was stored, try again', [], { cause: error });
  }
  // Queued now: counted as waiting from here, so no longer as arriving too.
  arriving?.end();
  context.onQueued?.();
  if (context.index.isDeleted(batchId)) {
    // Deleted (forced) while this upload ran: its messages find their images gone, and the
    // output phase cleans up the error results they leave.
    await Promise.allSettled(stored.map((key) => context.store.delete(context.inputBucket, key)));
    throw new UploadError(404, `batch ${batchId} was deleted while the upload ran; nothing was kept`);
  }
  context.index.addManifest(manifest);
  for (const image of manifest.images) context.events?.record({ type: 'arrival', at: queuedAt, imageId: image.imageId, batchId });
  await context.store.delete(context.inputBucket, markerKey).catch(() => {
    // Every message is out; a marker that failed to go costs only a second launch message
    // per unfinished image when the next web tier starts.
  });
  countFiles(context, images.length, rejectedCodes);
  return { batchId, images, rejected };
}

function countFiles(context: UploadContext, accepted: number, rejected: RejectionReason[]): void {
  if (accepted > 0) context.metrics?.imagesAccepted(accepted);
  for (const code of rejected) context.metrics?.imageRejected(code);
}

/**
 * Store writes whose body has been read but which are still being made durable (an fsync
 * and a rename, or an S3 PUT in flight). The next part is read meanwhile, so an upload of
 * many small images is not paced by one disk flush or one round trip per image; the
 * writes still under way are bounded in number and in bytes (an S3 write may hold its body).
 */
class PendingCommits {
  private readonly pending: { done: Promise<void>; bytes: number }[] = [];
  private bytes = 0;

  async add(committed: Promise<void>, bytes: number): Promise<void> {
    // Handled here and awaited later: a failure must not go unheard in between.
    committed.catch(() => undefined);
    this.pending.push({ done: committed, bytes });
    this.bytes += bytes;
    while (this.pending.length > COMMITS_IN_FLIGHT || this.bytes > COMMIT_BYTES_IN_FLIGHT) {
      const oldest = this.pending.shift()!;
      this.bytes -= oldest.bytes;
      await oldest.done;
    }
  }

  /** Resolves when every write is durable; throws the first failure, once every write has settled. */
  async all(): Promise<void> {
    const outcomes = await Promise.allSettled(this.pending.splice(0).map((entry) => entry.done));
    this.bytes = 0;
    const failed = outcomes.find((outcome) => outcome.status === 'rejected');
    if (failed) throw failed.reason;
  }

  async settled(): Promise<void> {
    await Promise.allSettled(this.pending.splice(0).map((entry) => entry.done));
    this.bytes = 0;
  }
}

const COMMITS_IN_FLIGHT = 16;
const COMMIT_BYTES_IN_FLIGHT = 32 * 1024 * 1024;

/**
 * Streams one file part through the inspector into the store. A file the inspector refuses
 * fails the store's write before it completes, so nothing of it is stored; the rest of it
 * is then read and dropped, so the next part can follow. Returns once the body is read and
 * accepted; `committed` settles when the store has made the write durable.
 */
async function storeFile(file: Readable & { truncated?: boolean }, key: string, metadata: Record<string, string>, context: UploadContext): Promise<{ size: number; contentType: string; committed: Promise<void> } | { reason: string; code: RejectionReason }> {
  const inspector = new ImageInspector(context.limits, () => file.truncated === true);
  // The parser stops passing the file on at the size limit: no need to wait for its end.
  const onLimit = () => inspector.destroy(new ImageRejected('too_large', `file is larger than the ${formatBytes(context.limits.maxFileBytes)} limit`));
  // A request that breaks off ends the file with an error; the write must fail with it.
  const onError = (error: Error) => inspector.destroy(error);
  file.once('limit', onLimit).once('error', onError).pipe(inspector);
  // Its failure reaches this function through the promises below; an 'error' event nobody
  // listens to would end the process instead.
  inspector.on('error', () => undefined);
  try {
    const contentType = await inspector.contentType;
    // 'end' comes only after the inspector's last check: the image is accepted once it is read.
    const read = new Promise<'read'>((resolve) => inspector.once('end', () => resolve('read')));
    const put = context.store.putStream(context.inputBucket, key, inspector, { contentType, metadata });
    const first = await Promise.race([read, put]);
    const committed = put.then(({ size }) => {
      if (size !== inspector.bytes) throw new Error(`the store wrote ${size} bytes of ${key}, the upload had ${inspector.bytes}`);
    });
    if (first !== 'read') await committed;
    return { size: inspector.bytes, contentType, committed };
  } catch (error) {
    if (error instanceof ImageRejected) return { reason: error.message, code: error.code };
    throw error;
  } finally {
    file.off('limit', onLimit).off('error', onError).unpipe(inspector);
    file.resume();
  }
}

/**
 * The uploads a previous web tier left before all their launch messages were out, found by
 * their markers. Markers whose upload got no further (no manifest) or finished (a manifest
 * an earlier version marked launched) are deleted on the way.
 */
export async function findPendingLaunches(store: ObjectStore, bucket: string): Promise<PendingLaunch[]> {
  const markers: string[] = [];
  for await (const object of store.list(bucket, PENDING_PREFIX)) markers.push(object.key);
  const pending: PendingLaunch[] = [];
  for (const markerKey of markers) {
    const [batchId, uploadId, ...rest] = markerKey.slice(PENDING_PREFIX.length).split('/');
    if (!isValidId(batchId) || !isValidId(uploadId) || rest.length > 0) continue;
    const manifestKey = batchManifestKey(batchId, uploadId);
    const stored = await store.get(bucket, manifestKey);
    const parsed = stored ? batchManifestSchema.safeParse(safeJson(stored.body.toString('utf8'))) : undefined;
    if (!parsed?.success || parsed.data.launched === true) {
      // No manifest: the upload died before it queued anything. Marked: it finished, and
      // only the marker's delete was lost.
      await store.delete(bucket, markerKey);
      continue;
    }
    pending.push({ manifest: parsed.data, markerKey });
  }
  return pending;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * Finishes an upload whose process died between storing its manifest and sending its last
 * launch message: sends one for each image that has no final result yet, then deletes its
 * marker. Returns how many were sent.
 */
export async function relaunch(pending: PendingLaunch, context: Pick<UploadContext, 'store' | 'inputBucket' | 'launchQueue' | 'index'>): Promise<number> {
  // Read first, to know which images have a result already.
  await context.index.loadBatch(pending.manifest.batchId);
  const queuedAt = Date.now();
  const unfinished = pending.manifest.images.filter((image) => {
    const status = context.index.image(image.imageId)?.status;
    return status !== 'done' && status !== 'error';
  });
  await sendLaunches(unfinished, pending.manifest.batchId, queuedAt, context.launchQueue);
  await context.store.delete(context.inputBucket, pending.markerKey);
  return unfinished.length;
}

/**
 * Browsers escape a quote and line breaks in multipart file names as %22, %0A and %0D (the
 * HTML form-encoding rules); other clients send them raw. Undoing just those three shows the
 * name the user chose either way.
 */
export function decodeFormFileName(name: string | undefined): string {
  return (name ?? '').replace(/%22/g, '"').replace(/%0[AD]/gi, '');
}

/** The first attempt of each image, in one batch: one write for the whole upload. */
async function sendLaunches(images: BatchManifest['images'], batchId: string, queuedAt: number, queue: Queue): Promise<void> {
  await queue.sendBatch(images.map((image) => {
    const message: LaunchMessage = { type: 'launch', imageId: image.imageId, batchId, name: image.name, key: image.key, attempt: 1, queuedAt };
    return JSON.stringify(message);
  }));
}

function toUploadError(error: unknown, maxFiles: number, rejected: { name: string; reason: string }[]): unknown {
  if (error instanceof UploadError) return error;
  const code = (error as { code?: string }).code;
  switch (code) {
    case 'FST_FILES_LIMIT':
      return new UploadError(413, `too many files in one request: at most ${maxFiles}; nothing was stored`, rejected);
    case 'FST_PARTS_LIMIT':
    case 'FST_FIELDS_LIMIT':
      return new UploadError(413, 'too many form parts in one request; nothing was stored', rejected);
    case 'FST_REQ_FILE_TOO_LARGE':
      return new UploadError(413, `a file is larger than the limit; nothing was stored`, rejected);
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
      return new UploadError(415, 'expected a multipart/form-data body with one or more image files');
  }
  const message = (error as Error | undefined)?.message ?? '';
  if (/Unexpected end of (multipart data|form)|Part terminated early|premature close|aborted/i.test(message) || code === 'FST_PREMATURE_CLOSE') {
    return new UploadError(400, 'the request body ended before the upload was complete; nothing was stored', rejected);
  }
  if (/Malformed part header|Multipart: Boundary not found|boundary/i.test(message)) {
    return new UploadError(400, `the multipart body is malformed (${message}); nothing was stored`, rejected);
  }
  return error;
}
