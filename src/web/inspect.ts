/**
 * Checks one uploaded file as it streams past on its way to the store, holding only a few
 * bytes of it at a time, whatever its size:
 *
 * - its type is sniffed from its first bytes (never trusted from its name or declared type);
 * - its width and height are read from its header, so oversized images and decompression
 *   bombs are refused before anything decodes them;
 * - its structure is followed to its end where the format says where that is (JPEG, PNG,
 *   WebP), so a truncated file is refused at the door.
 *
 * Pixels are decoded once, by the worker: an image that passes here but whose data is
 * corrupt ends as an error result with the decoder's reason.
 */
import { Readable, Transform, Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { RejectionReason } from '../metrics.js';

export interface ImageLimits {
  maxFileBytes: number;
  maxPixels: number;
}

export type Inspection =
  | { ok: true; contentType: string; width: number; height: number }
  | { ok: false; reason: string };

/** A file refused for what it is; the message is the reason shown to the user, `code` the kind counted in the metrics. */
export class ImageRejected extends Error {
  constructor(readonly code: RejectionReason, reason: string) {
    super(reason);
    this.name = 'ImageRejected';
  }
}

interface Signature {
  contentType: string;
  matches(bytes: Buffer): boolean;
  parse: (sink: SizeSink) => FormatParser;
}

const ascii = (bytes: Buffer, offset: number, text: string) => bytes.subarray(offset, offset + text.length).toString('latin1') === text;

/** Formats the classifier's decoder reads. */
const SIGNATURES: Signature[] = [
  { contentType: 'image/jpeg', matches: (b) => b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff, parse: jpeg },
  { contentType: 'image/png', matches: (b) => b.length >= 8 && b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), parse: png },
  { contentType: 'image/gif', matches: (b) => ascii(b, 0, 'GIF87a') || ascii(b, 0, 'GIF89a'), parse: gif },
  { contentType: 'image/webp', matches: (b) => ascii(b, 0, 'RIFF') && ascii(b, 8, 'WEBP'), parse: webp },
  { contentType: 'image/tiff', matches: (b) => ascii(b, 0, 'II*\u0000') || ascii(b, 0, 'MM\u0000*'), parse: tiff },
  { contentType: 'image/avif', matches: (b) => ascii(b, 4, 'ftyp') && (ascii(b, 8, 'avif') || ascii(b, 8, 'avis')), parse: avif },
];
/** Enough leading bytes for every signature above. */
const SNIFF_BYTES = 12;

export const ACCEPTED_TYPES = SIGNATURES.map((signature) => signature.contentType);

export function sniffImageType(bytes: Buffer): string | null {
  return SIGNATURES.find((signature) => signature.matches(bytes))?.contentType ?? null;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10 * 1024 ? 1 : 0)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * Passes a file's bytes through unchanged while checking them; fails with ImageRejected
 * (before its last byte is passed on) when the file is not an acceptable image.
 * `contentType` settles as soon as the first bytes have shown what the file is.
 */
export class ImageInspector extends Transform {
  readonly contentType: Promise<string>;
  width = 0;
  height = 0;
  bytes = 0;
  private head: Buffer[] = [];
  private driver: StepDriver | undefined;
  private settleType!: { resolve(type: string): void; reject(error: Error): void };

  constructor(private readonly limits: ImageLimits, private readonly isTruncated: () => boolean = () => false) {
    super();
    this.contentType = new Promise<string>((resolve, reject) => (this.settleType = { resolve, reject }));
    this.contentType.catch(() => undefined);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.bytes += chunk.length;
      if (this.bytes > this.limits.maxFileBytes) throw this.tooLarge();
      if (this.driver) {
        this.feed(chunk);
        this.push(chunk);
      } else {
        this.head.push(chunk);
        if (this.bytes >= SNIFF_BYTES) this.start();
      }
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      if (this.isTruncated()) throw this.tooLarge();
      if (this.bytes === 0) throw new ImageRejected('empty', 'file is empty');
      if (!this.driver) this.start();
      if (this.width === 0) throw new ImageRejected('unreadable', 'image header cannot be read: the file ends before the image size');
      if (!this.driver!.done) throw new ImageRejected('corrupt', 'image data is truncated or corrupt: the file ends before the end of the image');
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.settleType.reject(error ?? new Error('the file stream was closed before its type was known'));
    callback(error);
  }

  private start(): void {
    const head = Buffer.concat(this.head);
    this.head = [];
    const signature = SIGNATURES.find((candidate) => candidate.matches(head));
    if (!signature) throw new ImageRejected('not_an_image', `not an image by its content (accepted: ${ACCEPTED_TYPES.map((type) => type.slice(6).toUpperCase()).join(', ')})`);
    this.settleType.resolve(signature.contentType);
    this.driver = new StepDriver(signature.parse({ size: (width, height) => this.checkSize(width, height) }));
    this.feed(head);
    this.push(head);
  }

  private feed(chunk: Buffer): void {
    try {
      this.driver!.feed(chunk);
    } catch (error) {
      if (!(error instanceof FormatError)) throw error;
      if (this.width === 0) throw new ImageRejected('unreadable', `image header cannot be read: ${error.message}`);
      throw new ImageRejected('corrupt', `image data is truncated or corrupt: ${error.message}`);
    }
  }

  private checkSize(width: number, height: number): void {
    if (width <= 0 || height <= 0) throw new ImageRejected('unreadable', 'image has no dimensions');
    if (width * height > this.limits.maxPixels) {
      throw new ImageRejected('too_many_pixels', `image is ${width}x${height} pixels, over the limit of ${this.limits.maxPixels.toLocaleString('en-US')} pixels`);
    }
    this.width = width;
    this.height = height;
  }

  private tooLarge(): ImageRejected {
    return new ImageRejected('too_large', `file is larger than the ${formatBytes(this.limits.maxFileBytes)} limit`);
  }
}

/** Checks a file held in memory, as an upload's file is checked while it streams. */
export async function inspectImage(bytes: Buffer, limits: ImageLimits, truncated = false): Promise<Inspection> {
  const inspector = new ImageInspector(limits, () => truncated);
  try {
    await pipeline(Readable.from([bytes]), inspector, new Writable({ write: (_chunk, _encoding, callback) => callback() }));
    return { ok: true, contentType: await inspector.contentType, width: inspector.width, height: inspector.height };
  } catch (error) {
    if (error instanceof ImageRejected) return { ok: false, reason: error.message };
    throw error;
  }
}

// Format parsers. Each is a generator that asks for the file's bytes one step at a time:
// `read` n bytes (handed back to it), `skip` n bytes, skip past the next byte of a value, or
// (JPEG) skip a scan's entropy-coded data up to the marker that ends it (handed back as one byte).
// The driver serves the steps from the chunks as they arrive, so a parser never holds more
// than the few bytes it reads. A parser that returns has seen all it needs (for JPEG, PNG
// and WebP: the end of the image); one still asking when the file ends means a truncated file.

type Step = { read: number } | { skip: number } | { skipPast: number } | { markerAfterScan: true };
type FormatParser = Generator<Step, void, Buffer>;
interface SizeSink {
  size(width: number, height: number): void;
}

/** A structural fault; the inspector words it as a header or a data problem. */
class FormatError extends Error {}

const NOTHING = Buffer.alloc(0);

class StepDriver {
  private step: IteratorResult<Step, void>;
  private held: Buffer[] = [];
  private heldBytes = 0;
  private skipped = 0;
  /** Within entropy-coded data: the last byte seen was a 0xFF, so the next one says what it was. */
  private afterFF = false;

  constructor(private readonly parser: FormatParser) {
    this.step = this.advance(NOTHING);
  }

  get done(): boolean {
    return this.step.done === true;
  }

  feed(chunk: Buffer): void {
    let at = 0;
    while (!this.step.done && at < chunk.length) {
      const step = this.step.value;
      if ('read' in step) {
        const take = Math.min(step.read - this.heldBytes, chunk.length - at);
        this.held.push(chunk.subarray(at, at + take));
        this.heldBytes += take;
        at += take;
        if (this.heldBytes === step.read) {
          const bytes = Buffer.concat(this.held, this.heldBytes);
          this.held = [];
          this.heldBytes = 0;
          this.step = this.advance(bytes);
        }
      } else if ('skip' in step) {
        const take = Math.min(step.skip - this.skipped, chunk.length - at);
        this.skipped += take;
        at += take;
        if (this.skipped === step.skip) {
          this.skipped = 0;
          this.step = this.advance(NOTHING);
        }
      } else if ('skipPast' in step) {
        const found = chunk.indexOf(step.skipPast, at);
        at = found < 0 ? chunk.length : found + 1;
        if (found >= 0) this.step = this.advance(NOTHING);
      } else {
        at = this.scanEntropy(chunk, at);
      }
    }
  }

  /**
   * A scan's data runs to the first 0xFF that is not a stuffed 0xFF00 or a restart marker
   * (fill bytes, more 0xFFs, may come before a marker). Most of an upload's bytes are scan
   * data, so it is searched here, natively, rather than one parser step per 0xFF: a step
   * each cost the upload about 0.4 ms of CPU per photo. Returns where the chunk was left.
   */
  private scanEntropy(chunk: Buffer, from: number): number {
    let at = from;
    while (at < chunk.length) {
      if (!this.afterFF) {
        const found = chunk.indexOf(0xff, at);
        if (found < 0) return chunk.length;
        this.afterFF = true;
        at = found + 1;
        continue;
      }
      const byte = chunk[at++]!;
      if (byte === 0xff) continue;
      this.afterFF = false;
      if (byte === 0x00 || (byte >= 0xd0 && byte <= 0xd7)) continue;
      this.step = this.advance(Buffer.of(byte));
      return at;
    }
    return at;
  }

  /** Steps of no bytes are served at once, so the file's end never waits on one. */
  private advance(value: Buffer): IteratorResult<Step, void> {
    let next = this.parser.next(value);
    while (!next.done && (('read' in next.value && next.value.read === 0) || ('skip' in next.value && next.value.skip === 0))) next = this.parser.next(NOTHING);
    if (!next.done && (('read' in next.value && next.value.read < 0) || ('skip' in next.value && !(next.value.skip > 0)))) throw new FormatError('a length points backwards');
    return next;
  }
}

/** Frame headers: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC). */
const isFrameHeader = (marker: number) => marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
/** Markers without a length: restart markers and TEM. */
const standsAlone = (marker: number) => (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01;

function* jpeg(sink: SizeSink): FormatParser {
  yield { skip: 2 };
  let sized = false;
  let marker = yield* nextMarker();
  for (;;) {
    if (marker === 0xd9) {
      if (!sized) throw new FormatError('it ends before its frame header');
      return;
    }
    if (marker === 0xd8) throw new FormatError('a second start-of-image marker');
    if (standsAlone(marker)) {
      marker = yield* nextMarker();
      continue;
    }
    const length = (yield { read: 2 }).readUInt16BE(0);
    if (length < 2) throw new FormatError(`a segment of length ${length}`);
    if (isFrameHeader(marker)) {
      if (length < 7) throw new FormatError('a frame header too short to hold a size');
      const frame = yield { read: 5 };
      sink.size(frame.readUInt16BE(3), frame.readUInt16BE(1));
      sized = true;
      yield { skip: length - 7 };
    } else {
      yield { skip: length - 2 };
    }
    if (marker === 0xda) {
      if (!sized) throw new FormatError('its scan starts before its frame header');
      marker = yield* markerAfterScan();
    } else {
      marker = yield* nextMarker();
    }
  }
}

/** Like libjpeg, skips stray bytes before a marker, and fill bytes (0xFF) within one. */
function* nextMarker(): Generator<Step, number, Buffer> {
  yield { skipPast: 0xff };
  let marker: number;
  do marker = (yield { read: 1 })[0]!;
  while (marker === 0xff);
  return marker;
}

/** Entropy-coded data ends at the first marker that is neither a stuffed 0xFF00 nor a restart. */
function* markerAfterScan(): Generator<Step, number, Buffer> {
  return (yield { markerAfterScan: true })[0]!;
}

function* png(sink: SizeSink): FormatParser {
  yield { skip: 8 };
  const header = yield { read: 16 };
  if (!ascii(header, 4, 'IHDR') || header.readUInt32BE(0) < 8) throw new FormatError('its first chunk is not a valid IHDR');
  sink.size(header.readUInt32BE(8), header.readUInt32BE(12));
  yield { skip: header.readUInt32BE(0) - 8 + 4 };
  for (;;) {
    const chunk = yield { read: 8 };
    const length = chunk.readUInt32BE(0);
    if (length > 0x7fffffff) throw new FormatError('a chunk longer than PNG allows');
    yield { skip: length + 4 };
    if (ascii(chunk, 4, 'IEND')) return;
  }
}

function* gif(sink: SizeSink): FormatParser {
  const header = yield { read: 10 };
  sink.size(header.readUInt16LE(6), header.readUInt16LE(8));
}

function* webp(sink: SizeSink): FormatParser {
  const header = yield { read: 20 };
  const fileBytes = header.readUInt32LE(4) + 8;
  const chunk = header.toString('latin1', 12, 16);
  const dataBytes = chunk === 'VP8L' ? 5 : 10;
  const data = yield { read: dataBytes };
  if (chunk === 'VP8 ') {
    if (data.readUIntBE(3, 3) !== 0x9d012a) throw new FormatError('its VP8 frame lacks the start code');
    sink.size(data.readUInt16LE(6) & 0x3fff, data.readUInt16LE(8) & 0x3fff);
  } else if (chunk === 'VP8L') {
    if (data[0] !== 0x2f) throw new FormatError('its VP8L data lacks the signature');
    const bits = data.readUInt32LE(1);
    sink.size((bits & 0x3fff) + 1, ((bits >>> 14) & 0x3fff) + 1);
  } else if (chunk === 'VP8X') {
    sink.size(data.readUIntLE(4, 3) + 1, data.readUIntLE(7, 3) + 1);
  } else {
    throw new FormatError(`an unknown first chunk ${JSON.stringify(chunk)}`);
  }
  yield { skip: fileBytes - 20 - dataBytes };
}

function* tiff(sink: SizeSink): FormatParser {
  const header = yield { read: 8 };
  const little = header[0] === 0x49;
  const u16 = (bytes: Buffer, at: number) => (little ? bytes.readUInt16LE(at) : bytes.readUInt16BE(at));
  const u32 = (bytes: Buffer, at: number) => (little ? bytes.readUInt32LE(at) : bytes.readUInt32BE(at));
  const directory = u32(header, 4);
  if (directory < 8) throw new FormatError('its first directory overlaps its header');
  yield { skip: directory - 8 };
  const entries = u16(yield { read: 2 }, 0);
  let width = 0;
  let height = 0;
  for (let i = 0; i < entries; i++) {
    const entry = yield { read: 12 };
    const tag = u16(entry, 0);
    if (tag !== 256 && tag !== 257) continue;
    const type = u16(entry, 2);
    const value = type === 3 ? u16(entry, 8) : type === 4 ? u32(entry, 8) : 0;
    if (tag === 256) width = value;
    else height = value;
  }
  sink.size(width, height);
}

interface Box {
  type: string;
  headerBytes: number;
  payloadBytes: number;
}

/** AVIF (ISO base media): the size is in the `ispe` properties inside the `meta` box. */
function* avif(sink: SizeSink): FormatParser {
  for (;;) {
    const box = yield* boxHeader();
    if (box.type === 'meta') {
      yield { skip: 4 };
      const sizes: [number, number][] = [];
      yield* imageSizes(box.payloadBytes - 4, sizes);
      // A grid image lists its tiles' sizes too; the largest area is the whole image.
      const largest = sizes.sort((a, b) => b[0] * b[1] - a[0] * a[1])[0];
      if (!largest) throw new FormatError('its metadata gives no image size');
      sink.size(largest[0], largest[1]);
      return;
    }
    yield { skip: box.payloadBytes };
  }
}

function* boxHeader(): Generator<Step, Box, Buffer> {
  const header = yield { read: 8 };
  const type = header.toString('latin1', 4, 8);
  let size = header.readUInt32BE(0);
  let headerBytes = 8;
  if (size === 1) {
    size = Number((yield { read: 8 }).readBigUInt64BE(0));
    headerBytes = 16;
  }
  // Size 0 means "to the end of the file", which no box before the image size may claim.
  if (size < headerBytes) throw new FormatError(`a box ${JSON.stringify(type)} of ${size} bytes`);
  return { type, headerBytes, payloadBytes: size - headerBytes };
}

function* imageSizes(bytes: number, sizes: [number, number][]): Generator<Step, void, Buffer> {
  for (let left = bytes; left > 0; ) {
    const box = yield* boxHeader();
    if (box.headerBytes + box.payloadBytes > left) throw new FormatError(`a box ${JSON.stringify(box.type)} larger than the box holding it`);
    if (box.type === 'iprp' || box.type === 'ipco') {
      yield* imageSizes(box.payloadBytes, sizes);
    } else if (box.type === 'ispe' && box.payloadBytes >= 12) {
      const property = yield { read: 12 };
      sizes.push([property.readUInt32BE(4), property.readUInt32BE(8)]);
      yield { skip: box.payloadBytes - 12 };
    } else {
      yield { skip: box.payloadBytes };
    }
    left -= box.headerBytes + box.payloadBytes;
  }
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
