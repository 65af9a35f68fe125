/**
 * Object-store port: bytes by bucket and key, with a content type and string metadata.
 * Adapters: files under a folder (embedded default) and S3 (distributed).
 */
export interface PutOptions {
  contentType?: string;
  metadata?: Record<string, string>;
  /** `'*'`: create the object only if the key holds none (S3's If-None-Match). */
  ifNoneMatch?: '*';
  /** Replace the object only if its current ETag is this one (S3's If-Match). */
  ifMatch?: string;
}

export interface PutResult {
  /** Identifies this write's version of the object; pass it as `ifMatch` to replace it. */
  etag: string;
}

export interface ObjectInfo {
  key: string;
  size: number;
  contentType: string;
  metadata: Record<string, string>;
  lastModified: Date;
  /** Changes whenever the object is replaced (opaque; compare it only for equality). */
  etag: string;
}

export interface StoredObject extends ObjectInfo {
  body: Buffer;
}

export interface ListedObject {
  key: string;
  size: number;
  lastModified: Date;
}

export interface ObjectStore {
  /**
   * Stores the object whole or not at all: a reader never sees a partial body. With
   * `ifNoneMatch` or `ifMatch` the condition and the write are one atomic step, even
   * between processes; when the condition does not hold it throws PreconditionFailedError
   * and changes nothing.
   */
  put(bucket: string, key: string, body: Buffer, options?: PutOptions): Promise<PutResult>;
  /** The object, or null when there is none under that key. */
  get(bucket: string, key: string): Promise<StoredObject | null>;
  /** The object's info without its body, or null when there is none. */
  head(bucket: string, key: string): Promise<ObjectInfo | null>;
  /** Every object whose key starts with the prefix, in ascending key order. */
  list(bucket: string, prefix?: string): AsyncIterable<ListedObject>;
  /** Deleting a missing object is not an error. */
  delete(bucket: string, key: string): Promise<void>;
  /** Creates the bucket when it does not exist yet. */
  ensureBucket(bucket: string): Promise<void>;
  close(): Promise<void>;
}

/** Thrown for keys that are empty, too long, or could escape the bucket. */
export class InvalidKeyError extends Error {
  constructor(readonly key: string, reason: string) {
    super(`invalid object key ${JSON.stringify(key.slice(0, 200))}: ${reason}`);
    this.name = 'InvalidKeyError';
  }
}

/** A conditional put whose condition did not hold: the key was taken, or changed since it was read. */
export class PreconditionFailedError extends Error {
  constructor(readonly bucket: string, readonly key: string, readonly condition: 'ifNoneMatch' | 'ifMatch') {
    super(
      condition === 'ifNoneMatch'
        ? `object ${bucket}/${key} already exists (create-if-absent refused)`
        : `object ${bucket}/${key} is missing or has changed since it was read (replace-if-unchanged refused)`,
    );
    this.name = 'PreconditionFailedError';
  }
}

/** Refuses option combinations no store can honour, before anything is written. */
export function validatePutConditions(options: PutOptions): void {
  if (options.ifNoneMatch !== undefined && options.ifNoneMatch !== '*') throw new Error(`ifNoneMatch must be '*', not ${JSON.stringify(options.ifNoneMatch)}`);
  if (options.ifMatch !== undefined && (typeof options.ifMatch !== 'string' || options.ifMatch === '')) throw new Error('ifMatch must be a non-empty ETag');
  if (options.ifNoneMatch !== undefined && options.ifMatch !== undefined) throw new Error('ifNoneMatch and ifMatch cannot be combined in one put');
}

const MAX_KEY_BYTES = 1024;

/**
 * Keys are S3-style paths of safe segments. Rejecting `..`, `.`, empty segments,
 * backslashes and control characters means no adapter can be led outside its bucket.
 */
export function validateKey(key: string): void {
  if (typeof key !== 'string' || key.length === 0) throw new InvalidKeyError(String(key), 'empty');
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) throw new InvalidKeyError(key, `longer than ${MAX_KEY_BYTES} bytes`);
  if (/[\u0000-\u001f\u007f\\]/.test(key)) throw new InvalidKeyError(key, 'contains a control character or backslash');
  if (key.startsWith('/')) throw new InvalidKeyError(key, 'starts with /');
  for (const segment of key.split('/')) {
    if (segment === '') throw new InvalidKeyError(key, 'has an empty path segment');
    if (segment === '.' || segment === '..') throw new InvalidKeyError(key, `has a "${segment}" segment`);
  }
}

const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export function validateBucket(bucket: string): void {
  if (!BUCKET_NAME.test(bucket) || bucket.includes('..')) {
    throw new Error(`invalid bucket name ${JSON.stringify(bucket)}: use 3-63 lowercase letters, digits, dots and hyphens`);
  }
}
