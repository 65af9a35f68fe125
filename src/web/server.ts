/**
 * The web tier's HTTP server: the route plugins (uploads and images, batches, status and
 * live events, the synchronous endpoint, operations, the page) over one set of concerns
 * every route shares: security headers, API keys, request limits, schemas and errors.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import multipart from '@fastify/multipart';
import swagger from '@fastify/swagger';
import { hasZodFastifySchemaValidationErrors, jsonSchemaTransform, jsonSchemaTransformObject, serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import { isIP } from 'node:net';
import type { StatusSnapshot } from '../api-schemas.js';
import type { EventSink } from '../event-log.js';
import type { LoopHealth, ScalingStatus } from '../health.js';
import { silentLogger, type Logger } from '../log.js';
import { ServiceMetrics } from '../metrics.js';
import type { Runtime } from '../runtime.js';
import { registerAuth, type RouteAccess, type RouteAuth } from './auth.js';
import { EventHub } from './events.js';
import { registerRateLimits } from './rate-limit.js';
import type { ResultsIndex } from './results.js';
import { batchRoutes } from './routes/batches.js';
import type { RouteContext } from './routes/context.js';
import { imageRoutes } from './routes/images.js';
import { opsRoutes } from './routes/ops.js';
import { pageRoutes } from './routes/page.js';
import { statusReader, statusRoutes } from './routes/status.js';
import { syncRoutes } from './routes/sync.js';
import { RAW_ERROR_HEADERS, registerSecurityHeaders } from './security.js';
import type { IncomingUploads } from './incoming.js';
import { UploadError, type UploadContext } from './upload.js';

export type { RouteAccess, RouteAuth, StatusSnapshot };

export interface WebOptions {
  runtime: Runtime;
  index: ResultsIndex;
  /** Folder of the built browser page (index.html and its assets). */
  uiDir: string;
  /** Fastify's logger and the server's own; silent by default. */
  logger?: Logger;
  /** The health of the service's loops: the web tier's own and the controllers' last report. */
  health?: () => Promise<LoopHealth[]>;
  /** The launch policy's last decision, as the controllers published it. */
  scaling?: () => Promise<ScalingStatus | undefined>;
  /** Where arrivals are recorded (the run's event log). */
  events?: EventSink;
  /** This process's metrics; a registry of its own when absent. */
  metrics?: ServiceMetrics;
  /**
   * Called when an upload's images are queued. `icaas start` wakes its launch controller
   * with it, so the first instances start at once instead of at its next tick.
   */
  onQueued?: () => void;
  /** Uploads still arriving, told of by every upload (see incoming.ts). */
  incoming?: IncomingUploads;
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
  const log = (options.logger ?? silentLogger()).child({ component: 'web' });
  const app = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    // Logged below at debug level, without the query string: it can hold an API key.
    logController: new LogController({ disableRequestLogging: true }),
    trustProxy: trustProxyOption(config.trustProxy),
    // The body limit guards JSON bodies; multipart uploads are bounded per file and file count.
    bodyLimit: 1024 * 1024,
    // Keep-alive sockets must not hold the process open on shutdown.
    forceCloseConnections: 'idle',
    requestTimeout: 0,
    schemaErrorFormatter: (errors, dataVar) => new Error(errors.map((error) => describeInvalid(dataVar, error.instancePath, error.message)).join('; ')),
    // Requests the HTTP parser rejects (a body cut short, malformed headers) never reach a
    // route; they get the same JSON errors as everything else.
    clientErrorHandler: (error: Error & { code?: string }, socket) => {
      if (error.code !== 'ECONNRESET' && !socket.destroyed && socket.writable) {
        const [status, text, message] = error.code === 'HPE_HEADER_OVERFLOW'
          ? [431, 'Request Header Fields Too Large', 'the request headers are too large']
          : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? [408, 'Request Timeout', 'the request took too long to arrive']
            : [400, 'Bad Request', 'the request is malformed or ended before it was complete; nothing was stored'];
        const body = JSON.stringify({ error: message });
        const headers = Object.entries({ ...RAW_ERROR_HEADERS, 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(body)), connection: 'close' });
        socket.write(`HTTP/1.1 ${status} ${text}\r\n${headers.map(([name, value]) => `${name}: ${value}`).join('\r\n')}\r\n\r\n${body}`);
      }
      socket.destroy();
    },
  });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.addHook('onResponse', async (request, reply) => {
    request.log.debug({ method: request.method, path: request.url.split('?')[0], status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'request');
  });

  // Order matters: headers first, so even a refusal carries them; the key check before the
  // limits, so a limit counts only clients with a valid key.
  await registerSecurityHeaders(app);
  const routes = registerAuth(app, config.apiKeys);
  const limits = await registerRateLimits(app, { uploadsPerMinute: config.uploadsPerMinute, syncPerMinute: config.syncPerMinute });
  // preservePath keeps the folder part of names from folder uploads ("trip/day1/a.jpg");
  // names are only ever displayed, never used as paths or keys.
  await app.register(multipart, { throwFileSizeLimit: false, preservePath: true });
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'icaas', version: '1', description: 'Elastic image classification: upload images, follow their classification, read the results.' },
      components: { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'needed when the service has API keys; also accepted as X-API-Key' } } },
      // A key, or none on a service without keys.
      security: [{ apiKey: [] }, {}],
    },
    transform: jsonSchemaTransform,
    transformObject: jsonSchemaTransformObject,
  });

  app.setErrorHandler((error: FastifyError, request, reply) => replyWithError(error, reply, request.log));
  app.setNotFoundHandler((request, reply) => reply.code(404).send({ error: `no route ${request.method} ${request.url.split('?')[0]}` }));

  const hub = new EventHub(index, { maxClients: config.maxEventClients });
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
  const uploads: UploadContext = {
    store: runtime.store,
    inputBucket: config.inputBucket,
    launchQueue: runtime.queues.launch,
    index,
    limits: { maxFileBytes: config.maxFileBytes, maxPixels: config.maxPixels, maxFiles: config.maxFiles },
    ...(options.events ? { events: options.events } : {}),
    metrics: metrics.web,
    ...(options.onQueued ? { onQueued: options.onQueued } : {}),
    ...(options.incoming ? { incoming: options.incoming } : {}),
  };
  const context: RouteContext = {
    runtime,
    index,
    hub,
    uploads,
    limits,
    log,
    metrics,
    status: statusReader({ runtime, index, log, ...(options.health ? { health: options.health } : {}), ...(options.scaling ? { scaling: options.scaling } : {}) }),
    refuseWhenBusy: async (reply) => {
      if (draining) {
        reply.code(503).header('retry-after', '5').send({ error: 'the server is shutting down; try again shortly' });
        return true;
      }
      return refuseWhenQueueFull(runtime, reply);
    },
    closing: closing.signal,
    uiDir: options.uiDir,
  };
  for (const plugin of [imageRoutes, batchRoutes, statusRoutes, syncRoutes, opsRoutes, pageRoutes]) {
    await app.withTypeProvider<ZodTypeProvider>().register(plugin, { context });
  }

  return {
    app,
    routes,
    hub,
    status: context.status,
    drain: () => { draining = true; },
    cancelWaits: () => closing.abort(),
  };
}

/**
 * Checked before the body is read, so a refused upload costs no storage. The price is that
 * an accepted request may take the queue past the limit by up to its own file count (and
 * concurrent ones by theirs): the limit bounds the queue's growth, and the per-request file
 * limit bounds the overshoot.
 */
async function refuseWhenQueueFull(runtime: Runtime, reply: FastifyReply): Promise<boolean> {
  const { config } = runtime;
  const counts = await runtime.queues.launch.counts();
  const waiting = counts.visible + counts.delayed;
  if (waiting < config.maxQueued) return false;
  const seconds = Math.min(300, Math.max(1, Math.ceil(waiting / Math.max(1, config.maxInstances) / 10)));
  reply.code(429).header('retry-after', String(seconds)).send({ error: `the launch queue holds ${waiting} images, at its limit of ${config.maxQueued}; retry in ${seconds}s` });
  return true;
}

function replyWithError(error: FastifyError, reply: FastifyReply, log: FastifyBaseLogger): FastifyReply {
  if (error instanceof UploadError) {
    if (error.statusCode >= 500) log.error({ err: error.cause ?? error }, 'upload failed');
    return reply.code(error.statusCode).send({ error: error.message, ...(error.rejected.length ? { rejected: error.rejected } : {}) });
  }
  if (hasZodFastifySchemaValidationErrors(error)) return reply.code(400).send({ error: error.message });
  const status = error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
  if (status === 500) log.error({ err: error }, 'request failed');
  // Internal messages can name paths of this machine: only client errors are echoed.
  return reply.code(status).send({ error: status === 500 ? 'internal error; see the server log' : error.message });
}

const REQUEST_PARTS: Record<string, string> = { querystring: 'query parameter', params: 'path parameter', body: 'body field', headers: 'header' };

/** "query parameter force: force must be true or false", from what the schema check found. */
function describeInvalid(part: string, instancePath: string, message: string | undefined): string {
  const field = instancePath.replace(/^\//, '').replaceAll('/', '.');
  const where = field ? `${REQUEST_PARTS[part] ?? part} ${field}` : `the ${REQUEST_PARTS[part] ?? part}`;
  return `invalid ${where}: ${message ?? 'not as expected'}`;
}

/**
 * Which proxies' X-Forwarded-For to believe: none by default (the socket's address is the
 * client's), or the addresses and ranges of the proxies in front ("loopback", "10.0.0.0/8").
 * Nothing else: trusting every peer, or a hop count, would let a client name its own address.
 */
export function trustProxyOption(text: string): false | string[] {
  const entries = text.split(',').map((entry) => entry.trim()).filter(Boolean);
  if (entries.length === 0) return false;
  for (const entry of entries) {
    const [address, bits, extra] = entry.split('/');
    const named = ['loopback', 'linklocal', 'uniquelocal'].includes(entry);
    const family = isIP(address ?? '');
    const maxBits = family === 4 ? 32 : 128;
    const validBits = bits === undefined || (/^\d{1,3}$/.test(bits) && Number(bits) <= maxBits);
    if (!named && (family === 0 || !validBits || extra !== undefined)) {
      throw new Error(`--trust-proxy: ${JSON.stringify(entry)} is not an address, a range (10.0.0.0/8) or one of loopback, linklocal, uniquelocal`);
    }
  }
  return entries;
}
