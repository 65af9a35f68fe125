/**
 * The clients of a chaos run: each uploads its share of the images in requests of
 * 1..filesPerRequest files into one batch of its own, spread over the run's duration,
 * retrying every request that never got an answer (the web tier may be down).
 */
import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { sharedImagesDir } from '../helpers.js';
import { sleep, type ChaosOptions } from './options.js';

export interface ImageFile {
  name: string;
  body: Buffer;
}

export interface UploadCounts {
  requests: number;
  accepted: number;
  retried: number;
  refusedConnection: number;
  reset: number;
  busy: number;
  shuttingDown: number;
  serverErrors: number;
}

/** The images the clients upload: the shared JPEGs, repeated as often as needed. */
export async function sharedImageFiles(): Promise<ImageFile[]> {
  const names = readdirSync(sharedImagesDir).filter((name) => /\.jpe?g$/i.test(name)).sort();
  return Promise.all(names.map(async (name) => ({ name, body: await readFile(path.join(sharedImagesDir, name)) })));
}

type UploadBody = { batchId?: string; images?: { id: string; name: string }[]; rejected?: unknown[]; error?: string };

/** What one request came to: accepted into a batch, or to be sent again. */
type Attempt = { accepted: true; batchId: string } | { accepted: false };

export class Uploader {
  /** Every image the service answered 202 for, by id. */
  readonly accepted = new Map<string, { batchId: string; name: string }>();
  readonly batches = new Set<string>();
  readonly counts: UploadCounts = { requests: 0, accepted: 0, retried: 0, refusedConnection: 0, reset: 0, busy: 0, shuttingDown: 0, serverErrors: 0 };
  /** Requests under way: a web tier killed while one is catches an upload midway. */
  inFlight = 0;
  readonly startedAt = Date.now();
  private readonly work: ImageFile[][];
  /** Time between one client's requests, so that its requests span the duration. */
  private readonly gapMs: number;

  constructor(
    private readonly url: string,
    pool: ImageFile[],
    private readonly options: ChaosOptions,
    /** Told of each client's batch once its first upload is accepted. */
    private readonly onBatch: (client: number, batchId: string) => void,
    private readonly failures: string[],
  ) {
    this.work = Array.from({ length: options.clients }, (_, client) => {
      const mine: ImageFile[] = [];
      for (let i = client; i < options.images; i += options.clients) {
        const source = pool[i % pool.length]!;
        mine.push({ name: `c${client}-${i}-${source.name}`, body: source.body });
      }
      return mine;
    });
    const requestsPerClient = Math.max(1, options.images / options.clients / ((1 + options.filesPerRequest) / 2));
    this.gapMs = (options.durationSeconds * 1000) / requestsPerClient;
  }

  /** Runs every client to the end of its share. */
  async run(): Promise<void> {
    await Promise.all(this.work.map((_, index) => this.client(index)));
  }

  private async client(index: number): Promise<void> {
    const files = this.work[index]!;
    let batchId: string | undefined;
    let next = 0;
    // Staggered starts, so the uploads are spread over the whole duration.
    await sleep(Math.random() * this.gapMs);
    while (next < files.length) {
      const take = Math.min(files.length - next, 1 + Math.floor(Math.random() * this.options.filesPerRequest));
      batchId = await this.uploadUntilAccepted(index, files.slice(next, next + take), batchId);
      next += take;
      if (next < files.length) await sleep(this.gapMs * (0.5 + Math.random()));
    }
  }

  /** Sends one request's files until the service accepts them; returns the batch they joined. */
  private async uploadUntilAccepted(index: number, files: ImageFile[], batchId: string | undefined): Promise<string> {
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) this.counts.retried++;
      if (attempt > 200) throw new Error(`client ${index}: an upload failed 200 times`);
      const outcome = await this.uploadOnce(index, files, batchId);
      if (outcome.accepted) return outcome.batchId;
    }
  }

  private async uploadOnce(index: number, files: ImageFile[], batchId: string | undefined): Promise<Attempt> {
    const form = new FormData();
    for (const file of files) form.append('images', new Blob([file.body], { type: 'image/jpeg' }), file.name);
    this.counts.requests++;
    let response: Response;
    this.inFlight++;
    try {
      response = await fetch(`${this.url}/api/images${batchId ? `?batch=${batchId}` : ''}`, { method: 'POST', body: form });
    } catch (error) {
      const code = ((error as Error).cause as { code?: string } | undefined)?.code;
      if (code === 'ECONNREFUSED') this.counts.refusedConnection++;
      else this.counts.reset++;
      await sleep(200 + Math.random() * 300);
      return { accepted: false };
    } finally {
      this.inFlight--;
    }
    let body: UploadBody;
    try {
      body = (await response.json()) as UploadBody;
    } catch {
      // The answer was cut off: the upload is not known to be accepted.
      this.counts.reset++;
      await sleep(200);
      return { accepted: false };
    }
    if (response.status === 202) return { accepted: true, batchId: this.recordAccepted(index, body) };
    await this.backOff(index, response, body);
    return { accepted: false };
  }

  private recordAccepted(index: number, body: UploadBody): string {
    const batchId = body.batchId!;
    this.batches.add(batchId);
    for (const image of body.images ?? []) this.accepted.set(image.id, { batchId, name: image.name });
    if ((body.rejected ?? []).length > 0) this.failures.push(`client ${index}: real images were rejected: ${JSON.stringify(body.rejected)}`);
    this.counts.accepted++;
    this.onBatch(index, batchId);
    return batchId;
  }

  /** Waits as the answer asks (429 busy, 503 shutting down, other 5xx); any other status ends the run. */
  private async backOff(index: number, response: Response, body: UploadBody): Promise<void> {
    const retryAfter = Number(response.headers.get('retry-after') ?? '1');
    if (response.status === 429 || response.status === 503) {
      if (response.status === 429) this.counts.busy++;
      else this.counts.shuttingDown++;
      await sleep(Math.min(5, Math.max(0.2, retryAfter)) * 1000);
      return;
    }
    if (response.status >= 500) {
      this.counts.serverErrors++;
      await sleep(500);
      return;
    }
    throw new Error(`client ${index}: upload answered ${response.status}: ${JSON.stringify(body)}`);
  }
}
