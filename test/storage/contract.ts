/**
 * The object-store contract: every adapter runs these same tests unchanged, so code written
 * against the port behaves the same on the file store and on S3.
 *
 * Metadata names are lower-case throughout because S3 lower-cases them (see src/storage/s3.ts).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { InvalidKeyError, PreconditionFailedError, type ObjectStore } from '../../src/storage/port.js';

export interface ContractFixture {
  store: ObjectStore;
  cleanup(): Promise<void>;
}

/** Keys that must be refused: each could escape the bucket or is not a plain path. */
export const invalidKeys: readonly string[] = [
  '../x',
  'a/../../b',
  '/abs',
  'a//b',
  '',
  '.',
  'a/./b',
  'a/',
  'a\u0000b',
  'a\nb',
  'a\u007fb',
  'a\\b',
  '..\\..\\x',
  'x'.repeat(1025),
];

export interface ContractOptions {
  /**
   * Cases an emulator cannot run because it differs from S3 there, each with the reason;
   * those cases are reported as skipped with it. Never for the adapters icaas deploys on.
   */
  emulatorDifferences?: {
    /** Puts with If-None-Match: * or If-Match: <etag>, which S3 honours since 2024. */
    conditionalWrites?: string;
  };
}

export function objectStoreContract(adapterName: string, setup: () => Promise<ContractFixture>, options: ContractOptions = {}): void {
  const conditional = { skip: options.emulatorDifferences?.conditionalWrites ?? false };
  describe(`object store contract: ${adapterName}`, () => {
    let fixture: ContractFixture | undefined;
    let bucketCount = 0;
    const runId = randomBytes(3).toString('hex');

    const store = (): ObjectStore => {
      if (!fixture) throw new Error('the store was not set up');
      return fixture.store;
    };
    /** A bucket of its own for each test, so tests cannot see each other's objects. */
    const freshBucket = async (): Promise<string> => {
      const bucket = `contract-${runId}-${++bucketCount}`;
      await store().ensureBucket(bucket);
      return bucket;
    };
    const missingBucket = (): string => `contract-${runId}-missing-${++bucketCount}`;
    const listKeys = async (bucket: string, prefix?: string): Promise<string[]> => {
      const keys: string[] = [];
      for await (const object of store().list(bucket, prefix)) keys.push(object.key);
      return keys;
    };

    before(async () => {
      fixture = await setup();
    });
    after(async () => {
      await fixture?.cleanup();
    });

    it('ensureBucket creates an empty bucket and can be repeated, also concurrently', async () => {
      const bucket = `contract-${runId}-${++bucketCount}`;
      await Promise.all([store().ensureBucket(bucket), store().ensureBucket(bucket)]);
      await store().ensureBucket(bucket);
      assert.deepEqual(await listKeys(bucket), []);
      await store().put(bucket, 'k', Buffer.from('v'));
      await store().ensureBucket(bucket);
      assert.deepEqual(await listKeys(bucket), ['k'], 'ensureBucket on an existing bucket keeps its objects');
    });

    it('put then get returns the same bytes, content type and metadata', async () => {
      const bucket = await freshBucket();
      // Zero bytes and bytes that are not valid UTF-8 catch any text conversion on the way.
      const body = Buffer.concat([Buffer.from([0, 0, 1, 0, 255, 254, 0, 0xc3, 0x28, 0]), randomBytes(4096), Buffer.alloc(16)]);
      const startedAt = Date.now();
      await store().put(bucket, 'images/cat.png', body, {
        contentType: 'image/png',
        metadata: { 'original-name': 'cat photo.png', 'batch-id': 'b-42' },
      });
      const object = await store().get(bucket, 'images/cat.png');
      assert.ok(object, 'the object is found');
      assert.equal(object.key, 'images/cat.png');
      assert.ok(Buffer.isBuffer(object.body), 'the body is a Buffer');
      assert.ok(object.body.equals(body), 'the body round-trips byte for byte');
      assert.equal(object.size, body.length);
      assert.equal(object.contentType, 'image/png');
      assert.deepEqual(object.metadata, { 'original-name': 'cat photo.png', 'batch-id': 'b-42' });
      assertRecent(object.lastModified, startedAt);
    });

    it('an empty body round-trips', async () => {
      const bucket = await freshBucket();
      await store().put(bucket, 'empty', Buffer.alloc(0), { contentType: 'text/plain' });
      const object = await store().get(bucket, 'empty');
      assert.ok(object);
      assert.equal(object.body.length, 0);
      assert.equal(object.size, 0);
      assert.equal(object.contentType, 'text/plain');
      assert.equal((await store().head(bucket, 'empty'))?.size, 0);
    });

    it('put without options stores application/octet-stream and no metadata', async () => {
      const bucket = await freshBucket();
      await store().put(bucket, 'plain', Buffer.from('hello'));
      const object = await store().get(bucket, 'plain');
      assert.ok(object);
      assert.equal(object.contentType, 'application/octet-stream');
      assert.deepEqual(object.metadata, {});
      assert.equal(object.body.toString(), 'hello');
    });

    it('head returns size, content type and metadata without the body', async () => {
      const bucket = await freshBucket();
      const body = randomBytes(1234);
      const startedAt = Date.now();
      await store().put(bucket, 'results/r.json', body, { contentType: 'application/json', metadata: { status: 'ok' } });
      const info = await store().head(bucket, 'results/r.json');
      assert.ok(info);
      assert.equal(info.key, 'results/r.json');
      assert.equal(info.size, 1234);
      assert.equal(info.contentType, 'application/json');
      assert.deepEqual(info.metadata, { status: 'ok' });
      assertRecent(info.lastModified, startedAt);
      assert.equal('body' in info, false, 'head carries no body');
    });

    it('get and head of a missing key, or in a missing bucket, return null', async () => {
      const bucket = await freshBucket();
      await store().put(bucket, 'a/b', Buffer.from('x'));
      assert.equal(await store().get(bucket, 'nope'), null);
      assert.equal(await store().head(bucket, 'nope'), null);
      assert.equal(await store().get(bucket, 'a'), null, 'a prefix of a key is not an object');
      assert.equal(await store().head(bucket, 'a'), null);
      assert.equal(await store().get(bucket, 'a/b/c'), null, 'a key below an object is not an object');
      const missing = missingBucket();
      assert.equal(await store().get(missing, 'k'), null);
      assert.equal(await store().head(missing, 'k'), null);
    });

    it('overwriting replaces body, content type and metadata', async () => {
      const bucket = await freshBucket();
      await store().put(bucket, 'k', randomBytes(10_000), { contentType: 'image/jpeg', metadata: { attempt: '1', extra: 'yes' } });
      await store().put(bucket, 'k', Buffer.from('short'), { contentType: 'text/plain', metadata: { attempt: '2' } });
      let object = await store().get(bucket, 'k');
      assert.ok(object);
      assert.equal(object.body.toString(), 'short', 'the old, longer body leaves nothing behind');
      assert.equal(object.contentType, 'text/plain');
      assert.deepEqual(object.metadata, { attempt: '2' }, 'metadata is replaced, not merged');
      await store().put(bucket, 'k', Buffer.from('bare'));
      object = await store().get(bucket, 'k');
      assert.ok(object);
      assert.equal(object.contentType, 'application/octet-stream');
      assert.deepEqual(object.metadata, {});
      assert.deepEqual(await listKeys(bucket), ['k']);
    });

    it('list returns every key once, in ascending order, including nested keys', async () => {
      const bucket = await freshBucket();
      const other = await freshBucket();
      await store().put(other, 'a/other-bucket', Buffer.from('not mine'));
      // "a", "a/b" and "a/b/c" coexist as in S3; "-", "." and "0" sort around "/".
      const keys = ['b', 'a/b/c', 'a', 'a-b', 'a/b', 'a.b', 'a0', 'B', 'z/y/x/w', 'a/b-c', 'a/b/c/d', '0', 'a/ä'];
      for (const key of keys) await store().put(bucket, key, Buffer.from(`body of ${key}`));
      const expected = [...keys].sort(byBytes);
      const listed: Array<{ key: string; size: number; lastModified: Date }> = [];
      for await (const object of store().list(bucket)) listed.push(object);
      assert.deepEqual(
        listed.map((object) => object.key),
        expected,
      );
      for (const object of listed) {
        assert.equal(object.size, Buffer.byteLength(`body of ${object.key}`), `size of ${object.key}`);
        assert.ok(object.lastModified instanceof Date && !Number.isNaN(object.lastModified.getTime()), `lastModified of ${object.key}`);
      }
      assert.deepEqual(await listKeys(bucket, ''), expected, 'an empty prefix lists everything');
    });

    it('list with a prefix returns only the keys that start with it', async () => {
      const bucket = await freshBucket();
      const keys = ['a', 'a/b', 'a/b/c', 'a/bc', 'a/c', 'ab', 'b/a', 'inputs/2024/x.jpg', 'inputs/2025/y.jpg', 'inputs-old/z.jpg'];
      for (const key of keys) await store().put(bucket, key, Buffer.from(key));
      assert.deepEqual(await listKeys(bucket, 'a'), ['a', 'a/b', 'a/b/c', 'a/bc', 'a/c', 'ab']);
      assert.deepEqual(await listKeys(bucket, 'a/'), ['a/b', 'a/b/c', 'a/bc', 'a/c']);
      assert.deepEqual(await listKeys(bucket, 'a/b'), ['a/b', 'a/b/c', 'a/bc']);
      assert.deepEqual(await listKeys(bucket, 'a/b/'), ['a/b/c']);
      assert.deepEqual(await listKeys(bucket, 'inputs/'), ['inputs/2024/x.jpg', 'inputs/2025/y.jpg']);
      assert.deepEqual(await listKeys(bucket, 'inputs'), ['inputs-old/z.jpg', 'inputs/2024/x.jpg', 'inputs/2025/y.jpg']);
      assert.deepEqual(await listKeys(bucket, 'inputs/2025/y.jpg'), ['inputs/2025/y.jpg']);
      assert.deepEqual(await listKeys(bucket, 'nothing'), []);
      assert.deepEqual(await listKeys(bucket, '../'), []);
    });

    it('list of a missing bucket yields nothing', async () => {
      assert.deepEqual(await listKeys(missingBucket()), []);
    });

    it('delete removes only that object; deleting a missing key or bucket is fine', async () => {
      const bucket = await freshBucket();
      for (const key of ['a', 'a/b', 'a/b/c']) await store().put(bucket, key, Buffer.from(key));
      await store().delete(bucket, 'a/b');
      assert.equal(await store().get(bucket, 'a/b'), null);
      assert.equal(await store().head(bucket, 'a/b'), null);
      assert.deepEqual(await listKeys(bucket), ['a', 'a/b/c']);
      assert.equal((await store().get(bucket, 'a/b/c'))?.body.toString(), 'a/b/c');
      await store().delete(bucket, 'a/b/c');
      assert.deepEqual(await listKeys(bucket), ['a']);
      await store().delete(bucket, 'a/b/c');
      await store().delete(bucket, 'never/was');
      await store().delete(missingBucket(), 'k');
      assert.deepEqual(await listKeys(bucket), ['a']);
      await store().put(bucket, 'a/b/c', Buffer.from('again'));
      assert.equal((await store().get(bucket, 'a/b/c'))?.body.toString(), 'again', 'a deleted key can be written again');
    });

    it('put into a missing bucket fails with an error that names the bucket', async () => {
      const missing = missingBucket();
      await assert.rejects(store().put(missing, 'k', Buffer.from('x')), (error: Error) => {
        assert.match(error.message, new RegExp(missing));
        return true;
      });
      assert.equal(await store().get(missing, 'k'), null);
    });

    it('invalid keys are rejected with InvalidKeyError by every operation and write nothing', async () => {
      const bucket = await freshBucket();
      const other = await freshBucket();
      await store().put(bucket, 'sentinel', Buffer.from('mine'));
      await store().put(other, 'victim', Buffer.from('theirs'));
      // Keys that would reach the other bucket in a store that joined paths naively.
      const keys = [...invalidKeys, `../${other}/victim`, `../${other}/new`, `a/../../${other}/victim`];
      for (const key of keys) {
        const label = JSON.stringify(key.slice(0, 40));
        await assert.rejects(store().put(bucket, key, Buffer.from('evil')), InvalidKeyError, `put ${label}`);
        await assert.rejects(store().get(bucket, key), InvalidKeyError, `get ${label}`);
        await assert.rejects(store().head(bucket, key), InvalidKeyError, `head ${label}`);
        await assert.rejects(store().delete(bucket, key), InvalidKeyError, `delete ${label}`);
        await assert.rejects(store().putStream(bucket, key, Readable.from([Buffer.from('evil')])), InvalidKeyError, `putStream ${label}`);
        await assert.rejects(store().getStream(bucket, key), InvalidKeyError, `getStream ${label}`);
      }
      assert.deepEqual(await listKeys(bucket), ['sentinel']);
      assert.deepEqual(await listKeys(other), ['victim']);
      assert.equal((await store().get(other, 'victim'))?.body.toString(), 'theirs');
      assert.equal((await store().get(bucket, 'sentinel'))?.body.toString(), 'mine');
    });

    it('invalid bucket names are rejected', async () => {
      for (const name of ['..', '../x', 'a/b', 'UPPER', 'x', '', '.hidden', 'a..b']) {
        await assert.rejects(store().put(name, 'k', Buffer.from('x')), /invalid bucket name/, `put to ${JSON.stringify(name)}`);
        await assert.rejects(store().get(name, 'k'), /invalid bucket name/, `get from ${JSON.stringify(name)}`);
        await assert.rejects(store().ensureBucket(name), /invalid bucket name/, `ensureBucket ${JSON.stringify(name)}`);
      }
    });

    it('long, deep and non-ASCII keys round-trip', async () => {
      const bucket = await freshBucket();
      const segment = 'segment-'.padEnd(100, 'x');
      let longKey = Array.from({ length: 11 }, () => segment).join('/');
      longKey = longKey.slice(0, 1024); // exactly the 1024-byte maximum
      assert.equal(Buffer.byteLength(longKey), 1024);
      const keys = [longKey, 'données/ключ/日本語.txt', 'with space/and+plus=equals&amp?q#hash', 'a/b/c/d/e/f/g/h/i/j/k'];
      for (const key of keys) await store().put(bucket, key, Buffer.from(key), { metadata: { length: String(key.length) } });
      for (const key of keys) {
        const object = await store().get(bucket, key);
        assert.equal(object?.body.toString(), key, `get ${key.slice(0, 40)}`);
        assert.deepEqual(object?.metadata, { length: String(key.length) });
      }
      assert.deepEqual(await listKeys(bucket), [...keys].sort(byBytes));
    });

    it('a 5 MB object round-trips intact', async () => {
      const bucket = await freshBucket();
      const body = randomBytes(5 * 1024 * 1024);
      await store().put(bucket, 'large/blob.bin', body, { contentType: 'application/octet-stream', metadata: { kind: 'large' } });
      const info = await store().head(bucket, 'large/blob.bin');
      assert.equal(info?.size, body.length);
      const object = await store().get(bucket, 'large/blob.bin');
      assert.ok(object);
      assert.equal(object.size, body.length);
      assert.ok(object.body.equals(body), 'the large body round-trips byte for byte');
      const listed = [];
      for await (const entry of store().list(bucket, 'large/')) listed.push(entry);
      assert.deepEqual(
        listed.map((entry) => [entry.key, entry.size]),
        [['large/blob.bin', body.length]],
      );
    });

    it('putStream then get and getStream return the same bytes, content type and metadata', async () => {
      const bucket = await freshBucket();
      // Chunks of odd sizes, one of them empty, and bytes that are not valid UTF-8.
      const chunks = [Buffer.from([0, 0xff, 0xc3, 0x28]), randomBytes(1), Buffer.alloc(0), randomBytes(70_001), randomBytes(3)];
      const body = Buffer.concat(chunks);
      const startedAt = Date.now();
      const { size } = await store().putStream(bucket, 'streamed/a.jpg', Readable.from(chunks), { contentType: 'image/jpeg', metadata: { name: 'a.jpg' } });
      assert.equal(size, body.length);
      const object = await store().get(bucket, 'streamed/a.jpg');
      assert.ok(object, 'the object is found');
      assert.ok(object.body.equals(body), 'get returns the streamed bytes');
      assert.equal(object.contentType, 'image/jpeg');
      assert.deepEqual(object.metadata, { name: 'a.jpg' });
      const streamed = await store().getStream(bucket, 'streamed/a.jpg');
      assert.ok(streamed);
      assert.deepEqual({ ...streamed.info, lastModified: undefined }, { key: 'streamed/a.jpg', size: body.length, contentType: 'image/jpeg', metadata: { name: 'a.jpg' }, lastModified: undefined, etag: object.etag });
      assertRecent(streamed.info.lastModified, startedAt);
      assert.ok((await readAll(streamed.body)).equals(body), 'getStream returns the same bytes');
      // A put's object streams out too, and an empty body streams in and out.
      await store().put(bucket, 'put', Buffer.from('put bytes'), { contentType: 'text/plain' });
      assert.equal((await readAll((await store().getStream(bucket, 'put'))!.body)).toString(), 'put bytes');
      assert.deepEqual(await store().putStream(bucket, 'empty', Readable.from([])), { size: 0 });
      const empty = await store().getStream(bucket, 'empty');
      assert.equal(empty?.info.size, 0);
      assert.equal(empty.info.contentType, 'application/octet-stream');
      assert.equal((await readAll(empty.body)).length, 0);
    });

    it('getStream of a missing key, or in a missing bucket, returns null; putStream into a missing bucket fails naming it', async () => {
      const bucket = await freshBucket();
      assert.equal(await store().getStream(bucket, 'nope'), null);
      const missing = missingBucket();
      assert.equal(await store().getStream(missing, 'k'), null);
      await assert.rejects(store().putStream(missing, 'k', Readable.from([Buffer.from('x')])), new RegExp(missing));
      assert.equal(await store().head(missing, 'k'), null);
    });

    it('a 50 MB object streams in and out intact', async () => {
      const bucket = await freshBucket();
      const total = 50 * 1024 * 1024;
      const written = createHash('sha256');
      const source = Readable.from((function* () {
        for (let sent = 0; sent < total; sent += 1024 * 1024) {
          const chunk = randomBytes(Math.min(1024 * 1024, total - sent));
          written.update(chunk);
          yield chunk;
        }
      })());
      assert.deepEqual(await store().putStream(bucket, 'large/streamed.bin', source, { metadata: { kind: 'large' } }), { size: total });
      const expected = written.digest('hex');
      assert.equal((await store().head(bucket, 'large/streamed.bin'))?.size, total);
      const streamed = await store().getStream(bucket, 'large/streamed.bin');
      assert.ok(streamed);
      assert.equal(streamed.info.size, total);
      assert.deepEqual(streamed.info.metadata, { kind: 'large' });
      const read = createHash('sha256');
      let bytes = 0;
      for await (const chunk of streamed.body) {
        read.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
      }
      assert.equal(bytes, total);
      assert.equal(read.digest('hex'), expected, 'the streamed body round-trips byte for byte');
    });

    it('a source stream that fails midway stores nothing, and leaves an older object whole', async () => {
      const bucket = await freshBucket();
      await store().put(bucket, 'kept', Buffer.from('the older object'), { contentType: 'text/plain', metadata: { version: '1' } });
      // 20 MB: more than one part of a multipart upload, so a half-sent upload is abandoned.
      for (const key of ['kept', 'fresh']) {
        const source = new PassThrough();
        const putting = store().putStream(bucket, key, source, { contentType: 'image/png', metadata: { version: '2' } });
        for (let i = 0; i < 20; i++) {
          if (!source.write(randomBytes(1024 * 1024))) await new Promise((resolve) => source.once('drain', resolve));
        }
        // While the body streams in, readers see the older object or none, never part of the new one.
        assert.equal((await store().get(bucket, key))?.body.toString() ?? null, key === 'kept' ? 'the older object' : null);
        const during = await store().getStream(bucket, key);
        during?.body.destroy();
        assert.equal(during?.info.size ?? null, key === 'kept' ? 16 : null);
        source.destroy(new Error('the client went away'));
        await assert.rejects(putting, /the client went away/, `putStream of ${key} rejects with the source's error`);
      }
      const kept = await store().get(bucket, 'kept');
      assert.equal(kept?.body.toString(), 'the older object');
      assert.equal(kept.contentType, 'text/plain');
      assert.deepEqual(kept.metadata, { version: '1' });
      assert.equal(await store().get(bucket, 'fresh'), null);
      assert.equal(await store().head(bucket, 'fresh'), null);
      assert.equal(await store().getStream(bucket, 'fresh'), null);
      assert.deepEqual(await listKeys(bucket), ['kept']);
    });

    it('concurrent puts of one key end with one complete object; readers never see a mix', async () => {
      const bucket = await freshBucket();
      // Different lengths and fill bytes per writer, so a torn or mixed body cannot pass.
      const writers = Array.from({ length: 8 }, (_, i) => ({
        body: Buffer.alloc(256 * 1024 + i * 4099, i + 1),
        contentType: `application/x-writer-${i}`,
        metadata: { writer: String(i) },
      }));
      const checkWhole = (object: Awaited<ReturnType<ObjectStore['get']>>, when: string): void => {
        if (object === null) return;
        const writer = Number(object.metadata.writer);
        const expected = writers[writer];
        assert.ok(expected, `${when}: metadata names a writer (${JSON.stringify(object.metadata)})`);
        assert.equal(object.contentType, expected.contentType, `${when}: content type matches the metadata's writer`);
        assert.equal(object.body.length, expected.body.length, `${when}: body length matches writer ${writer}`);
        assert.ok(object.body.equals(expected.body), `${when}: body is writer ${writer}'s, whole`);
        assert.equal(object.size, expected.body.length);
      };
      let writing = true;
      let reads = 0;
      // Reads while the writes are in flight; a failure is kept for after the writes settle.
      const reader = (async (): Promise<unknown> => {
        try {
          while (writing) checkWhole(await store().get(bucket, 'contended'), `read ${++reads}`);
          return undefined;
        } catch (error) {
          return error;
        }
      })();
      try {
        await Promise.all(writers.map((w) => store().put(bucket, 'contended', w.body, { contentType: w.contentType, metadata: w.metadata })));
      } finally {
        writing = false;
      }
      const readFailure = await reader;
      if (readFailure) throw readFailure;
      assert.ok(reads > 0, 'at least one read overlapped the writes');
      const final = await store().get(bucket, 'contended');
      assert.ok(final, 'one of the writes is stored');
      checkWhole(final, 'final read');
      const info = await store().head(bucket, 'contended');
      assert.equal(info?.size, final.size);
      assert.deepEqual(await listKeys(bucket), ['contended']);
    });

    it('create-if-absent: of 20 concurrent writers exactly one wins, the others change nothing', conditional, async () => {
      const bucket = await freshBucket();
      const outcomes = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) =>
          store().put(bucket, 'claims/x', Buffer.from(`writer ${i}`), { ifNoneMatch: '*', contentType: 'text/plain', metadata: { writer: String(i) } }),
        ),
      );
      const winners = outcomes.flatMap((outcome, i) => (outcome.status === 'fulfilled' ? [i] : []));
      assert.equal(winners.length, 1, `exactly one writer creates the object (winners: ${winners.join(', ')})`);
      for (const outcome of outcomes) {
        if (outcome.status === 'rejected') assert.ok(outcome.reason instanceof PreconditionFailedError, `a loser gets PreconditionFailedError, not ${String(outcome.reason)}`);
      }
      const winner = winners[0] as number;
      const object = await store().get(bucket, 'claims/x');
      assert.equal(object?.body.toString(), `writer ${winner}`, 'the stored object is the winner\'s');
      assert.deepEqual(object?.metadata, { writer: String(winner) });
      assert.equal(object?.etag, (outcomes[winner] as PromiseFulfilledResult<{ etag: string }>).value.etag, 'the winner\'s put returned the stored etag');
      await assert.rejects(store().put(bucket, 'claims/x', Buffer.from('late'), { ifNoneMatch: '*' }), PreconditionFailedError, 'a later create fails too');
      assert.equal((await store().get(bucket, 'claims/x'))?.body.toString(), `writer ${winner}`);
      assert.deepEqual(await listKeys(bucket), ['claims/x'], 'losers leave nothing behind');
      await store().delete(bucket, 'claims/x');
      await store().put(bucket, 'claims/x', Buffer.from('again'), { ifNoneMatch: '*' });
      assert.equal((await store().get(bucket, 'claims/x'))?.body.toString(), 'again', 'a deleted key can be created again');
    });

    it('replace-if-unchanged: the current etag succeeds, a stale or unknown one fails, and the etag changes on replace', conditional, async () => {
      const bucket = await freshBucket();
      const first = await store().put(bucket, 'r', Buffer.from('one'), { contentType: 'text/plain' });
      assert.equal(typeof first.etag, 'string');
      assert.ok(first.etag.length > 0, 'put returns an etag');
      assert.equal((await store().head(bucket, 'r'))?.etag, first.etag, 'head reports the etag put returned');
      assert.equal((await store().get(bucket, 'r'))?.etag, first.etag, 'get reports the etag put returned');

      const second = await store().put(bucket, 'r', Buffer.from('two'), { ifMatch: first.etag, contentType: 'text/plain' });
      assert.notEqual(second.etag, first.etag, 'the etag changes on replace');
      assert.equal((await store().head(bucket, 'r'))?.etag, second.etag);
      assert.equal((await store().get(bucket, 'r'))?.body.toString(), 'two');

      await assert.rejects(store().put(bucket, 'r', Buffer.from('stale'), { ifMatch: first.etag }), PreconditionFailedError, 'a stale etag fails');
      await assert.rejects(store().put(bucket, 'r', Buffer.from('made up'), { ifMatch: '"0123456789abcdef0123456789abcdef"' }), PreconditionFailedError);
      await assert.rejects(store().put(bucket, 'absent', Buffer.from('x'), { ifMatch: second.etag }), PreconditionFailedError, 'ifMatch on a missing key fails');
      assert.equal(await store().head(bucket, 'absent'), null);
      const kept = await store().get(bucket, 'r');
      assert.equal(kept?.body.toString(), 'two', 'a failed condition changes nothing');
      assert.equal(kept?.etag, second.etag);

      const third = await store().put(bucket, 'r', Buffer.from('three'));
      assert.notEqual(third.etag, second.etag, 'an unconditional replace changes the etag too');
      await assert.rejects(store().put(bucket, 'r', Buffer.from('stale again'), { ifMatch: second.etag }), PreconditionFailedError);
    });

    it('replace-if-unchanged: of 20 concurrent writers holding the same etag exactly one wins', conditional, async () => {
      const bucket = await freshBucket();
      const { etag } = await store().put(bucket, 'shared', Buffer.from('original'));
      const outcomes = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) => store().put(bucket, 'shared', Buffer.from(`writer ${i}`), { ifMatch: etag })),
      );
      const winners = outcomes.flatMap((outcome, i) => (outcome.status === 'fulfilled' ? [i] : []));
      assert.equal(winners.length, 1, `exactly one writer replaces the object (winners: ${winners.join(', ')})`);
      for (const outcome of outcomes) {
        if (outcome.status === 'rejected') assert.ok(outcome.reason instanceof PreconditionFailedError, `a loser gets PreconditionFailedError, not ${String(outcome.reason)}`);
      }
      assert.equal((await store().get(bucket, 'shared'))?.body.toString(), `writer ${winners[0]}`);
    });

    it('conditional puts refuse bad conditions and missing buckets without writing', async () => {
      const bucket = await freshBucket();
      await assert.rejects(store().put(bucket, 'k', Buffer.from('x'), { ifNoneMatch: 'etag' as '*' }), /ifNoneMatch must be '\*'/);
      await assert.rejects(store().put(bucket, 'k', Buffer.from('x'), { ifNoneMatch: '*', ifMatch: 'e' }), /cannot be combined/);
      await assert.rejects(store().put(bucket, 'k', Buffer.from('x'), { ifMatch: '' }), /non-empty/);
      assert.deepEqual(await listKeys(bucket), []);
      const missing = missingBucket();
      await assert.rejects(store().put(missing, 'k', Buffer.from('x'), { ifNoneMatch: '*' }), (error: Error) => {
        assert.ok(!(error instanceof PreconditionFailedError), 'a missing bucket is not a failed condition');
        assert.match(error.message, new RegExp(missing));
        return true;
      });
    });
  });
}

export async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Ascending order of the keys' UTF-8 bytes, as S3 lists them. */
export function byBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Stores may round to the second (S3 does), and clocks may differ a little. */
function assertRecent(date: Date, startedAt: number): void {
  assert.ok(date instanceof Date && !Number.isNaN(date.getTime()), 'lastModified is a valid Date');
  assert.ok(date.getTime() >= startedAt - 60_000 && date.getTime() <= Date.now() + 60_000, `lastModified ${date.toISOString()} is about now`);
}
