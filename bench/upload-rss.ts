/**
 * Memory and throughput of one very large upload, run on demand (never by `npm test`):
 *
 *   npm run bench:upload [-- --total-mb 1024 --image-mb 4 --distinct 4 --target-mb 250]
 *
 * Starts a real `icaas web` (embedded shape, fresh temp data folder), then posts about
 * `total-mb` of valid JPEGs (`distinct` noise images of about `image-mb` each, generated
 * once and repeated) in ONE multipart request, while sampling the web tier's resident
 * memory from /proc. Prints the peak (sampled, and the kernel's high-water mark) and the
 * throughput; exits 1 when the peak is over `target-mb`. Linux only.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { postFilesInOneRequest, startWebProcess } from '../test/helpers.js';

const { values } = parseArgs({
  options: {
    'total-mb': { type: 'string', default: '1024' },
    'image-mb': { type: 'string', default: '4' },
    distinct: { type: 'string', default: '4' },
    'target-mb': { type: 'string', default: '250' },
  },
});
const totalBytes = Number(values['total-mb']) * 2 ** 20;
const imageBytes = Number(values['image-mb']) * 2 ** 20;
const targetBytes = Number(values['target-mb']) * 2 ** 20;
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;

/** Noise JPEGs: incompressible, so about 1.4 bytes per pixel at quality 100. */
async function noiseJpegs(count: number, bytes: number): Promise<Buffer[]> {
  const side = Math.round(Math.sqrt(bytes / 1.4));
  return Promise.all(Array.from({ length: count }, () =>
    sharp(randomBytes(side * side * 3), { raw: { width: side, height: side, channels: 3 } }).jpeg({ quality: 100 }).toBuffer()));
}

async function memory(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

const distinct = await noiseJpegs(Math.max(1, Number(values.distinct)), imageBytes);
const files: Buffer[] = [];
for (let sent = 0; sent < totalBytes; sent += files[files.length - 1]!.length) files.push(distinct[files.length % distinct.length]!);
const sentBytes = files.reduce((sum, file) => sum + file.length, 0);

const data = await mkdtemp(path.join(os.tmpdir(), 'icaas-bench-upload-'));
const started = await startWebProcess(['--host', '127.0.0.1', '--data', data]);
const web = { url: started.url, pid: started.child.pid!, stop: started.stop };
try {
  const atStart = await memory(web.pid);
  let peak = atStart.rss;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, (await memory(web.pid)).rss);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  const started = performance.now();
  const { status, body } = await postFilesInOneRequest(web.url, files);
  const seconds = (performance.now() - started) / 1000;
  sampling = false;
  await sampler;
  const { hwm } = await memory(web.pid);
  if (status !== 202 || body.images?.length !== files.length) throw new Error(`upload answered ${status}: ${JSON.stringify(body).slice(0, 300)}`);
  console.log(`one request: ${files.length} JPEGs of ${mib(distinct[0]!.length)}, ${mib(sentBytes)} in all, to icaas web (embedded store)`);
  console.log(`web tier resident memory: ${mib(atStart.rss)} at start, peak ${mib(peak)} sampled every 20 ms, high-water mark ${mib(hwm)}`);
  console.log(`throughput: ${(sentBytes / 2 ** 20 / seconds).toFixed(1)} MiB/s, ${(files.length / seconds).toFixed(1)} images/s (${seconds.toFixed(1)} s)`);
  const verdict = hwm <= targetBytes;
  console.log(JSON.stringify({ bench: 'upload-rss', peakMb: hwm / 2 ** 20, startMb: atStart.rss / 2 ** 20, mibPerSecond: sentBytes / 2 ** 20 / seconds, images: files.length }));
  console.log(`${verdict ? 'PASS' : 'FAIL'}: peak ${mib(hwm)} ${verdict ? '<=' : '>'} target ${mib(targetBytes)}`);
  process.exitCode = verdict ? 0 : 1;
} finally {
  await web.stop();
  await rm(data, { recursive: true, force: true });
}
