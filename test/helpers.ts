/** Shared test utilities: temp folders that clean up, and polling with a deadline. */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { UploadAccepted, UploadRefused } from '../src/api-schemas.js';
import type { Queue } from '../src/queue/port.js';
import type { ObjectStore } from '../src/storage/port.js';
import { listeningUrl } from './log-capture.js';

/** Root of the project (tests run from dist/test, so walk up from this file). */
export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const sharedDir = path.resolve(projectRoot, '..', 'shared');
export const sharedImagesDir = path.join(sharedDir, 'images', 'imagenet');
export const sharedModelsDir = path.join(sharedDir, 'models');
/** The compiled CLI entry point, for tests that start real processes. */
export const cliPath = path.join(projectRoot, 'dist', 'src', 'cli.js');

export async function makeTempDir(prefix = 'icaas-test-'): Promise<{ dir: string; cleanup(): Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * Polls `check` until it returns a truthy value or the deadline passes; then throws with
 * `what` and the last value seen, so a failing test says what it was waiting for.
 */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, { timeoutMs = 30_000, intervalMs = 50 } = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  let lastError: unknown;
  for (;;) {
    try {
      last = await check();
      if (last) return last as NonNullable<T>;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const detail = lastError ? ` (last error: ${(lastError as Error).message})` : ` (last value: ${JSON.stringify(last)})`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Receives and deletes everything visible in a queue; returns the bodies in order. */
export async function drainQueue(queue: Queue): Promise<string[]> {
  const bodies: string[] = [];
  for (;;) {
    const messages = await queue.receive({ maxMessages: 10 });
    if (messages.length === 0) return bodies;
    for (const message of messages) {
      bodies.push(message.body);
      await queue.delete(message.receiptHandle);
    }
  }
}

/** The real store, with each call noted as "<operation> <key or prefix>". */
export function recording(store: ObjectStore, calls: string[]): ObjectStore {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        calls.push(`${String(property)} ${String(args[1] ?? '')}`);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

/** Event streams are read by the spec's parser (see sse.ts); re-exported where tests always found them. */
export { serverSentEvents, type ServerSentEvent } from './sse.js';

export interface WebProcess {
  child: ChildProcess;
  /** The address it printed when it started listening. */
  url: string;
  /** Everything it printed so far, stdout and stderr together. */
  output(): string;
  /** SIGTERM, then waits for it to exit. */
  stop(): Promise<void>;
}

/** Starts `icaas web` as its own process, with only PATH and HOME from this environment. */
export async function startWebProcess(args: string[]): Promise<WebProcess> {
  const child = spawn(process.execPath, [cliPath, 'web', '--port', '0', ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  try {
    const url = await waitFor('the web tier to listen', () => {
      if (child.exitCode !== null) throw new Error(`exited: ${output}`);
      return listeningUrl(output);
    }, { timeoutMs: 20_000 });
    return { child, url, output: () => output, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * Posts the files as ONE multipart request to `/api/images`, writing them in turn with the
 * socket's back-pressure, so the sender never holds more than one file in memory. A file
 * given with a name is sent under it as is (no escaping: the caller's names need none).
 * The length is declared up front, as browsers and fetch do for a form. `pauseMs` waits
 * between files, for an upload that takes a while.
 */
export function postFilesInOneRequest(url: string, files: (Buffer | { name: string; body: Buffer })[], options: { pauseMs?: number } = {}): Promise<{ status: number; body: Partial<UploadAccepted> & Partial<UploadRefused> }> {
  const boundary = `----icaas${randomBytes(8).toString('hex')}`;
  const parts = files.map((file, i) => {
    const [name, body] = Buffer.isBuffer(file) ? [`noise-${i}.jpg`, file] : [file.name, file.body];
    return { head: Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="images"; filename="${name}"\r\nContent-Type: image/jpeg\r\n\r\n`), body };
  });
  const closing = Buffer.from(`--${boundary}--\r\n`);
  const length = parts.reduce((sum, part) => sum + part.head.length + part.body.length + 2, closing.length);
  return new Promise((resolve, reject) => {
    const request = http.request(`${url}/api/images`, { method: 'POST', headers: { 'content-type': `multipart/form-data; boundary=${boundary}`, 'content-length': String(length) } }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) }));
      response.on('error', reject);
    });
    request.on('error', reject);
    void (async () => {
      const write = (chunk: Buffer | string) => (request.write(chunk) ? undefined : new Promise((done) => request.once('drain', done)));
      for (const [i, part] of parts.entries()) {
        if (i > 0 && options.pauseMs) await new Promise((done) => setTimeout(done, options.pauseMs));
        await write(part.head);
        await write(part.body);
        await write('\r\n');
      }
      request.end(closing);
    })();
  });
}
