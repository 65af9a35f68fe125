import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import sharp from 'sharp';
import { ImageDecodeError } from '../../src/classifier/port.js';
import { preprocess } from '../../src/classifier/preprocess.js';
import { displayName, ImageInspector, inspectImage, sniffImageType, stem } from '../../src/web/inspect.js';
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

  /** One image per accepted format, 37 x 23 so width and height cannot be swapped unnoticed. */
  const formats = async () => {
    const base = sharp({ create: { width: 37, height: 23, channels: 3, background: '#3a7' } });
    return {
      'image/jpeg': await base.clone().jpeg().toBuffer(),
      'image/jpeg (progressive, with EXIF)': await base.clone().withMetadata({ exif: { IFD0: { Copyright: 'x'.repeat(3000) } } }).jpeg({ progressive: true }).toBuffer(),
      'image/png': await base.clone().png().toBuffer(),
      'image/gif': await base.clone().gif().toBuffer(),
      'image/webp': await base.clone().webp().toBuffer(),
      'image/webp (lossless)': await base.clone().webp({ lossless: true }).toBuffer(),
      'image/webp (extended)': await base.clone().ensureAlpha(0.5).webp().withMetadata({ exif: { IFD0: { Copyright: 'y' } } }).toBuffer(),
      'image/tiff': await base.clone().tiff().toBuffer(),
      'image/avif': await base.clone().avif().toBuffer(),
    };
  };

  it('reads the size of every accepted format from its header, in chunks of any size', async () => {
    for (const [format, bytes] of Object.entries(await formats())) {
      for (const chunkBytes of [1, 7, 4096, bytes.length]) {
        const chunks = Array.from({ length: Math.ceil(bytes.length / chunkBytes) }, (_, i) => bytes.subarray(i * chunkBytes, (i + 1) * chunkBytes));
        const inspector = new ImageInspector(limits);
        const passed: Buffer[] = [];
        await pipeline(Readable.from(chunks), inspector, new Writable({ write: (chunk: Buffer, _encoding, callback) => { passed.push(chunk); callback(); } }));
        assert.equal(await inspector.contentType, format.split(' ')[0], format);
        assert.deepEqual([inspector.width, inspector.height], [37, 23], `${format} in chunks of ${chunkBytes}`);
        assert.ok(Buffer.concat(passed).equals(bytes), `${format}: every byte is passed on unchanged`);
      }
    }
  });

  it('refuses a JPEG, PNG or WebP cut short anywhere, and an image over the pixel limit in any format', async () => {
    for (const [format, bytes] of Object.entries(await formats())) {
      const result = await inspectImage(bytes, { ...limits, maxPixels: 37 * 23 - 1 });
      assert.ok(!result.ok && /37x23 pixels, over the limit of 850 pixels/.test(result.reason), `${format}: ${JSON.stringify(result)}`);
      if (!/jpeg|png|webp/.test(format)) continue;
      for (const cut of [1, 2, 10, 20, 30, Math.floor(bytes.length / 2), bytes.length - 2, bytes.length - 1]) {
        const cutShort = await inspectImage(bytes.subarray(0, cut), limits);
        assert.ok(!cutShort.ok && /header cannot be read|truncated or corrupt|not an image/.test(cutShort.reason), `${format} cut at ${cut} of ${bytes.length}: ${JSON.stringify(cutShort)}`);
      }
    }
    // Bytes after the end of a JPEG (cameras append data there) are fine.
    assert.ok((await inspectImage(Buffer.concat([jpeg, Buffer.from('trailing data')]), limits)).ok);
  });

  it('follows a JPEG scan past stuffed bytes, restart markers and fill bytes to its end, however it is split', async () => {
    // A real JPEG's headers with a crafted scan: the check is structural, so these bytes
    // need not decode. 0xFF00 is a stuffed 0xFF, 0xFFD0-D7 restart markers, and extra 0xFFs
    // before a marker are fill; only then does the next marker (here EOI) end the scan.
    const base = await sharp({ create: { width: 37, height: 23, channels: 3, background: '#3a7' } }).jpeg().toBuffer();
    const sos = base.indexOf(Buffer.from([0xff, 0xda]));
    const scanStart = sos + 2 + base.readUInt16BE(sos + 2);
    const scan = Buffer.from([0x12, 0xff, 0x00, 0x34, 0xff, 0xd3, 0x56, 0xff, 0xff, 0x00, 0xff, 0xd7, 0xff, 0xff, 0xff, 0xd0, 0x77, 0xff, 0x00]);
    const crafted = (tail: number[]) => Buffer.concat([base.subarray(0, scanStart), scan, Buffer.from(tail)]);
    const inChunks = async (bytes: Buffer, chunkBytes: number) => {
      const chunks = Array.from({ length: Math.ceil(bytes.length / chunkBytes) }, (_, i) => bytes.subarray(i * chunkBytes, (i + 1) * chunkBytes));
      const inspector = new ImageInspector(limits);
      await pipeline(Readable.from(chunks), inspector, new Writable({ write: (_chunk, _encoding, callback) => callback() }));
      return [inspector.width, inspector.height];
    };
    for (const chunkBytes of [1, 2, 3, 5, 4096]) {
      assert.deepEqual(await inChunks(crafted([0xff, 0xd9]), chunkBytes), [37, 23], `ends at EOI, in chunks of ${chunkBytes}`);
      // Fill bytes before the EOI, and a second scan after a marker segment, end it the same way.
      assert.deepEqual(await inChunks(crafted([0xff, 0xff, 0xff, 0xd9]), chunkBytes), [37, 23], `fill before EOI, in chunks of ${chunkBytes}`);
      const secondScan = [...base.subarray(sos, scanStart)];
      assert.deepEqual(await inChunks(crafted([...secondScan, 0x01, 0xff, 0x00, 0xff, 0xd9]), chunkBytes), [37, 23], `two scans, in chunks of ${chunkBytes}`);
      // Without its EOI, or ending on a lone 0xFF, or on a restart marker, the file is cut short.
      for (const tail of [[], [0xff], [0xff, 0xff], [0xff, 0xd5], [0xff, 0x00]]) {
        await assert.rejects(inChunks(crafted(tail), chunkBytes), /truncated or corrupt/, `tail ${JSON.stringify(tail)} in chunks of ${chunkBytes}`);
      }
    }
    // A second start-of-image where the scan's end marker should be is refused.
    assert.match(JSON.stringify(await inspectImage(crafted([0xff, 0xd8, 0xff, 0xd9]), limits)), /second start-of-image/);
  });

  it('holds only a few bytes of a file at a time, however large it is', async () => {
    // A 12 MB JPEG-looking stream whose size arrives in the header and whose end never does.
    const header = jpeg.subarray(0, 2000);
    const inspector = new ImageInspector({ maxFileBytes: 64 * 1024 * 1024, maxPixels: limits.maxPixels });
    let most = 0;
    const consumer = new Writable({
      highWaterMark: 1,
      write: (_chunk, _encoding, callback) => {
        most = Math.max(most, inspector.writableLength + inspector.readableLength);
        callback();
      },
    });
    const chunks = function* () {
      yield header;
      for (let i = 0; i < 200; i++) yield Buffer.alloc(64 * 1024, 0x11);
    };
    await assert.rejects(pipeline(Readable.from(chunks()), inspector, consumer), /truncated or corrupt/);
    assert.deepEqual([inspector.width, inspector.height], [500, 375]);
    assert.ok(most <= 256 * 1024, `at most ${most} bytes were buffered in the inspector`);
  });

  it('leaves corrupt pixel data to the worker, whose decoder says what is wrong', async () => {
    // The structure is whole, so the header check passes; the compressed pixels are garbage.
    const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#abc' } }).png({ compressionLevel: 0 }).toBuffer();
    const corrupt = Buffer.from(png);
    const data = corrupt.indexOf('IDAT') + 4;
    corrupt.fill(0x5a, data + 2, data + 200);
    assert.ok((await inspectImage(corrupt, limits)).ok, 'passes the header check');
    await assert.rejects(preprocess(corrupt), (error: Error) => error instanceof ImageDecodeError && /cannot decode image: .+/.test(error.message));
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
