/**
 * Object store on Amazon S3 or any S3-compatible service: the distributed adapter.
 *
 * Metadata: S3 sends user metadata as `x-amz-meta-*` HTTP headers, so it lower-cases the
 * names and only carries printable US-ASCII values reliably. Callers should therefore use
 * lower-case metadata names and ASCII values; the file store lower-cases names as well, so a
 * name written in mixed case reads back the same way from either store.
 */
import { buffer } from 'node:stream/consumers';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type BucketLocationConstraint,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
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
import { awsRetry } from '../backoff.js';

export interface S3ObjectStoreOptions {
  region?: string;
  /** For S3-compatible services; leave unset for AWS. */
  endpoint?: string;
  /** Path-style URLs (`endpoint/bucket/key`), which most S3-compatible services need. */
  forcePathStyle?: boolean;
  /** Unset means the SDK's default chain: environment, profile, instance role. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** A ready client (e.g. shared or mocked); the store then leaves destroying it to the caller. */
  client?: S3Client;
}

const DEFAULT_CONTENT_TYPE = 'application/octet-stream';
/**
 * Part size of streamed puts: what one streamed put holds in memory. S3 wants parts of at
 * least 5 MiB (but the last) and at most 10,000 of them, so objects up to 78 GiB fit.
 */
const PART_BYTES = 8 * 1024 * 1024;

export class S3ObjectStore implements ObjectStore {
  private readonly client: S3Client;
  private readonly ownsClient: boolean;

  constructor(options: S3ObjectStoreOptions = {}) {
    if (options.client) {
      this.client = options.client;
      this.ownsClient = false;
      return;
    }
    const config: S3ClientConfig = {
      region: options.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
      ...awsRetry(),
    };
    if (options.endpoint !== undefined) {
      config.endpoint = options.endpoint;
      // Since early 2025 the SDK adds CRC checksums to every request and validates them on
      // every response by default; many S3-compatible services do not implement them and
      // reject the request or return none. Content-MD5 on each put keeps uploads verified.
      config.requestChecksumCalculation = 'WHEN_REQUIRED';
      config.responseChecksumValidation = 'WHEN_REQUIRED';
    }
    if (options.forcePathStyle !== undefined) config.forcePathStyle = options.forcePathStyle;
    if (options.credentials) config.credentials = options.credentials;
    this.client = new S3Client(config);
    this.ownsClient = true;
  }

  async put(bucket: string, key: string, body: Buffer, options: PutOptions = {}): Promise<PutResult> {
    validateBucket(bucket);
    validateKey(key);
    validatePutConditions(options);
    try {
      const response = await this.client.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: body,
          ContentLength: body.length,
          ContentMD5: createHash('md5').update(body).digest('base64'),
          ContentType: options.contentType ?? DEFAULT_CONTENT_TYPE,
          Metadata: options.metadata ?? {},
          ...(options.ifNoneMatch !== undefined ? { IfNoneMatch: options.ifNoneMatch } : {}),
          ...(options.ifMatch !== undefined ? { IfMatch: options.ifMatch } : {}),
        }),
      );
      return { etag: response.ETag ?? '' };
    } catch (error) {
      const failed = failedCondition(options, error);
      if (failed) throw new PreconditionFailedError(bucket, key, failed);
      throw describeError('put', bucket, key, error);
    }
  }

  /**
   * A body that fits in one part is stored with one PutObject; a longer one as a multipart
   * upload, one part in memory at a time. S3 shows a multipart object only once it is
   * completed, so a body that fails midway leaves nothing visible (the upload is aborted).
   */
  async putStream(bucket: string, key: string, body: Readable, options: StreamPutOptions = {}): Promise<{ size: number }> {
    // Until the parts below read it, an error of the body must not go unheard (an 'error'
    // event without a listener ends the process); the reader still sees it.
    body.on('error', ignoreError);
    try {
      validateBucket(bucket);
      validateKey(key);
      const parts = partsOf(body, PART_BYTES);
      const first = await parts.next();
      const firstPart = first.done ? Buffer.alloc(0) : first.value;
      if (firstPart.length < PART_BYTES) {
        await this.put(bucket, key, firstPart, { contentType: options.contentType, metadata: options.metadata });
        return { size: firstPart.length };
      }
      return await this.multipartUpload(bucket, key, firstPart, parts, options);
    } finally {
      body.off('error', ignoreError);
    }
  }

  async getStream(bucket: string, key: string): Promise<StreamedObject | null> {
    validateBucket(bucket);
    validateKey(key);
    try {
      const response = await this.client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      // In Node.js the SDK's body is the HTTP response itself, a Readable.
      const body = response.Body instanceof Readable ? response.Body : Readable.from(response.Body ? [await response.Body.transformToByteArray()] : []);
      return {
        info: objectInfo(key, response),
        body,
      };
    } catch (error) {
      if (isMissing(error)) return null;
      throw describeError('get', bucket, key, error);
    }
  }

  async get(bucket: string, key: string): Promise<StoredObject | null> {
    const streamed = await this.getStream(bucket, key);
    if (!streamed) return null;
    const body = await buffer(streamed.body);
    return { ...streamed.info, size: body.length, body };
  }

  async head(bucket: string, key: string): Promise<ObjectInfo | null> {
    validateBucket(bucket);
    validateKey(key);
    try {
      const response = await this.client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      return objectInfo(key, response);
    } catch (error) {
      // A HEAD response has no body, so a missing bucket and a missing key both arrive as 404.
      if (isMissing(error)) return null;
      throw describeError('head', bucket, key, error);
    }
  }

  async *list(bucket: string, prefix = ''): AsyncIterable<ListedObject> {
    validateBucket(bucket);
    let continuationToken: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix === '' ? undefined : prefix, ContinuationToken: continuationToken }),
        );
      } catch (error) {
        // The file store lists a missing bucket as empty; match it.
        if (errorName(error) === 'NoSuchBucket') return;
        throw describeError('list', bucket, prefix === '' ? undefined : `${prefix}*`, error);
      }
      // S3 returns keys in ascending UTF-8 byte order, page after page.
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue;
        yield { key: object.Key, size: object.Size ?? 0, lastModified: object.LastModified ?? new Date(0) };
      }
      continuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (continuationToken !== undefined);
  }

  async delete(bucket: string, key: string): Promise<void> {
    validateBucket(bucket);
    validateKey(key);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
    } catch (error) {
      // S3 itself accepts deleting a missing key; a missing bucket holds no such key either.
      if (isMissing(error)) return;
      throw describeError('delete', bucket, key, error);
    }
  }

  async ensureBucket(bucket: string): Promise<void> {
    validateBucket(bucket);
    if (await this.bucketExists(bucket)) return;
    const region = await this.client.config.region();
    try {
      await this.client.send(
        new CreateBucketCommand({
          Bucket: bucket,
          // us-east-1 is the default location and rejects being named explicitly.
          ...(region && region !== 'us-east-1' ? { CreateBucketConfiguration: { LocationConstraint: region as BucketLocationConstraint } } : {}),
        }),
      );
    } catch (error) {
      const name = errorName(error);
      if (name === 'BucketAlreadyOwnedByYou') return;
      // Another process may have created it since the check (some S3-compatible services
      // answer BucketAlreadyExists even to the owner); if it is usable now, that is enough.
      if (name === 'BucketAlreadyExists') {
        if (await this.bucketExists(bucket)) return;
        throw new Error(`S3 bucket "${bucket}" already exists and belongs to another account; choose another bucket name`, { cause: error });
      }
      throw describeError('create bucket', bucket, undefined, error);
    }
  }

  async close(): Promise<void> {
    if (this.ownsClient) this.client.destroy();
  }

  private async multipartUpload(bucket: string, key: string, firstPart: Buffer, rest: AsyncIterator<Buffer>, options: StreamPutOptions): Promise<{ size: number }> {
    let uploadId: string | undefined;
    try {
      const created = await this.client.send(new CreateMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        ContentType: options.contentType ?? DEFAULT_CONTENT_TYPE,
        Metadata: options.metadata ?? {},
      }));
      uploadId = created.UploadId;
      if (!uploadId) throw new Error('the service returned no upload id');
    } catch (error) {
      throw describeError('put', bucket, key, error);
    }
    const done: { ETag: string; PartNumber: number }[] = [];
    let size = 0;
    try {
      for (let part: Buffer | undefined = firstPart; part; ) {
        const PartNumber = done.length + 1;
        const uploaded = await this.client.send(new UploadPartCommand({
          Bucket: bucket,
          Key: key,
          UploadId: uploadId,
          PartNumber,
          Body: part,
          ContentLength: part.length,
          ContentMD5: createHash('md5').update(part).digest('base64'),
        })).catch((error: unknown) => { throw describeError('put', bucket, key, error); });
        done.push({ ETag: uploaded.ETag ?? '', PartNumber });
        size += part.length;
        const next = await rest.next();
        part = next.done || next.value.length === 0 ? undefined : next.value;
      }
      await this.client.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: done } }))
        .catch((error: unknown) => { throw describeError('put', bucket, key, error); });
      return { size };
    } catch (error) {
      await rest.return?.(undefined).catch(() => undefined);
      // Parts of an upload never completed are not an object; aborting frees their storage.
      // A bucket lifecycle rule for incomplete uploads catches any abort that fails.
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId })).catch(() => undefined);
      throw error;
    }
  }

  private async bucketExists(bucket: string): Promise<boolean> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: bucket }));
      return true;
    } catch (error) {
      if (isMissing(error)) return false;
      throw describeError('check bucket', bucket, undefined, error);
    }
  }
}

function ignoreError(): void {}

/** The body in pieces of exactly `bytes` bytes, but the last, which may be shorter or empty. */
async function* partsOf(body: Readable, bytes: number): AsyncGenerator<Buffer, void, undefined> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  for await (const chunk of body) {
    const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
    pending.push(buffer);
    pendingBytes += buffer.length;
    while (pendingBytes >= bytes) {
      const joined = Buffer.concat(pending, pendingBytes);
      yield joined.subarray(0, bytes);
      // A copy, so the part just yielded is not kept alive by the few bytes after it.
      pending = [Buffer.from(joined.subarray(bytes))];
      pendingBytes -= bytes;
    }
  }
  yield Buffer.concat(pending, pendingBytes);
}

function errorName(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const { name, Code } = error as { name?: unknown; Code?: unknown };
  if (typeof Code === 'string') return Code;
  return typeof name === 'string' ? name : undefined;
}

function httpStatus(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const status = (error as { $metadata?: { httpStatusCode?: unknown } }).$metadata?.httpStatusCode;
  return typeof status === 'number' ? status : undefined;
}

/**
 * S3 answers a condition that does not hold with 412 PreconditionFailed, and a conditional
 * write that raced another one on the same key with 409 ConditionalRequestConflict (the
 * loser may retry, but for create-if-absent and replace-if-unchanged the other write has
 * already changed the object, so the condition no longer holds). If-Match on a missing key
 * is 404 NoSuchKey.
 */
function failedCondition(options: PutOptions, error: unknown): 'ifNoneMatch' | 'ifMatch' | undefined {
  const condition = options.ifNoneMatch !== undefined ? 'ifNoneMatch' : options.ifMatch !== undefined ? 'ifMatch' : undefined;
  if (condition === undefined) return undefined;
  const name = errorName(error);
  const status = httpStatus(error);
  if (name === 'PreconditionFailed' || status === 412 || name === 'ConditionalRequestConflict') return condition;
  if (condition === 'ifMatch' && name === 'NoSuchKey') return condition;
  return undefined;
}

function isMissing(error: unknown): boolean {
  const name = errorName(error);
  return name === 'NoSuchKey' || name === 'NoSuchBucket' || name === 'NotFound' || httpStatus(error) === 404;
}

/** Names the operation, bucket and key, and says what to check for the common causes. */
function describeError(operation: string, bucket: string, key: string | undefined, error: unknown): Error {
  const target = key === undefined ? `s3://${bucket}` : `s3://${bucket}/${key}`;
  const name = errorName(error);
  const status = httpStatus(error);
  let detail: string;
  if (name === 'NoSuchBucket') {
    detail = `bucket "${bucket}" does not exist; create it with ensureBucket first`;
  } else if (name === 'AccessDenied' || name === 'Forbidden' || status === 403) {
    detail = `access denied; check the credentials and that their policy allows this on bucket "${bucket}"`;
  } else if (name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch') {
    detail = `the credentials were rejected (${name}); check the access key and secret`;
  } else {
    const message = error instanceof Error ? error.message : String(error);
    detail = `${name ?? 'error'}${status ? ` (HTTP ${status})` : ''}: ${message}`;
  }
  return new Error(`S3 ${operation} of ${target} failed: ${detail}`, { cause: error });
}

/** What GetObject and HeadObject both answer about an object. */
function objectInfo(key: string, response: { ContentLength?: number; ContentType?: string; Metadata?: Record<string, string>; LastModified?: Date; ETag?: string }): ObjectInfo {
  return {
    key,
    size: response.ContentLength ?? 0,
    contentType: response.ContentType ?? DEFAULT_CONTENT_TYPE,
    metadata: { ...(response.Metadata ?? {}) },
    lastModified: response.LastModified ?? new Date(0),
    etag: response.ETag ?? '',
  };
}
