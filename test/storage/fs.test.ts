import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { FsObjectStore } from '../../src/storage/fs.js';
import { InvalidKeyError, PreconditionFailedError } from '../../src/storage/port.js';
import { makeTempDir, waitFor } from '../helpers.js';

const createScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'create-process.js');
import { invalidKeys, objectStoreContract } from './contract.js';

objectStoreContract('fs', async () => {
  const temp = await makeTempDir('icaas-fs-store-');
  const store = new FsObjectStore(path.join(temp.dir, 'data'));
  return {
    store,
    async cleanup() {
      await store.close();
      await temp.cleanup();
    },
  };
});

/** Every file and folder under `dir` with its size and content, to prove nothing changed. */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const result = new Map<string, string>();
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    const full = path.join(entry.parentPath, entry.name);
    result.set(path.relative(dir, full), entry.isFile() ? (await readFile(full)).toString('base64') : entry.isDirectory() ? 'dir' : 'other');
  }
  return result;
}

describe('FsObjectStore on disk', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  let root: string;
  let store: FsObjectStore;

  before(async () => {
    temp = await makeTempDir('icaas-fs-store-');
    root = path.join(temp.dir, 'root');
    store = new FsObjectStore(root);
  });
  after(async () => {
    await store.close();
    await temp.cleanup();
  });

  it('a write that crashed midway is not listed and does not disturb the object', async () => {
    await store.ensureBucket('crash');
    await store.put('crash', 'images/k.png', Buffer.from('complete body'), { contentType: 'image/png' });
    // What a writer leaves when it dies before its rename: a partial file in the temp folder.
    const tempDir = path.join(root, 'crash', '.tmp');
    await writeFile(path.join(tempDir, '999-deadbeef'), Buffer.from('ICAASOB1\u0000\u0000\u0000\u0040{"contentType":"image/pn'));
    await writeFile(path.join(tempDir, '999-cafebabe'), Buffer.alloc(0));
    const listed = [];
    for await (const object of store.list('crash')) listed.push(object.key);
    assert.deepEqual(listed, ['images/k.png']);
    const object = await store.get('crash', 'images/k.png');
    assert.equal(object?.body.toString(), 'complete body');
    assert.equal(object?.contentType, 'image/png');
    // Later writes still work alongside the leftovers.
    await store.put('crash', 'images/k.png', Buffer.from('newer body'));
    assert.equal((await store.get('crash', 'images/k.png'))?.body.toString(), 'newer body');
  });

  it('ensureBucket removes stale temp files and keeps ones a live writer may still own', async () => {
    await store.ensureBucket('stale');
    const tempDir = path.join(root, 'stale', '.tmp');
    const stale = path.join(tempDir, '1-stale');
    const fresh = path.join(tempDir, '1-fresh');
    await writeFile(stale, 'left by a crash');
    await writeFile(fresh, 'being written');
    const anHourAgo = new Date(Date.now() - 60 * 60 * 1000);
    await utimes(stale, anHourAgo, anHourAgo);
    await store.ensureBucket('stale');
    assert.deepEqual((await readdir(tempDir)).sort(), ['1-fresh']);
  });

  it('no successful put leaves a temp file behind', async () => {
    await store.ensureBucket('tidy');
    await Promise.all(Array.from({ length: 10 }, (_, i) => store.put('tidy', `k/${i % 3}`, Buffer.alloc(10_000, i))));
    assert.deepEqual(await readdir(path.join(root, 'tidy', '.tmp')), []);
  });

  it('a streamed put that fails midway leaves no temp file; one that succeeds neither', async () => {
    await store.ensureBucket('streams');
    const source = new PassThrough();
    const putting = store.putStream('streams', 'k', source);
    // More than the store gathers before a write, so part of the body is on disk.
    source.write(Buffer.alloc(300_000, 1));
    await waitFor('the temp file to receive the body', async () => {
      const names = await readdir(path.join(root, 'streams', '.tmp'));
      return names.length === 1 && (await stat(path.join(root, 'streams', '.tmp', names[0]!))).size > 0;
    });
    source.destroy(new Error('cut off'));
    await assert.rejects(putting, /cut off/);
    assert.deepEqual(await readdir(path.join(root, 'streams', '.tmp')), []);
    assert.deepEqual(await readdir(path.join(root, 'streams')), ['.tmp']);
    await store.putStream('streams', 'k', Readable.from([Buffer.from('whole')]));
    assert.deepEqual(await readdir(path.join(root, 'streams', '.tmp')), []);
  });

  it('keys cannot read or write outside the root', async () => {
    // A file next to the root and one at the root, where "../" keys would lead.
    const outside = path.join(temp.dir, 'outside');
    await mkdir(outside, { recursive: true });
    await writeFile(path.join(outside, 'passwd'), 'secret outside the root');
    await writeFile(path.join(temp.dir, 'passwd'), 'secret next to the root');
    await store.ensureBucket('guarded');
    await store.put('guarded', 'ok', Buffer.from('fine'));
    const untouched = await snapshot(temp.dir);

    const attacks = [
      '../../etc/passwd',
      '../../passwd',
      '../../outside/passwd',
      '../../../outside/passwd',
      'a/../../../passwd',
      '/etc/passwd',
      path.join(temp.dir, 'passwd'),
      '..\\..\\passwd',
      ...invalidKeys,
    ];
    for (const key of attacks) {
      await assert.rejects(store.put('guarded', key, Buffer.from('overwritten')), InvalidKeyError, `put ${key.slice(0, 40)}`);
      await assert.rejects(store.get('guarded', key), InvalidKeyError, `get ${key.slice(0, 40)}`);
      await assert.rejects(store.head('guarded', key), InvalidKeyError, `head ${key.slice(0, 40)}`);
      await assert.rejects(store.delete('guarded', key), InvalidKeyError, `delete ${key.slice(0, 40)}`);
    }
    for (const bucket of ['..', '../outside', 'outside/..', '.tmp']) {
      await assert.rejects(store.put(bucket, 'passwd', Buffer.from('overwritten')), /invalid bucket name/);
      await assert.rejects(store.ensureBucket(bucket), /invalid bucket name/);
    }
    assert.deepEqual(await snapshot(temp.dir), untouched, 'nothing inside or outside the root changed');
  });

  it('keys that look like the store\'s own file names do not collide', async () => {
    await store.ensureBucket('names');
    const keys = ['x', 'x.obj', 'x.dir', 'x.obj/y', 'x.dir/y', 'x/y', '.tmp', '.tmp/z', 'x.obj.dir'];
    for (const key of keys) await store.put('names', key, Buffer.from(`body ${key}`));
    for (const key of keys) assert.equal((await store.get('names', key))?.body.toString(), `body ${key}`, key);
    const listed = [];
    for await (const object of store.list('names')) listed.push(object.key);
    assert.deepEqual(listed, [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))));
  });

  it('a key segment too long for a file name is rejected as an invalid key', async () => {
    await store.ensureBucket('long');
    await assert.rejects(store.put('long', 'a/' + 'x'.repeat(252), Buffer.from('x')), InvalidKeyError);
    await store.put('long', 'a/' + 'x'.repeat(251), Buffer.from('fits'));
    assert.equal((await store.get('long', 'a/' + 'x'.repeat(251)))?.body.toString(), 'fits');
  });

  it('deleting the last object under a folder removes the empty folders', async () => {
    await store.ensureBucket('prune');
    await store.put('prune', 'deep/er/still/k', Buffer.from('x'));
    await store.put('prune', 'deep/sibling', Buffer.from('y'));
    await store.delete('prune', 'deep/er/still/k');
    assert.deepEqual((await readdir(path.join(root, 'prune'))).sort(), ['.tmp', 'deep.dir']);
    assert.deepEqual(await readdir(path.join(root, 'prune', 'deep.dir')), ['sibling.obj']);
    await store.delete('prune', 'deep/sibling');
    assert.deepEqual(await readdir(path.join(root, 'prune')), ['.tmp']);
    assert.ok((await stat(path.join(root, 'prune'))).isDirectory(), 'the bucket folder itself stays');
  });

  it('a file that is not a stored object is reported, not misread', async () => {
    await store.ensureBucket('foreign');
    await writeFile(path.join(root, 'foreign', 'notes.obj'), 'just some text');
    await assert.rejects(store.get('foreign', 'notes'), /not a valid stored object/);
    await assert.rejects(store.head('foreign', 'notes'), /not a valid stored object/);
  });

  it('create-if-absent holds across 4 processes: every key is created exactly once', async () => {
    // On a busy machine one writer can finish before the others start; such a round proves
    // nothing about racing, so rounds repeat (each in a fresh bucket) until one really raced.
    // 500 keys a round keep each writer at it long enough for the others to be scheduled.
    const ROUNDS = 8;
    let raced = false;
    for (let round = 1; round <= ROUNDS && !raced; round++) {
      const bucket = `racing-${round}`;
      const wonBy = await raceCreates(bucket, 500);
      raced = new Set([...wonBy.values()].flat()).size > 1;
    }
    assert.ok(raced, `in ${ROUNDS} rounds the processes never really raced (one writer won every key each time)`);
  });

  async function raceCreates(bucket: string, keyCount: number): Promise<Map<string, string[]>> {
    await store.ensureBucket(bucket);
    const writers = Array.from({ length: 4 }, (_, i) => {
      const child = spawn(process.execPath, [createScript, root, bucket, `writer-${i}`, String(keyCount)], { stdio: ['pipe', 'pipe', 'pipe'] });
      const events: Array<{ event: string; won?: string[] }> = [];
      let stderr = '';
      let exitCode: number | null | undefined;
      child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      createInterface({ input: child.stdout! }).on('line', (line) => events.push(JSON.parse(line) as { event: string; won?: string[] }));
      child.on('exit', (code) => (exitCode = code));
      return { name: `writer-${i}`, child, events, stderr: () => stderr, exitCode: () => exitCode };
    });
    try {
      await waitFor('every writer to start', () => writers.every((w) => w.events.some((e) => e.event === 'ready')));
      for (const writer of writers) writer.child.stdin!.write('go\n');
      const done = await waitFor('every writer to finish', () => {
        for (const w of writers) if (w.exitCode() !== undefined && w.exitCode() !== 0) throw new Error(`${w.name} failed: ${w.stderr()}`);
        const reports = writers.map((w) => w.events.find((e) => e.event === 'done'));
        return reports.every(Boolean) ? reports : null;
      });
      const wonBy = new Map<string, string[]>();
      done.forEach((report, i) => {
        for (const key of report?.won ?? []) wonBy.set(key, [...(wonBy.get(key) ?? []), `writer-${i}`]);
      });
      for (let k = 0; k < keyCount; k++) {
        const claimants = wonBy.get(`k${k}`) ?? [];
        assert.equal(claimants.length, 1, `k${k} was created by exactly one process (${claimants.join(', ') || 'none'})`);
        const object = await store.get(bucket, `k${k}`);
        assert.equal(object?.body.toString(), claimants[0], `k${k} holds its creator's body`);
      }
      assert.deepEqual(await readdir(path.join(root, bucket, '.tmp')), [], 'the losers left no temp files');
      return wonBy;
    } finally {
      for (const w of writers) if (w.exitCode() === undefined) w.child.kill();
    }
  }

  it('a lock left by a crashed writer is broken once stale, and a fresh one is waited for', async () => {
    await store.ensureBucket('locks');
    const { etag } = await store.put('locks', 'k', Buffer.from('one'));
    const lockFile = path.join(root, 'locks', '.tmp', `${createHash('sha256').update('k').digest('hex')}.lock`);
    await writeFile(lockFile, '99999\n');
    const aMinuteAgo = new Date(Date.now() - 60_000);
    await utimes(lockFile, aMinuteAgo, aMinuteAgo);
    const second = await store.put('locks', 'k', Buffer.from('two'), { ifMatch: etag });
    assert.equal((await store.get('locks', 'k'))?.body.toString(), 'two', 'a stale lock does not wedge the key');
    assert.deepEqual(await readdir(path.join(root, 'locks', '.tmp')), [], 'the stale lock is gone');

    // A live lock: the conditional put waits for it rather than running alongside.
    await writeFile(lockFile, `${process.pid}\n`);
    let settled = false;
    const waiting = store.put('locks', 'k', Buffer.from('three'), { ifMatch: second.etag }).finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(settled, false, 'the put waits while the lock is held');
    assert.equal((await store.get('locks', 'k'))?.body.toString(), 'two');
    await unlink(lockFile);
    await waiting;
    assert.equal((await store.get('locks', 'k'))?.body.toString(), 'three');
  });

  it('objects written before etags were stored still get one, and it changes on replace', async () => {
    await store.ensureBucket('legacy');
    const header = Buffer.from(JSON.stringify({ contentType: 'text/plain', metadata: {} }));
    const preamble = Buffer.alloc(12);
    Buffer.from('ICAASOB1').copy(preamble);
    preamble.writeUInt32BE(header.length, 8);
    const file = path.join(root, 'legacy', 'old.obj');
    await writeFile(file, Buffer.concat([preamble, header, Buffer.from('old body')]));
    const info = await store.head('legacy', 'old');
    assert.ok(info?.etag, 'a legacy object has an etag');
    assert.equal((await store.get('legacy', 'old'))?.etag, info.etag, 'get and head agree');
    await assert.rejects(store.put('legacy', 'old', Buffer.from('x'), { ifMatch: 'wrong' }), PreconditionFailedError);
    const replaced = await store.put('legacy', 'old', Buffer.from('new body'), { ifMatch: info.etag });
    assert.notEqual(replaced.etag, info.etag);
  });
});
