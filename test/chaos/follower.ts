/**
 * A live client of a chaos run: follows one batch's event stream as the page does, to check
 * that each result is shown once, across web-tier restarts.
 */
import { serverSentEvents } from '../sse.js';
import { sleep } from './options.js';

export interface Follower {
  /** Final results seen per image id, on the stream. */
  onStream: Map<string, number>;
  /** Images first seen final in a reload (once connected, or after a reset). */
  afterReset: Set<string>;
  resets: number;
  reconnects: number;
  /** Frames no browser would read as meant (malformed, or data that is not JSON). */
  malformed: string[];
  stop(): Promise<void>;
}

const isFinal = (status: string): boolean => status === 'done' || status === 'error';
const isMalformed = (error: unknown): boolean => error instanceof SyntaxError || /^malformed event stream/.test((error as Error)?.message ?? '');

/**
 * Follows one batch's event stream the way the page does: loads the batch once the stream
 * is open (the stream carries only what happens after it connects), reconnects after any
 * failure with the last event id it saw, as EventSource does, and on `reset` reloads.
 */
export function followBatch(url: () => string, batchId: string): Follower {
  const onStream = new Map<string, number>();
  const afterReset = new Set<string>();
  const follower: Follower = { onStream, afterReset, resets: 0, reconnects: 0, malformed: [], stop: async () => {} };
  const controller = new AbortController();
  let lastEventId: string | undefined;

  /** Notes every image the batch shows final that the stream has not shown. */
  const reload = async (): Promise<void> => {
    for (let attempt = 0; attempt < 50 && !controller.signal.aborted; attempt++) {
      try {
        const response = await fetch(`${url()}/api/batches/${batchId}`, { signal: controller.signal });
        if (!response.ok) throw new Error(String(response.status));
        const batch = (await response.json()) as { images: { id: string; status: string }[] };
        for (const image of batch.images) {
          if (isFinal(image.status) && !onStream.has(image.id)) afterReset.add(image.id);
        }
        return;
      } catch {
        await sleep(200);
      }
    }
  };

  /** Reads one connection to its end (or until it fails). */
  const readConnection = async (): Promise<void> => {
    const response = await fetch(`${url()}/api/events?batch=${batchId}`, {
      headers: lastEventId ? { 'last-event-id': lastEventId } : {},
      signal: controller.signal,
    });
    if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
    if (lastEventId === undefined) await reload();
    for await (const { id, event, data } of serverSentEvents(response.body)) {
      if (id !== undefined) lastEventId = id;
      if (event === 'image') {
        const image = JSON.parse(data) as { id: string; status: string };
        if (isFinal(image.status)) onStream.set(image.id, (onStream.get(image.id) ?? 0) + 1);
      } else if (event === 'reset') {
        follower.resets++;
        await reload();
      }
    }
  };

  const running = (async () => {
    while (!controller.signal.aborted) {
      try {
        await readConnection();
      } catch (error) {
        // Connection refused or cut (the web tier is down or restarting): retry below. A
        // frame that does not parse is the service's fault, and is reported.
        if (isMalformed(error)) follower.malformed.push((error as Error).message);
      }
      if (controller.signal.aborted) break;
      follower.reconnects++;
      await sleep(200);
    }
  })();
  follower.stop = async () => {
    controller.abort();
    await running;
  };
  return follower;
}
