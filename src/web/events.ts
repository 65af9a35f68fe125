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
import type { Image } from '../api-schemas.js';
import type { ImageView, IndexEvent, ResultsIndex } from './results.js';

interface Recorded {
  seq: number;
  /** Empty once the batch is deleted: its events are never replayed. */
  batchId: string;
  data: string;
}

export interface EventHubOptions {
  history?: number;
  /** Most connected clients; the server refuses more (see `isFull`). Default 1000. */
  maxClients?: number;
  /**
   * Bytes of a blocked client's own events (recorded while its socket would not take more)
   * after which it is disconnected. Default 1 MiB.
   */
  maxBehindBytes?: number;
  /** How long a client may take no data at all before it is disconnected. Default 30 s. */
  maxBlockedMs?: number;
}

/**
 * A connected client. Its frames are written only while its socket takes them; once a write
 * reports a full buffer, nothing more is written until the socket drains. Meanwhile its image
 * events wait in the shared history (the cursor says how far it got), not in a buffer of its
 * own, and of status snapshots only the latest is kept. So a client that does not read costs
 * the socket's buffer and one status frame, however much happens.
 */
interface Client {
  response: ServerResponse;
  batchId: string | undefined;
  /** The last sequence number this client has been sent or has no use for. */
  cursor: number;
  blocked: boolean;
  /** When the client last took data while blocked (or became blocked). */
  blockedSince: number;
  /** Bytes of its own events recorded while it was blocked. */
  behindBytes: number;
  pendingStatus: string | undefined;
}

export class EventHub {
  /** Tells this process's event ids apart from those of an earlier or another web tier. */
  readonly epoch = randomBytes(6).toString('hex');
  private seq = 0;
  private readonly history: Recorded[] = [];
  private readonly clients = new Set<Client>();
  private readonly historySize: number;
  private readonly maxClients: number;
  private readonly maxBehindBytes: number;
  private readonly maxBlockedMs: number;
  /** Clients disconnected because they did not keep up, since start. */
  slowDisconnects = 0;
  /** Clients that connected, since start. */
  connections = 0;

  constructor(private readonly index: ResultsIndex, private readonly options: EventHubOptions = {}) {
    this.historySize = options.history ?? 20_000;
    this.maxClients = options.maxClients ?? 1000;
    this.maxBehindBytes = options.maxBehindBytes ?? 1024 * 1024;
    this.maxBlockedMs = options.maxBlockedMs ?? 30_000;
    index.on('event', (event) => this.onIndexEvent(event));
  }

  get clientCount(): number {
    return this.clients.size;
  }

  /** True when another client would pass the limit. */
  isFull(): boolean {
    return this.clients.size >= this.maxClients;
  }

  /** Bytes each client's socket holds that it has not taken yet, plus its held status frame. */
  bufferedBytes(): number[] {
    return [...this.clients].map((client) => client.response.writableLength + (client.pendingStatus?.length ?? 0));
  }

  private onIndexEvent(event: IndexEvent): void {
    if (event.kind === 'image') this.record(event.image);
    else if (event.kind === 'deleted') this.forgetBatch(event.batchId);
  }

  private record(image: ImageView): void {
    const recorded: Recorded = { seq: ++this.seq, batchId: image.batchId, data: JSON.stringify(publicImage(image)) };
    this.history.push(recorded);
    if (this.history.length > this.historySize) this.history.splice(0, this.history.length - this.historySize);
    const frame = this.imageFrame(recorded);
    for (const client of this.clients) {
      if (client.blocked) {
        if (client.batchId !== recorded.batchId) continue;
        client.behindBytes += frame.length;
        if (client.behindBytes > this.maxBehindBytes) this.disconnect(client);
        continue;
      }
      client.cursor = recorded.seq;
      if (client.batchId === recorded.batchId) this.send(client, frame);
    }
  }

  /** Deleted: its events are never replayed, and its clients are told and let go. */
  private forgetBatch(batchId: string): void {
    for (const recorded of this.history) if (recorded.batchId === batchId) recorded.batchId = '';
    for (const client of [...this.clients]) {
      if (client.batchId !== batchId) continue;
      this.clients.delete(client);
      if (client.blocked) {
        client.response.destroy();
        continue;
      }
      this.send(client, `event: deleted\ndata: ${JSON.stringify({ batchId })}\n\n`);
      client.response.end();
    }
  }

  private id(seq: number): string {
    return `${this.epoch}:${seq}`;
  }

  private imageFrame(recorded: Recorded): string {
    return `id: ${this.id(recorded.seq)}\nevent: image\ndata: ${recorded.data}\n\n`;
  }

  /** Writes while the socket takes it; a full buffer blocks the client until it drains. */
  private send(client: Client, frame: string): void {
    const response = client.response;
    if (response.writableEnded || response.destroyed) return;
    if (!response.write(frame)) {
      client.blocked = true;
      client.blockedSince = Date.now();
    }
  }

  /** Catches a client up from the history after its socket drained (or after a replay request). */
  private pump(client: Client): void {
    client.blocked = false;
    const oldest = this.history[0]?.seq ?? this.seq + 1;
    if (client.cursor < this.seq && client.cursor + 1 < oldest) {
      // What it missed is no longer kept: it reconnects with its last id and gets a reset.
      this.disconnect(client);
      return;
    }
    for (let i = Math.max(0, client.cursor + 1 - oldest); i < this.history.length; i++) {
      const recorded = this.history[i]!;
      client.cursor = recorded.seq;
      if (client.batchId === undefined || recorded.batchId !== client.batchId) continue;
      this.send(client, this.imageFrame(recorded));
      if (client.blocked) return;
    }
    client.behindBytes = 0;
    const status = client.pendingStatus;
    client.pendingStatus = undefined;
    if (status !== undefined) this.send(client, status);
  }

  private disconnect(client: Client): void {
    this.slowDisconnects++;
    this.clients.delete(client);
    client.response.destroy();
  }

  /**
   * Sends a status snapshot to every client (not numbered: only the latest matters). Each
   * client sees which image an instance holds only for images of its own batch: image ids
   * are capabilities, and a status stream must not hand out other users' ids.
   */
  broadcastStatus(status: unknown): void {
    if (this.clients.size === 0) return;
    const frames = new Map<string | undefined, string>();
    const now = Date.now();
    for (const client of [...this.clients]) {
      let frame = frames.get(client.batchId);
      if (frame === undefined) {
        frame = `event: status\ndata: ${JSON.stringify(statusForBatch(status, this.index, client.batchId))}\n\n`;
        frames.set(client.batchId, frame);
      }
      if (!client.blocked) this.send(client, frame);
      else if (now - client.blockedSince > this.maxBlockedMs) this.disconnect(client);
      else client.pendingStatus = frame;
    }
  }

  /**
   * Takes over the response and streams events until the client goes away. Image events
   * go only to clients that name a batch: a stream of every batch would show everyone's
   * images to anyone. The caller checks `isFull` first.
   */
  attach(request: IncomingMessage, response: ServerResponse, batchId: string | undefined, lastEventId: string | undefined): void {
    // Gone while its batch was being read: its close event has passed, so it would never leave.
    if (!response.socket || response.socket.destroyed) {
      response.destroy();
      return;
    }
    // Headers already set on the response (the security headers) are kept.
    response.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    const client: Client = { response, batchId, cursor: this.seq, blocked: false, blockedSince: 0, behindBytes: 0, pendingStatus: undefined };
    this.send(client, `retry: 1000\n: connected\n\n`);
    const after = parseEventId(lastEventId, this.epoch);
    if (lastEventId !== undefined && lastEventId !== '') {
      const oldest = this.history[0]?.seq ?? this.seq + 1;
      if (after === undefined || after < oldest - 1 || after > this.seq) {
        // Another epoch (the web tier restarted) or history that no longer reaches back that
        // far: the client must reload its state. The id moves it into this epoch, so its
        // next reconnect resumes from here.
        this.send(client, `id: ${this.id(this.seq)}\nevent: reset\ndata: ${JSON.stringify({ reason: after === undefined ? 'the server restarted' : 'missed events are no longer kept' })}\n\n`);
      } else {
        client.cursor = after;
      }
    } else {
      // Tells a new client where the stream starts, so its first reconnect replays from here.
      this.send(client, `id: ${this.id(this.seq)}\nevent: hello\ndata: ${JSON.stringify({ seq: this.seq, epoch: this.epoch })}\n\n`);
    }
    this.clients.add(client);
    this.connections++;
    const unpin = batchId === undefined ? () => {} : this.index.pin(batchId);
    if (!client.blocked) this.pump(client);
    const heartbeat = setInterval(() => {
      if (!client.blocked) this.send(client, `: keep-alive\n\n`);
    }, 15_000);
    const drained = () => {
      client.blockedSince = Date.now();
      if (client.blocked && this.clients.has(client)) this.pump(client);
    };
    const detach = () => {
      clearInterval(heartbeat);
      unpin();
      response.off('drain', drained);
      this.clients.delete(client);
    };
    response.on('drain', drained);
    request.on('close', detach);
    response.on('close', detach);
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
export function statusForBatch<T>(status: T, index: ResultsIndex, batchId: string | undefined): T {
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
  } as T;
}

/** The image as the API shows it. */
export function publicImage(image: ImageView): Image {
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
