import { uploadForm, waitForBatch } from '../dist/test/e2e/harness.js';
import { imageFiles } from '../dist/bench/raw-classifier.js';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
const files = await Promise.all((await imageFiles(900)).map(async (f, i) => ({ name: `${i}-${path.basename(f)}`, body: await readFile(f) })));
const t = Date.now();
const up = await uploadForm(process.argv[2], files);
await waitForBatch(process.argv[2], up.body.batchId, 900000, 1000);
console.log('total', (Date.now() - t) / 1000);
