/**
 * The web tier's view of batches and images, and the output phase that feeds it. The
 * buckets are the source of truth: on start the index is rebuilt from the batch manifests
 * in the input bucket and the results in the output bucket, so a restart loses nothing.
 */
import { EventEmitter } from 'node:events';
import {
  type BatchManifest,
  type ImageResult,
  batchManifestSchema,
  parseImageResult,
  parseOutputMessage,
  InvalidMessageError,
} from '../messages.js';
import type { Queue } from '../queue/port.js';
import type { ObjectStore } from '../storage/port.js';

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
  | { kind: 'batch'; batchId: string; total: number };

interface Entry {
  view: ImageView;
}

export class ResultsIndex extends EventEmitter<{ event: [IndexEvent] }> {
  private readonly images = new Map<string, Entry>();
  private readonly batches = new Map<string, { createdAt: number; imageIds: string[] }>();
  private readonly waiters = new Map<string, Set<(image: ImageView) => void>>();

  constructor(private readonly store: ObjectStore, private readonly inputBucket: string, private readonly outputBucket: string) {
    super();
    this.setMaxListeners(0);
  }

  /**
   * Rebuilds the index from the buckets. Also returns the manifests whose upload may not
   * have sent all its launch messages (see upload.ts).
   */
  async load(): Promise<{ batches: number; images: number; results: number; unlaunched: { manifestKey: string; manifest: BatchManifest }[] }> {
    let results = 0;
    const unlaunched: { manifestKey: string; manifest: BatchManifest }[] = [];
    for await (const object of this.store.list(this.inputBucket, 'batches/')) {
      const stored = await this.store.get(this.inputBucket, object.key);
      if (!stored) continue;
      const parsed = batchManifestSchema.safeParse(safeJson(stored.body.toString('utf8')));
      if (!parsed.success) continue;
      this.addManifest(parsed.data, false);
      if (parsed.data.launched === false) unlaunched.push({ manifestKey: object.key, manifest: parsed.data });
    }
    for await (const object of this.store.list(this.outputBucket, 'results/')) {
      const stored = await this.store.get(this.outputBucket, object.key);
      if (!stored) continue;
      try {
        if (this.recordResult(parseImageResult(stored.body.toString('utf8')), false)) results++;
      } catch (error) {
        if (!(error instanceof InvalidMessageError)) throw error;
      }
    }
    return { batches: this.batches.size, images: this.images.size, results, unlaunched };
  }

  addManifest(manifest: BatchManifest, announce = true): void {
    let batch = this.batches.get(manifest.batchId);
    if (!batch) {
      batch = { createdAt: manifest.createdAt, imageIds: [] };
      this.batches.set(manifest.batchId, batch);
    }
    batch.createdAt = Math.min(batch.createdAt, manifest.createdAt);
    for (const image of manifest.images) {
      if (this.images.has(image.imageId)) continue;
      batch.imageIds.push(image.imageId);
      const view: ImageView = {
        id: image.imageId,
        name: image.name,
        batchId: manifest.batchId,
        status: 'queued',
        attempts: 0,
        size: image.size,
        contentType: image.contentType,
      };
      this.images.set(image.imageId, { view });
      if (announce) this.emit('event', { kind: 'image', image: view });
    }
    if (announce) this.emit('event', { kind: 'batch', batchId: manifest.batchId, total: batch.imageIds.length });
  }

  /** Records an image's final result; the first one wins. Returns false for a duplicate. */
  recordResult(result: ImageResult, announce = true): boolean {
    const entry = this.images.get(result.imageId);
    if (!entry) return false;
    if (entry.view.status === 'done' || entry.view.status === 'error') return false;
    const view = entry.view;
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
    if (announce) this.emit('event', { kind: 'image', image: view });
    const waiting = this.waiters.get(result.imageId);
    if (waiting) {
      this.waiters.delete(result.imageId);
      for (const resolve of waiting) resolve(view);
    }
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

  image(id: string): ImageView | undefined {
    return this.images.get(id)?.view;
  }

  batch(batchId: string): BatchView | undefined {
    const batch = this.batches.get(batchId);
    if (!batch) return undefined;
    const images = batch.imageIds.map((id) => this.images.get(id)!.view);
    return {
      batchId,
      createdAt: batch.createdAt,
      total: images.length,
      done: images.filter((image) => image.status === 'done').length,
      errors: images.filter((image) => image.status === 'error').length,
      images,
    };
  }

  hasBatch(batchId: string): boolean {
    return this.batches.has(batchId);
  }

  /** Counts over all images, for metrics. */
  totals(): Record<ImageStatus, number> {
    const totals: Record<ImageStatus, number> = { queued: 0, processing: 0, done: 0, error: 0 };
    for (const { view } of this.images.values()) totals[view.status]++;
    return totals;
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
      const done = (image: ImageView) => {
        signal?.removeEventListener('abort', abort);
        resolve(image);
      };
      const abort = () => {
        set!.delete(done);
        reject(signal!.reason ?? new Error('aborted'));
      };
      set.add(done);
      signal?.addEventListener('abort', abort, { once: true });
    });
  }

  /** Loads a batch manifest written by another web tier, when a result names an unknown image. */
  async loadBatch(batchId: string): Promise<void> {
    for await (const object of this.store.list(this.inputBucket, `batches/${batchId}/`)) {
      const stored = await this.store.get(this.inputBucket, object.key);
      const parsed = stored ? batchManifestSchema.safeParse(safeJson(stored.body.toString('utf8'))) : undefined;
      if (parsed?.success) this.addManifest(parsed.data);
    }
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * The output phase: consumes the output queue, records each result once, and deletes the
 * message only after it is recorded, so a crash here re-delivers rather than drops.
 */
export async function outputTick(index: ResultsIndex, outputQueue: Queue, waitSeconds: number, signal?: AbortSignal, log: (line: string) => void = () => {}): Promise<number> {
  const messages = await outputQueue.receive({ maxMessages: 10, waitSeconds, visibilityTimeoutSeconds: 30, ...(signal ? { signal } : {}) });
  for (const message of messages) {
    try {
      const output = parseOutputMessage(message.body);
      const imageId = output.type === 'result' ? output.result.imageId : output.imageId;
      const batchId = output.type === 'result' ? output.result.batchId : output.batchId;
      if (!index.image(imageId)) await index.loadBatch(batchId);
      if (output.type === 'result') index.recordResult(output.result);
      else index.recordProgress(output.imageId, output.instanceId, output.attempt);
    } catch (error) {
      if (!(error instanceof InvalidMessageError)) throw error;
      log(`dropping malformed output message ${message.id}: ${error.message}`);
    }
    await outputQueue.delete(message.receiptHandle);
  }
  return messages.length;
}
