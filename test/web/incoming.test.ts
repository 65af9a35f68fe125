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
    const upload = uploads.begin(1000);
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
    const small = uploads.begin(300);
    const large = uploads.begin(10_000);
    at(100);
    small.accepted(100);
    large.accepted(9_000);
    // The small one: 3 images; the large one: 10_000 / 9_000 bytes per image -> 1.
    assert.equal(uploads.expected(), 3 + 1);
    // More bytes than declared (a lying header) still counts what arrived.
    large.accepted(5_000);
    assert.equal(uploads.expected(), 3 + 2);
  });

  it('does not count an upload without a declared length, whose end cannot be told', () => {
    const { uploads, at, woken } = setup();
    const upload = uploads.begin(undefined);
    at(10);
    upload.accepted(100);
    assert.equal(uploads.expected(), 0);
    assert.equal(woken(), 0);
    upload.end();
  });
});
