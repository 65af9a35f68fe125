/**
 * `icaas classify`: uploads files and folders to a running service, shows progress, and
 * prints one line per image as its result lands.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { Batch, UploadAccepted, UploadRefused } from './api-schemas.js';

const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.gif', '.webp', '.tif', '.tiff', '.avif']);
/** Bytes per upload request: large batches go up in several requests into one batch. */
const REQUEST_BYTES = 32 * 1024 * 1024;

export interface ClassifyOptions {
  inputs: string[];
  url: string;
  apiKey?: string;
  json?: boolean;
  maxFiles: number;
  out?: (line: string) => void;
  progress?: (line: string) => void;
  pollMs?: number;
}

/** Files named on the command line are sent as they are; folders contribute their images. */
export async function collectFiles(inputs: string[]): Promise<string[]> {
  const files: string[] = [];
  const walk = async (dir: string) => {
    const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name));
    for (const entry of entries) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile() && IMAGE_EXTENSIONS.has(path.extname(entry.name).toLowerCase())) files.push(full);
    }
  };
  for (const input of inputs) {
    const info = await stat(input).catch(() => null);
    if (!info) throw new Error(`${input}: no such file or folder`);
    if (info.isDirectory()) await walk(input);
    else files.push(input);
  }
  return files;
}

export async function classifyCommand(options: ClassifyOptions): Promise<number> {
  const out = options.out ?? ((line) => process.stdout.write(`${line}\n`));
  const isTty = process.stderr.isTTY;
  const progress = options.progress ?? ((line) => process.stderr.write(isTty ? `\r\u001b[K${line}` : `${line}\n`));
  if (options.inputs.length === 0) {
    process.stderr.write('icaas classify: name at least one image file or folder\n');
    return 2;
  }
  const base = options.url.replace(/\/$/, '');
  const headers: Record<string, string> = options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {};
  let files: string[];
  try {
    files = await collectFiles(options.inputs);
  } catch (error) {
    process.stderr.write(`icaas classify: ${(error as Error).message}\n`);
    return 2;
  }
  if (files.length === 0) {
    process.stderr.write('icaas classify: no image files found\n');
    return 2;
  }

  // Display names are relative to the common folder, so results line up with what was named.
  const labelOf = new Map<string, string>();
  let batchId: string | undefined;
  let failures = 0;
  let uploaded = 0;
  const accepted: { id: string; file: string }[] = [];
  for (const chunk of await chunkFiles(files, options.maxFiles)) {
    const form = new FormData();
    for (const file of chunk) form.append('images', new Blob([await readFile(file)]), path.basename(file));
    const url = `${base}/api/images${batchId ? `?batch=${encodeURIComponent(batchId)}` : ''}`;
    const body = await postWithRetry(url, form, headers, progress);
    if (!body.batchId && body.images?.length) throw new Error('the service answered without a batch id');
    batchId ??= body.batchId ?? undefined;
    const names = chunk.map((file) => path.basename(file));
    let nameCursor = 0;
    for (const image of body.images ?? []) {
      const index = names.indexOf(image.name, nameCursor);
      const file = index >= 0 ? chunk[index]! : image.name;
      if (index >= 0) nameCursor = index + 1;
      accepted.push({ id: image.id, file });
      labelOf.set(image.id, file);
    }
    for (const rejection of body.rejected ?? []) {
      failures++;
      out(options.json ? JSON.stringify({ file: rejection.name, status: 'rejected', error: rejection.reason }) : `${rejection.name}: rejected: ${rejection.reason}`);
    }
    uploaded += chunk.length;
    progress(`uploaded ${uploaded}/${files.length} files`);
  }
  if (isTty) process.stderr.write('\n');
  if (!batchId || accepted.length === 0) return 1;

  const reported = new Set<string>();
  const started = Date.now();
  while (reported.size < accepted.length) {
    const response = await fetch(`${base}/api/batches/${encodeURIComponent(batchId)}`, { headers });
    if (!response.ok) throw new Error(`GET /api/batches/${batchId}: ${response.status} ${await response.text()}`);
    const batch = (await response.json()) as Batch;
    for (const image of batch.images) {
      if (reported.has(image.id) || !labelOf.has(image.id)) continue;
      if (image.status !== 'done' && image.status !== 'error') continue;
      reported.add(image.id);
      const file = labelOf.get(image.id)!;
      if (image.status === 'error') failures++;
      const result = image.result;
      if (options.json) out(JSON.stringify({ file, id: image.id, status: image.status, attempts: image.attempts, ...result }));
      else if (result && 'label' in result) out(`${file}: ${result.label} (${result.probability.toFixed(3)})`);
      else out(`${file}: error: ${result && 'error' in result ? result.error : 'no result'} (after ${image.attempts} attempts)`);
    }
    const seconds = (Date.now() - started) / 1000;
    progress(`classified ${reported.size}/${accepted.length} in ${seconds.toFixed(0)}s${failures ? `, ${failures} failed` : ''}`);
    if (reported.size < accepted.length) await delay(options.pollMs ?? 500);
  }
  if (isTty) process.stderr.write('\n');
  return failures > 0 ? 1 : 0;
}

async function chunkFiles(files: string[], maxFiles: number): Promise<string[][]> {
  const chunks: string[][] = [];
  let current: string[] = [];
  let bytes = 0;
  for (const file of files) {
    const size = (await stat(file)).size;
    if (current.length > 0 && (current.length >= maxFiles || bytes + size > REQUEST_BYTES)) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(file);
    bytes += size;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

/** An accepted upload, or one whose every file was rejected (400, each with its reason). */
type UploadResponse = UploadAccepted | UploadRefused;

async function postWithRetry(url: string, form: FormData, headers: Record<string, string>, progress: (line: string) => void): Promise<UploadResponse> {
  for (let attempt = 1; ; attempt++) {
    let response: Response;
    try {
      response = await fetch(url, { method: 'POST', body: form, headers });
    } catch (error) {
      throw new Error(`cannot reach the service at ${new URL(url).origin} (${(error as Error & { cause?: Error }).cause?.message ?? (error as Error).message}); is it running? Start it with \`npm start\` or pass --url`);
    }
    if (response.status === 429 && attempt < 60) {
      const seconds = Number(response.headers.get('retry-after')) || 5;
      progress(`the service is busy; retrying in ${seconds}s`);
      await delay(seconds * 1000);
      continue;
    }
    const body = (await response.json().catch(() => ({}))) as UploadResponse;
    // 400 with per-file rejections is a normal answer: every file in that request was refused.
    if (response.ok || (response.status === 400 && body.rejected)) return body;
    throw new Error(`upload failed: ${response.status} ${'error' in body ? body.error : response.statusText}`);
  }
}
