/**
 * Live events over server-sent events. Every image event gets a sequence number and is
 * kept in a bounded history, so a client that reconnects with Last-Event-ID receives
 * exactly what it missed: nothing lost, nothing repeated.
 *
 * Event ids are "<epoch>:<seq>", where the epoch is random per web-tier process. Sequence
 * numbers start again when the web tier restarts and its history starts empty, so a bare
 * number from before a restart would be resolved against the wrong history: some events
 * would be skipped and nothing would tell the client that results recorded while it was
 * away (loaded silently from the output bucket) exist. An id from another epoch, or one
 * older than the history, gets a `reset` event instead: the client reloads the batch once,
 * and the stream carries everything after that point.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ImageView, IndexEvent, ResultsIndex } from './results.js';

interface Recorded {
  seq: number;
  batchId: string;
  data: string;
}

export interface EventHubOptions {
  history?: number;
  /** Extra response headers (security headers: the stream bypasses the framework's hooks). */
  headers?: Record<string, string>;
}

interface Client {
  response: ServerResponse;
  batchId: string | undefined;
}

export class EventHub {
  /** Tells this process's event ids apart from those of an earlier or another web tier. */
  readonly epoch = randomBytes(6).toString('hex');
  private seq = 0;
  private readonly history: Recorded[] = [];
  private readonly clients = new Set<Client>();
  private readonly historySize: number;

  constructor(private readonly index: ResultsIndex, private readonly options: EventHubOptions = {}) {
    this.historySize = options.history ?? 20_000;
    index.on('event', (event) => this.record(event));
  }

  get clientCount(): number {
    return this.clients.size;
  }

  private record(event: IndexEvent): void {
    if (event.kind !== 'image') return;
    const recorded: Recorded = { seq: ++this.seq, batchId: event.image.batchId, data: JSON.stringify(publicImage(event.image)) };
    this.history.push(recorded);
    if (this.history.length > this.historySize) this.history.splice(0, this.history.length - this.historySize);
    for (const client of this.clients) {
      if (client.batchId === recorded.batchId) write(client.response, this.imageFrame(recorded));
    }
  }

  private id(seq: number): string {
    return `${this.epoch}:${seq}`;
  }

  private imageFrame(recorded: Recorded): string {
    return `id: ${this.id(recorded.seq)}\nevent: image\ndata: ${recorded.data}\n\n`;
  }

  /**
   * Sends a status snapshot to every client (not numbered: only the latest matters). Each
   * client sees which image an instance holds only for images of its own batch: image ids
   * are capabilities, and a status stream must not hand out other users' ids.
   */
  broadcastStatus(status: unknown): void {
    if (this.clients.size === 0) return;
    const frames = new Map<string | undefined, string>();
    for (const client of this.clients) {
      let frame = frames.get(client.batchId);
      if (frame === undefined) {
        frame = `event: status\ndata: ${JSON.stringify(statusForBatch(status, this.index, client.batchId))}\n\n`;
        frames.set(client.batchId, frame);
      }
      write(client.response, frame);
    }
  }

  /**
   * Takes over the response and streams events until the client goes away. Image events
   * go only to clients that name a batch: a stream of every batch would show everyone's
   * images to anyone.
   */
  attach(request: IncomingMessage, response: ServerResponse, batchId: string | undefined, lastEventId: string | undefined): void {
    response.writeHead(200, {
      ...this.options.headers,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    response.write(`retry: 1000\n: connected\n\n`);
    const after = parseEventId(lastEventId, this.epoch);
    if (lastEventId !== undefined && lastEventId !== '') {
      const oldest = this.history[0]?.seq ?? this.seq + 1;
      if (after === undefined || after < oldest - 1 || after > this.seq) {
        // Another epoch (the web tier restarted) or history that no longer reaches back that
        // far: the client must reload its state. The id moves it into this epoch, so its
        // next reconnect resumes from here.
        write(response, `id: ${this.id(this.seq)}\nevent: reset\ndata: ${JSON.stringify({ reason: after === undefined ? 'the server restarted' : 'missed events are no longer kept' })}\n\n`);
      } else {
        for (const recorded of this.history) {
          if (recorded.seq > after && batchId !== undefined && recorded.batchId === batchId) write(response, this.imageFrame(recorded));
        }
      }
    } else {
      // Tells a new client where the stream starts, so its first reconnect replays from here.
      write(response, `id: ${this.id(this.seq)}\nevent: hello\ndata: ${JSON.stringify({ seq: this.seq, epoch: this.epoch })}\n\n`);
    }
    const client: Client = { response, batchId };
    this.clients.add(client);
    const heartbeat = setInterval(() => write(response, `: keep-alive\n\n`), 15_000);
    const detach = () => {
      clearInterval(heartbeat);
      this.clients.delete(client);
    };
    request.on('close', detach);
    response.on('error', detach);
  }

  closeAll(): void {
    for (const client of this.clients) client.response.end();
    this.clients.clear();
  }
}

/** The sequence number of an id from this epoch; undefined for any other id. */
function parseEventId(id: string | undefined, epoch: string): number | undefined {
  const match = id === undefined ? null : /^([0-9a-f]+):(\d{1,15})$/.exec(id);
  return match && match[1] === epoch ? Number(match[2]) : undefined;
}

/** The status snapshot with image ids kept only for images of the given batch. */
export function statusForBatch(status: unknown, index: ResultsIndex, batchId: string | undefined): unknown {
  const snapshot = status as { instances?: { imageId?: string }[] } | null;
  if (!snapshot || !Array.isArray(snapshot.instances)) return status;
  return {
    ...snapshot,
    instances: snapshot.instances.map((instance) => {
      if (instance.imageId === undefined) return instance;
      if (batchId !== undefined && index.image(instance.imageId)?.batchId === batchId) return instance;
      const { imageId: _hidden, ...rest } = instance;
      return rest;
    }),
  };
}

function write(response: ServerResponse, frame: string): void {
  if (!response.writableEnded && !response.destroyed) response.write(frame);
}

/** The image as the API shows it. */
export function publicImage(image: ImageView): Record<string, unknown> {
  return {
    id: image.id,
    name: image.name,
    batchId: image.batchId,
    status: image.status,
    attempts: image.attempts,
    size: image.size,
    contentType: image.contentType,
    ...(image.instanceId ? { instanceId: image.instanceId } : {}),
    ...(image.result ? { result: image.result } : {}),
    ...(image.finishedAt ? { finishedAt: image.finishedAt } : {}),
  };
}
