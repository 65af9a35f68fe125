/**
 * The upload reads the next file while the store makes earlier ones durable, and a write
 * that fails after its file was read still fails the whole upload and leaves nothing.
 */
import { describe, it, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { loadConfig } from '../../src/config.js';
import { openRuntime } from '../../src/runtime.js';
import type { ObjectStore, PutOptions } from '../../src/storage/port.js';
import { startWebTier } from '../../src/web/index.js';
import { makeTempDir, sharedImagesDir } from '../helpers.js';

describe('upload store commits', async () => {
  const temp = await makeTempDir();
  const { config } = loadConfig({ argv: ['--host', '127.0.0.1', '--port', '0', '--data', temp.dir], env: {} });
  const runtime = await openRuntime(config);
  const real: ObjectStore = runtime.store;
  let inFlight = 0;
  let mostInFlight = 0;
  let holdMs = 0;
  let failNth = 0;
  let writes = 0;
  // The real store, with each write held after its body is read, as a slow disk flush or an
  // S3 round trip would hold it; optionally one write fails then.
  const slowPutStream = async (bucket: string, key: string, body: Readable, options?: PutOptions) => {
    const nth = ++writes;
    const result = await real.putStream(bucket, key, body, options);
    inFlight++;
    mostInFlight = Math.max(mostInFlight, inFlight);
    try {
      await new Promise((resolve) => setTimeout(resolve, holdMs));
      if (nth === failNth) throw new Error('the disk failed while flushing');
      return result;
    } finally {
      inFlight--;
    }
  };
  runtime.store = Object.assign(Object.create(real) as ObjectStore, { putStream: slowPutStream });
  const web = await startWebTier(runtime);
  after(async () => {
    await web.stop();
    await runtime.close();
    await temp.cleanup();
  });
  beforeEach(() => {
    mostInFlight = 0;
    writes = 0;
  });

  const image = await readFile(path.join(sharedImagesDir, 'n01530575_brambling.JPEG'));
  const upload = (count: number) => {
    const form = new FormData();
    for (let i = 0; i < count; i++) form.append('images', new Blob([image]), `${i}.jpg`);
    return fetch(`${web.url}/api/images`, { method: 'POST', body: form });
  };
  const storedKeys = async () => {
    const keys: string[] = [];
    for await (const object of real.list(config.inputBucket)) keys.push(object.key);
    return keys;
  };

  it('overlaps the writes of many files, within a bound', async () => {
    holdMs = 40;
    failNth = 0;
    const response = await upload(40);
    const accepted = await response.json() as { batchId: string; images: { id: string }[] };
    assert.equal(response.status, 202, JSON.stringify(accepted));
    assert.ok(mostInFlight > 1, `writes never overlapped (at most ${mostInFlight} at once)`);
    assert.ok(mostInFlight <= 17, `${mostInFlight} writes at once, over the bound`);
    // Every image is stored and listed in its batch.
    const batch = await (await fetch(`${web.url}/api/batches/${accepted.batchId}`)).json() as { images: { id: string }[] };
    assert.equal(batch.images.length, 40);
    const keys = await storedKeys();
    for (const { id } of accepted.images) assert.ok(keys.some((key) => key.includes(id)), `image ${id} is not in the input bucket`);
  });

  it('fails the upload when a write fails after its file was read, and leaves nothing', async () => {
    const before = await storedKeys();
    holdMs = 30;
    failNth = 5;
    const response = await upload(12);
    assert.equal(response.status, 500);
    assert.doesNotMatch(await response.text(), new RegExp(temp.dir), 'no path of the machine in the answer');
    assert.deepEqual((await storedKeys()).filter((key) => !before.includes(key)), [], 'every write of the failed upload was removed, the late ones too');
  });
});
