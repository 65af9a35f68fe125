/**
 * Classifier benchmark, run on demand (never by `npm test`):
 *
 *   npm run build && node dist/bench/classify.js [--runs 3] [--images DIR] [--model FILE] [--labels FILE]
 *   node dist/bench/classify.js --compare-kernels
 *
 * Classifies every image of the shared ImageNet sample `runs` times and prints the time per
 * image spent in preprocessing (decode, resize, crop, normalize) and in inference, their
 * ratio, top-1 / top-5 accuracy, and the process's RSS before and after. Timings depend on
 * the machine; compare ratios measured in the same run, not absolute numbers across machines.
 * --compare-kernels measures accuracy and preprocessing time for each resize kernel.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { defaultCacheDir, locateModel, projectRoot } from '../src/classifier/model.js';
import { sharp } from '../src/classifier/native.js';
import { loadOnnxModel, type OnnxModel } from '../src/classifier/onnx.js';
import { softmax, topK } from '../src/classifier/postprocess.js';
import { DEFAULT_KERNEL, preprocess, type PreprocessOptions, type ResizeKernel } from '../src/classifier/preprocess.js';

interface Sample {
  file: string;
  bytes: Buffer;
  classIndex: number;
}

async function loadSamples(dir: string): Promise<Sample[]> {
  const csv = (await readFile(path.join(dir, 'labels.csv'), 'utf8')).trim().split(/\r?\n/);
  const header = csv[0]!.split(',');
  const fileCol = header.indexOf('file');
  const indexCol = header.indexOf('class_index');
  if (fileCol === -1 || indexCol === -1) throw new Error(`${dir}/labels.csv needs columns file and class_index`);
  return Promise.all(csv.slice(1).map(async (line) => {
    const cells = line.split(',');
    const file = cells[fileCol]!;
    return { file, bytes: await readFile(path.join(dir, file)), classIndex: Number(cells[indexCol]) };
  }));
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function summary(values: number[]): { mean: number; p50: number; p95: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const mean = values.reduce((sum, v) => sum + v, 0) / values.length;
  return { mean, p50: quantile(sorted, 0.5), p95: quantile(sorted, 0.95) };
}

const mb = (bytes: number): string => `${(bytes / (1024 * 1024)).toFixed(0)} MB`;
const ms = (value: number): string => `${value.toFixed(2)} ms`;

async function measure(model: OnnxModel, samples: Sample[], runs: number, options: PreprocessOptions) {
  const pre: number[] = [];
  const inf: number[] = [];
  let top1 = 0;
  let top5 = 0;
  // Mean negative log-likelihood of the true class: a smoother signal than top-1 on 100 images.
  let nll = 0;
  for (let run = 0; run < runs; run++) {
    for (const sample of samples) {
      const t0 = performance.now();
      const input = await preprocess(sample.bytes, options);
      const t1 = performance.now();
      const logits = await model.infer(input);
      const t2 = performance.now();
      pre.push(t1 - t0);
      inf.push(t2 - t1);
      if (run === 0) {
        const probabilities = softmax(logits);
        nll -= Math.log(Math.max(probabilities[sample.classIndex]!, 1e-12));
        const ranked = topK(probabilities, model.labels, 5);
        if (ranked[0]?.index === sample.classIndex) top1++;
        if (ranked.some((p) => p.index === sample.classIndex)) top5++;
      }
    }
  }
  return { pre: summary(pre), inf: summary(inf), top1: top1 / samples.length, top5: top5 / samples.length, nll: nll / samples.length };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '3' },
      images: { type: 'string', default: path.resolve(projectRoot(), '..', 'shared', 'images', 'imagenet') },
      model: { type: 'string' },
      labels: { type: 'string' },
      'compare-kernels': { type: 'boolean', default: false },
      'sharp-threads': { type: 'string', default: '1' },
    },
  });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a whole number of at least 1, got ${values.runs}`);
  sharp.concurrency(Number(values['sharp-threads']));

  const rssStart = process.memoryUsage().rss;
  const located = await locateModel({ modelPath: values.model, labelsPath: values.labels, cacheDir: defaultCacheDir() });
  const model = await loadOnnxModel({ modelPath: located.modelPath, labelsPath: located.labelsPath });
  const samples = await loadSamples(values.images);
  // One untimed pass so lazy initialization (ONNX Runtime kernels, libvips caches) is not measured.
  for (const sample of samples.slice(0, 5)) await model.infer(await preprocess(sample.bytes));
  const rssBefore = process.memoryUsage().rss;

  console.log(`model ${model.description} from ${located.source}; ${samples.length} images x ${runs} runs; sharp threads ${sharp.concurrency()}, ONNX Runtime 1 thread`);

  if (values['compare-kernels']) {
    const kernels: ResizeKernel[] = ['lanczos3', 'lanczos2', 'cubic', 'mitchell', 'linear', 'nearest'];
    console.log('kernel      shrink-on-load  top-1  top-5  NLL    preprocess mean');
    for (const kernel of kernels) {
      for (const fastShrinkOnLoad of [true, false]) {
        const result = await measure(model, samples, runs, { kernel, fastShrinkOnLoad });
        console.log(`${kernel.padEnd(12)}${String(fastShrinkOnLoad).padEnd(16)}${(result.top1 * 100).toFixed(0).padStart(4)}%  ${(result.top5 * 100).toFixed(0).padStart(4)}%  ${result.nll.toFixed(3)}  ${ms(result.pre.mean)}${kernel === DEFAULT_KERNEL && fastShrinkOnLoad ? '  (default)' : ''}`);
      }
    }
  } else {
    const result = await measure(model, samples, runs, {});
    console.log(`preprocess per image: mean ${ms(result.pre.mean)}, p50 ${ms(result.pre.p50)}, p95 ${ms(result.pre.p95)}`);
    console.log(`inference per image:  mean ${ms(result.inf.mean)}, p50 ${ms(result.inf.p50)}, p95 ${ms(result.inf.p95)}`);
    console.log(`preprocess / inference (means): ${(result.pre.mean / result.inf.mean).toFixed(2)}`);
    console.log(`accuracy: top-1 ${(result.top1 * 100).toFixed(0)}%, top-5 ${(result.top5 * 100).toFixed(0)}%, mean NLL of the true class ${result.nll.toFixed(3)}`);
  }
  const rssAfter = process.memoryUsage().rss;
  console.log(`RSS: ${mb(rssStart)} at start, ${mb(rssBefore)} after loading and warm-up, ${mb(rssAfter)} after the runs (${rssAfter >= rssBefore ? '+' : ''}${mb(rssAfter - rssBefore)})`);
  await model.close();
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exitCode = 1;
});
