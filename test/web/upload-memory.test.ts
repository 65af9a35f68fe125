/**
 * One request of many large files costs the web tier a bounded amount of memory: files
 * stream to the store, checked on the way, and are never held whole. A real `icaas web`
 * process receives 600 MB in one request; its peak resident memory (VmHWM, the kernel's
 * high-water mark, so nothing depends on when it is sampled) must stay far below that.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import { makeTempDir, postFilesInOneRequest, startWebProcess } from '../helpers.js';

const FILES = 100;
const PEAK_LIMIT_BYTES = 300 * 1024 * 1024;

async function peakResidentBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = /^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1];
  assert.ok(kib, 'the kernel reports VmHWM');
  return Number(kib) * 1024;
}

describe('memory of one large upload', { skip: process.platform !== 'linux' && 'needs /proc' }, async () => {
  const temp = await makeTempDir('icaas-upload-memory-');
  after(() => temp.cleanup());

  it(`stays bounded: ${FILES} files of 6 MB in one request to a real web tier`, async (t) => {
    // Noise does not compress: about 6 MB as a JPEG, a valid image the inspector walks to its end.
    const [width, height] = [2400, 1800];
    const image = await sharp(randomBytes(width * height * 3), { raw: { width, height, channels: 3 } }).jpeg({ quality: 100 }).toBuffer();
    assert.ok(image.length > 5_500_000, `the image is ${image.length} bytes`);
    const web = await startWebProcess(['--host', '127.0.0.1', '--data', temp.dir]);
    const { child, url } = web;
    try {
      const before = await peakResidentBytes(child.pid!);
      const { status, body } = await postFilesInOneRequest(url, Array.from({ length: FILES }, () => image));
      assert.equal(status, 202, JSON.stringify(body).slice(0, 500));
      assert.equal(body.images?.length, FILES);
      assert.deepEqual(body.rejected, []);
      assert.ok(body.images!.every((accepted) => accepted.size === image.length));
      const peak = await peakResidentBytes(child.pid!);
      const uploaded = image.length * FILES;
      t.diagnostic(`peak resident memory ${(peak / 2 ** 20).toFixed(0)} MiB (${(before / 2 ** 20).toFixed(0)} MiB at start) for ${(uploaded / 2 ** 20).toFixed(0)} MiB uploaded`);
      assert.ok(peak < PEAK_LIMIT_BYTES, `peak resident memory ${(peak / 2 ** 20).toFixed(0)} MiB (${(before / 2 ** 20).toFixed(0)} MiB before) for ${(uploaded / 2 ** 20).toFixed(0)} MiB uploaded; limit ${PEAK_LIMIT_BYTES / 2 ** 20} MiB`);
    } finally {
      await web.stop();
    }
  });
});
