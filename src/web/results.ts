/**
 * The web tier's view of batches and images, and the output phase that feeds it. The
 * buckets are the source of truth. The index holds only the batches someone asked for: a
 * batch is read from the buckets (its manifests and results) the first time it is needed,
 * and the least recently used ones are dropped again once the index holds more images than
 * its bound. A batch stays in memory while any of its images still waits for a result (the
 * output phase must find it to record the result and announce it) and while something pins
 * it (an event-stream client, an upload into it). So a restart reads nothing up front, and
 * memory follows the work in progress and the bound, not everything ever uploaded.
 */
import type { EventSink } from '../event-log.js';
import { EventEmitter } from 'node:events';
import {
  type BatchManifest,
  type ImageResult,
  type OutputMessage,
  batchManifestSchema,
  parseImageResult,
  parseOutputMessage,
  resultKey,
  InvalidMessageError,
} from '../messages.js';
import { SQS_LIMITS, type Queue, type ReceivedMessage } from '../queue/port.js';
import type { ObjectStore } from '../storage/port.js';
import { silentLogger, type Logger } from '../log.js';

export type ImageStatus = 'queued' | 'processing' | 'done' | 'error';

export interface ImageView {
  id: string;
  name: string;
  batchId: string;
  status: ImageStatus;
  attempts: number;
  size: number;
  contentType: string;
  instanceId?: string;
  result?:
    | { label: string; probability: number; top5: { label: string; probability: number }[]; instanceId: string; durationMs: number }
    | { error: string };
  finishedAt?: number;
}

export interface BatchView {
  batchId: string;
  createdAt: number;
  total: number;
  done: number;
  errors: number;
  images: ImageView[];
}

export type IndexEvent =
  | { kind: 'image'; image: ImageView }
  | { kind: 'batch'; batchId: string; total: number }
  | { kind: 'deleted'; batchId: string };

/** Batch and image ids as the service makes them (base64url); anything else names nothing. */
const ID = /^[A-Za-z0-9_-]{1,100}$/;

export function isValidId(id: unknown): id is string {
  return typeof id === 'string' && ID.test(id);
}

/** A waiter for a result whose batch was deleted before the result came. */
export class BatchDeletedError extends Error {
  constructor(readonly batchId: string) {
    super(`batch ${batchId} was deleted`);
    this.name = 'BatchDeletedError';
  }
}

interface BatchState {
  batchId: string;
  createdAt: number;
  images: Map<string, ImageView>;
  /** Images without a final result yet: while there are any, the batch stays in memory. */
  waiting: number;
  /** The latest upload or result, epoch ms. */
  lastActivity: number;
}

/** What the delete path needs to know about a batch. */
export interface BatchSummary {
  batchId: string;
  imageIds: string[];
  waiting: number;
  uploading: number;
  lastActivity: number;
}

export interface ResultsIndexOptions {
  /**
   * Most images kept in memory. Pinned batches count too but are never dropped, so the
   * index holds more only while they alone do. Default 50,000.
   */
  maxImages?: number;
  /**
   * Told of each image's first final result as it arrives (not of results read back from
   * the buckets), with how long ago this process accepted the image, when it did.
   */
  onResult?: (result: ImageResult, sinceAcceptedMs: number | undefined) => void;
}

export class ResultsIndex extends EventEmitter<{ event: [IndexEvent] }> {
  readonly maxImages: number;
  private readonly images = new Map<string, { view: ImageView; batch: BatchState; acceptedAt?: number }>();
  private readonly batches = new Map<string, BatchState>();
  /** Loaded batches nothing pins, least recently used first: the ones dropped over the bound. */
  private readonly evictable = new Map<string, BatchState>();
  private readonly pins = new Map<string, number>();
  private readonly uploads = new Map<string, number>();
  private readonly deleting = new Set<string>();
  private readonly deletedWhileUploading = new Set<string>();
  private readonly loading = new Map<string, Promise<BatchState | undefined>>();
  private readonly waiters = new Map<string, Set<{ resolve: (image: ImageView) => void; reject: (error: Error) => void }>>();
  private readonly onResult: ResultsIndexOptions['onResult'];

  constructor(private readonly store: ObjectStore, private readonly inputBucket: string, private readonly outputBucket: string, options: ResultsIndexOptions = {}) {
    super();
    this.setMaxListeners(0);
    this.maxImages = options.maxImages ?? 50_000;
    this.onResult = options.onResult;
  }

  /** Records a new upload's manifest (or one read from the bucket, without announcing it). */
  addManifest(manifest: BatchManifest, announce = true): void {
    let batch = this.batches.get(manifest.batchId);
    if (!batch) {
      batch = { batchId: manifest.batchId, createdAt: manifest.createdAt, images: new Map(), waiting: 0, lastActivity: manifest.createdAt };
      this.batches.set(manifest.batchId, batch);
    }
    batch.createdAt = Math.min(batch.createdAt, manifest.createdAt);
    batch.lastActivity = Math.max(batch.lastActivity, manifest.createdAt);
    for (const image of manifest.images) {
      if (this.images.has(image.imageId)) continue;
      const view: ImageView = {
        id: image.imageId,
        name: image.name,
        batchId: manifest.batchId,
        status: 'queued',
        attempts: 0,
        size: image.size,
        contentType: image.contentType,
      };
      batch.images.set(image.imageId, view);
      batch.waiting++;
      this.images.set(image.imageId, { view, batch, ...(announce ? { acceptedAt: Date.now() } : {}) });
      if (announce) this.emit('event', { kind: 'image', image: view });
    }
    this.refreshPin(batch);
    if (announce) this.emit('event', { kind: 'batch', batchId: manifest.batchId, total: batch.images.size });
    this.evict();
  }

  /** Records an image's final result; the first one wins. Returns false for a duplicate or an unknown image. */
  recordResult(result: ImageResult, announce = true): boolean {
    const entry = this.images.get(result.imageId);
    if (!entry) return false;
    const view = entry.view;
    if (view.status === 'done' || view.status === 'error') return false;
    view.attempts = Math.max(view.attempts, result.attempts);
    view.finishedAt = result.finishedAt;
    if (result.instanceId) view.instanceId = result.instanceId;
    if (result.status === 'ok') {
      view.status = 'done';
      view.result = { label: result.label, probability: result.probability, top5: result.top5, instanceId: result.instanceId, durationMs: result.durationMs };
    } else {
      view.status = 'error';
      view.result = { error: result.error };
    }
    entry.batch.waiting--;
    entry.batch.lastActivity = Math.max(entry.batch.lastActivity, result.finishedAt);
    if (announce) {
      this.onResult?.(result, entry.acceptedAt === undefined ? undefined : Date.now() - entry.acceptedAt);
      this.emit('event', { kind: 'image', image: view });
    }
    const waiting = this.waiters.get(result.imageId);
    if (waiting) {
      this.waiters.delete(result.imageId);
      for (const waiter of waiting) waiter.resolve(view);
    }
    this.refreshPin(entry.batch);
    return true;
  }

  recordProgress(imageId: string, instanceId: string, attempt: number): void {
    const entry = this.images.get(imageId);
    if (!entry || entry.view.status === 'done' || entry.view.status === 'error') return;
    if (attempt < entry.view.attempts) return;
    entry.view.status = 'processing';
    entry.view.instanceId = instanceId;
    entry.view.attempts = attempt;
    this.emit('event', { kind: 'image', image: entry.view });
  }

  /**
   * Applies one output message, reading its batch from the buckets when it is not in memory.
   * 'orphan': no batch lists the image (it was deleted, or its upload failed after a launch
   * message went out), so the message must not bring it back. 'repeated': a result for an
   * image that already has one (delivery is at least once, and the monitor announces again
   * a result it finds stored); the first one stands.
   */
  async applyOutput(output: OutputMessage): Promise<'applied' | 'repeated' | 'orphan'> {
    const imageId = output.type === 'result' ? output.result.imageId : output.imageId;
    const batchId = output.type === 'result' ? output.result.batchId : output.batchId;
    if (!this.images.has(imageId)) {
      const batch = await this.ensureLoaded(batchId);
      if (!batch?.images.has(imageId)) return 'orphan';
      // Dropped again at once (over the bound): the image had its result already, or the
      // batch would be pinned; the buckets hold what this message says.
      if (!this.images.has(imageId)) return 'applied';
    }
    if (output.type === 'result') return this.recordResult(output.result) ? 'applied' : 'repeated';
    this.recordProgress(output.imageId, output.instanceId, output.attempt);
    return 'applied';
  }

  /** Whether the image's final result has been recorded (its batch is in memory and it is done or failed). */
  hasFinalResult(id: string): boolean {
    const status = this.images.get(id)?.view.status;
    return status === 'done' || status === 'error';
  }

  /** The image, if its batch is in memory. */
  image(id: string): ImageView | undefined {
    const entry = this.images.get(id);
    if (entry) this.touch(entry.batch);
    return entry?.view;
  }

  /**
   * The image, reading its batch from the buckets when needed. Only an image's result names
   * its batch, so an image whose batch is not in memory is found once it has a result, or
   * once its batch is read (by its id, or when a worker reports progress on it).
   */
  async findImage(id: string): Promise<ImageView | undefined> {
    const known = this.image(id);
    if (known || !isValidId(id)) return known;
    const result = await this.readResult(id);
    if (!result) return undefined;
    return (await this.ensureLoaded(result.batchId))?.images.get(id);
  }

  /** The batch, if it is in memory. */
  batch(batchId: string): BatchView | undefined {
    const batch = this.batches.get(batchId);
    if (batch) this.touch(batch);
    return batch && view(batch);
  }

  /** The batch, reading it from the buckets the first time; undefined when no manifest names it. */
  async findBatch(batchId: string): Promise<BatchView | undefined> {
    const batch = await this.ensureLoaded(batchId);
    return batch && view(batch);
  }

  /** Reads the batch into memory when it is not there; false when it does not exist. */
  async loadBatch(batchId: string): Promise<boolean> {
    return (await this.ensureLoaded(batchId)) !== undefined;
  }

  /** What deleting the batch needs to know, reading it first; undefined when it does not exist. */
  async summary(batchId: string): Promise<BatchSummary | undefined> {
    const batch = await this.ensureLoaded(batchId);
    if (!batch) return undefined;
    return { batchId, imageIds: [...batch.images.keys()], waiting: batch.waiting, uploading: this.uploads.get(batchId) ?? 0, lastActivity: batch.lastActivity };
  }

  /** Keeps the batch in memory until the returned function is called (an event-stream client). */
  pin(batchId: string): () => void {
    return this.hold(this.pins, batchId);
  }

  /** Pins the batch for an upload into it; a delete refuses (or, forced, outlasts) the upload. */
  beginUpload(batchId: string): () => void {
    const release = this.hold(this.uploads, batchId);
    const unpin = this.pin(batchId);
    return () => {
      release();
      unpin();
      if (!this.uploads.has(batchId)) this.deletedWhileUploading.delete(batchId);
    };
  }

  /** True while the batch is being deleted, or once deleted while an upload into it still runs. */
  isDeleted(batchId: string): boolean {
    return this.deleting.has(batchId) || this.deletedWhileUploading.has(batchId);
  }

  /**
   * Forgets the batch at the start of its deletion: it is no longer found, its event-stream
   * clients hear so, and synchronous waits for its images end.
   */
  beginDelete(batchId: string): void {
    this.deleting.add(batchId);
    const batch = this.batches.get(batchId);
    if (batch) {
      for (const id of batch.images.keys()) {
        this.images.delete(id);
        const waiting = this.waiters.get(id);
        this.waiters.delete(id);
        for (const waiter of waiting ?? []) waiter.reject(new BatchDeletedError(batchId));
      }
      this.batches.delete(batchId);
      this.evictable.delete(batchId);
    }
    this.emit('event', { kind: 'deleted', batchId });
  }

  /** The deletion is over; when it failed, the batch may be read and deleted again. */
  endDelete(batchId: string, completed: boolean): void {
    this.deleting.delete(batchId);
    // An upload into it that is still running must find it deleted when it finishes.
    if (completed && this.uploads.has(batchId)) this.deletedWhileUploading.add(batchId);
  }

  /** Counts of the images in memory, by status (not of every image stored). */
  totals(): Record<ImageStatus, number> {
    const totals: Record<ImageStatus, number> = { queued: 0, processing: 0, done: 0, error: 0 };
    for (const { view } of this.images.values()) totals[view.status]++;
    return totals;
  }

  /** What the index holds now. */
  size(): { batches: number; images: number } {
    return { batches: this.batches.size, images: this.images.size };
  }

  /** Resolves with the image once it has its final result. */
  waitForResult(imageId: string, signal?: AbortSignal): Promise<ImageView> {
    const view = this.images.get(imageId)?.view;
    if (view && (view.status === 'done' || view.status === 'error')) return Promise.resolve(view);
    // An abort that already happened fires no event: without this the wait would never end.
    if (signal?.aborted) return Promise.reject(signal.reason ?? new Error('aborted'));
    return new Promise((resolve, reject) => {
      let set = this.waiters.get(imageId);
      if (!set) this.waiters.set(imageId, (set = new Set()));
      const waiter = {
        resolve: (image: ImageView) => {
          signal?.removeEventListener('abort', abort);
          resolve(image);
        },
        reject: (error: Error) => {
          signal?.removeEventListener('abort', abort);
          reject(error);
        },
      };
      const abort = () => {
        set!.delete(waiter);
        if (set!.size === 0) this.waiters.delete(imageId);
        reject(signal!.reason ?? new Error('aborted'));
      };
      set.add(waiter);
      signal?.addEventListener('abort', abort, { once: true });
    });
  }

  private hold(counts: Map<string, number>, batchId: string): () => void {
    counts.set(batchId, (counts.get(batchId) ?? 0) + 1);
    this.refreshPinOf(batchId);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (counts.get(batchId) ?? 1) - 1;
      if (left > 0) counts.set(batchId, left);
      else counts.delete(batchId);
      this.refreshPinOf(batchId);
      this.evict();
    };
  }

  private refreshPinOf(batchId: string): void {
    const batch = this.batches.get(batchId);
    if (batch) this.refreshPin(batch);
  }

  private refreshPin(batch: BatchState): void {
    const pinned = batch.waiting > 0 || this.pins.has(batch.batchId) || this.uploads.has(batch.batchId);
    if (pinned) this.evictable.delete(batch.batchId);
    else if (!this.evictable.has(batch.batchId)) this.evictable.set(batch.batchId, batch);
  }

  private touch(batch: BatchState): void {
    if (!this.evictable.has(batch.batchId)) return;
    this.evictable.delete(batch.batchId);
    this.evictable.set(batch.batchId, batch);
  }

  /** Drops least recently used unpinned batches while the index holds more images than its bound. */
  private evict(): void {
    for (const [batchId, batch] of this.evictable) {
      if (this.images.size <= this.maxImages) return;
      this.evictable.delete(batchId);
      this.batches.delete(batchId);
      for (const id of batch.images.keys()) this.images.delete(id);
    }
  }

  private ensureLoaded(batchId: string): Promise<BatchState | undefined> {
    if (!isValidId(batchId) || this.isDeleted(batchId)) return Promise.resolve(undefined);
    const loaded = this.batches.get(batchId);
    if (loaded) {
      this.touch(loaded);
      return Promise.resolve(loaded);
    }
    let loading = this.loading.get(batchId);
    if (!loading) {
      // One read per batch at a time, shared by everyone who asks meanwhile.
      loading = this.readBatch(batchId).finally(() => this.loading.delete(batchId));
      this.loading.set(batchId, loading);
    }
    return loading;
  }

  private async readBatch(batchId: string): Promise<BatchState | undefined> {
    const manifests: BatchManifest[] = [];
    for await (const object of this.store.list(this.inputBucket, `batches/${batchId}/`)) {
      const stored = await this.store.get(this.inputBucket, object.key);
      const parsed = stored ? batchManifestSchema.safeParse(safeJson(stored.body.toString('utf8'))) : undefined;
      if (parsed?.success && parsed.data.batchId === batchId) manifests.push(parsed.data);
    }
    if (manifests.length === 0) return undefined;
    const imageIds = [...new Set(manifests.flatMap((manifest) => manifest.images.map((image) => image.imageId)))];
    const results = await mapLimit(imageIds, 16, (id) => this.readResult(id));
    if (this.isDeleted(batchId)) return undefined;
    // Applied in one synchronous step, so no output message is recorded halfway through.
    for (const manifest of manifests) this.addManifest(manifest, false);
    for (const result of results) if (result) this.recordResult(result, false);
    const batch = this.batches.get(batchId);
    this.evict();
    // Returned even if it was dropped again at once: the caller still gets its answer.
    return batch;
  }

  private async readResult(imageId: string): Promise<ImageResult | undefined> {
    const stored = await this.store.get(this.outputBucket, resultKey(imageId));
    if (!stored) return undefined;
    try {
      return parseImageResult(stored.body.toString('utf8'));
    } catch (error) {
      if (!(error instanceof InvalidMessageError)) throw error;
      return undefined;
    }
  }

  /**
   * Deletes the stored result of an image no batch lists, if the result is that image's
   * (names the same batch). Returns whether there was one.
   */
  async deleteOrphanResult(imageId: string, batchId: string): Promise<boolean> {
    if (!isValidId(imageId) || this.images.has(imageId)) return false;
    const result = await this.readResult(imageId);
    if (!result || result.batchId !== batchId) return false;
    await this.store.delete(this.outputBucket, resultKey(imageId));
    return true;
  }
}

function view(batch: BatchState): BatchView {
  const images = [...batch.images.values()];
  return {
    batchId: batch.batchId,
    createdAt: batch.createdAt,
    total: images.length,
    done: images.filter((image) => image.status === 'done').length,
    errors: images.filter((image) => image.status === 'error').length,
    images,
  };
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Runs `task` over the items with at most `width` at a time, keeping their order. */
export async function mapLimit<T, R>(items: readonly T[], width: number, task: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await task(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, lane));
  return results;
}

export interface OutputPhaseOptions {
  /**
   * How long a result for an image no batch lists is kept before it is deleted. The monitor
   * must see the result first (it would otherwise retry the image), which it does within
   * one check after the result is written, and at the latest by the deadline.
   */
  orphanGraceSeconds?: number;
  /** Default: silent. */
  log?: Logger;
  /** Where each image's start and finish are recorded, for calibrating the simulator. */
  events?: EventSink;
}

/**
 * The output phase: consumes the output queue, records each result once, and deletes the
 * message only after it is recorded, so a crash here re-delivers rather than drops.
 *
 * A result for an image no batch lists (its batch was deleted while a launch message for it
 * was still queued) is not recorded; the message is held back for the grace period and then
 * its result object is deleted, so a deleted batch leaves nothing behind in the bucket.
 */
/** Applies one output message; false when it is kept in flight instead of being deleted. */
async function applyOutputMessage(index: ResultsIndex, outputQueue: Queue, message: ReceivedMessage, graceMs: number, events: EventSink | undefined, log: Logger): Promise<boolean> {
  try {
    const output = parseOutputMessage(message.body);
    const applied = await index.applyOutput(output);
    if (applied !== 'orphan') recordEvent(events, output);
    if (output.type === 'result' && applied !== 'orphan') {
      const { imageId, batchId, status } = output.result;
      log.debug({ imageId, batchId, status }, applied === 'applied' ? 'result recorded' : 'repeated result ignored');
    }
    if (applied === 'orphan' && output.type === 'result') {
      const waitMs = message.sentAt + graceMs - Date.now();
      if (waitMs > 0) {
        // Kept in flight, not deleted: it comes back once the grace period is over.
        await outputQueue.changeVisibility(message.receiptHandle, Math.min(43_200, Math.ceil(waitMs / 1000)));
        return false;
      }
      if (await index.deleteOrphanResult(output.result.imageId, output.result.batchId)) {
        log.info({ imageId: output.result.imageId, batchId: output.result.batchId }, 'result of a deleted batch deleted');
      }
    }
  } catch (error) {
    if (!(error instanceof InvalidMessageError)) throw error;
    log.warn({ messageId: message.id, reason: error.message }, 'malformed output message dropped');
  }
  return true;
}

/** A duplicate announcement is recorded too: readers keep the first finish of each image. */
function recordEvent(events: EventSink | undefined, output: OutputMessage): void {
  if (!events) return;
  if (output.type === 'progress') {
    events.record({ type: 'image-start', at: output.at, instanceId: output.instanceId, imageId: output.imageId, attempt: output.attempt });
    return;
  }
  const { result } = output;
  events.record({
    type: 'image-finish',
    at: result.finishedAt,
    imageId: result.imageId,
    ...(result.instanceId ? { instanceId: result.instanceId } : {}),
    status: result.status,
    ...(result.status === 'ok' && result.durationMs !== undefined ? { serviceMs: result.durationMs } : {}),
  });
}

/** Output messages taken per receive: SQS's most. */
export const OUTPUT_RECEIVE_MAX = SQS_LIMITS.maxMessages;

export async function outputTick(index: ResultsIndex, outputQueue: Queue, waitSeconds: number, signal?: AbortSignal, options: OutputPhaseOptions = {}): Promise<number> {
  const log = options.log ?? silentLogger();
  const graceMs = (options.orphanGraceSeconds ?? 0) * 1000;
  const messages = await outputQueue.receive({ maxMessages: OUTPUT_RECEIVE_MAX, waitSeconds, visibilityTimeoutSeconds: 30, ...(signal ? { signal } : {}) });
  // Those handled are deleted together, in one write, even when a later one fails:
  // applying a message twice is harmless, but every write is a disk flush.
  const handled: string[] = [];
  try {
    for (const message of messages) {
      if (await applyOutputMessage(index, outputQueue, message, graceMs, options.events, log)) handled.push(message.receiptHandle);
    }
  } finally {
    await outputQueue.deleteBatch(handled);
  }
  return messages.length;
}
