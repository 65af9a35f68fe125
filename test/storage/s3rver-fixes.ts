/**
 * s3rver is a convenient local S3, but its file store falls short of two things S3
 * guarantees and the object-store contract checks:
 *
 * - ListObjects returns keys in the order it walks its folders, not in UTF-8 binary order,
 *   so "a/b" can come before "a" (and truncated pages can skip keys).
 * - PutObject truncates and rewrites the object file in place, then writes metadata in
 *   separate files, so a concurrent GET can see a partial body or another write's metadata.
 *
 * - PutObject ignores the conditional-write headers S3 honours since 2024: `If-None-Match: *`
 *   (create only if absent, else 412 PreconditionFailed) and `If-Match: <etag>` (replace only
 *   that version, else 412, or 404 NoSuchKey when there is no object).
 *
 * Rather than weaken the contract for every store, these patches make the emulator behave
 * like S3 on those points: listing is sorted before paging, a put writes a new file and
 * renames it into place, puts, gets and deletes are serialized so each one sees a body and
 * metadata from the same write, and a put checks its condition header inside that same
 * serialized step, as S3 checks it atomically. The condition is taken from the HTTP request
 * itself, so a contract test passes only if the adapter really sent the header. Only the
 * emulator's internals are touched; the adapter under test still talks plain S3 over HTTP.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, unlink } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type S3rver from 's3rver';

interface ListResult {
  objects: Array<{ key: string }>;
  commonPrefixes: string[];
  isTruncated: boolean;
}

interface ListOptions {
  delimiter?: string;
  startAfter?: string;
  prefix?: string;
  maxKeys?: number;
}

interface PutObjectInput {
  bucket: string;
  key: string;
  content: Buffer | Readable;
  metadata: Record<string, string>;
}

/** The internals of s3rver's FilesystemStore that the patches rely on. */
interface FilesystemStore {
  getResourcePath(bucket: string, key: string, resource: string): string;
  getMetadata(bucket: string, key: string): Promise<{ etag: string }>;
  putMetadata(bucket: string, key: string, metadata: Record<string, string>, md5: string): Promise<void>;
  listObjects(bucket: string, options: ListOptions): Promise<ListResult>;
  putObject(object: PutObjectInput): Promise<{ size: number; md5: string }>;
  getObject(bucket: string, key: string, options?: unknown): Promise<unknown>;
  deleteObject(bucket: string, key: string): Promise<void>;
}

/** The middleware stack of the Koa application that s3rver is. */
interface KoaInternals {
  middleware: Array<(ctx: KoaContext, next: () => Promise<unknown>) => unknown>;
}

interface KoaContext {
  method: string;
  headers: Record<string, string | string[] | undefined>;
}

interface PutConditions {
  ifNoneMatch?: string;
  ifMatch?: string;
}

type S3ErrorClass = new (code: string, message: string, detail?: Record<string, string>) => Error;
const S3Error = createRequire(import.meta.url)('s3rver/lib/models/error.js') as S3ErrorClass;

/** Carries a PUT request's condition headers down to the store call that request makes. */
const putConditions = new AsyncLocalStorage<PutConditions>();

function byBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function header(ctx: KoaContext, name: string): string | undefined {
  const value = ctx.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** ETags travel quoted; compare them without the quotes. */
function bareEtag(etag: string): string {
  return etag.trim().replace(/^"(.*)"$/, '$1');
}

async function checkPutConditions(store: FilesystemStore, bucket: string, key: string, conditions: PutConditions | undefined): Promise<void> {
  if (!conditions || (conditions.ifNoneMatch === undefined && conditions.ifMatch === undefined)) return;
  const current = await store.getMetadata(bucket, key).catch((error: { code?: string }) => {
    if (error.code === 'ENOENT') return null;
    throw error;
  });
  if (conditions.ifNoneMatch !== undefined) {
    if (conditions.ifNoneMatch.trim() !== '*') throw new S3Error('NotImplemented', 'If-None-Match supports only *');
    if (current) throw new S3Error('PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', { Condition: 'If-None-Match' });
  }
  if (conditions.ifMatch !== undefined) {
    if (!current) throw new S3Error('NoSuchKey', 'The specified key does not exist.', { Key: key });
    if (bareEtag(current.etag) !== bareEtag(conditions.ifMatch)) {
      throw new S3Error('PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', { Condition: 'If-Match' });
    }
  }
}

export function makeS3rverFaithful(server: S3rver): void {
  const store = (server as unknown as { store: FilesystemStore }).store;
  for (const method of ['getResourcePath', 'getMetadata', 'putMetadata', 'listObjects', 'putObject', 'getObject', 'deleteObject'] as const) {
    if (typeof store?.[method] !== 'function') throw new Error(`s3rver's store has no ${method}(); the patches need updating for this s3rver version`);
  }
  const original = {
    listObjects: store.listObjects.bind(store),
    getObject: store.getObject.bind(store),
    deleteObject: store.deleteObject.bind(store),
  };

  const koa = server as unknown as KoaInternals;
  if (!Array.isArray(koa.middleware)) throw new Error('s3rver has no Koa middleware stack; the patches need updating for this s3rver version');
  // First in the stack, so the whole request, store call included, runs inside it.
  koa.middleware.unshift((ctx, next) => {
    if (ctx.method !== 'PUT' || header(ctx, 'x-amz-copy-source') !== undefined) return next();
    return putConditions.run({ ifNoneMatch: header(ctx, 'if-none-match'), ifMatch: header(ctx, 'if-match') }, next);
  });

  let queue: Promise<unknown> = Promise.resolve();
  const serialized = <T>(operation: () => Promise<T>): Promise<T> => {
    const result = queue.then(operation);
    queue = result.catch(() => undefined);
    return result;
  };

  store.listObjects = async (bucket, options) => {
    const { startAfter = '', maxKeys = Infinity, ...rest } = options;
    const all = await original.listObjects(bucket, { ...rest, startAfter: '', maxKeys: Infinity });
    const objects = all.objects.filter((object) => byBytes(object.key, startAfter) > 0).sort((a, b) => byBytes(a.key, b.key));
    return { objects: objects.slice(0, maxKeys), commonPrefixes: all.commonPrefixes, isTruncated: objects.length > maxKeys };
  };

  store.putObject = (object) => {
    const conditions = putConditions.getStore();
    return serialized(async () => {
      const objectPath = store.getResourcePath(object.bucket, object.key, 'object');
      await mkdir(path.dirname(objectPath), { recursive: true });
      // Ends in neither "._S3rver_object" nor a metadata suffix, so listing skips it.
      const tempPath = `${objectPath}.${randomBytes(6).toString('hex')}.partial`;
      const md5 = createHash('md5');
      let size = 0;
      const tap = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          md5.update(chunk);
          size += chunk.length;
          callback(null, chunk);
        },
      });
      try {
        const source = Buffer.isBuffer(object.content) ? Readable.from([object.content]) : object.content;
        await pipeline(source, tap, createWriteStream(tempPath));
        // After the body, as on S3: the condition is judged at the moment the write completes.
        await checkPutConditions(store, object.bucket, object.key, conditions);
        await rename(tempPath, objectPath);
      } catch (error) {
        await unlink(tempPath).catch(() => undefined);
        throw error;
      }
      const digest = md5.digest('hex');
      await store.putMetadata(object.bucket, object.key, object.metadata, digest);
      return { size, md5: digest };
    });
  };

  // getObject resolves once its read stream has opened the file; a later put renames a new
  // file into place, so the open stream keeps reading the body its metadata belongs to.
  store.getObject = (bucket, key, options) => serialized(() => original.getObject(bucket, key, options));
  store.deleteObject = (bucket, key) => serialized(() => original.deleteObject(bucket, key));
}
