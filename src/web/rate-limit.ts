/**
 * Per-client request limits for the routes that cost the most: uploads and the synchronous
 * endpoint. A client is its API key when keys are set (checked before the limit runs, so a
 * made-up key is refused, not counted), otherwise its address. The address is the socket's
 * unless trust-proxy names the proxies in front, so a client cannot pick its own by sending
 * X-Forwarded-For.
 */
import rateLimit, { normalizeIP } from '@fastify/rate-limit';
import type { FastifyInstance, FastifyRequest, onRequestAsyncHookHandler } from 'fastify';

export interface RateLimits {
  /** Upload requests per client per minute; 0: unlimited. */
  uploadsPerMinute: number;
  /** Synchronous classifications per client per minute; 0: unlimited. */
  syncPerMinute: number;
}

/** A request hook per limited kind of route; no hook where the limit is off. */
export interface RateLimitHooks {
  uploads: onRequestAsyncHookHandler[];
  sync: onRequestAsyncHookHandler[];
}

const WINDOW_MS = 60_000;

export async function registerRateLimits(app: FastifyInstance, limits: RateLimits): Promise<RateLimitHooks> {
  // Nothing is limited unless a route asks: health checks, status polls and the page never are.
  await app.register(rateLimit, { global: false });
  const hook = (kind: string, what: string, max: number): onRequestAsyncHookHandler[] => max <= 0 ? [] : [app.rateLimit({
    max,
    timeWindow: WINDOW_MS,
    // One counter per kind and client, whichever route of the kind is called.
    keyGenerator: (request) => `${kind}:${clientOf(request)}`,
    errorResponseBuilder: (_request, context) => Object.assign(
      new Error(`too many ${what} from this client: at most ${context.max} a minute; retry in ${Math.max(1, Math.ceil(context.ttl / 1000))}s`),
      { statusCode: context.statusCode },
    ),
  }) as onRequestAsyncHookHandler];
  return {
    uploads: hook('upload', 'uploads', limits.uploadsPerMinute),
    sync: hook('sync', 'synchronous requests', limits.syncPerMinute),
  };
}

function clientOf(request: FastifyRequest): string {
  // An IPv6 client usually holds a whole /64: counted per address, it could take a new one per request.
  return request.apiKeyIndex !== undefined ? `key ${request.apiKeyIndex}` : `ip ${normalizeIP(request.ip)}`;
}
