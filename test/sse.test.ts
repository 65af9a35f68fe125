/**
 * The test suite's event-stream reader against streams in every shape the spec allows, from
 * a small HTTP server on loopback: the service itself only ever writes LF line ends, one data
 * line per event and a space after each colon, so these shapes cannot come from it.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parseServerSentEvents, serverSentEvents, type ServerSentEvent } from './sse.js';

/** Serves each request's path as the name of a list of chunks, written one by one with a flush between. */
function streamServer(streams: Record<string, string[]>): http.Server {
  return http.createServer(async (request, response) => {
    const chunks = streams[request.url!.slice(1)];
    if (!chunks) return void response.writeHead(404).end();
    response.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const chunk of chunks) {
      response.write(chunk);
      // A turn of the event loop between chunks, so each arrives as a chunk of its own.
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    response.end();
  });
}

/** Cuts `text` into pieces of `size` characters, so that line ends fall between chunks, CR apart from LF. */
function cut(text: string, size: number): string[] {
  const pieces: string[] = [];
  for (let i = 0; i < text.length; i += size) pieces.push(text.slice(i, i + size));
  return pieces;
}

const SPEC_SHAPES = [
  'retry: 2500\r\n',
  ': a comment, ignored\r\n',
  'id: 7\r\nevent: image\r\ndata: {"a":1}\r\n\r\n',
  // Several data lines are one value joined by LF; no space after the colon keeps every character.
  'data:first line\r\ndata:  second, indented\r\ndata\r\n\r\n',
  // CR alone ends a line too, and an event with no type is a "message".
  'event:status\rdata:{"b":2}\r\r',
  'data: lf only\n\n',
  'id: 8\nevent: image\ndata: {"c":3}\n\n',
  // Not ended by a blank line when the stream ends: EventSource drops it.
  'event: image\ndata: never dispatched\n',
].join('');

const EXPECTED: ServerSentEvent[] = [
  { id: '7', event: 'image', data: '{"a":1}' },
  { event: 'message', data: 'first line\n second, indented\n' },
  { event: 'status', data: '{"b":2}' },
  { event: 'message', data: 'lf only' },
  { id: '8', event: 'image', data: '{"c":3}' },
];

describe('event-stream reader', () => {
  let server: http.Server;
  let url: string;
  before(async () => {
    server = streamServer({
      whole: [SPEC_SHAPES],
      'one-char': cut(SPEC_SHAPES, 1),
      'three-chars': cut(SPEC_SHAPES, 3),
      'bad-retry': ['retry: soon\n\n'],
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  for (const name of ['whole', 'one-char', 'three-chars']) {
    it(`reads CRLF, CR, multi-line data, fields without a space, comments, id and retry (${name})`, async () => {
      const response = await fetch(`${url}/${name}`);
      const events: ServerSentEvent[] = [];
      const retries: number[] = [];
      const comments: string[] = [];
      for await (const event of serverSentEvents(response.body!, { onRetry: (ms) => retries.push(ms), onComment: (text) => comments.push(text) })) events.push(event);
      assert.deepEqual(events, EXPECTED);
      assert.deepEqual(retries, [2500]);
      assert.deepEqual(comments, ['a comment, ignored']);
    });
  }

  it('parses a text read so far the same way', () => {
    const parsed = parseServerSentEvents(SPEC_SHAPES);
    assert.deepEqual(parsed, { events: EXPECTED, retries: [2500], comments: ['a comment, ignored'] });
  });

  it('fails on a field no client would act on, rather than skipping it', async () => {
    const response = await fetch(`${url}/bad-retry`);
    await assert.rejects(async () => {
      for await (const _ of serverSentEvents(response.body!)) void _;
    }, /malformed event stream: Invalid `retry` value: "soon"/);
    assert.throws(() => parseServerSentEvents('colour: blue\n\n'), /malformed event stream/);
  });
});
