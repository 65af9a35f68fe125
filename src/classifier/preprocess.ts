/**
 * Image bytes to the model's input tensor, following the torchvision ImageNet convention
 * the default model was trained with (see ../shared/models/README.md): orient, drop alpha,
 * resize the shorter side to 256, center-crop 224x224, normalize, lay out as NCHW.
 */
import type { Metadata, OutputInfo } from 'sharp';
import { sharp } from './native.js';
import { ImageDecodeError } from './port.js';

export const INPUT_SIZE = 224;
export const RESIZE_SHORTER = 256;
export const CHANNELS = 3;
export const MEAN = [0.485, 0.456, 0.406] as const;
export const STD = [0.229, 0.224, 0.225] as const;
/** Matches the configuration default (--max-pixels). */
export const DEFAULT_MAX_PIXELS = 50_000_000;
/**
 * Longest side the intermediate (resized, not yet cropped) image may have. Resizing a
 * 1 x 100000 strip so its shorter side is 256 would otherwise ask for 256 x 25.6 million
 * pixels; beyond this bound the source is first cut down to its central part.
 */
const MAX_RESIZED_LONG_SIDE = 16 * RESIZE_SHORTER;

export type ResizeKernel = 'nearest' | 'linear' | 'cubic' | 'mitchell' | 'lanczos2' | 'lanczos3';

export interface PreprocessOptions {
  /** Largest accepted image, in pixels (width x height); larger ones are refused before decoding. */
  maxPixels?: number;
  /**
   * Resampling kernel. Measured top-1 / top-5 on the 100 shared ImageNet images:
   * see DEFAULT_KERNEL.
   */
  kernel?: ResizeKernel;
  /**
   * Let libjpeg/libwebp decode at 1/2, 1/4 or 1/8 scale when the image is much larger
   * than the target. Faster and lighter on big photos; slightly different pixels.
   */
  fastShrinkOnLoad?: boolean;
}

/**
 * Chosen by measurement (`node dist/bench/classify.js --compare-kernels`) on the 100 shared
 * ImageNet images; top-1 / top-5 / mean negative log-likelihood of the true class:
 * lanczos2 76/93/0.951, lanczos3 (sharp's default) 76/93/0.978, cubic 74/93/0.970,
 * mitchell 75/93/0.982, linear 73/93/1.024 (an antialiased PIL-style bilinear, which is
 * torchvision's own resize, scored the same 73/93), nearest 63/89/1.299. Shrink-on-load
 * changed none of these. Apart from nearest the kernels are within a few images of each
 * other (moving the crop by half a pixel shifts top-1 by two), so this is a weak
 * preference: lanczos2 ties for the best top-1 and has the lowest NLL.
 */
export const DEFAULT_KERNEL: ResizeKernel = 'lanczos2';

/**
 * Per-channel lookup tables from a byte to its normalized value, computed once: the
 * per-pixel loop then does one table read per value instead of a divide and subtract.
 */
const LUT: readonly Float32Array[] = MEAN.map((mean, c) => {
  const table = new Float32Array(256);
  const std = STD[c]!;
  for (let v = 0; v < 256; v++) table[v] = (v / 255 - mean) / std;
  return table;
});

export interface ResizePlan {
  /** Region of the (oriented) source kept before resizing, or null for all of it. */
  preCrop: { left: number; top: number; width: number; height: number } | null;
  /** Size after resizing: the shorter side is RESIZE_SHORTER. */
  width: number;
  height: number;
  /** The centered INPUT_SIZE x INPUT_SIZE crop of the resized image. */
  crop: { left: number; top: number; width: number; height: number };
}

/**
 * Where to resize and crop an image of the given (oriented) size. The arithmetic follows
 * torchvision: the longer side is truncated (`int(256 * long / short)`) and the crop
 * offset is rounded half to even, as Python's `round` does.
 */
function roundHalfEven(value: number): number {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

export function planResize(width: number, height: number): ResizePlan {
  if (!(width >= 1 && height >= 1)) throw new RangeError(`image size must be positive, got ${width}x${height}`);
  let preCrop: ResizePlan['preCrop'] = null;
  let w = width;
  let h = height;
  // Keep at most a 16:1 central band of extreme strips; see MAX_RESIZED_LONG_SIDE.
  const maxRatio = MAX_RESIZED_LONG_SIDE / RESIZE_SHORTER;
  if (w > h * maxRatio) {
    const keep = h * maxRatio;
    preCrop = { left: Math.floor((w - keep) / 2), top: 0, width: keep, height: h };
    w = keep;
  } else if (h > w * maxRatio) {
    const keep = w * maxRatio;
    preCrop = { left: 0, top: Math.floor((h - keep) / 2), width: w, height: keep };
    h = keep;
  }
  const [rw, rh] = w <= h
    ? [RESIZE_SHORTER, Math.floor((RESIZE_SHORTER * h) / w)]
    : [Math.floor((RESIZE_SHORTER * w) / h), RESIZE_SHORTER];
  return {
    preCrop,
    width: rw,
    height: rh,
    crop: { left: roundHalfEven((rw - INPUT_SIZE) / 2), top: roundHalfEven((rh - INPUT_SIZE) / 2), width: INPUT_SIZE, height: INPUT_SIZE },
  };
}

function decodeError(error: unknown): ImageDecodeError {
  const reason = error instanceof Error ? error.message : String(error);
  return new ImageDecodeError(`cannot decode image: ${reason}`, { cause: error });
}

/**
 * Decodes `image` and returns the normalized float32 NCHW tensor data, length
 * 3 x 224 x 224. Throws ImageDecodeError for anything that is not a usable image,
 * including one over `maxPixels`.
 */
export async function preprocess(image: Buffer | Uint8Array, options: PreprocessOptions = {}): Promise<Float32Array> {
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  if (!Number.isInteger(maxPixels) || maxPixels < 1) throw new RangeError(`maxPixels must be a positive whole number, got ${maxPixels}`);
  if (image.length === 0) throw new ImageDecodeError('cannot decode image: the file is empty');

  // 'error' rather than the default 'warning': photos with harmless oddities (stray bytes
  // after the JPEG end marker, odd EXIF) still classify, while truncated or corrupt pixel
  // data is refused instead of being classified from a half-grey image.
  const inputOptions = { limitInputPixels: maxPixels, failOn: 'error' as const };

  // The header alone gives the size, so the resize target can be computed before the one
  // decoding pipeline below, and an oversized image is refused before any pixel is decoded.
  // Reading the header decodes no pixels, so the limit is checked here by hand instead of
  // by sharp, whose own message would not say how large the image is.
  let meta: Metadata;
  try {
    meta = await sharp(image, { ...inputOptions, limitInputPixels: false }).metadata();
  } catch (error) {
    throw decodeError(error);
  }
  const rawWidth = meta.width;
  const rawHeight = meta.height;
  if (!rawWidth || !rawHeight) throw new ImageDecodeError(`cannot decode image: its ${meta.format ?? 'unknown'} header has no size`);
  if (rawWidth * rawHeight > maxPixels) {
    throw new ImageDecodeError(
      `image is ${rawWidth}x${rawHeight} = ${rawWidth * rawHeight} pixels, over the limit of ${maxPixels} pixels (--max-pixels)`,
    );
  }
  // EXIF orientations 5-8 swap width and height.
  const oriented = meta.autoOrient ?? { width: rawWidth, height: rawHeight };
  const plan = planResize(oriented.width, oriented.height);

  let pixels: Buffer;
  let info: OutputInfo;
  try {
    let pipeline = sharp(image, inputOptions)
      .autoOrient()
      // Transparent pixels often hold arbitrary colour (commonly black); flattening on
      // white shows the model what a viewer would see.
      .flatten({ background: '#ffffff' })
      .toColourspace('srgb');
    if (plan.preCrop) pipeline = pipeline.extract(plan.preCrop);
    pipeline = pipeline
      .resize({
        width: plan.width,
        height: plan.height,
        fit: 'fill',
        kernel: options.kernel ?? DEFAULT_KERNEL,
        fastShrinkOnLoad: options.fastShrinkOnLoad ?? true,
      })
      .extract(plan.crop);
    ({ data: pixels, info } = await pipeline.raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true }));
  } catch (error) {
    throw decodeError(error);
  }
  const plane = INPUT_SIZE * INPUT_SIZE;
  if (info.channels !== CHANNELS || info.width !== INPUT_SIZE || info.height !== INPUT_SIZE || pixels.length !== plane * CHANNELS) {
    throw new ImageDecodeError(
      `cannot decode image: expected ${INPUT_SIZE}x${INPUT_SIZE} with ${CHANNELS} channels after preprocessing, got ${info.width}x${info.height} with ${info.channels}`,
    );
  }

  const out = new Float32Array(CHANNELS * plane);
  const r = LUT[0]!;
  const g = LUT[1]!;
  const b = LUT[2]!;
  for (let i = 0, p = 0; i < plane; i++, p += 3) {
    out[i] = r[pixels[p]!]!;
    out[plane + i] = g[pixels[p + 1]!]!;
    out[2 * plane + i] = b[pixels[p + 2]!]!;
  }
  return out;
}
