/**
 * s3rver is a convenient local S3, but its file store falls short of two things S3
 * guarantees and the object-store contract checks:
 *
 * - ListObjects returns keys in the order it walks its folders, not in UTF-8 binary order,
 *   so "a/b" can come before "a" (and truncated pages can skip keys).
 * - PutObject truncates and rewrites the object file in place, then writes metadata in
 *   separate files, so a concurrent GET can see a partial body or another write's metadata.
 *
 * Rather than weaken the contract for every store, these patches make the emulator behave
 * like S3 on those points: listing is sorted before paging, a put writes a new file and
 * renames it into place, and puts, gets and deletes are serialized so each one sees a
 * body and metadata from the same write. Only the emulator's internals are touched; the
 * adapter under test still talks plain S3 over HTTP.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, unlink } from 'node:fs/promises';
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
  putMetadata(bucket: string, key: string, metadata: Record<string, string>, md5: string): Promise<void>;
  listObjects(bucket: string, options: ListOptions): Promise<ListResult>;
  putObject(object: PutObjectInput): Promise<{ size: number; md5: string }>;
  getObject(bucket: string, key: string, options?: unknown): Promise<unknown>;
  deleteObject(bucket: string, key: string): Promise<void>;
}

function byBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

export function makeS3rverFaithful(server: S3rver): void {
  const store = (server as unknown as { store: FilesystemStore }).store;
  for (const method of ['getResourcePath', 'putMetadata', 'listObjects', 'putObject', 'getObject', 'deleteObject'] as const) {
    if (typeof store?.[method] !== 'function') throw new Error(`s3rver's store has no ${method}(); the patches need updating for this s3rver version`);
  }
  const original = {
    listObjects: store.listObjects.bind(store),
    getObject: store.getObject.bind(store),
    deleteObject: store.deleteObject.bind(store),
  };

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

  store.putObject = (object) =>
    serialized(async () => {
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
        await rename(tempPath, objectPath);
      } catch (error) {
        await unlink(tempPath).catch(() => undefined);
        throw error;
      }
      const digest = md5.digest('hex');
      await store.putMetadata(object.bucket, object.key, object.metadata, digest);
      return { size, md5: digest };
    });

  // getObject resolves once its read stream has opened the file; a later put renames a new
  // file into place, so the open stream keeps reading the body its metadata belongs to.
  store.getObject = (bucket, key, options) => serialized(() => original.getObject(bucket, key, options));
  store.deleteObject = (bucket, key) => serialized(() => original.deleteObject(bucket, key));
}
