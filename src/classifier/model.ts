/**
 * Finding the model and its labels. The project never commits model files; it looks at
 * a configured path, then its git-ignored cache, then ../shared/models, and on a machine
 * with internet access downloads the default model into the cache.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseLabels } from './labels.js';
import { silentLogger, type Logger } from '../log.js';

export const MODEL_FILE = 'mobilenetv2-12-int8.onnx';
export const LABELS_FILE = 'imagenet-simple-labels.json';
/** From ../shared/models/README.md. */
export const MODEL_SHA256 = '83530ad811bc31d2b60a5599a21265a5057608c9b044b4ee758cc22f2309f54f';
export const MODEL_CLASSES = 1000;
export const DEFAULT_DOWNLOAD_URLS: Readonly<{ model: string; labels: string }> = {
  model: 'https://github.com/onnx/models/raw/main/validated/vision/classification/mobilenet/model/mobilenetv2-12-int8.onnx',
  labels: 'https://raw.githubusercontent.com/anishathalye/imagenet-simple-labels/master/imagenet-simple-labels.json',
};
export const DEFAULT_DOWNLOAD_TIMEOUT_MS = 20_000;
/** Far above the 3.6 MB model; stops a misbehaving server from filling memory. */
const MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024;
/** Names accepted for the labels file next to a configured model. */
const LABELS_NEXT_TO_MODEL = [LABELS_FILE, 'labels.json'];

export type ModelSource = 'configured' | 'cache' | 'shared' | 'download';

export interface LocatedModel {
  modelPath: string;
  labelsPath: string;
  source: ModelSource;
}

export interface LocateModelOptions {
  /** Configured model path (--model / ICAAS_MODEL); when given it must exist. */
  modelPath?: string;
  /** Configured labels path (--labels / ICAAS_LABELS); default: next to the model. */
  labelsPath?: string;
  /** The project's git-ignored model cache, normally `<project root>/.cache/models`. */
  cacheDir: string;
  /** Default: `../shared/models` relative to the project root. */
  sharedDir?: string;
  /** Default: true unless ICAAS_MODEL_DOWNLOAD is 0 / false / no / off. */
  allowDownload?: boolean;
  /** Where to download from; tests point these at a local server. */
  downloadUrls?: { model: string; labels: string };
  /** Per file; default 20 s, so a machine without internet access fails fast. */
  downloadTimeoutMs?: number;
  /** The downloaded model must have this sha256 (hex). */
  expectedSha256?: string;
  /** Default: silent. */
  log?: Logger;
}

/** No usable model anywhere; the message lists every place looked and what to do. */
export class ModelNotFoundError extends Error {
  /** One line per place looked, with what was found there. */
  readonly searched: readonly string[];
  constructor(message: string, searched: readonly string[] = []) {
    super(message);
    this.name = 'ModelNotFoundError';
    this.searched = searched;
  }
}

/**
 * The folder holding the project's package.json. Compiled code lives at
 * dist/src/classifier/ and sources at src/classifier/, so walk up rather than count levels.
 */
export function projectRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = here; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) break;
  }
  return path.resolve(here, '..', '..', '..');
}

export function defaultCacheDir(): string {
  return path.join(projectRoot(), '.cache', 'models');
}

export function defaultSharedDir(): string {
  return path.resolve(projectRoot(), '..', 'shared', 'models');
}

export function downloadAllowedByEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const value = env.ICAAS_MODEL_DOWNLOAD;
  return !(value !== undefined && /^(0|false|no|off)$/i.test(value.trim()));
}

function isFile(file: string): boolean {
  try {
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

function describeMissing(dir: string, files: string[]): string {
  if (!existsSync(dir)) return 'folder does not exist';
  const missing = files.filter((file) => !isFile(path.join(dir, file)));
  return `no ${missing.join(' or ')}`;
}

export async function locateModel(options: LocateModelOptions): Promise<LocatedModel> {
  const log = options.log ?? silentLogger();
  const configuredLabels = options.labelsPath ? path.resolve(options.labelsPath) : undefined;
  if (configuredLabels && !isFile(configuredLabels)) {
    throw new ModelNotFoundError(`the configured labels file ${configuredLabels} (--labels / ICAAS_LABELS) does not exist or is not a file`, [`configured labels ${configuredLabels}: not found`]);
  }

  if (options.modelPath) {
    const modelPath = path.resolve(options.modelPath);
    if (!isFile(modelPath)) {
      throw new ModelNotFoundError(
        `the configured model file ${modelPath} (--model / ICAAS_MODEL) does not exist or is not a file; fix the path, or unset it to use the default model`,
        [`configured model ${modelPath}: not found`],
      );
    }
    let labelsPath = configuredLabels;
    if (!labelsPath) {
      const candidates = LABELS_NEXT_TO_MODEL.map((name) => path.join(path.dirname(modelPath), name));
      labelsPath = candidates.find(isFile);
      if (!labelsPath) {
        throw new ModelNotFoundError(
          `no labels file next to the configured model ${modelPath} (looked for ${candidates.join(', ')}); set --labels / ICAAS_LABELS to the model's labels JSON`,
          candidates.map((file) => `labels ${file}: not found`),
        );
      }
    }
    return { modelPath, labelsPath, source: 'configured' };
  }

  const searched: string[] = [];
  const wanted = configuredLabels ? [MODEL_FILE] : [MODEL_FILE, LABELS_FILE];
  const places: Array<{ dir: string; source: 'cache' | 'shared'; name: string }> = [
    { dir: path.resolve(options.cacheDir), source: 'cache', name: 'model cache' },
    { dir: path.resolve(options.sharedDir ?? defaultSharedDir()), source: 'shared', name: 'shared models folder' },
  ];
  for (const place of places) {
    if (wanted.every((file) => isFile(path.join(place.dir, file)))) {
      return {
        modelPath: path.join(place.dir, MODEL_FILE),
        labelsPath: configuredLabels ?? path.join(place.dir, LABELS_FILE),
        source: place.source,
      };
    }
    searched.push(`${place.name} ${place.dir}: ${describeMissing(place.dir, wanted)}`);
  }

  const cacheDir = places[0]!.dir;
  const urls = options.downloadUrls ?? DEFAULT_DOWNLOAD_URLS;
  const allowDownload = options.allowDownload ?? downloadAllowedByEnv();
  if (allowDownload) {
    try {
      await downloadModel({
        cacheDir,
        urls,
        withLabels: !configuredLabels,
        timeoutMs: options.downloadTimeoutMs ?? DEFAULT_DOWNLOAD_TIMEOUT_MS,
        expectedSha256: options.expectedSha256 ?? MODEL_SHA256,
        log,
      });
      return {
        modelPath: path.join(cacheDir, MODEL_FILE),
        labelsPath: configuredLabels ?? path.join(cacheDir, LABELS_FILE),
        source: 'download',
      };
    } catch (error) {
      searched.push(`download into the cache: ${(error as Error).message}`);
    }
  } else {
    searched.push(`download of ${urls.model}: disabled (allowDownload false or ICAAS_MODEL_DOWNLOAD=0)`);
  }

  const message = [
    'no classifier model found. Looked in:',
    ...searched.map((line) => `  - ${line}`),
    'To fix, do one of:',
    '  - set --model / ICAAS_MODEL (and --labels / ICAAS_LABELS) to the ONNX model and its labels JSON;',
    `  - copy ${MODEL_FILE} and ${LABELS_FILE} into ${cacheDir};`,
    '  - allow internet access (and leave ICAAS_MODEL_DOWNLOAD unset) so the model is downloaded into the cache.',
  ].join('\n');
  throw new ModelNotFoundError(message, searched);
}

async function fetchBytes(url: string, timeoutMs: number): Promise<Buffer> {
  const signal = AbortSignal.timeout(timeoutMs);
  const describe = (error: unknown): string => {
    if (signal.aborted) return `timed out after ${timeoutMs / 1000} s`;
    const err = error as Error & { cause?: { message?: string; code?: string } };
    const cause = err.cause?.message || err.cause?.code;
    return cause ? `${err.message} (${cause})` : err.message;
  };
  let response: Response;
  try {
    response = await fetch(url, { signal, redirect: 'follow' });
  } catch (error) {
    throw new Error(`${url}: ${describe(error)}`, { cause: error });
  }
  if (!response.ok || !response.body) {
    await response.body?.cancel().catch(() => {});
    throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`.trimEnd());
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > MAX_DOWNLOAD_BYTES) {
        await reader.cancel().catch(() => {});
        throw new Error(`${url}: larger than ${MAX_DOWNLOAD_BYTES} bytes, refusing it`);
      }
      chunks.push(value);
    }
  } catch (error) {
    if ((error as Error).message.startsWith(url)) throw error;
    throw new Error(`${url}: ${describe(error)}`, { cause: error });
  }
  return Buffer.concat(chunks, total);
}

/** Writes next to the destination and renames, so readers never see a partial file. */
async function writeAtomically(file: string, data: Buffer): Promise<void> {
  const temp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temp, data);
    await rename(temp, file);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

async function downloadModel(options: {
  cacheDir: string;
  urls: { model: string; labels: string };
  withLabels: boolean;
  timeoutMs: number;
  expectedSha256: string;
  log: Logger;
}): Promise<void> {
  const { cacheDir, urls, log } = options;
  log.info({ url: urls.model }, 'downloading the model');
  const model = await fetchBytes(urls.model, options.timeoutMs);
  const digest = createHash('sha256').update(model).digest('hex');
  if (digest !== options.expectedSha256.toLowerCase()) {
    throw new Error(`${urls.model}: sha256 ${digest} does not match the expected ${options.expectedSha256} (${model.length} bytes); nothing was saved`);
  }
  let labels: Buffer | undefined;
  if (options.withLabels) {
    log.info({ url: urls.labels }, 'downloading the labels');
    labels = await fetchBytes(urls.labels, options.timeoutMs);
    // The labels project publishes no checksum, so check the content instead.
    parseLabels(labels.toString('utf8'), urls.labels, MODEL_CLASSES);
  }
  // Only now, with everything verified, does anything touch the cache.
  await mkdir(cacheDir, { recursive: true });
  if (labels) await writeAtomically(path.join(cacheDir, LABELS_FILE), labels);
  await writeAtomically(path.join(cacheDir, MODEL_FILE), model);
  const size = (await stat(path.join(cacheDir, MODEL_FILE))).size;
  log.info({ file: path.join(cacheDir, MODEL_FILE), bytes: size }, 'model saved, sha256 verified');
}
