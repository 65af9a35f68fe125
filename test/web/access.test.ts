/**
 * Access control and exposure: API keys on every API and event endpoint, security headers
 * on every response, no paths of the machine in answers, and no way to reach another
 * user's batch without its id. In-process on the real embedded adapters, plus the real
 * CLI for the start-up warning.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import Database from '../../src/sqlite-driver.js';
import { resultKey, type ImageResult } from '../../src/messages.js';
import type { Runtime } from '../../src/runtime.js';
import type { WebTier } from '../../src/web/index.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';
import { drainQueue, makeTempDir, sharedImagesDir, startWebProcess, waitFor } from '../helpers.js';
import { parseLogLines } from '../log-capture.js';
import { parseServerSentEvents, type ServerSentEvent } from '../sse.js';

const KEYS = ['first-key-0123456789', 'second-key-abcdefghij'];

const SECURITY_HEADERS = {
  'content-security-policy': /default-src 'self'.*frame-ancestors 'none'/,
  'x-content-type-options': /^nosniff$/,
  'x-frame-options': /^DENY$/,
  'referrer-policy': /^no-referrer$/,
  'cross-origin-opener-policy': /^same-origin$/,
  'cross-origin-resource-policy': /^same-origin$/,
  'permissions-policy': /^camera=\(\), microphone=\(\), geolocation=\(\)$/,
};

function assertSecurityHeaders(headers: Headers, what: string): void {
  for (const [name, pattern] of Object.entries(SECURITY_HEADERS)) {
    assert.match(headers.get(name) ?? '', pattern, `${what}: header ${name}`);
  }
}

/** Reads a server-sent event stream until `until` holds or the time is up; returns the text. */
/** The events of one type in a stream's text, as EventSource would read them. */
function eventsOf(text: string, type: string): ServerSentEvent[] {
  return parseServerSentEvents(text).events.filter((event) => event.event === type);
}

async function readStream(url: string, headers: Record<string, string>, until: (text: string) => boolean, timeoutMs = 5000): Promise<{ status: number; headers: Headers; text: string }> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  const response = await fetch(url, { headers, signal: controller.signal });
  let text = '';
  try {
    if (response.ok) {
      const decoder = new TextDecoder();
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        text += decoder.decode(chunk, { stream: true });
        if (until(text)) break;
      }
    } else {
      text = await response.text();
    }
  } catch (error) {
    // Only the time running out is expected (the caller checks what arrived); anything else,
    // a malformed event or a failed check in `until`, is the test's failure.
    if (!controller.signal.aborted) throw error;
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
  return { status: response.status, headers: response.headers, text };
}

/**
 * Sends a request with its target exactly as written (fetch would normalise it) and returns
 * the status and what arrived of the body within a short time: a stream that was let
 * through would never end.
 */
async function rawRequest(port: number, method: string, target: string, headers: Record<string, string> = {}, body?: Buffer): Promise<{ status: number; head: string; body: string }> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  let received = Buffer.alloc(0);
  const done = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 2000);
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const end = received.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: *(\d+)/i.exec(received.subarray(0, Math.max(end, 0)).toString('latin1'))?.[1];
      if (end >= 0 && length !== undefined && received.length >= end + 4 + Number(length)) {
        clearTimeout(timer);
        resolve();
      }
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  const lines = [`${method} ${target} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: close', ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`)];
  if (body) lines.push(`Content-Length: ${body.length}`);
  socket.write(Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'), body ?? Buffer.alloc(0)]));
  await done;
  socket.destroy();
  const text = received.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), head: end >= 0 ? text.slice(0, end) : text, body: end >= 0 ? text.slice(end + 4) : '' };
}

/** Ways to write a path that a router, a proxy or a string check might each read differently. */
function spellings(route: string, origin: string): string[] {
  const segments = route.split('/').slice(1);
  const hex = (char: string, upper: boolean) => `%${char.charCodeAt(0).toString(16)[upper ? 'toUpperCase' : 'toLowerCase']()}`;
  const encodeLetters = (text: string, upper: boolean) => text.replace(/[a-z]/gi, (char) => hex(char, upper));
  const firstLetterEncoded = '/' + segments.map((segment) => segment.replace(/^[a-z]/i, (char) => hex(char, true))).join('/');
  const spelled = [
    route,
    firstLetterEncoded,
    '/' + segments.map((segment) => encodeLetters(segment, true)).join('/'),
    '/' + segments.map((segment) => encodeLetters(segment, false)).join('/'),
    '/' + segments.map((segment, i) => (i % 2 ? encodeLetters(segment, true) : encodeLetters(segment, false))).join('/'),
    '/' + segments.join('%2F'),
    '/' + segments.join('%2f'),
    '/' + segments.join('//'),
    '/' + route,
    route + '/',
    route + '?',
    route + '#',
    route + '?#',
    route + '#/',
    route + ';',
    route + '%00',
    route + '%20',
    route.toUpperCase(),
    '/' + segments.map((segment) => segment.charAt(0).toUpperCase() + segment.slice(1)).join('/'),
    '/x/..' + route,
    '/x/%2e%2e' + route,
    '/x/%2E%2E' + route,
    '/%2e%2e' + route,
    '/.' + route,
    '/%2e' + route,
    '/' + segments[0] + '/.' + route.slice(segments[0]!.length + 1),
    '/' + segments[0] + '/%2e' + route.slice(segments[0]!.length + 1),
    '/' + segments.join('\\'),
    `${origin}${route}`,
    `${origin}${firstLetterEncoded}`,
  ];
  return [...new Set(spelled)];
}

describe('access control and exposure', async () => {
  const temp = await makeTempDir();
  let runtime: Runtime;
  let web: WebTier;
  let url: string;
  const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
  const bearer = { authorization: `Bearer ${KEYS[1]}` };

  let tier: InProcessWebTier | undefined;
  before(async () => {
    tier = await startInProcessWebTier(temp.dir, ['--api-keys', KEYS.join(',')]);
    ({ runtime, web, url } = tier);
  });
  after(async () => {
    await tier?.stop();
    await temp.cleanup();
  });

  const upload = async (name: string, headers: Record<string, string> = bearer, query = '') => {
    const form = new FormData();
    form.append('images', new Blob([tench]), name);
    const response = await fetch(`${url}/api/images${query}`, { method: 'POST', body: form, headers });
    return { status: response.status, headers: response.headers, body: (await response.json()) as any };
  };
  const finish = async (imageId: string, batchId: string) => {
    const result: ImageResult = {
      status: 'ok', imageId, batchId, name: 'x.jpg', attempts: 1, instanceId: 'i-test',
      label: 'tench', probability: 0.9, top5: [{ label: 'tench', probability: 0.9 }], durationMs: 5, finishedAt: Date.now(),
    };
    await runtime.store.put(runtime.config.outputBucket, resultKey(imageId), Buffer.from(JSON.stringify(result)));
    await runtime.queues.output.send(JSON.stringify({ type: 'result', result }));
  };

  it('refuses every API and event endpoint without a valid key, with a JSON 401 and security headers', async () => {
    const mine = await upload('mine.jpg');
    assert.equal(mine.status, 202);
    const { batchId } = mine.body;
    const imageId = mine.body.images[0].id;
    await drainQueue(runtime.queues.launch);
    const requests: [string, string][] = [
      ['GET', '/api/status'],
      ['GET', `/api/batches/${batchId}`],
      ['GET', `/api/images/${imageId}`],
      ['GET', `/api/images/${imageId}/input`],
      ['GET', `/api/events?batch=${batchId}`],
      ['POST', '/api/images'],
      ['POST', '/'],
      ['POST', '/classify'],
      ['GET', '/metrics'],
      ['GET', '/api/batches/unknown'],
    ];
    const wrong: Record<string, string>[] = [
      {},
      { authorization: 'Bearer not-a-key' },
      { authorization: `Bearer ${KEYS[0]}x` },
      { authorization: `Bearer ${KEYS[0]!.slice(0, -1)}` },
      { authorization: `Basic ${Buffer.from(`user:${KEYS[0]}`).toString('base64')}` },
      { 'x-api-key': 'nope' },
      { 'x-api-key': '' },
    ];
    for (const [method, route] of requests) {
      for (const headers of wrong) {
        const response = await fetch(`${url}${route}`, { method, headers, ...(method === 'POST' ? { body: new FormData() } : {}) });
        const what = `${method} ${route} with ${JSON.stringify(headers)}`;
        assert.equal(response.status, 401, what);
        assert.equal(response.headers.get('www-authenticate'), 'Bearer realm="icaas"', what);
        assertSecurityHeaders(response.headers, what);
        const body = (await response.json()) as { error: string };
        assert.match(body.error, /API key/, what);
      }
    }
    // A key in the query string counts only where a browser cannot send headers.
    for (const route of ['/api/status', `/api/batches/${batchId}`, `/api/images/${imageId}`, '/metrics']) {
      assert.equal((await fetch(`${url}${route}${route.includes('?') ? '&' : '?'}key=${KEYS[0]}`)).status, 401, `${route} with ?key=`);
    }
    const postWithQueryKey = new FormData();
    postWithQueryKey.append('images', new Blob([tench]), 'q.jpg');
    assert.equal((await fetch(`${url}/api/images?key=${KEYS[0]}`, { method: 'POST', body: postWithQueryKey })).status, 401);
  });

  it('decides access by the route the router matched, whatever the spelling of the path', async () => {
    const { body } = await upload('spelled.jpg');
    await drainQueue(runtime.queues.launch);
    const batchId = body.batchId as string;
    const imageId = body.images[0].id as string;
    const port = Number(new URL(url).port);
    const inputKeys = async () => {
      const keys: string[] = [];
      for await (const object of runtime.store.list(runtime.config.inputBucket)) keys.push(object.key);
      return keys;
    };

    // Every route says who may call it; only these are open to all, and only these take a
    // key in the query. A new route is protected unless it is added here deliberately.
    const routes = web.server.routes;
    const named = (auth: string) => routes.filter((route) => route.auth === auth).map((route) => `${route.method} ${route.url}`).sort();
    assert.deepEqual(named('public'), ['GET /', 'GET /assets/:file', 'GET /healthz', 'GET /openapi.json', 'HEAD /', 'HEAD /assets/:file', 'HEAD /healthz', 'HEAD /openapi.json']);
    assert.deepEqual(named('key-or-query'), ['GET /api/events', 'GET /api/images/:id/input', 'HEAD /api/events', 'HEAD /api/images/:id/input']);
    for (const route of routes) assert.ok(['public', 'key', 'key-or-query'].includes(route.auth), `${route.method} ${route.url}: ${route.auth}`);
    const guarded = routes.filter((route) => route.auth !== 'public');
    assert.ok(guarded.length >= 13, `the protected routes are listed: ${guarded.map((route) => `${route.method} ${route.url}`).join(', ')}`);

    const form = new FormData();
    form.append('images', new Blob([tench]), 'sneaky.jpg');
    const encoded = new Response(form);
    const uploadBody = Buffer.from(await encoded.arrayBuffer());
    const uploadType = encoded.headers.get('content-type')!;
    const keysBefore = await inputKeys();
    let requests = 0;
    for (const route of guarded) {
      // Real ids, so a request let through would answer with data.
      const target = route.url.replace(':id', route.url.startsWith('/api/images') ? imageId : batchId).replace(/:\w+/g, 'x');
      const withBody = route.method === 'POST' || route.method === 'PUT' || route.method === 'PATCH';
      for (const spelling of spellings(target, `http://127.0.0.1:${port}`)) {
        for (const query of ['', `${spelling.includes('?') ? '&' : '?'}key=not-a-key`]) {
          const answer = await rawRequest(port, route.method, spelling + query, withBody ? { 'content-type': uploadType } : {}, withBody ? uploadBody : undefined);
          requests++;
          const what = `${route.method} ${spelling + query} (route ${route.url}): ${answer.status} ${answer.body.slice(0, 200)}`;
          assert.ok([400, 401, 404].includes(answer.status), what);
          for (const secret of [batchId, imageId, 'queues', 'icaas_', 'event:', '\xff\xd8\xff']) assert.ok(!answer.body.includes(secret), `${what} reveals ${JSON.stringify(secret)}`);
          if (answer.status !== 400 && route.method !== 'HEAD') assert.deepEqual(Object.keys(JSON.parse(answer.body) as object), ['error'], what);
        }
      }
    }
    assert.ok(requests > 500, `${requests} requests`);
    assert.deepEqual(await inputKeys(), keysBefore, 'no request stored anything');
    assert.deepEqual(await drainQueue(runtime.queues.launch), [], 'no request queued anything');
  });

  it('answers a path no route matches as it answers a protected one, so neither leaks', async () => {
    const port = Number(new URL(url).port);
    const answers = await Promise.all(['/api/status', '/api/nope', '/nope', '/api/batches', '/.env', '/metrics/'].map((target) => rawRequest(port, 'GET', target)));
    for (const answer of answers) {
      assert.equal(answer.status, 401);
      assert.equal(answer.body, answers[0]!.body);
    }
    // With a key, an unknown path is a plain 404.
    const unknown = await fetch(`${url}/api/nope`, { headers: bearer });
    assert.equal(unknown.status, 404);
    assert.deepEqual(await unknown.json(), { error: 'no route GET /api/nope' });
  });

  it('lets a valid key in by Authorization: Bearer, x-api-key, and ?key= for events and images', async () => {
    for (const key of KEYS) {
      for (const headers of [{ authorization: `Bearer ${key}` }, { 'x-api-key': key }] as Record<string, string>[]) {
        const response = await fetch(`${url}/api/status`, { headers });
        assert.equal(response.status, 200, JSON.stringify(headers));
        assertSecurityHeaders(response.headers, 'status');
      }
    }
    const { body } = await upload('keyed.jpg', { 'x-api-key': KEYS[0]! });
    await drainQueue(runtime.queues.launch);
    const stream = await readStream(`${url}/api/events?batch=${body.batchId}&key=${encodeURIComponent(KEYS[0]!)}`, {}, (text) => eventsOf(text, 'hello').length > 0);
    assert.equal(stream.status, 200);
    assert.equal(stream.headers.get('content-type'), 'text/event-stream; charset=utf-8');
    assertSecurityHeaders(stream.headers, 'event stream');
    assert.equal(eventsOf(stream.text, 'hello').length, 1, stream.text);
    const input = await fetch(`${url}/api/images/${body.images[0].id}/input?key=${encodeURIComponent(KEYS[1]!)}`);
    assert.equal(input.status, 200);
    assert.deepEqual(Buffer.from(await input.arrayBuffer()), tench);
    const metrics = await fetch(`${url}/metrics`, { headers: bearer });
    assert.equal(metrics.status, 200);
  });

  it('keeps /healthz and the page open, with security headers', async () => {
    const health = await fetch(`${url}/healthz`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { ok: true });
    assertSecurityHeaders(health.headers, 'healthz');
    const page = await fetch(`${url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    assertSecurityHeaders(page.headers, 'page');
    // The whole policy, directive by directive: nothing loosened, and nothing that breaks the
    // page over plain HTTP (upgrade-insecure-requests) or binds other hosts (HSTS).
    const policy = (page.headers.get('content-security-policy') ?? '').split(';').map((directive) => directive.trim()).filter(Boolean).sort();
    assert.deepEqual(policy, [
      "base-uri 'none'", "connect-src 'self'", "default-src 'self'", "form-action 'self'", "frame-ancestors 'none'",
      "img-src 'self' blob: data:", "object-src 'none'", "script-src 'self'", "style-src 'self'",
    ]);
    assert.equal(page.headers.get('strict-transport-security'), null);
    const asset = await fetch(`${url}/assets/app.js`);
    assert.equal(asset.status, 200);
    assert.match(asset.headers.get('content-type') ?? '', /javascript/);
    assertSecurityHeaders(asset.headers, 'asset');
  });

  it('puts security headers on errors too, and no path of the machine in any answer', async () => {
    const answers: { what: string; status: number; headers: Headers; text: string }[] = [];
    const record = async (what: string, request: Promise<Response>) => {
      const response = await request;
      answers.push({ what, status: response.status, headers: response.headers, text: await response.text() });
    };
    await record('unknown route', fetch(`${url}/nope/../../etc/passwd`));
    await record('unknown asset', fetch(`${url}/assets/..%2F..%2Fpackage.json`));
    await record('dot asset', fetch(`${url}/assets/.env`));
    await record('unknown batch', fetch(`${url}/api/batches/${'A'.repeat(16)}`, { headers: bearer }));
    await record('unknown image', fetch(`${url}/api/images/%2e%2e%2f%2e%2e%2fqueues.db/input`, { headers: bearer }));
    await record('bad JSON', fetch(`${url}/api/images`, { method: 'POST', headers: { ...bearer, 'content-type': 'application/json' }, body: '{not json' }));
    await record('not multipart', fetch(`${url}/api/images`, { method: 'POST', headers: { ...bearer, 'content-type': 'text/plain' }, body: 'hi' }));
    await record('bad multipart', fetch(`${url}/api/images`, { method: 'POST', headers: { ...bearer, 'content-type': 'multipart/form-data; boundary=zz' }, body: '--zz\r\nbroken' }));
    await record('text as image', (async () => {
      const form = new FormData();
      form.append('f', new Blob(['plain text']), '/etc/x.jpg');
      return fetch(`${url}/api/images`, { method: 'POST', headers: bearer, body: form });
    })());
    await record('unknown batch to add to', fetch(`${url}/api/images?batch=nope`, { method: 'POST', headers: bearer, body: new FormData() }));
    await record('wrong method', fetch(`${url}/api/status`, { method: 'DELETE', headers: bearer }));
    for (const answer of answers) {
      assert.ok(answer.status >= 400 && answer.status < 500, `${answer.what}: ${answer.status} ${answer.text}`);
      assertSecurityHeaders(answer.headers, answer.what);
      assert.equal(typeof (JSON.parse(answer.text) as { error?: unknown }).error, 'string', `${answer.what}: ${answer.text}`);
      // The data folder, and any path under it, stays on the machine.
      assert.ok(!answer.text.includes(temp.dir), `${answer.what} reveals a path: ${answer.text}`);
      assert.ok(!/\/(tmp|home|work|usr|var)\/[^\s"]*\/(buckets|queues\.db|instances\.db)/.test(answer.text), `${answer.what} reveals a path: ${answer.text}`);
    }
  });

  it('shows a batch only to whoever has its id: no listing, no ids in status or in streams without a batch', async () => {
    const alice = await upload('alice.jpg');
    const bob = await upload('bob.jpg');
    await drainQueue(runtime.queues.launch);
    const aliceImage = alice.body.images[0].id as string;
    const bobImage = bob.body.images[0].id as string;
    // Ids are 96 random bits, base64url.
    for (const id of [alice.body.batchId, bob.body.batchId, aliceImage, bobImage]) assert.match(id, /^[A-Za-z0-9_-]{16}$/);
    assert.notEqual(alice.body.batchId, bob.body.batchId);

    for (const route of ['/api/batches', '/api/batches/', '/api/images', '/api/images/', '/api/results', '/api/events/all']) {
      const response = await fetch(`${url}${route}`, { headers: bearer });
      assert.equal(response.status, 404, route);
    }

    // An instance holding Bob's image, as the registry of a busy worker says.
    const registry = new Database(path.join(temp.dir, 'instances.db'));
    try {
      registry.prepare(`INSERT INTO instances (id, pid, state, started_at, updated_at, image_id, processed) VALUES ('i-busy', NULL, 'busy', ?, ?, ?, 0)`).run(Date.now(), Date.now(), bobImage);
    } finally {
      registry.close();
    }
    const status = async (query: string) => {
      const response = await fetch(`${url}/api/status${query}`, { headers: bearer });
      return (await response.json()) as { instances: { id: string; imageId?: string }[] };
    };
    const listed = (await status('')).instances.find((instance) => instance.id === 'i-busy');
    assert.ok(listed, 'the instance is listed');
    assert.equal(listed.imageId, undefined, 'without a batch, status names no image');
    assert.equal((await status(`?batch=${alice.body.batchId}`)).instances.find((instance) => instance.id === 'i-busy')?.imageId, undefined, 'Alice does not see Bob\'s image id');
    assert.equal((await status(`?batch=${bob.body.batchId}`)).instances.find((instance) => instance.id === 'i-busy')?.imageId, bobImage, 'Bob sees his own');
    assert.ok(!JSON.stringify(await status(`?batch=${alice.body.batchId}`)).includes(bobImage));

    // Live events: a stream without a batch carries status only, and its status names no image;
    // Alice's stream carries nothing of Bob's.
    // Both streams stay open until Alice's has seen her result and each has seen a status
    // after that, so both are connected for the whole exchange however slowly either starts.
    let aliceSawDone = false;
    let anyStatusesAtDone = -1;
    let aliceStatusesAtDone = -1;
    const anyStream = readStream(`${url}/api/events`, bearer, (text) => {
      const statuses = eventsOf(text, 'status').length;
      if (aliceSawDone && anyStatusesAtDone < 0) anyStatusesAtDone = statuses;
      return anyStatusesAtDone >= 0 && statuses > anyStatusesAtDone;
    }, 20_000);
    const aliceStream = readStream(`${url}/api/events?batch=${alice.body.batchId}`, bearer, (text) => {
      const statuses = eventsOf(text, 'status').length;
      if (!aliceSawDone && eventsOf(text, 'image').some((event) => (JSON.parse(event.data) as { status: string }).status === 'done')) {
        aliceSawDone = true;
        aliceStatusesAtDone = statuses;
      }
      return aliceSawDone && statuses > aliceStatusesAtDone;
    }, 20_000);
    await waitFor('both streams to be connected', () => web.server.hub.clientCount >= 2);
    await finish(bobImage, bob.body.batchId);
    await finish(aliceImage, alice.body.batchId);
    const [everything, alices] = await Promise.all([anyStream, aliceStream]);
    assert.ok(eventsOf(everything.text, 'status').length > 0, everything.text);
    assert.deepEqual(eventsOf(everything.text, 'image'), []);
    assert.ok(!everything.text.includes(bobImage) && !everything.text.includes(aliceImage), 'the stream without a batch names no image');
    assert.match(alices.text, new RegExp(`"id":"${aliceImage}"`));
    assert.ok(!alices.text.includes(bobImage), 'Alice\'s stream names nothing of Bob\'s');
    assert.ok(!alices.text.includes(bob.body.batchId));
    const db = new Database(path.join(temp.dir, 'instances.db'));
    try {
      db.prepare(`DELETE FROM instances WHERE id = 'i-busy'`).run();
    } finally {
      db.close();
    }
  });

  it('replays missed events within one process, and answers ids of another process (a restarted web tier) with a reset', async () => {
    const { body } = await upload('resume.jpg');
    await drainQueue(runtime.queues.launch);
    const first = await readStream(`${url}/api/events?batch=${body.batchId}`, bearer, (text) => eventsOf(text, 'hello').length > 0);
    const helloId = eventsOf(first.text, 'hello')[0]!.id!;
    assert.match(helloId, /^[0-9a-f]+:\d+$/);
    // Same process: the missed result is replayed, once.
    await finish(body.images[0].id, body.batchId);
    await waitFor('the result', () => web.index.image(body.images[0].id)?.status === 'done');
    const replay = await readStream(`${url}/api/events?batch=${body.batchId}`, { ...bearer, 'last-event-id': helloId }, (text) => text.includes('"status":"done"'));
    assert.equal(eventsOf(replay.text, 'image').length, 1);
    assert.deepEqual(eventsOf(replay.text, 'reset'), []);
    // Ids that belong to no history of this process (a restarted web tier, a bare number
    // from an older server, garbage) get a reset that moves the client into this epoch.
    for (const id of ['0123abcd:5', '57', 'garbage', `${helloId.split(':')[0]}:999999`]) {
      const resumed = await readStream(`${url}/api/events?batch=${body.batchId}`, { ...bearer, 'last-event-id': id }, (text) => eventsOf(text, 'reset').length > 0);
      const [reset] = eventsOf(resumed.text, 'reset');
      assert.ok(reset?.id, `reset for ${id}: ${resumed.text}`);
      assert.equal(reset.id.split(':')[0], helloId.split(':')[0]);
      assert.deepEqual(eventsOf(resumed.text, 'image'), []);
    }
  });

  it('prints a loud warning when bound to a public address without keys, and none with keys', async () => {
    const run = async (args: string[]) => {
      const data = await makeTempDir('icaas-bind-');
      const web = await startWebProcess(['--data', data.dir, ...args]).catch(async (error: unknown) => {
        await data.cleanup();
        throw error;
      });
      try {
        const health = await fetch(`http://127.0.0.1:${new URL(web.url).port}/healthz`);
        assert.equal(health.status, 200);
        return web.output();
      } finally {
        await web.stop();
        await data.cleanup();
      }
    };
    const open = await run(['--host', '0.0.0.0']);
    const warnings = (output: string) => parseLogLines(output).filter((line) => line.level === 'warn');
    const [warning, ...others] = warnings(open);
    assert.equal(warning?.host, '0.0.0.0', open);
    assert.match(warning?.msg ?? '', /without API keys: anyone who can reach it can upload and read results; set ICAAS_API_KEYS/);
    assert.deepEqual(others, []);
    const keyed = await run(['--host', '0.0.0.0', '--api-keys', 'k-0123456789']);
    assert.deepEqual(warnings(keyed), [], keyed);
    const local = await run(['--host', '127.0.0.1']);
    assert.deepEqual(warnings(local), [], local);
  });
});
