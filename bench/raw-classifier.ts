/**
 * The reference every service benchmark is divided by: the raw classifier, one process per
 * core, each classifying its share of the same images with no queue, store or bookkeeping.
 *
 *   node dist/bench/raw-classifier.js [--images 900] [--processes <cores>]
 *
 * Prints one JSON line: images per second over all processes (timed from the moment every
 * process has its model loaded to the last image), and the mean time per image per core.
 * As a child (--child), it loads the classifier, says "ready", waits for "go" on stdin,
 * classifies the files it was given and prints its own JSON line.
 */
import { fork } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadClassifier } from '../src/classifier/index.js';
import { projectRoot } from '../src/runtime.js';
import { sharedImages } from '../test/e2e/harness.js';
import { sharedImagesDir } from '../test/helpers.js';

export interface RawClassifierResult {
  bench: 'raw-classifier';
  images: number;
  processes: number;
  imagesPerSecond: number;
  /** Mean wall time per image inside one process (decode + inference), ms. */
  perImageMs: number;
}

/** The shared images, repeated to `count`, as file paths. */
export async function imageFiles(count: number): Promise<string[]> {
  const images = await sharedImages();
  return Array.from({ length: count }, (_, i) => path.join(sharedImagesDir, images[i % images.length]!.file));
}

export async function measureRawClassifier(count: number, processes = availableParallelism()): Promise<RawClassifierResult> {
  const files = await imageFiles(count);
  const script = fileURLToPath(import.meta.url);
  const children = Array.from({ length: processes }, (_, p) => {
    const share = files.filter((_, i) => i % processes === p);
    const child = fork(script, ['--child'], { stdio: ['pipe', 'pipe', 'inherit', 'ipc'] });
    const lines = createInterface({ input: child.stdout! });
    const next = () => new Promise<string>((resolve, reject) => {
      lines.once('line', resolve);
      child.once('exit', (code) => reject(new Error(`a classifier process exited with ${code}`)));
    });
    return { child, share, next };
  });
  try {
    const ready = children.map(({ next }) => next());
    for (const { child, share } of children) child.send(share);
    await Promise.all(ready);
    const done = children.map(({ next }) => next());
    const started = performance.now();
    for (const { child } of children) child.stdin!.write('go\n');
    const reports = (await Promise.all(done)).map((line) => JSON.parse(line) as { images: number; perImageMs: number });
    const seconds = (performance.now() - started) / 1000;
    return {
      bench: 'raw-classifier',
      images: count,
      processes,
      imagesPerSecond: count / seconds,
      perImageMs: reports.reduce((sum, report) => sum + report.perImageMs * report.images, 0) / count,
    };
  } finally {
    for (const { child } of children) child.kill();
  }
}

async function child(): Promise<void> {
  const files = await new Promise<string[]>((resolve) => process.once('message', (message) => resolve(message as string[])));
  const bodies = await Promise.all(files.map((file) => readFile(file)));
  const { classifier } = await loadClassifier({ cacheDir: path.join(projectRoot, '.cache', 'models') });
  // One warm-up, so the first timed image does not pay for lazy initialisation.
  if (bodies[0]) await classifier.classify(bodies[0], 5);
  process.stdout.write('ready\n');
  await new Promise<void>((resolve) => createInterface({ input: process.stdin }).once('line', () => resolve()));
  const started = performance.now();
  for (const body of bodies) await classifier.classify(body, 5);
  const elapsed = performance.now() - started;
  process.stdout.write(`${JSON.stringify({ images: bodies.length, perImageMs: elapsed / Math.max(1, bodies.length) })}\n`);
  await classifier.close();
  process.disconnect?.();
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { child: { type: 'boolean', default: false }, images: { type: 'string', default: '900' }, processes: { type: 'string', default: String(availableParallelism()) } } });
  if (values.child) await child();
  else console.log(JSON.stringify(await measureRawClassifier(Number(values.images), Number(values.processes))));
}
