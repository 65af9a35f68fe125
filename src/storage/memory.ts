/**
 * Object store held in this process's memory, for tests that run every part in one process.
 * It keeps the port's promises as the file and S3 stores do, and passes the same contract
 * suite: whole-or-nothing writes (a streamed body becomes visible only once it has ended
 * well), create-if-absent and replace-if-unchanged as one step, keys listed in the byte order
 * of their UTF-8 text, lower-cased metadata names, and the same refusals of bad keys and
 * buckets. Bodies are copied in and out, so a caller that reuses its buffer changes nothing
 * stored. Nothing survives the process and memory is not bounded: never a service's store.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  PreconditionFailedError,
  validateBucket,
  validateKey,
  validatePutConditions,
  type ListedObject,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
  type PutResult,
  type StoredObject,
  type StreamedObject,
  type StreamPutOptions,
} from './port.js';

const DEFAULT_CONTENT_TYPE = 'application/octet-stream';

interface Entry {
  body: Buffer;
  contentType: string;
  metadata: Record<string, string>;
  lastModified: Date;
  etag: string;
}

export class MemoryObjectStore implements ObjectStore {
  private readonly buckets = new Map<string, Map<string, Entry>>();

  async put(bucket: string, key: string, body: Buffer, options: PutOptions = {}): Promise<PutResult> {
    validatePutConditions(options);
    validateBucket(bucket);
    validateKey(key);
    const objects = this.existingBucket(bucket);
    // Check and write with no await in between: no other put can come between them.
    const current = objects.get(key);
    if (options.ifNoneMatch !== undefined && current) throw new PreconditionFailedError(bucket, key, 'ifNoneMatch');
    if (options.ifMatch !== undefined && current?.etag !== options.ifMatch) throw new PreconditionFailedError(bucket, key, 'ifMatch');
    const entry = newEntry(Buffer.from(body), options);
    objects.set(key, entry);
    return { etag: entry.etag };
  }

  async putStream(bucket: string, key: string, body: Readable, options: StreamPutOptions = {}): Promise<{ size: number }> {
    // Until the loop below reads it, an error of the body must not go unheard (an 'error'
    // event without a listener ends the process); the loop still sees it.
    body.on('error', ignoreError);
    try {
      validateBucket(bucket);
      validateKey(key);
      this.existingBucket(bucket);
      const chunks: Buffer[] = [];
      for await (const chunk of body) chunks.push(Buffer.isBuffer(chunk) ? Buffer.from(chunk) : Buffer.from(chunk as Uint8Array));
      const entry = newEntry(Buffer.concat(chunks), options);
      this.existingBucket(bucket).set(key, entry);
      return { size: entry.body.length };
    } finally {
      body.off('error', ignoreError);
    }
  }

  async get(bucket: string, key: string): Promise<StoredObject | null> {
    const entry = this.entry(bucket, key);
    return entry ? { ...info(key, entry), body: Buffer.from(entry.body) } : null;
  }

  async getStream(bucket: string, key: string): Promise<StreamedObject | null> {
    const entry = this.entry(bucket, key);
    // The entry is never changed in place, so the stream keeps the version it started with.
    return entry ? { info: info(key, entry), body: Readable.from(entry.body.length > 0 ? [Buffer.from(entry.body)] : []) } : null;
  }

  async head(bucket: string, key: string): Promise<ObjectInfo | null> {
    const entry = this.entry(bucket, key);
    return entry ? info(key, entry) : null;
  }

  async *list(bucket: string, prefix = ''): AsyncIterable<ListedObject> {
    validateBucket(bucket);
    const objects = this.buckets.get(bucket);
    if (!objects) return;
    // Byte order of the UTF-8 text, as S3 lists; JS string order differs above U+FFFF.
    const keys = [...objects.keys()].filter((key) => key.startsWith(prefix)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const key of keys) {
      const entry = objects.get(key);
      if (!entry) continue; // deleted since the listing began
      yield { key, size: entry.body.length, lastModified: entry.lastModified };
    }
  }

  async delete(bucket: string, key: string): Promise<void> {
    validateBucket(bucket);
    validateKey(key);
    this.buckets.get(bucket)?.delete(key);
  }

  async ensureBucket(bucket: string): Promise<void> {
    validateBucket(bucket);
    if (!this.buckets.has(bucket)) this.buckets.set(bucket, new Map());
  }

  async close(): Promise<void> {
    // Nothing is held open; the objects stay for whoever still holds the store.
  }

  private existingBucket(bucket: string): Map<string, Entry> {
    validateBucket(bucket);
    const objects = this.buckets.get(bucket);
    if (!objects) throw new Error(`bucket "${bucket}" does not exist; create it with ensureBucket first`);
    return objects;
  }

  private entry(bucket: string, key: string): Entry | undefined {
    validateBucket(bucket);
    validateKey(key);
    return this.buckets.get(bucket)?.get(key);
  }
}

function newEntry(body: Buffer, options: PutOptions | StreamPutOptions): Entry {
  return {
    body,
    contentType: options.contentType ?? DEFAULT_CONTENT_TYPE,
    metadata: normalizeMetadata(options.metadata),
    lastModified: new Date(),
    etag: randomBytes(16).toString('hex'),
  };
}

function info(key: string, entry: Entry): ObjectInfo {
  return { key, size: entry.body.length, contentType: entry.contentType, metadata: { ...entry.metadata }, lastModified: new Date(entry.lastModified), etag: entry.etag };
}

/** S3 lower-cases user metadata names; the other stores do the same. */
function normalizeMetadata(metadata: Record<string, string> | undefined): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [name, value] of Object.entries(metadata ?? {})) result[name.toLowerCase()] = String(value);
  return result;
}

function ignoreError(): void {}
