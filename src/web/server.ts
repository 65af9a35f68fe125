/**
 * The web tier's HTTP server: uploads, the JSON API, live events, the synchronous
 * endpoint for load generators, metrics, health and the browser page.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import multipart from '@fastify/multipart';
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { FailureLog } from '../controller/loop.js';
import type { EventSink } from '../event-log.js';
import type { LoopHealth, ScalingStatus } from '../health.js';
import { silentLogger, type Logger } from '../log.js';
import { inputKey } from '../messages.js';
import { ServiceMetrics } from '../metrics.js';
import type { Runtime } from '../runtime.js';
import { deleteBatch } from './deletion.js';
import { EventHub, publicImage, statusForBatch } from './events.js';
import { stem } from './inspect.js';
import { BatchDeletedError, type ResultsIndex } from './results.js';
import { newId, receiveUpload, UploadError, type UploadContext } from './upload.js';

export interface WebOptions {
  runtime: Runtime;
  index: ResultsIndex;
  /** Folder of the built browser page (index.html and its assets). */
  uiDir: string;
  /** Default: silent. */
  log?: Logger;
  /** The health of the service's loops: the web tier's own and the controllers' last report. */
  health?: () => Promise<LoopHealth[]>;
  /** The launch policy's last decision, as the controllers published it. */
  scaling?: () => Promise<ScalingStatus | undefined>;
  /** Where arrivals are recorded (the run's event log). */
  events?: EventSink;
  /** This process's metrics; a registry of its own when absent. */
  metrics?: ServiceMetrics;
}

export interface StatusSnapshot {
  max: number;
  /** A queue whose counts cannot be read is left out; `health` says why. */
  queues: Partial<Record<'launch' | 'monitor' | 'output', { visible: number; inFlight: number; delayed: number }>>;
  instances: { id: string; state: string; startedAt: number; imageId?: string; processed?: number }[];
  images: Record<string, number>;
  /** Each loop of the service, with its current error in words a user can act on. */
  health: LoopHealth[];
  /** Why the tier has the size it has; absent until the controllers have reported. */
  scaling?: ScalingStatus;
  at: number;
}

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'permissions-policy': 'camera=(), microphone=(), geolocation=()',
};

const UI_CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.map': 'application/json',
};

/**
 * Who may call a route, declared in its `config`. With API keys set, every route needs one
 * unless it declares itself public, and so does a request no route matches: a route that
 * says nothing is protected, so a new one cannot be left open by mistake.
 * `key-or-query` also takes the key as `?key=` on GET, for what browsers fetch without
 * headers (event streams, images).
 */
export type RouteAuth = 'public' | 'key' | 'key-or-query';

declare module 'fastify' {
  interface FastifyContextConfig {
    auth?: RouteAuth;
  }
}

export interface RouteAccess {
  method: string;
  url: string;
  auth: RouteAuth;
}

export interface WebServer {
  app: FastifyInstance;
  /** Every route with who may call it, as registered. */
  routes: readonly RouteAccess[];
  hub: EventHub;
  status(): Promise<StatusSnapshot>;
  /** Stops accepting uploads (answers 503) while in-flight requests finish. */
  drain(): void;
  /** Ends synchronous requests still waiting for a result (their images stay queued), so the server can close. */
  cancelWaits(): void;
}

export async function createWebServer(options: WebOptions): Promise<WebServer> {
  const { runtime, index } = options;
  const { config } = runtime;
  const app = Fastify({
    logger: false,
    // The body limit guards JSON bodies; multipart uploads are bounded per file and file count.
    bodyLimit: 1024 * 1024,
    // Keep-alive sockets must not hold the process open on shutdown.
    forceCloseConnections: 'idle',
    requestTimeout: 0,
    // Requests the HTTP parser rejects (a body cut short, malformed headers) never reach a
    // route; they get the same JSON errors and security headers as everything else.
    clientErrorHandler: (error: Error & { code?: string }, socket) => {
      if (error.code !== 'ECONNRESET' && !socket.destroyed && socket.writable) {
        const [status, text, message] = error.code === 'HPE_HEADER_OVERFLOW'
          ? [431, 'Request Header Fields Too Large', 'the request headers are too large']
          : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? [408, 'Request Timeout', 'the request took too long to arrive']
            : [400, 'Bad Request', 'the request is malformed or ended before it was complete; nothing was stored'];
        const body = JSON.stringify({ error: message });
        const headers = Object.entries({ ...SECURITY_HEADERS, 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(body)), connection: 'close' });
        socket.write(`HTTP/1.1 ${status} ${text}\r\n${headers.map(([name, value]) => `${name}: ${value}`).join('\r\n')}\r\n\r\n${body}`);
      }
      socket.destroy();
    },
  });
  // preservePath keeps the folder part of names from folder uploads ("trip/day1/a.jpg");
  // names are only ever displayed, never used as paths or keys.
  await app.register(multipart, { throwFileSizeLimit: false, preservePath: true });
  const hub = new EventHub(index, { headers: SECURITY_HEADERS, maxClients: config.maxEventClients });
  let draining = false;
  const closing = new AbortController();
  const metrics = options.metrics ?? new ServiceMetrics();
  metrics.watchShared(runtime);
  metrics.web.watch({
    images: () => index.totals(),
    loadedBatches: () => index.size().batches,
    eventClients: () => hub.clientCount,
    eventBufferedBytes: () => hub.bufferedBytes().reduce((sum, bytes) => sum + bytes, 0),
    eventConnections: () => hub.connections,
    eventSlowDisconnects: () => hub.slowDisconnects,
  });

  app.addHook('onSend', async (_request, reply, payload) => {
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) {
      if (!reply.hasHeader(name)) reply.header(name, value);
    }
    return payload;
  });

  const routes: RouteAccess[] = [];
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) routes.push({ method, url: route.url, auth: route.config?.auth ?? 'key' });
  });
  const keyDigests = config.apiKeys.map(digest);
  app.addHook('onRequest', async (request, reply) => {
    if (keyDigests.length === 0) return;
    // The route the router matched decides, never the URL's text: the router decodes and
    // matches the URL its own way, so a check of the text can be spelled around.
    const auth = request.routeOptions.config.auth ?? 'key';
    if (auth === 'public') return;
    const presented = presentedKey(request, auth === 'key-or-query');
    // Compare digests so timing reveals neither the key nor its length.
    const ok = presented !== undefined && keyDigests.some((expected) => timingSafeEqual(expected, digest(presented)));
    if (!ok) {
      reply.header('www-authenticate', 'Bearer realm="icaas"');
      return reply.code(401).send({ error: presented === undefined ? 'an API key is required: send it as "Authorization: Bearer <key>"' : 'the API key is not valid' });
    }
  });

  app.setErrorHandler((error: Error & { statusCode?: number; code?: string }, _request, reply) => {
    if (error instanceof UploadError) {
      if (error.statusCode >= 500) options.log?.error({ err: error.cause ?? error }, 'upload failed');
      return reply.code(error.statusCode).send({ error: error.message, ...(error.rejected.length ? { rejected: error.rejected } : {}) });
    }
    const status = error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
    if (status === 500) options.log?.error({ err: error }, 'request failed');
    // Internal messages can name paths of this machine: only client errors are echoed.
    return reply.code(status).send({ error: status === 500 ? 'internal error; see the server log' : error.message });
  });
  app.setNotFoundHandler((request, reply) => reply.code(404).send({ error: `no route ${request.method} ${request.url.split('?')[0]}` }));

  const uploadContext: UploadContext = {
    store: runtime.store,
    inputBucket: config.inputBucket,
    launchQueue: runtime.queues.launch,
    index,
    limits: { maxFileBytes: config.maxFileBytes, maxPixels: config.maxPixels, maxFiles: config.maxFiles },
    ...(options.events ? { events: options.events } : {}),
    metrics: metrics.web,
  };

  const refuseWhenBusy = async (reply: FastifyReply): Promise<boolean> => {
    if (draining) {
      reply.code(503).header('retry-after', '5').send({ error: 'the server is shutting down; try again shortly' });
      return true;
    }
    // Checked before the body is read, so a refused upload costs no storage. The price is
    // that an accepted request may take the queue past the limit by up to its own file
    // count (and concurrent ones by theirs): the limit bounds the queue's growth, and the
    // per-request file limit bounds the overshoot.
    const counts = await runtime.queues.launch.counts();
    const waiting = counts.visible + counts.delayed;
    if (waiting >= config.maxQueued) {
      const seconds = Math.min(300, Math.max(1, Math.ceil(waiting / Math.max(1, config.maxInstances) / 10)));
      reply.code(429).header('retry-after', String(seconds)).send({ error: `the launch queue holds ${waiting} images, at its limit of ${config.maxQueued}; retry in ${seconds}s` });
      return true;
    }
    return false;
  };

  app.post('/api/images', async (request: FastifyRequest<{ Querystring: { batch?: string } }>, reply) => {
    if (await refuseWhenBusy(reply)) return reply;
    const requested = request.query.batch;
    if (requested !== undefined && !(await index.loadBatch(requested))) {
      return reply.code(404).send({ error: `no batch ${requested}` });
    }
    const batchId = requested ?? newId();
    // Keeps the batch in memory while the upload runs, and makes a delete wait for it.
    const endUpload = index.beginUpload(batchId);
    let outcome;
    try {
      outcome = await receiveUpload(request, uploadContext, batchId);
    } finally {
      endUpload();
    }
    if (outcome.images.length === 0) {
      return reply.code(400).send({ error: 'no file was accepted', ...outcome, batchId: null });
    }
    return reply.code(202).send(outcome);
  });

  app.get('/api/batches/:id', async (request: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const batch = await index.findBatch(request.params.id);
    if (!batch) return reply.code(404).send({ error: `no batch ${request.params.id}` });
    return { ...batch, images: batch.images.map(publicImage) };
  });

  const deletion = { store: runtime.store, inputBucket: config.inputBucket, outputBucket: config.outputBucket, index };
  app.delete('/api/batches/:id', async (request: FastifyRequest<{ Params: { id: string }; Querystring: { force?: unknown } }>, reply) => {
    const force = request.query.force;
    if (force !== undefined && force !== 'true' && force !== 'false') {
      return reply.code(400).send({ error: 'force must be true or false' });
    }
    const batchId = request.params.id;
    const outcome = await deleteBatch(deletion, batchId, { force: force === 'true' });
    if (outcome.outcome === 'missing') return reply.code(404).send({ error: `no batch ${batchId}` });
    if (outcome.outcome === 'busy') {
      const uploading = outcome.uploading > 0 ? ` and ${outcome.uploading} upload${outcome.uploading === 1 ? '' : 's'} into it in progress` : '';
      return reply.code(409).send({
        error: `batch ${batchId} has ${outcome.waiting} image${outcome.waiting === 1 ? '' : 's'} still waiting for a result${uploading}; delete it when they are done, or with ?force=true`,
        waiting: outcome.waiting,
        uploading: outcome.uploading,
      });
    }
    return reply.code(204).send();
  });

  app.get('/api/images/:id', async (request: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const image = await index.findImage(request.params.id);
    if (!image) return reply.code(404).send({ error: `no image ${request.params.id}` });
    return publicImage(image);
  });

  app.get('/api/images/:id/input', { config: { auth: 'key-or-query' } }, async (request: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const image = await index.findImage(request.params.id);
    // Streamed from the store: a download holds no more than a stream buffer, whatever its size.
    const object = image ? await runtime.store.getStream(config.inputBucket, inputKey(image.batchId, image.id)) : null;
    if (!image || !object) return reply.code(404).send({ error: `no image ${request.params.id}` });
    return reply
      .header('content-type', object.info.contentType)
      .header('content-length', String(object.info.size))
      .header('cache-control', 'private, max-age=86400, immutable')
      .header('content-disposition', `inline; filename*=UTF-8''${encodeURIComponent(image.name.slice(image.name.lastIndexOf('/') + 1))}`)
      .send(object.body);
  });

  // The status must answer even when the queues or instances cannot be read: that is
  // when users most need it. Its own failures are logged once, like a loop's.
  const statusFailures = new FailureLog('web tier', options.log ?? silentLogger());
  const status = async (): Promise<StatusSnapshot> => {
    const errors: unknown[] = [];
    const orElse = <T>(work: Promise<T>, fallback: T): Promise<T> => work.catch((error: unknown) => {
      errors.push(error);
      return fallback;
    });
    const [launch, monitor, output, instances, health, scaling] = await Promise.all([
      orElse(runtime.queues.launch.counts(), undefined),
      orElse(runtime.queues.monitor.counts(), undefined),
      orElse(runtime.queues.output.counts(), undefined),
      orElse(runtime.compute.list(), []),
      orElse(options.health?.() ?? Promise.resolve([]), []),
      orElse(options.scaling?.() ?? Promise.resolve(undefined), undefined),
    ]);
    if (errors.length > 0) statusFailures.failed(errors[0]);
    else statusFailures.succeeded();
    return {
      max: runtime.compute.maxInstances,
      queues: { ...(launch ? { launch } : {}), ...(monitor ? { monitor } : {}), ...(output ? { output } : {}) },
      instances: instances.map((instance) => ({ ...instance })),
      images: index.totals(),
      health: [statusFailures.health(), ...health],
      ...(scaling ? { scaling } : {}),
      at: Date.now(),
    };
  };

  // Which image an instance holds is shown only for the batch the client names: image ids
  // are capabilities, and the status is visible to every client.
  app.get('/api/status', async (request: FastifyRequest<{ Querystring: { batch?: string } }>) => {
    const batchId = request.query.batch || undefined;
    if (batchId !== undefined) await index.loadBatch(batchId);
    return statusForBatch(await status(), index, batchId);
  });

  const refuseWhenFull = (reply: FastifyReply): boolean => {
    if (!hub.isFull()) return false;
    reply.code(429).header('retry-after', '10').send({ error: `the server has ${hub.clientCount} live-event clients, at its limit of ${config.maxEventClients}; retry in 10s` });
    return true;
  };

  app.get('/api/events', { config: { auth: 'key-or-query' } }, async (request: FastifyRequest<{ Querystring: { batch?: string } }>, reply) => {
    if (refuseWhenFull(reply)) return reply;
    const batchId = request.query.batch || undefined;
    // Read before attaching, so the stream starts from the batch as stored.
    if (batchId !== undefined) await index.loadBatch(batchId);
    // Checked again: other clients may have connected while the batch was read.
    if (refuseWhenFull(reply)) return reply;
    reply.hijack();
    const lastEventId = request.headers['last-event-id'];
    hub.attach(request.raw, reply.raw, batchId, Array.isArray(lastEventId) ? lastEventId[0] : lastEventId);
  });

  app.get('/healthz', { config: { auth: 'public' } }, async () => ({ ok: true }));

  app.get('/metrics', async (_request, reply) => {
    const { contentType, body } = await metrics.exposition();
    return reply.header('content-type', contentType).send(body);
  });

  const classifySync = async (request: FastifyRequest, reply: FastifyReply) => {
    if (await refuseWhenBusy(reply)) return reply;
    const outcome = await receiveUpload(request, uploadContext, newId(), 1);
    const wantsJson = (request.headers.accept ?? '').includes('application/json');
    const accepted = outcome.images[0];
    if (!accepted) {
      const reason = outcome.rejected[0]?.reason ?? 'no image';
      return wantsJson
        ? reply.code(400).send({ error: reason, rejected: outcome.rejected })
        : reply.code(400).type('text/plain; charset=utf-8').send(`error: ${reason}\n`);
    }
    const timeout = AbortSignal.timeout(config.syncTimeoutSeconds * 1000);
    let image;
    try {
      image = await index.waitForResult(accepted.id, AbortSignal.any([timeout, closing.signal]));
    } catch (error) {
      if (error instanceof BatchDeletedError) {
        const message = `image ${accepted.id} was deleted before it had a result`;
        return wantsJson ? reply.code(404).send({ error: message, id: accepted.id }) : reply.code(404).type('text/plain; charset=utf-8').send(`error: ${message}\n`);
      }
      const [code, message] = closing.signal.aborted
        ? [503, `the server is shutting down; image ${accepted.id} stays queued and its result will be at /api/images/${accepted.id}`]
        : [504, `no result within ${config.syncTimeoutSeconds}s; it is still queued as image ${accepted.id}`];
      return wantsJson ? reply.code(code).send({ error: message, id: accepted.id }) : reply.code(code).type('text/plain; charset=utf-8').send(`error: ${message}\n`);
    }
    if (wantsJson) return reply.code(image.status === 'done' ? 200 : 500).send(publicImage(image));
    const text = image.result && 'label' in image.result ? `${stem(image.name)}:${image.result.label}` : `${stem(image.name)}:error: ${image.result && 'error' in image.result ? image.result.error : 'unknown'}`;
    return reply.code(image.status === 'done' ? 200 : 500).type('text/plain; charset=utf-8').send(text);
  };
  app.post('/', classifySync);
  app.post('/classify', classifySync);

  const serveUi = async (file: string, reply: FastifyReply) => {
    const extension = path.extname(file);
    const type = UI_CONTENT_TYPES[extension];
    if (!type) return reply.code(404).send({ error: 'not found' });
    try {
      const body = await readFile(path.join(options.uiDir, file));
      return reply.header('content-type', type).header('cache-control', extension === '.html' ? 'no-cache' : 'public, max-age=300').send(body);
    } catch {
      return reply.code(404).send({ error: extension === '.html' ? 'the page is not built: run `npm run build`' : 'not found' });
    }
  };
  app.get('/', { config: { auth: 'public' } }, async (_request, reply) => serveUi('index.html', reply));
  app.get('/assets/:file', { config: { auth: 'public' } }, async (request: FastifyRequest<{ Params: { file: string } }>, reply) => {
    // One flat folder and a strict name pattern: no way to walk out of it.
    if (!/^[A-Za-z0-9_.-]+$/.test(request.params.file) || request.params.file.startsWith('.')) return reply.code(404).send({ error: 'not found' });
    return serveUi(request.params.file, reply);
  });

  return {
    app,
    routes,
    hub,
    status,
    drain: () => { draining = true; },
    cancelWaits: () => closing.abort(),
  };
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

function presentedKey(request: FastifyRequest, queryAllowed: boolean): string | undefined {
  const authorization = request.headers.authorization;
  if (authorization?.startsWith('Bearer ')) return authorization.slice(7).trim();
  const header = request.headers['x-api-key'];
  if (typeof header === 'string') return header;
  // EventSource and <img> cannot send headers, so the event stream and stored images also
  // take the key as a parameter. Nowhere else: keys in URLs end up in logs and histories.
  if (!queryAllowed || (request.method !== 'GET' && request.method !== 'HEAD')) return undefined;
  const query = (request.query as Record<string, unknown> | undefined)?.key;
  return typeof query === 'string' ? query : undefined;
}
