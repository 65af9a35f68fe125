/**
 * The run's event log: one JSON line per event in `<data>/events.jsonl`, written by the
 * service's central components (the web tier records arrivals and, from the output queue,
 * each image's start and finish; the launch controller records launches and instances
 * becoming ready and stopping). It is what `icaas simulate --replay` calibrates against,
 * and it works in both shapes because no worker writes to it.
 *
 * Writes are buffered and appended with O_APPEND, so several processes may share the file.
 * A file past ROTATE_BYTES is renamed to events.1.jsonl (replacing an older one).
 */
import { createReadStream } from 'node:fs';
import { appendFile, mkdir, rename, stat } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { z } from 'zod';

const id = z.string().min(1).max(200);
const at = z.number().finite();

export const runEventSchema = z.discriminatedUnion('type', [
  /** A component started, with the scaling settings in force (the controller writes policy and limits). */
  z.object({ type: z.literal('run'), at, component: z.string().max(50), policy: z.string().max(50).optional(), maxInstances: z.number().int().optional(), capacity: z.number().int().optional(), idleWaitSeconds: z.number().optional(), compute: z.string().max(20).optional() }),
  /** An image was accepted and queued. */
  z.object({ type: z.literal('arrival'), at, imageId: id, batchId: id }),
  /** The launch controller started an instance. */
  z.object({ type: z.literal('launch'), at, instanceId: id }),
  /** The instance's worker first reported: start-up is over. */
  z.object({ type: z.literal('ready'), at, instanceId: id }),
  /** An instance took an image (from its progress message). */
  z.object({ type: z.literal('image-start'), at, instanceId: id, imageId: id, attempt: z.number().int().min(1) }),
  /** An image's final result was recorded. */
  z.object({ type: z.literal('image-finish'), at, imageId: id, instanceId: id.optional(), status: z.enum(['ok', 'error']), serviceMs: z.number().min(0).optional() }),
  /** The instance stopped (by itself, or terminated). */
  z.object({ type: z.literal('stop'), at, instanceId: id }),
]);
export type RunEvent = z.infer<typeof runEventSchema>;

export const EVENT_LOG_FILE = 'events.jsonl';
const ROTATE_BYTES = 64 * 1024 * 1024;
const FLUSH_EVERY_MS = 500;
const FLUSH_AT_LINES = 200;

export interface EventSink {
  record(event: RunEvent): void;
}

/** Discards events: for components run without a data folder, and for tests that do not look. */
export const noEvents: EventSink = { record() {} };

export class EventLog implements EventSink {
  private pending: string[] = [];
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();
  private failed = false;
  readonly file: string;

  constructor(dataDir: string, private readonly onError: (error: unknown) => void = () => {}) {
    this.file = path.join(dataDir, EVENT_LOG_FILE);
  }

  record(event: RunEvent): void {
    this.pending.push(JSON.stringify(event));
    if (this.pending.length >= FLUSH_AT_LINES) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), FLUSH_EVERY_MS).unref();
  }

  /** Writes what is buffered; resolves when it is on disk (or failed, which is reported once). */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return this.writing;
    const text = `${this.pending.join('\n')}\n`;
    this.pending = [];
    this.writing = this.writing.then(async () => {
      try {
        await mkdir(path.dirname(this.file), { recursive: true });
        const size = await stat(this.file).then((s) => s.size, () => 0);
        if (size > ROTATE_BYTES) await rename(this.file, path.join(path.dirname(this.file), 'events.1.jsonl')).catch(() => {});
        await appendFile(this.file, text, { flag: 'a' });
        this.failed = false;
      } catch (error) {
        // Losing calibration data must never stop the service; say so once per run of failures.
        if (!this.failed) this.onError(error);
        this.failed = true;
      }
    });
    return this.writing;
  }

  async close(): Promise<void> {
    await this.flush();
  }
}

/** Reads an event log, skipping lines that do not parse (a torn last line, a newer format). */
export async function readEventLog(file: string): Promise<{ events: RunEvent[]; skipped: number }> {
  const events: RunEvent[] = [];
  let skipped = 0;
  const lines = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim() === '') continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      skipped++;
      continue;
    }
    const event = runEventSchema.safeParse(parsed);
    if (event.success) events.push(event.data);
    else skipped++;
  }
  events.sort((a, b) => a.at - b.at);
  return { events, skipped };
}
