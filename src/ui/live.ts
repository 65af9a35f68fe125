/**
 * The live connection. While a batch is open the page follows its event stream; the
 * browser reconnects by itself with Last-Event-ID, and every (re)open also triggers a
 * full refetch, which covers whatever the stream cannot replay (the gap before the first
 * connect, a restarted server, a `reset`). Without a batch the page polls the status.
 */
import { getJson, withKey } from './api.js';
import type { ApiImage, StatusSnapshot } from './types.js';

export type ConnectionState = 'idle' | 'connecting' | 'live' | 'reconnecting' | 'offline';

export interface LiveHandlers {
  image(image: ApiImage): void;
  status(status: StatusSnapshot): void;
  /** The stream (re)opened or lost its history: reload the batch. */
  resync(): void;
  state(state: ConnectionState): void;
}

const POLL_MS = 1000;
const MAX_RETRY_MS = 15_000;

export class Live {
  private source: EventSource | undefined;
  private batchId: string | undefined;
  private retryTimer: number | undefined;
  private retryMs = 1000;
  private pollTimer: number | undefined;
  private generation = 0;

  constructor(private readonly handlers: LiveHandlers) {}

  follow(batchId: string | undefined): void {
    if (batchId === this.batchId && (this.source || this.pollTimer !== undefined || this.retryTimer !== undefined)) return;
    this.stop();
    this.batchId = batchId;
    this.retryMs = 1000;
    if (batchId) this.connect(false);
    else this.poll();
  }

  private stop(): void {
    this.generation++;
    this.source?.close();
    this.source = undefined;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
  }

  private connect(again: boolean): void {
    const generation = this.generation;
    const source = new EventSource(withKey(`/api/events?batch=${encodeURIComponent(this.batchId!)}`));
    this.source = source;
    this.handlers.state(again ? 'reconnecting' : 'connecting');
    const parse = <T>(event: Event): T | undefined => {
      try {
        return JSON.parse((event as MessageEvent<string>).data) as T;
      } catch {
        return undefined;
      }
    };
    source.addEventListener('open', () => {
      this.retryMs = 1000;
      this.handlers.state('live');
      this.handlers.resync();
    });
    source.addEventListener('image', (event) => {
      const image = parse<ApiImage>(event);
      if (image) this.handlers.image(image);
    });
    source.addEventListener('status', (event) => {
      const status = parse<StatusSnapshot>(event);
      if (status) this.handlers.status(status);
    });
    source.addEventListener('reset', () => this.handlers.resync());
    source.addEventListener('error', () => {
      if (generation !== this.generation) return;
      if (source.readyState !== EventSource.CLOSED) {
        // The browser retries by itself and resumes after the last event id.
        this.handlers.state('reconnecting');
        return;
      }
      // The browser gave up (an HTTP error such as 401 or 503): try again ourselves, slower each time.
      this.source = undefined;
      this.handlers.state('offline');
      this.retryTimer = window.setTimeout(() => void this.reconnect(generation), this.retryMs);
      this.retryMs = Math.min(MAX_RETRY_MS, this.retryMs * 2);
    });
  }

  private async reconnect(generation: number): Promise<void> {
    this.retryTimer = undefined;
    try {
      // Asks for an API key if that is why the stream was refused.
      this.handlers.status(await getJson<StatusSnapshot>('/api/status'));
    } catch {
      // Still unreachable: the new stream will fail and schedule the next try.
    }
    if (generation === this.generation) this.connect(true);
  }

  private poll(): void {
    const generation = this.generation;
    const tick = async () => {
      if (!document.hidden) {
        try {
          const status = await getJson<StatusSnapshot>('/api/status');
          if (generation !== this.generation) return;
          this.handlers.status(status);
          this.handlers.state('idle');
        } catch {
          if (generation !== this.generation) return;
          this.handlers.state('offline');
        }
      }
      if (generation === this.generation) this.pollTimer = window.setTimeout(() => void tick(), POLL_MS);
    };
    void tick();
  }
}
