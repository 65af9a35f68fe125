/**
 * Live events over server-sent events. Every image event gets a sequence number and is
 * kept in a bounded history, so a client that reconnects with Last-Event-ID receives
 * exactly what it missed: nothing lost, nothing repeated.
 */
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
  private seq = 0;
  private readonly history: Recorded[] = [];
  private readonly clients = new Set<Client>();
  private readonly historySize: number;

  constructor(index: ResultsIndex, private readonly options: EventHubOptions = {}) {
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
      if (!client.batchId || client.batchId === recorded.batchId) write(client.response, `id: ${recorded.seq}\nevent: image\ndata: ${recorded.data}\n\n`);
    }
  }

  /** Sends a status snapshot to every client (not numbered: only the latest matters). */
  broadcastStatus(status: unknown): void {
    if (this.clients.size === 0) return;
    const frame = `event: status\ndata: ${JSON.stringify(status)}\n\n`;
    for (const client of this.clients) write(client.response, frame);
  }

  /** Takes over the response and streams events until the client goes away. */
  attach(request: IncomingMessage, response: ServerResponse, batchId: string | undefined, lastEventId: string | undefined): void {
    response.writeHead(200, {
      ...this.options.headers,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    response.write(`retry: 1000\n: connected\n\n`);
    const after = lastEventId !== undefined && /^\d+$/.test(lastEventId) ? Number(lastEventId) : undefined;
    if (after !== undefined) {
      const oldest = this.history[0]?.seq ?? this.seq + 1;
      if (after < oldest - 1) {
        // The history no longer reaches back that far: the client must reload its state.
        write(response, `event: reset\ndata: {}\n\n`);
      } else {
        for (const recorded of this.history) {
          if (recorded.seq > after && (!batchId || recorded.batchId === batchId)) {
            write(response, `id: ${recorded.seq}\nevent: image\ndata: ${recorded.data}\n\n`);
          }
        }
      }
    } else {
      // Tells a new client where the stream starts, so its first reconnect replays from here.
      write(response, `id: ${this.seq}\nevent: hello\ndata: ${JSON.stringify({ seq: this.seq })}\n\n`);
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
