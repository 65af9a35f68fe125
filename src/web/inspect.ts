/**
 * Checks one uploaded file before anything is stored: its type is sniffed from its bytes
 * (never trusted from its name or declared content type), then it is decoded, so empty,
 * truncated, corrupt and oversized images are rejected with a reason at the door.
 */
import sharp from 'sharp';

export interface ImageLimits {
  maxFileBytes: number;
  maxPixels: number;
}

export type Inspection =
  | { ok: true; contentType: string; width: number; height: number }
  | { ok: false; reason: string };

interface Signature {
  contentType: string;
  matches(bytes: Buffer): boolean;
}

const ascii = (bytes: Buffer, offset: number, text: string) => bytes.subarray(offset, offset + text.length).toString('latin1') === text;

/** Formats the classifier's decoder reads. */
const SIGNATURES: Signature[] = [
  { contentType: 'image/jpeg', matches: (b) => b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff },
  { contentType: 'image/png', matches: (b) => b.length >= 8 && b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) },
  { contentType: 'image/gif', matches: (b) => ascii(b, 0, 'GIF87a') || ascii(b, 0, 'GIF89a') },
  { contentType: 'image/webp', matches: (b) => ascii(b, 0, 'RIFF') && ascii(b, 8, 'WEBP') },
  { contentType: 'image/tiff', matches: (b) => ascii(b, 0, 'II*\u0000') || ascii(b, 0, 'MM\u0000*') },
  { contentType: 'image/avif', matches: (b) => ascii(b, 4, 'ftyp') && (ascii(b, 8, 'avif') || ascii(b, 8, 'avis')) },
];

export const ACCEPTED_TYPES = SIGNATURES.map((signature) => signature.contentType);

export function sniffImageType(bytes: Buffer): string | null {
  return SIGNATURES.find((signature) => signature.matches(bytes))?.contentType ?? null;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10 * 1024 ? 1 : 0)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

export async function inspectImage(bytes: Buffer, limits: ImageLimits, truncated = false): Promise<Inspection> {
  if (truncated || bytes.length > limits.maxFileBytes) return { ok: false, reason: `file is larger than the ${formatBytes(limits.maxFileBytes)} limit` };
  if (bytes.length === 0) return { ok: false, reason: 'file is empty' };
  const contentType = sniffImageType(bytes);
  if (!contentType) return { ok: false, reason: `not an image by its content (accepted: ${ACCEPTED_TYPES.map((type) => type.slice(6).toUpperCase()).join(', ')})` };
  let width: number;
  let height: number;
  try {
    // Only the header is read here, so no pixel limit of sharp's own applies: a
    // decompression bomb then gets the clear reason below rather than a header error.
    const metadata = await sharp(bytes, { limitInputPixels: false }).metadata();
    width = metadata.width ?? 0;
    height = metadata.height ?? 0;
  } catch (error) {
    return { ok: false, reason: `image header cannot be read: ${describeSharpError(error)}` };
  }
  if (width <= 0 || height <= 0) return { ok: false, reason: 'image has no dimensions' };
  if (width * height > limits.maxPixels) {
    return { ok: false, reason: `image is ${width}x${height} pixels, over the limit of ${limits.maxPixels.toLocaleString('en-US')} pixels` };
  }
  try {
    // A full decode at a small size (JPEG and WebP shrink on load, so it is cheap) finds
    // truncated and corrupt data that the header alone does not show.
    await sharp(bytes, { failOn: 'truncated', limitInputPixels: limits.maxPixels, animated: false }).resize(64, 64, { fit: 'inside' }).raw().toBuffer();
  } catch (error) {
    return { ok: false, reason: `image data is truncated or corrupt: ${describeSharpError(error)}` };
  }
  return { ok: true, contentType, width, height };
}

function describeSharpError(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  // libvips messages can carry internal buffer names; the first line says what matters.
  return message.split('\n')[0]!.replace(/^Input buffer has corrupt header: /, '').slice(0, 200);
}

/**
 * Control characters, and the invisible bidirectional controls that can make a name
 * display as something else ("photo\u202Egpj.exe" shows as "photoexe.jpg").
 */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
const MAX_NAME_CHARS = 255;

/**
 * A file name for display: control and bidirectional characters removed, backslashes as
 * slashes, at most 255 characters with the extension kept. Names are never used as paths
 * or keys.
 */
export function displayName(raw: string | undefined): string {
  let name = (raw ?? '').normalize('NFC').replace(CONTROL, '').replace(/\\/g, '/').trim();
  const chars = [...name];
  if (chars.length > MAX_NAME_CHARS) {
    const dot = name.lastIndexOf('.');
    const extension = dot > 0 && name.length - dot <= 10 ? name.slice(dot) : '';
    name = chars.slice(0, MAX_NAME_CHARS - [...extension].length - 1).join('') + '…' + extension;
  }
  return name || 'unnamed';
}

/** The base name without its extension, as the synchronous endpoint answers. */
export function stem(name: string): string {
  const base = name.slice(name.lastIndexOf('/') + 1);
  const dot = base.lastIndexOf('.');
  return dot > 0 ? base.slice(0, dot) : base;
}
