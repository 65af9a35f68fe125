/**
 * How throughput scales with the instance limit: the 100 shared images through the whole
 * embedded service (real processes), once per limit, reported as images per second and as
 * ratios to the single-instance run measured in the same invocation (this machine is
 * shared, so only ratios from one run compare).
 *
 *   node dist/bench/scaling.js [--limits 1,2,4,8] [--repeat 1]
 */
import { parseArgs } from 'node:util';
import { readShared, sharedImages, startService, uploadForm, waitForBatch } from '../test/e2e/harness.js';

const { values } = parseArgs({ options: { limits: { type: 'string', default: '1,2,4,8' }, repeat: { type: 'string', default: '1' } } });
const limits = values.limits.split(',').map(Number).filter((n) => Number.isInteger(n) && n > 0);
const repeat = Math.max(1, Number(values.repeat) || 1);
const images = await sharedImages();
const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
const total = files.length * repeat;

const rows: { limit: number; seconds: number; perSecond: number; peak: number }[] = [];
for (const limit of limits) {
  const service = await startService({ maxInstances: limit, idleWaitSeconds: 2 });
  try {
    const started = performance.now();
    const upload = await uploadForm(service.url, Array.from({ length: repeat }, () => files).flat());
    if (upload.status !== 202) throw new Error(`upload failed: ${upload.status} ${JSON.stringify(upload.body)}`);
    await waitForBatch(service.url, upload.body.batchId, 600_000);
    const seconds = (performance.now() - started) / 1000;
    rows.push({ limit, seconds, perSecond: total / seconds, peak: service.peak() });
  } finally {
    await service.cleanup();
  }
}
const base = rows[0]!.perSecond;
console.log(`${total} images, limits ${limits.join(', ')}`);
console.log('max instances | peak | seconds | images/s | speed-up vs first');
for (const row of rows) {
  console.log(`${String(row.limit).padStart(13)} | ${String(row.peak).padStart(4)} | ${row.seconds.toFixed(1).padStart(7)} | ${row.perSecond.toFixed(1).padStart(8)} | ${(row.perSecond / base).toFixed(2)}x`);
}
