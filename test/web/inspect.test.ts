import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { displayName, inspectImage, sniffImageType, stem } from '../../src/web/inspect.js';
import { sharedImagesDir } from '../helpers.js';

const limits = { maxFileBytes: 5 * 1024 * 1024, maxPixels: 10_000_000 };

describe('upload inspection', async () => {
  const jpeg = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
  const png = await sharp({ create: { width: 8, height: 8, channels: 4, background: { r: 1, g: 2, b: 3, alpha: 0.5 } } }).png().toBuffer();

  it('sniffs types from bytes, not names', async () => {
    assert.equal(sniffImageType(jpeg), 'image/jpeg');
    assert.equal(sniffImageType(png), 'image/png');
    assert.equal(sniffImageType(await sharp(png).webp().toBuffer()), 'image/webp');
    assert.equal(sniffImageType(await sharp(png).gif().toBuffer()), 'image/gif');
    assert.equal(sniffImageType(Buffer.from('hello, this is text')), null);
    assert.equal(sniffImageType(Buffer.alloc(0)), null);
  });

  it('accepts real images with their size', async () => {
    const result = await inspectImage(jpeg, limits);
    assert.ok(result.ok);
    assert.equal(result.contentType, 'image/jpeg');
    assert.ok(result.width > 0 && result.height > 0);
  });

  it('rejects empty, text, oversized, truncated and too-many-pixel files with reasons', async () => {
    const reason = async (bytes: Buffer, truncated = false, over = limits) => {
      const result = await inspectImage(bytes, over, truncated);
      assert.equal(result.ok, false);
      return (result as { reason: string }).reason;
    };
    assert.match(await reason(Buffer.alloc(0)), /empty/);
    assert.match(await reason(Buffer.from('GIF? no, plain text')), /not an image/);
    assert.match(await reason(jpeg, true), /larger than the 5\.0 MiB limit/);
    assert.match(await reason(jpeg.subarray(0, Math.floor(jpeg.length / 2))), /truncated or corrupt/);
    assert.match(await reason(jpeg.subarray(0, 40)), /header|truncated|corrupt/);
    const big = await sharp({ create: { width: 4000, height: 3000, channels: 3, background: '#888' } }).jpeg().toBuffer();
    assert.match(await reason(big, false, { maxFileBytes: limits.maxFileBytes, maxPixels: 1_000_000 }), /4000x3000 pixels, over the limit of 1,000,000/);
  });

  it('makes display names safe and short, keeping unicode', () => {
    assert.equal(displayName('cat.jpg'), 'cat.jpg');
    assert.equal(displayName('a\u0000b\u001b[31m.jpg'), 'ab[31m.jpg');
    assert.equal(displayName('..\\..\\etc\\passwd'), '../../etc/passwd');
    assert.equal(displayName(''), 'unnamed');
    assert.equal(displayName(undefined), 'unnamed');
    assert.equal(displayName('猫の写真.png'), '猫の写真.png');
    const long = displayName(`${'x'.repeat(1000)}.jpeg`);
    assert.equal([...long].length, 255);
    assert.ok(long.endsWith('….jpeg'));
  });

  it('takes the stem of a name for the synchronous answer', () => {
    assert.equal(stem('test_0.JPEG'), 'test_0');
    assert.equal(stem('dir/sub/photo.v2.png'), 'photo.v2');
    assert.equal(stem('.hidden'), '.hidden');
    assert.equal(stem('noext'), 'noext');
  });
});
