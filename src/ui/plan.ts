/** How files are grouped into upload requests. */

export const CHUNK_FILES = 50;
export const CHUNK_BYTES = 16 * 1024 * 1024;

/**
 * How many of the waiting files (in order) go into the next request: at most `maxFiles`,
 * and no more than `maxBytes` in total unless a single file alone is larger.
 */
export function nextChunkSize(sizes: readonly number[], maxFiles = CHUNK_FILES, maxBytes = CHUNK_BYTES): number {
  let count = 0;
  let bytes = 0;
  for (const size of sizes) {
    if (count >= maxFiles) break;
    if (count > 0 && bytes + size > maxBytes) break;
    count++;
    bytes += size;
  }
  return count;
}

/** Seconds to wait from a Retry-After header (seconds or an HTTP date), bounded to [1, 300]. */
export function retryAfterSeconds(header: string | null, now = Date.now()): number {
  if (!header) return 5;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.min(300, Math.max(1, Math.ceil(seconds)));
  const date = Date.parse(header);
  if (Number.isFinite(date)) return Math.min(300, Math.max(1, Math.ceil((date - now) / 1000)));
  return 5;
}

/** Upload progress of each file of a request, from the bytes of the whole request sent so far. */
export function fileProgress(sizes: readonly number[], loaded: number, total: number): number[] {
  const sum = sizes.reduce((a, b) => a + b, 0);
  // The request carries multipart headers besides the files; spread them evenly.
  const sent = total > 0 ? (loaded / total) * sum : 0;
  let offset = 0;
  return sizes.map((size) => {
    const fraction = size === 0 ? (sent >= offset ? 1 : 0) : Math.min(1, Math.max(0, (sent - offset) / size));
    offset += size;
    return fraction;
  });
}

const IMAGE_EXTENSIONS = /\.(jpe?g|jfif|png|gif|webp|tiff?|avif|bmp|heic|heif)$/i;

/** Whether a file found inside a dropped or chosen folder should be sent: images, not stray files like .DS_Store. */
export function looksLikeImage(name: string, type: string): boolean {
  const base = name.slice(name.lastIndexOf('/') + 1);
  if (base.startsWith('.')) return false;
  return type.startsWith('image/') || IMAGE_EXTENSIONS.test(base);
}
