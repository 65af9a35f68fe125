/**
 * Server-sent events as a browser's EventSource reads them, parsed by eventsource-parser (the
 * WHATWG algorithm): LF, CR or CRLF line ends, data split over several lines, a field with or
 * without a space after its colon, comments, `id` and `retry`. Tests use it for every event
 * stream they read, so a frame the browser would read differently fails here too.
 */
import { createParser, type EventSourceMessage, type ParseError } from 'eventsource-parser';

export interface ServerSentEvent {
  /** The id field of this event, when it had one. */
  id?: string;
  /** `message` when the event named no type, as EventSource reports it. */
  event: string;
  data: string;
}

export interface StreamFields {
  /** Each reconnection delay the stream set with `retry:`, in milliseconds. */
  onRetry?(ms: number): void;
  /** Each comment line (`: text`), without its colon. */
  onComment?(text: string): void;
}

function toEvent(message: EventSourceMessage): ServerSentEvent {
  return { ...(message.id !== undefined ? { id: message.id } : {}), event: message.event ?? 'message', data: message.data };
}

/**
 * A field the spec says to ignore (an unknown name, a retry that is not a number) means the
 * server wrote something no client acts on: a test should hear of it, not skip it.
 */
function malformed(error: ParseError): never {
  throw new Error(`malformed event stream: ${error.message}${error.line === undefined ? '' : ` (line ${JSON.stringify(error.line)})`}`);
}

/** Yields the events of a response body as they arrive. */
export async function* serverSentEvents(body: ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>, fields: StreamFields = {}): AsyncGenerator<ServerSentEvent> {
  const ready: ServerSentEvent[] = [];
  const parser = createParser({
    onEvent: (message) => ready.push(toEvent(message)),
    onError: malformed,
    ...(fields.onRetry ? { onRetry: fields.onRetry } : {}),
    ...(fields.onComment ? { onComment: fields.onComment } : {}),
  });
  const decoder = new TextDecoder();
  for await (const chunk of body as AsyncIterable<Uint8Array>) {
    parser.feed(decoder.decode(chunk, { stream: true }));
    yield* ready.splice(0);
  }
  parser.feed(decoder.decode());
  // An event not ended by a blank line when the stream ends is dropped, as EventSource does.
  yield* ready.splice(0);
}

export interface ParsedStream {
  events: ServerSentEvent[];
  retries: number[];
  comments: string[];
}

/** Parses the text of a stream read so far; a last event still open is not included. */
export function parseServerSentEvents(text: string): ParsedStream {
  const parsed: ParsedStream = { events: [], retries: [], comments: [] };
  const parser = createParser({
    onEvent: (message) => parsed.events.push(toEvent(message)),
    onRetry: (ms) => parsed.retries.push(ms),
    onComment: (comment) => parsed.comments.push(comment),
    onError: malformed,
  });
  parser.feed(text);
  return parsed;
}
