/**
 * API keys. Who may call a route is declared in its `config.auth`; with keys set, every
 * route needs one unless it declares itself public, and so does a request no route matches:
 * a route that says nothing is protected, so a new one cannot be left open by mistake.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';

/**
 * `key-or-query` also takes the key as `?key=` on GET, for what browsers fetch without
 * headers (event streams, images).
 */
export type RouteAuth = 'public' | 'key' | 'key-or-query';

declare module 'fastify' {
  interface FastifyContextConfig {
    auth?: RouteAuth;
  }
  interface FastifyRequest {
    /** Which configured key the request presented (its position), once checked; for per-client limits. */
    apiKeyIndex: number | undefined;
  }
}

export interface RouteAccess {
  method: string;
  url: string;
  auth: RouteAuth;
}

/**
 * Adds the check to every route of `app` (the root: it must also cover requests no route
 * matches) and returns the list of routes with who may call them, filled as they register.
 */
export function registerAuth(app: FastifyInstance, apiKeys: readonly string[]): RouteAccess[] {
  const routes: RouteAccess[] = [];
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) routes.push({ method, url: route.url, auth: route.config?.auth ?? 'key' });
  });
  app.decorateRequest('apiKeyIndex', undefined);
  const keyDigests = apiKeys.map(digest);
  app.addHook('onRequest', async (request, reply) => {
    if (keyDigests.length === 0) return;
    // The route the router matched decides, never the URL's text: the router decodes and
    // matches the URL its own way, so a check of the text can be spelled around.
    const auth = request.routeOptions.config.auth ?? 'key';
    if (auth === 'public') return;
    const presented = presentedKey(request, auth === 'key-or-query');
    const index = presented === undefined ? -1 : matchingKey(keyDigests, presented);
    if (index < 0) {
      reply.header('www-authenticate', 'Bearer realm="icaas"');
      return reply.code(401).send({ error: presented === undefined ? 'an API key is required: send it as "Authorization: Bearer <key>"' : 'the API key is not valid' });
    }
    request.apiKeyIndex = index;
  });
  return routes;
}

/** Compares digests, and every one of them, so timing reveals neither a key, its length nor which matched. */
function matchingKey(keyDigests: readonly Buffer[], presented: string): number {
  const candidate = digest(presented);
  let found = -1;
  keyDigests.forEach((expected, index) => {
    if (timingSafeEqual(expected, candidate) && found < 0) found = index;
  });
  return found;
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
