import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { IncomingUploads } from '../../src/web/incoming.js';
import { makeTempDir, postFilesInOneRequest, sharedImagesDir } from '../helpers.js';
import { startInProcessWebTier } from './in-process.js';

describe('incoming uploads', () => {
  /** A clock the test moves, and a tracker with a 5 s horizon that counts its wake-ups. */
  const setup = () => {
    let now = 0;
    let woken = 0;
    const uploads = new IncomingUploads(5_000, () => woken++, () => now);
    return { uploads, at: (ms: number) => (now = ms), woken: () => woken };
  };

  it('counts an upload once it is expected to end within the horizon, as the images it will hold', () => {
    const { uploads, at, woken } = setup();
    // 1000 bytes declared, 100-byte files: ten images.
    const upload = uploads.begin(1000, 1000);
    assert.equal(uploads.expected(), 0, 'nothing accepted yet');
    at(1_000);
    upload.accepted(100);
    assert.equal(uploads.expected(), 0, '900 bytes left at 100 bytes/s: 9 s, past the horizon');
    assert.equal(woken(), 0);
    at(2_000);
    upload.accepted(100);
    upload.accepted(100);
    assert.equal(uploads.expected(), 10, '700 bytes left at 150 bytes/s: within 5 s');
    assert.equal(woken(), 1, 'the launch controller is told once, when it starts counting');
    upload.accepted(100);
    assert.equal(woken(), 1);
    upload.end();
    assert.equal(uploads.expected(), 0, 'queued (or failed): no longer arriving');
  });

  it('keeps counting between files as long as the expected end is near, and stops once the upload has stalled', () => {
    const { uploads, at, woken } = setup();
    // The first of twenty 100-byte files arrives 5 ms in: the end is expected at 100 ms.
    const upload = uploads.begin(2000, 1000);
    at(5);
    upload.accepted(100);
    assert.equal(uploads.expected(), 20);
    assert.equal(woken(), 1);
    // The next file is late: judged from the time since the start, the end would now
    // seem 5.7 s away, but the expectation set by the last file still holds.
    at(300);
    assert.equal(uploads.expected(), 20);
    // More than the horizon past its expected end: stalled, a worker would idle out.
    at(100 + 5_001);
    assert.equal(uploads.expected(), 0);
    // It resumes, fast enough to end soon: counted again, and the controller told again.
    for (let i = 0; i < 18; i++) upload.accepted(100);
    assert.equal(uploads.expected(), 20);
    assert.equal(woken(), 2);
  });

  it('adds up uploads, and never counts fewer images than already arrived', () => {
    const { uploads, at } = setup();
    const small = uploads.begin(300, 1000);
    const large = uploads.begin(10_000, 1000);
    at(100);
    small.accepted(100);
    large.accepted(9_000);
    // The small one: 3 images; the large one: 10_000 / 9_000 bytes per image -> 1.
    assert.equal(uploads.expected(), 3 + 1);
    // More bytes than declared (a lying header) still counts what arrived.
    large.accepted(5_000);
    assert.equal(uploads.expected(), 3 + 2);
  });

  it('counts no more images than one request may hold, whatever length it declares', () => {
    const { uploads, at } = setup();
    // 40 files of 20 kB are 80 % of the declared 1 MB: 50 images at that rate, but a
    // request may hold only 45.
    const upload = uploads.begin(1_000_000, 45);
    at(1);
    for (let i = 0; i < 40; i++) upload.accepted(20_000);
    assert.equal(uploads.expected(), 45);
  });

  it('does not count an upload without a declared length, whose end cannot be told', () => {
    const { uploads, at, woken } = setup();
    const upload = uploads.begin(undefined, 1000);
    at(10);
    upload.accepted(100);
    assert.equal(uploads.expected(), 0);
    assert.equal(woken(), 0);
    upload.end();
  });

  it('counts an upload while it arrives and stops the moment its images are queued, so none is counted twice', async () => {
    const temp = await makeTempDir();
    let counting = 0;
    const atQueued: number[] = [];
    let tier: Awaited<ReturnType<typeof startInProcessWebTier>> | undefined;
    try {
      tier = await startInProcessWebTier(temp.dir, [], undefined, {
        onIncoming: () => counting++,
        // The launch controller looks when told: it must then see the images waiting, not also arriving.
        onQueued: () => atQueued.push(tier!.web.incoming.expected()),
      });
      const image = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
      const upload = await postFilesInOneRequest(tier.url, Array.from({ length: 10 }, () => image));
      assert.equal(upload.status, 202);
      assert.equal(counting, 1, 'counted while arriving (a local upload ends well within the idle wait)');
      assert.deepEqual(atQueued, [0]);
      assert.equal(tier.web.incoming.expected(), 0);
    } finally {
      await tier?.stop();
      await temp.cleanup();
    }
  });
});
