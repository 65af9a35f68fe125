/**
 * Object store on the local filesystem: the embedded default.
 *
 * Layout: bucket B is the folder `<root>/B/`. A key's segments become nested folders, each
 * folder named `<segment>.dir`, and the object itself is the file `<last segment>.obj`.
 * The suffixes let "a" and "a/b" exist side by side as they can in S3 (a plain mapping would
 * need "a" to be a file and a folder at once), and since every folder ends in `.dir` and
 * every object in `.obj`, no key can produce a name that collides with another key's or with
 * the store's own `.tmp` folder.
 *
 * Each object file holds its content type, metadata and body together:
 *
 *   "ICAASOB1" (8 bytes) | header length N (uint32, big-endian) | header JSON (N bytes) | body
 *
 * Keeping them in one file is what makes writes atomic as a whole: a put writes the complete
 * file under `<root>/B/.tmp/`, fsyncs it and renames it over the target. rename() replaces
 * the directory entry in one step, so a reader opens either the old file or the new one, and
 * because files are never modified in place, whatever it opened stays self-consistent while
 * it reads. A sidecar metadata file would need a second rename, leaving a moment in which a
 * reader could pair the new body with the old metadata. A crash leaves at most a file in
 * `.tmp/`, which list() never returns and ensureBucket() removes once it is old.
 *
 * Conditional writes: each write stores a fresh random ETag in the header. Create-if-absent
 * (`ifNoneMatch: '*'`) writes the temp file as usual and then link()s it to the object's
 * name; link() refuses with EEXIST when that name exists, so exactly one of any number of
 * writers, in any number of processes, creates the object. Replace-if-unchanged (`ifMatch`)
 * compares the current ETag and renames under a per-key lock file in `.tmp/` created with
 * O_EXCL; such a writer holds the lock for a read and a rename only, so a lock older than
 * STALE_LOCK_MS was left by a crash and is broken. Unconditional puts and deletes take no
 * lock: they are last-writer-wins, as on S3.
 *
 * Limits: a key segment may be at most 251 bytes (file names are limited to 255 bytes), and
 * on a case-insensitive filesystem keys differing only in case would share a file.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { BigIntStats, Dirent } from 'node:fs';
import { link, mkdir, open, readdir, rename, rmdir, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import {
  InvalidKeyError,
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
import { retry } from '../backoff.js';
import { randomToken } from '../random-token.js';

const MAGIC = Buffer.from('ICAASOB1', 'ascii');
const PREAMBLE_BYTES = MAGIC.length + 4;
const OBJECT_SUFFIX = '.obj';
const DIR_SUFFIX = '.dir';
const TEMP_DIR = '.tmp';
const MAX_SEGMENT_BYTES = 255 - OBJECT_SUFFIX.length;
/** A temp file this old belongs to a writer that crashed, not one still writing. */
const STALE_TEMP_MS = 15 * 60 * 1000;
const DEFAULT_CONTENT_TYPE = 'application/octet-stream';
/**
 * A key lock is held for one read and one rename; one this old belongs to a writer that
 * died. File times are the machine's clock, so they are compared with Date.now() itself.
 */
const STALE_LOCK_MS = 10_000;
/** Longer than STALE_LOCK_MS, so a waiter always outlives a lock left by a crash. */
const LOCK_WAIT_MS = 30_000;

interface Header {
  contentType: string;
  metadata: Record<string, string>;
  /** Absent in objects written before ETags were stored; see fallbackEtag. */
  etag?: string;
}

export class FsObjectStore implements ObjectStore {
  private readonly rootDir: string;

  constructor(rootDir: string) {
    this.rootDir = path.resolve(rootDir);
  }

  async put(bucket: string, key: string, body: Buffer, options: PutOptions = {}): Promise<PutResult> {
    validatePutConditions(options);
    const bucketDir = this.bucketDir(bucket);
    const target = this.objectPath(bucketDir, key);
    const etag = randomToken(16, 'hex');
    const temp = await this.createTempFile(bucket, bucketDir);
    let moved = false;
    try {
      await writeAllAndSync(temp.handle, [encodeHeader(options, etag), body]);
      await temp.handle.close();
      if (options.ifNoneMatch !== undefined) {
        // link() leaves the temp name in place; the finally below removes it.
        if (!(await placeFile(temp.path, target, 'create'))) throw new PreconditionFailedError(bucket, key, 'ifNoneMatch');
      } else if (options.ifMatch !== undefined) {
        const expected = options.ifMatch;
        moved = await withLock(this.lockPath(bucketDir, key), async () => {
          const current = await currentEtag(target);
          if (current !== expected) throw new PreconditionFailedError(bucket, key, 'ifMatch');
          return placeFile(temp.path, target, 'replace');
        });
      } else {
        moved = await placeFile(temp.path, target, 'replace');
      }
      await syncDirectory(path.dirname(target));
      return { etag };
    } finally {
      await temp.handle.close().catch(() => undefined);
      if (!moved) await unlink(temp.path).catch(() => undefined);
    }
  }

  async putStream(bucket: string, key: string, body: Readable, options: StreamPutOptions = {}): Promise<{ size: number }> {
    // Until the loop below reads it, an error of the body must not go unheard (an 'error'
    // event without a listener ends the process); the loop still sees it.
    body.on('error', ignoreError);
    try {
      const bucketDir = this.bucketDir(bucket);
      const target = this.objectPath(bucketDir, key);
      const temp = await this.createTempFile(bucket, bucketDir);
      let moved = false;
      let size = 0;
      try {
        // Gathered into writes of up to WRITE_BYTES: a small image is then one write with its
        // header, not one per chunk the stream happens to deliver.
        let pending: Buffer[] = [encodeHeader(options, randomToken(16, 'hex'))];
        let pendingBytes = pending[0]!.length;
        for await (const chunk of body) {
          const bytes = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
          pending.push(bytes);
          pendingBytes += bytes.length;
          size += bytes.length;
          if (pendingBytes >= WRITE_BYTES) {
            await writeAll(temp.handle, Buffer.concat(pending, pendingBytes));
            pending = [];
            pendingBytes = 0;
          }
        }
        if (pendingBytes > 0) await writeAll(temp.handle, Buffer.concat(pending, pendingBytes));
        await temp.handle.sync();
        await temp.handle.close();
        moved = await placeFile(temp.path, target, 'replace');
        await syncDirectory(path.dirname(target));
      } finally {
        await temp.handle.close().catch(() => undefined);
        if (!moved) await unlink(temp.path).catch(() => undefined);
      }
      return { size };
    } finally {
      body.off('error', ignoreError);
    }
  }

  async getStream(bucket: string, key: string): Promise<StreamedObject | null> {
    const bucketDir = this.bucketDir(bucket);
    const file = this.objectPath(bucketDir, key);
    const handle = await openIfExists(file);
    if (!handle) return null;
    try {
      const { header, size, lastModified, etag, bodyOffset } = await readInfo(handle, file);
      const info = { key, size, contentType: header.contentType, metadata: header.metadata, lastModified, etag };
      if (size === 0) {
        await handle.close();
        return { info, body: Readable.from([]) };
      }
      // The open file stays the version it was when opened, even if a put replaces it now;
      // the stream closes it when it ends or is destroyed.
      return { info, body: handle.createReadStream({ start: bodyOffset, end: bodyOffset + size - 1 }) };
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async get(bucket: string, key: string): Promise<StoredObject | null> {
    const bucketDir = this.bucketDir(bucket);
    const file = this.objectPath(bucketDir, key);
    const handle = await openIfExists(file);
    if (!handle) return null;
    try {
      const stats = await handle.stat({ bigint: true });
      const bytes = await handle.readFile();
      const { header, bodyOffset } = parseHeader(bytes, file);
      const body = bytes.subarray(bodyOffset);
      const etag = header.etag ?? fallbackEtag(stats);
      return { key, size: body.length, contentType: header.contentType, metadata: header.metadata, lastModified: stats.mtime, etag, body };
    } finally {
      await handle.close();
    }
  }

  async head(bucket: string, key: string): Promise<ObjectInfo | null> {
    const bucketDir = this.bucketDir(bucket);
    const file = this.objectPath(bucketDir, key);
    const handle = await openIfExists(file);
    if (!handle) return null;
    try {
      const { header, size, lastModified, etag } = await readInfo(handle, file);
      return { key, size, contentType: header.contentType, metadata: header.metadata, lastModified, etag };
    } finally {
      await handle.close();
    }
  }

  async *list(bucket: string, prefix = ''): AsyncIterable<ListedObject> {
    const bucketDir = this.bucketDir(bucket);
    yield* this.walk(bucketDir, '', prefix);
  }

  async delete(bucket: string, key: string): Promise<void> {
    const bucketDir = this.bucketDir(bucket);
    const file = this.objectPath(bucketDir, key);
    try {
      await unlink(file);
    } catch (error) {
      const code = errorCode(error);
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw error;
    }
    // Empty folders would otherwise pile up and slow every later list().
    for (let dir = path.dirname(file); dir !== bucketDir && dir.startsWith(bucketDir + path.sep); dir = path.dirname(dir)) {
      try {
        await rmdir(dir);
      } catch {
        break;
      }
    }
  }

  async ensureBucket(bucket: string): Promise<void> {
    const bucketDir = this.bucketDir(bucket);
    await mkdir(path.join(bucketDir, TEMP_DIR), { recursive: true });
    await this.removeStaleTempFiles(bucketDir);
  }

  async close(): Promise<void> {
    // Nothing is held open between calls.
  }

  private bucketDir(bucket: string): string {
    validateBucket(bucket);
    const dir = path.resolve(this.rootDir, bucket);
    if (path.dirname(dir) !== this.rootDir) throw new Error(`invalid bucket name ${JSON.stringify(bucket)}`);
    return dir;
  }

  private objectPath(bucketDir: string, key: string): string {
    validateKey(key);
    const segments = key.split('/');
    for (const segment of segments) {
      if (Buffer.byteLength(segment) > MAX_SEGMENT_BYTES) {
        throw new InvalidKeyError(key, `has a path segment longer than ${MAX_SEGMENT_BYTES} bytes, more than a file name can hold`);
      }
    }
    const last = segments.pop() as string;
    const file = path.resolve(bucketDir, ...segments.map((segment) => segment + DIR_SUFFIX), last + OBJECT_SUFFIX);
    // validateKey already rules out escaping; this guards against any gap in it.
    if (!file.startsWith(bucketDir + path.sep)) throw new InvalidKeyError(key, 'resolves outside its bucket');
    return file;
  }

  /** In the temp folder, named by a hash so any key fits in one file name. */
  private lockPath(bucketDir: string, key: string): string {
    return path.join(bucketDir, TEMP_DIR, `${createHash('sha256').update(key).digest('hex')}.lock`);
  }

  private async createTempFile(bucket: string, bucketDir: string): Promise<{ path: string; handle: FileHandle }> {
    const tempDir = path.join(bucketDir, TEMP_DIR);
    const tempPath = path.join(tempDir, `${process.pid}-${randomToken(8, 'hex')}`);
    try {
      return { path: tempPath, handle: await open(tempPath, 'wx') };
    } catch (error) {
      if (errorCode(error) !== 'ENOENT') throw error;
    }
    // The temp folder is missing: either the bucket does not exist, which S3 treats as an
    // error too, or it was created by hand without one.
    if (!(await isDirectory(bucketDir))) {
      throw new Error(`bucket "${bucket}" does not exist (no folder ${bucketDir}); create it with ensureBucket first`);
    }
    await mkdir(tempDir, { recursive: true });
    return { path: tempPath, handle: await open(tempPath, 'wx') };
  }

  private async removeStaleTempFiles(bucketDir: string): Promise<void> {
    const tempDir = path.join(bucketDir, TEMP_DIR);
    const cutoff = Date.now() - STALE_TEMP_MS;
    for (const name of await readdir(tempDir)) {
      const file = path.join(tempDir, name);
      try {
        if ((await stat(file)).mtimeMs < cutoff) await unlink(file);
      } catch {
        // Another process may be cleaning up the same file.
      }
    }
  }

  /**
   * Yields objects under `dir` in ascending key order, reading one folder at a time.
   * Sorting a folder's entries by their key text, with "/" appended for subfolders, gives
   * the global order: every key below subfolder "s" starts with "s/", and no sibling key
   * can fall between two of them because sibling names contain no "/".
   */
  private async *walk(dir: string, keyPrefix: string, prefix: string): AsyncGenerator<ListedObject> {
    let entries: Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (error) {
      const code = errorCode(error);
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw error;
    }
    const children: Array<{ name: string; key: string; sortKey: Buffer; isDir: boolean }> = [];
    for (const entry of entries) {
      if (entry.isDirectory() && entry.name.endsWith(DIR_SUFFIX)) {
        const key = keyPrefix + entry.name.slice(0, -DIR_SUFFIX.length) + '/';
        if (key.startsWith(prefix) || prefix.startsWith(key)) children.push({ name: entry.name, key, sortKey: Buffer.from(key), isDir: true });
      } else if (entry.isFile() && entry.name.endsWith(OBJECT_SUFFIX)) {
        const key = keyPrefix + entry.name.slice(0, -OBJECT_SUFFIX.length);
        if (key.startsWith(prefix)) children.push({ name: entry.name, key, sortKey: Buffer.from(key), isDir: false });
      }
    }
    // Byte order of the UTF-8 text, as S3 lists; JS string order differs above U+FFFF.
    children.sort((a, b) => Buffer.compare(a.sortKey, b.sortKey));
    for (const child of children) {
      const childPath = path.join(dir, child.name);
      if (child.isDir) {
        yield* this.walk(childPath, child.key, prefix);
        continue;
      }
      const handle = await openIfExists(childPath);
      if (!handle) continue; // deleted since the folder was read
      try {
        const { size, lastModified } = await readInfo(handle, childPath);
        yield { key: child.key, size, lastModified };
      } finally {
        await handle.close();
      }
    }
  }
}

/** S3 lower-cases user metadata keys; doing the same here keeps both stores interchangeable. */
function normalizeMetadata(metadata: Record<string, string> | undefined): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [name, value] of Object.entries(metadata ?? {})) result[name.toLowerCase()] = String(value);
  return result;
}

/**
 * Moves a complete temp file to the object's name: 'replace' renames over whatever is there,
 * 'create' links only if the name is free and returns false when it is taken. A concurrent
 * delete prunes empty folders, and may remove the one just created for this object between
 * mkdir and the move; recreating it and trying again is enough.
 */
/** Bytes of a streamed body gathered before they are written. */
const WRITE_BYTES = 256 * 1024;

async function placeFile(tempPath: string, target: string, mode: 'replace' | 'create'): Promise<boolean> {
  // The folder usually exists (many objects share it): made only when the move says it is missing.
  for (let attempt = 1; ; attempt++) {
    try {
      if (mode === 'replace') await rename(tempPath, target);
      else await link(tempPath, target);
      return true;
    } catch (error) {
      const code = errorCode(error);
      if (mode === 'create' && code === 'EEXIST') return false;
      if (code !== 'ENOENT' || attempt >= 5) throw error;
    }
    await mkdir(path.dirname(target), { recursive: true });
  }
}

async function currentEtag(file: string): Promise<string | undefined> {
  const handle = await openIfExists(file);
  if (!handle) return undefined;
  try {
    return (await readInfo(handle, file)).etag;
  } finally {
    await handle.close();
  }
}

/** Runs `work` while holding the lock file; see STALE_LOCK_MS for locks left by a crash. */
async function withLock<T>(lockPath: string, work: () => Promise<T>): Promise<T> {
  const ino = await acquireLock(lockPath);
  try {
    return await work();
  } finally {
    await releaseLock(lockPath, ino);
  }
}

/** Another writer holds the lock; worth waiting for. */
class LockHeld extends Error {}

async function acquireLock(lockPath: string): Promise<bigint> {
  try {
    // Short waits: a lock is held for one small write. Jittered, so writers that found it
    // taken together do not all try again at once.
    return await retry(() => tryLock(lockPath), { initialMs: 1, maxMs: 50, jitter: 'equal', deadlineMs: LOCK_WAIT_MS, retryable: (error) => error instanceof LockHeld });
  } catch (error) {
    if (error instanceof LockHeld) throw new Error(`timed out after ${LOCK_WAIT_MS} ms waiting for the write lock ${lockPath}`);
    throw error;
  }
}

async function tryLock(lockPath: string): Promise<bigint> {
  try {
    const handle = await open(lockPath, 'wx');
    try {
      await handle.writeFile(`${process.pid}\n`);
      return (await handle.stat({ bigint: true })).ino;
    } finally {
      await handle.close();
    }
  } catch (error) {
    if (errorCode(error) !== 'EEXIST') throw error;
  }
  await breakIfStale(lockPath);
  throw new LockHeld(`the write lock ${lockPath} is held`);
}

/**
 * Moves a stale lock aside under a unique name, which only one breaker can do. If what it
 * moved turns out to be a newer lock (another breaker replaced the stale one in between), it
 * links it back, so a live holder keeps its lock.
 */
async function breakIfStale(lockPath: string): Promise<void> {
  let seen: BigIntStats;
  try {
    seen = await stat(lockPath, { bigint: true });
  } catch {
    return;
  }
  if (Date.now() - Number(seen.mtimeMs) < STALE_LOCK_MS) return;
  const aside = `${lockPath}.${randomBytes(6).toString('hex')}.stale`;
  try {
    await rename(lockPath, aside);
  } catch {
    return;
  }
  const moved = await stat(aside, { bigint: true }).catch(() => null);
  if (moved && moved.ino !== seen.ino) await link(aside, lockPath).catch(() => undefined);
  await unlink(aside).catch(() => undefined);
}

async function releaseLock(lockPath: string, ino: bigint): Promise<void> {
  const current = await stat(lockPath, { bigint: true }).catch(() => null);
  // Not ours any more only if we held it past STALE_LOCK_MS and it was broken.
  if (current?.ino === ino) await unlink(lockPath).catch(() => undefined);
}

/** For objects stored without an ETag: the file changes identity on every replacement. */
function fallbackEtag(stats: BigIntStats): string {
  return `${stats.ino.toString(16)}-${stats.size.toString(16)}-${stats.mtimeNs.toString(16)}`;
}

function ignoreError(): void {}

/** The preamble and header of an object file, as they precede the body. */
function encodeHeader(options: PutOptions | StreamPutOptions, etag: string): Buffer {
  const header: Header = { contentType: options.contentType ?? DEFAULT_CONTENT_TYPE, metadata: normalizeMetadata(options.metadata), etag };
  const headerBytes = Buffer.from(JSON.stringify(header), 'utf8');
  const preamble = Buffer.alloc(PREAMBLE_BYTES);
  MAGIC.copy(preamble, 0);
  preamble.writeUInt32BE(headerBytes.length, MAGIC.length);
  return Buffer.concat([preamble, headerBytes]);
}

async function writeAll(handle: FileHandle, chunk: Buffer): Promise<void> {
  let offset = 0;
  while (offset < chunk.length) {
    const { bytesWritten } = await handle.write(chunk, offset, chunk.length - offset);
    offset += bytesWritten;
  }
}

async function writeAllAndSync(handle: FileHandle, chunks: Buffer[]): Promise<void> {
  for (const chunk of chunks) await writeAll(handle, chunk);
  await handle.sync();
}

/**
 * Makes the rename itself durable, so an acknowledged put survives a power cut. Concurrent
 * writers into one folder share flushes: a caller waits for a flush that starts after its
 * call, and every caller that arrives while one runs shares the next one. An upload of many
 * images into one batch folder then costs a few folder flushes, not one per image.
 */
function syncDirectory(dir: string): Promise<void> {
  let state = directorySyncs.get(dir);
  if (!state) {
    state = {};
    directorySyncs.set(dir, state);
  }
  if (state.next) return state.next;
  if (!state.running) return startDirectorySync(dir, state);
  const current = state;
  current.next = current.running!.then(() => {
    current.next = undefined;
    return startDirectorySync(dir, current);
  });
  return current.next;
}

const directorySyncs = new Map<string, { running?: Promise<void>; next?: Promise<void> }>();

function startDirectorySync(dir: string, state: { running?: Promise<void>; next?: Promise<void> }): Promise<void> {
  const running = flushDirectory(dir).finally(() => {
    if (state.running === running) state.running = undefined;
    if (!state.running && !state.next) directorySyncs.delete(dir);
  });
  state.running = running;
  return running;
}

async function flushDirectory(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch {
    // Some platforms cannot open or fsync a directory; the data itself is already synced.
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

async function openIfExists(file: string): Promise<FileHandle | null> {
  try {
    return await open(file, 'r');
  } catch (error) {
    const code = errorCode(error);
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw error;
  }
}

async function isDirectory(dir: string): Promise<boolean> {
  try {
    return (await stat(dir)).isDirectory();
  } catch {
    return false;
  }
}

async function readExactly(handle: FileHandle, length: number, position: number, file: string): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  let offset = 0;
  while (offset < length) {
    const { bytesRead } = await handle.read(buffer, offset, length - offset, position + offset);
    if (bytesRead === 0) throw corrupt(file, 'it ends inside its header');
    offset += bytesRead;
  }
  return buffer;
}

async function readInfo(handle: FileHandle, file: string): Promise<{ header: Header; size: number; lastModified: Date; etag: string; bodyOffset: number }> {
  const stats = await handle.stat({ bigint: true });
  const fileSize = Number(stats.size);
  const preamble = await readExactly(handle, PREAMBLE_BYTES, 0, file);
  const headerLength = checkPreamble(preamble, fileSize, file);
  const header = decodeHeader(await readExactly(handle, headerLength, PREAMBLE_BYTES, file), file);
  const bodyOffset = PREAMBLE_BYTES + headerLength;
  return { header, size: fileSize - bodyOffset, lastModified: stats.mtime, etag: header.etag ?? fallbackEtag(stats), bodyOffset };
}

function parseHeader(bytes: Buffer, file: string): { header: Header; bodyOffset: number } {
  const headerLength = checkPreamble(bytes, bytes.length, file);
  const bodyOffset = PREAMBLE_BYTES + headerLength;
  return { header: decodeHeader(bytes.subarray(PREAMBLE_BYTES, bodyOffset), file), bodyOffset };
}

function checkPreamble(bytes: Buffer, fileSize: number, file: string): number {
  if (bytes.length < PREAMBLE_BYTES || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) throw corrupt(file, 'it does not start with the object marker');
  const headerLength = bytes.readUInt32BE(MAGIC.length);
  if (PREAMBLE_BYTES + headerLength > fileSize) throw corrupt(file, 'its header is longer than the file');
  return headerLength;
}

function decodeHeader(bytes: Buffer, file: string): Header {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw corrupt(file, 'its header is not valid JSON');
  }
  const header = parsed as Partial<Header> | null;
  if (!header || typeof header.contentType !== 'string' || typeof header.metadata !== 'object' || header.metadata === null) {
    throw corrupt(file, 'its header lacks a content type or metadata');
  }
  const decoded: Header = { contentType: header.contentType, metadata: { ...header.metadata } };
  if (typeof header.etag === 'string' && header.etag !== '') decoded.etag = header.etag;
  return decoded;
}

function corrupt(file: string, reason: string): Error {
  return new Error(`object file ${file} is not a valid stored object: ${reason}`);
}

function errorCode(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null && 'code' in error ? String((error as { code: unknown }).code) : undefined;
}
