import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IncomingUploads } from '../../src/web/incoming.js';

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
});
