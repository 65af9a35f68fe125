import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import sharp from 'sharp';
import { ImageDecodeError } from '../../src/classifier/port.js';
import { INPUT_SIZE, MEAN, STD, planResize, preprocess } from '../../src/classifier/preprocess.js';
import { sharedImagesDir } from '../helpers.js';

const PLANE = INPUT_SIZE * INPUT_SIZE;
const normalized = (value: number, channel: number): number => (value / 255 - MEAN[channel]!) / STD[channel]!;

/** The pixel (x, y) of the crop as the bytes it came from, undoing the normalization. */
function pixelAt(tensor: Float32Array, x: number, y: number): [number, number, number] {
  const at = y * INPUT_SIZE + x;
  const byte = (c: number): number => Math.round((tensor[c * PLANE + at]! * STD[c]! + MEAN[c]!) * 255) || 0; // || 0: no -0
  return [byte(0), byte(1), byte(2)];
}

function solid(width: number, height: number, channels: 3 | 4, background: { r: number; g: number; b: number; alpha?: number }) {
  return sharp({ create: { width, height, channels, background } });
}

function assertChannelsConstant(tensor: Float32Array, rgb: [number, number, number]): void {
  for (let c = 0; c < 3; c++) {
    const want = normalized(rgb[c]!, c);
    for (let i = 0; i < PLANE; i++) {
      if (Math.abs(tensor[c * PLANE + i]! - want) > 1e-5) {
        assert.fail(`channel ${c} value ${i} is ${tensor[c * PLANE + i]}, expected ${want}`);
      }
    }
  }
}

async function assertDecodeError(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof ImageDecodeError, `expected ImageDecodeError, got ${String(error)}`);
    assert.match(error.message, pattern);
    return true;
  });
}

describe('planResize', () => {
  it('makes the shorter side 256, truncating the longer side, and centers the 224 crop', () => {
    assert.deepEqual(planResize(500, 375), { preCrop: null, width: 341, height: 256, crop: { left: 58, top: 16, width: 224, height: 224 } });
    assert.deepEqual(planResize(375, 500), { preCrop: null, width: 256, height: 341, crop: { left: 16, top: 58, width: 224, height: 224 } });
    assert.deepEqual(planResize(100, 100), { preCrop: null, width: 256, height: 256, crop: { left: 16, top: 16, width: 224, height: 224 } });
  });

  it('rounds a half-pixel crop offset to even, as torchvision does', () => {
    // 256 x 339: (339 - 224) / 2 = 57.5 -> 58; 256 x 341: 58.5 -> 58.
    assert.equal(planResize(256, 339).crop.top, 58);
    assert.equal(planResize(256, 341).crop.top, 58);
  });

  it('cuts extreme strips to their central 16:1 band before resizing', () => {
    const plan = planResize(10, 100_000);
    assert.deepEqual(plan.preCrop, { left: 0, top: 49_920, width: 10, height: 160 });
    assert.equal(plan.width, 256);
    assert.equal(plan.height, 4096);
    assert.equal(planResize(100_000, 10).width, 4096);
  });
});

describe('preprocess', () => {
  it('turns a photo into a 1x3x224x224 float32 tensor', async () => {
    const tensor = await preprocess(await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG')));
    assert.ok(tensor instanceof Float32Array);
    assert.equal(tensor.length, 3 * 224 * 224);
    assert.ok(tensor.every(Number.isFinite));
  });

  it('normalizes each channel with the ImageNet mean and std', async () => {
    const png = await solid(300, 200, 3, { r: 255, g: 128, b: 0 }).png().toBuffer();
    assertChannelsConstant(await preprocess(png), [255, 128, 0]);
  });

  it('lays the channels out as planes in RGB order (NCHW)', async () => {
    // Left half red, right half blue: the red plane is high on the left only.
    const left = await solid(150, 200, 3, { r: 255, g: 0, b: 0 }).png().toBuffer();
    const png = await solid(300, 200, 3, { r: 0, g: 0, b: 255 }).composite([{ input: left, left: 0, top: 0 }]).png().toBuffer();
    const tensor = await preprocess(png);
    assert.deepEqual(pixelAt(tensor, 5, 100), [255, 0, 0]);
    assert.deepEqual(pixelAt(tensor, 218, 100), [0, 0, 255]);
  });

  it('flattens transparency onto white', async () => {
    const png = await solid(64, 64, 4, { r: 255, g: 0, b: 0, alpha: 0 }).png().toBuffer();
    assertChannelsConstant(await preprocess(png), [255, 255, 255]);
    const half = await solid(64, 64, 4, { r: 0, g: 0, b: 0, alpha: 0.5 }).png().toBuffer();
    const [r, g, b] = pixelAt(await preprocess(half), 112, 112);
    assert.ok(Math.abs(r - 128) <= 2 && r === g && g === b, `expected mid grey, got ${r},${g},${b}`);
  });

  it('expands greyscale to three equal channels', async () => {
    const grey = await solid(80, 60, 3, { r: 90, g: 90, b: 90 }).greyscale().toColourspace('b-w').jpeg({ quality: 100 }).toBuffer();
    assert.equal((await sharp(grey).metadata()).channels, 1);
    const [r, g, b] = pixelAt(await preprocess(grey), 112, 112);
    assert.ok(Math.abs(r - 90) <= 1 && r === g && g === b, `expected grey 90, got ${r},${g},${b}`);
  });

  it('applies the EXIF orientation before cropping', async () => {
    // Stored 300x200 with red on the left; orientation 6 displays it turned 90 degrees
    // clockwise, so red ends up on top.
    const left = await solid(150, 200, 3, { r: 255, g: 0, b: 0 }).png().toBuffer();
    const jpeg = await solid(300, 200, 3, { r: 0, g: 0, b: 255 })
      .composite([{ input: left, left: 0, top: 0 }])
      .jpeg({ quality: 100 })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    assert.equal((await sharp(jpeg).metadata()).orientation, 6);
    const tensor = await preprocess(jpeg);
    const top = pixelAt(tensor, 112, 5);
    const bottom = pixelAt(tensor, 112, 218);
    assert.ok(top[0] > 200 && top[2] < 60, `top should be red, got ${top.join(',')}`);
    assert.ok(bottom[2] > 200 && bottom[0] < 60, `bottom should be blue, got ${bottom.join(',')}`);
  });

  it('handles tiny images and extreme strips', async () => {
    const tiny = await solid(1, 1, 3, { r: 10, g: 20, b: 30 }).png().toBuffer();
    assertChannelsConstant(await preprocess(tiny), [10, 20, 30]);
    const strip = await solid(2, 5000, 3, { r: 200, g: 100, b: 50 }).png().toBuffer();
    assertChannelsConstant(await preprocess(strip), [200, 100, 50]);
  });

  it('refuses bytes that are not an image', async () => {
    await assertDecodeError(preprocess(Buffer.from('this is not an image, just some text\n')), /cannot decode image: .*unsupported image format/i);
    await assertDecodeError(preprocess(Buffer.alloc(0)), /empty/);
  });

  it('refuses a truncated JPEG', async () => {
    const jpeg = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
    await assertDecodeError(preprocess(jpeg.subarray(0, Math.floor(jpeg.length / 2))), /cannot decode image/);
  });

  it('refuses an image over maxPixels, naming the limit', async () => {
    const png = await solid(300, 200, 3, { r: 1, g: 2, b: 3 }).png().toBuffer();
    await assertDecodeError(preprocess(png, { maxPixels: 59_999 }), /300x200 = 60000 pixels, over the limit of 59999 pixels/);
    assert.equal((await preprocess(png, { maxPixels: 60_000 })).length, 3 * PLANE);
  });
});
