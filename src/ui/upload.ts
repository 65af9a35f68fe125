/**
 * Uploads: files from the picker, a chosen folder or a drop (folders included) are sent
 * in requests of at most CHUNK_FILES files or CHUNK_BYTES bytes, one at a time. The first
 * request of a new batch creates it and the rest add to it with ?batch=. XMLHttpRequest is
 * used for its upload progress events, which fetch does not offer.
 */
import { authHeaders, errorText, requestKey } from './api.js';
import { CHUNK_FILES, fileProgress, looksLikeImage, nextChunkSize, retryAfterSeconds } from './plan.js';
import type { ApiImage, Rejection, UploadAccepted, UploadRefused } from './types.js';

export interface NamedFile {
  file: File;
  /** The name sent to the server: the path inside a folder, or the file's own name. */
  name: string;
}

export type PendingState = 'waiting' | 'sending' | 'checking';

export interface Pending extends NamedFile {
  uid: number;
  state: PendingState;
  progress: number;
}

export interface UploaderHooks {
  /** The batch new files join, or undefined to start a new one. */
  target(): string | undefined;
  accepted(batchId: string, images: ApiImage[]): void;
  rejected(rejections: Rejection[]): void;
  /** The server no longer knows the batch the page was adding to. */
  batchGone(batchId: string): void;
  changed(): void;
}

interface Answer {
  status: number;
  body: unknown;
  retryAfter: string | null;
}

const MAX_NETWORK_RETRIES = 3;

export class Uploader {
  /** Files not yet answered for, in order: the ones being sent come first. */
  readonly pending: Pending[] = [];
  /** Statistics of the current run of uploads, reset when the queue empties. */
  totalFiles = 0;
  totalBytes = 0;
  doneFiles = 0;
  doneBytes = 0;
  inFlightBytes = 0;
  startedAt = 0;
  /** Why the queue is waiting (server busy, network), or undefined. */
  notice: string | undefined;
  private running = false;
  private nextUid = 1;
  private maxFiles = CHUNK_FILES;
  private request: XMLHttpRequest | undefined;
  private cancelled = 0;
  private wake: (() => void) | undefined;

  constructor(private readonly hooks: UploaderHooks) {}

  get active(): boolean {
    return this.pending.length > 0;
  }

  enqueue(files: NamedFile[]): void {
    if (files.length === 0) return;
    if (!this.active) {
      this.totalFiles = this.totalBytes = this.doneFiles = this.doneBytes = 0;
      this.startedAt = performance.now();
    }
    for (const file of files) {
      this.pending.push({ ...file, uid: this.nextUid++, state: 'waiting', progress: 0 });
      this.totalFiles++;
      this.totalBytes += file.file.size;
    }
    this.hooks.changed();
    if (!this.running) void this.run();
  }

  /** Drops every file not yet accepted, including the request on the wire. */
  cancel(): void {
    this.cancelled++;
    this.pending.length = 0;
    this.request?.abort();
    this.wake?.();
    this.notice = undefined;
    this.hooks.changed();
  }

  private async run(): Promise<void> {
    this.running = true;
    let failures = 0;
    try {
      while (this.pending.length > 0) {
        const generation = this.cancelled;
        const count = nextChunkSize(this.pending.map((p) => p.file.size), this.maxFiles);
        const chunk = this.pending.slice(0, count);
        const batchId = this.hooks.target();
        for (const item of chunk) {
          item.state = 'sending';
          item.progress = 0;
        }
        this.notice = undefined;
        this.hooks.changed();
        const answer = await this.send(chunk, batchId);
        if (generation !== this.cancelled) continue;
        const { status, body } = answer;
        if (status === 202) {
          failures = 0;
          const outcome = body as UploadAccepted;
          this.finish(chunk);
          this.hooks.accepted(outcome.batchId, outcome.images);
          if (outcome.rejected.length) this.hooks.rejected(outcome.rejected);
        } else if (status === 401) {
          this.reset(chunk);
          await requestKey(errorText(body, status));
        } else if (status === 404 && batchId !== undefined) {
          this.reset(chunk);
          this.hooks.batchGone(batchId);
        } else if (status === 413 && chunk.length > 1) {
          // The server takes fewer files per request than this page assumed.
          this.maxFiles = Math.max(1, Math.floor(chunk.length / 2));
          this.reset(chunk);
        } else if (status === 429 || status === 503) {
          this.reset(chunk);
          await this.pause(retryAfterSeconds(answer.retryAfter), status === 429 ? 'The queue is full' : 'The server is busy');
        } else if (status >= 400 && status < 500) {
          // Every file of the request was refused; the server says why, per file where it can.
          failures = 0;
          this.finish(chunk);
          const rejected = (body as UploadRefused | undefined)?.rejected;
          const reason = errorText(body, status);
          this.hooks.rejected(rejected && rejected.length > 0 ? rejected : chunk.map((item) => ({ name: item.name, reason })));
        } else {
          this.reset(chunk);
          failures++;
          const why = status === 0 ? 'the connection failed' : errorText(body, status);
          if (failures > MAX_NETWORK_RETRIES) {
            failures = 0;
            this.finish(chunk);
            this.hooks.rejected(chunk.map((item) => ({ name: item.name, reason: `upload failed: ${why}` })));
          } else {
            await this.pause(2 ** failures, `Upload failed (${why})`);
          }
        }
      }
    } finally {
      this.running = false;
      this.notice = undefined;
      this.hooks.changed();
    }
  }

  private finish(chunk: Pending[]): void {
    const done = new Set(chunk.map((item) => item.uid));
    for (let i = this.pending.length - 1; i >= 0; i--) if (done.has(this.pending[i]!.uid)) this.pending.splice(i, 1);
    this.doneFiles += chunk.length;
    this.doneBytes += chunk.reduce((sum, item) => sum + item.file.size, 0);
    this.inFlightBytes = 0;
  }

  private reset(chunk: Pending[]): void {
    for (const item of chunk) {
      item.state = 'waiting';
      item.progress = 0;
    }
    this.inFlightBytes = 0;
    this.hooks.changed();
  }

  private async pause(seconds: number, why: string): Promise<void> {
    const until = Date.now() + seconds * 1000;
    await new Promise<void>((resolve) => {
      const tick = () => {
        const left = Math.ceil((until - Date.now()) / 1000);
        if (left <= 0 || this.pending.length === 0) {
          this.wake = undefined;
          resolve();
          return;
        }
        this.notice = `${why}; retrying in ${left}s`;
        this.hooks.changed();
        timer = window.setTimeout(tick, 250);
      };
      let timer = 0;
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
      tick();
    });
    this.notice = undefined;
  }

  private send(chunk: Pending[], batchId: string | undefined): Promise<Answer> {
    const form = new FormData();
    for (const item of chunk) form.append('images', item.file, item.name);
    const sizes = chunk.map((item) => item.file.size);
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      this.request = xhr;
      xhr.open('POST', batchId ? `/api/images?batch=${encodeURIComponent(batchId)}` : '/api/images');
      for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
      xhr.setRequestHeader('accept', 'application/json');
      xhr.responseType = 'text';
      xhr.upload.addEventListener('progress', (event) => {
        if (!event.lengthComputable) return;
        const fractions = fileProgress(sizes, event.loaded, event.total);
        chunk.forEach((item, i) => (item.progress = fractions[i]!));
        this.inFlightBytes = (event.loaded / event.total) * sizes.reduce((a, b) => a + b, 0);
        this.hooks.changed();
      });
      xhr.upload.addEventListener('load', () => {
        // Sent; the server now checks and stores each file before it answers.
        for (const item of chunk) {
          item.state = 'checking';
          item.progress = 1;
        }
        this.hooks.changed();
      });
      const done = () => {
        this.request = undefined;
        let body: unknown;
        try {
          body = xhr.responseText ? JSON.parse(xhr.responseText) : undefined;
        } catch {
          body = undefined;
        }
        resolve({ status: xhr.status, body, retryAfter: xhr.getResponseHeader('retry-after') });
      };
      xhr.addEventListener('loadend', done);
      xhr.send(form);
    });
  }
}

/** Picks the entries out of a drop; this must run inside the drop event, before the data is gone. */
export function droppedEntries(transfer: DataTransfer): { entries: FileSystemEntry[]; files: File[] } {
  const entries: FileSystemEntry[] = [];
  const files: File[] = [];
  const items = Array.from(transfer.items ?? []).filter((item) => item.kind === 'file');
  if (items.length > 0 && typeof items[0]!.webkitGetAsEntry === 'function') {
    for (const item of items) {
      const entry = item.webkitGetAsEntry();
      if (entry) entries.push(entry);
      else {
        const file = item.getAsFile();
        if (file) files.push(file);
      }
    }
  } else {
    files.push(...Array.from(transfer.files));
  }
  return { entries, files };
}

/** Walks dropped entries: files as they are, folders for the images inside them, recursively. */
export async function expandEntries(entries: FileSystemEntry[]): Promise<NamedFile[]> {
  const out: NamedFile[] = [];
  const fileOf = (entry: FileSystemFileEntry) => new Promise<File>((resolve, reject) => entry.file(resolve, reject));
  const walk = async (entry: FileSystemEntry, inFolder: boolean): Promise<void> => {
    if (entry.isFile) {
      const file = await fileOf(entry as FileSystemFileEntry).catch(() => undefined);
      const name = entry.fullPath.replace(/^\//, '') || entry.name;
      if (file && (!inFolder || looksLikeImage(name, file.type))) out.push({ file, name });
      return;
    }
    if (!entry.isDirectory) return;
    const reader = (entry as FileSystemDirectoryEntry).createReader();
    const children: FileSystemEntry[] = [];
    // readEntries answers in pages (100 at a time in Chromium) until it returns none.
    for (;;) {
      const page = await new Promise<FileSystemEntry[]>((resolve, reject) => reader.readEntries(resolve, reject)).catch(() => []);
      if (page.length === 0) break;
      children.push(...page);
    }
    children.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    for (const child of children) await walk(child, true);
  };
  for (const entry of entries) await walk(entry, false);
  return out;
}

/** Files from a file input; those from a folder input are named by their path and filtered to images. */
export function filesFromInput(input: HTMLInputElement): NamedFile[] {
  const files = Array.from(input.files ?? []);
  return files
    .map((file) => ({ file, name: file.webkitRelativePath || file.name }))
    .filter((item) => item.file.webkitRelativePath === '' || looksLikeImage(item.name, item.file.type));
}
