/** The browser page and its assets, from the built folder. */
import fastifyStatic from '@fastify/static';
import { access } from 'node:fs/promises';
import path from 'node:path';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { apiErrorSchema } from '../../api-schemas.js';
import type { RouteOptions } from './context.js';

/** One flat folder and a strict name pattern: no way to walk out of it, nor to reach a dotfile. */
const ASSET_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/;

export const pageRoutes: FastifyPluginAsyncZod<RouteOptions> = async (app, { context }) => {
  // Only the reply decoration: the routes are declared here, with who may call them.
  await app.register(fastifyStatic, { root: context.uiDir, serve: false, dotfiles: 'deny', index: false });
  const page = path.join(context.uiDir, 'index.html');

  app.get('/', {
    config: { auth: 'public' },
    schema: { summary: 'The browser page', response: { 200: { description: 'the page', content: { 'text/html': { schema: z.string() } } }, '4xx': apiErrorSchema } },
  }, async (_request, reply) => {
    if (!(await access(page).then(() => true, () => false))) return reply.code(404).send({ error: 'the page is not built: run `npm run build`' });
    // Its asset links carry a content hash, so only the page itself must be revalidated.
    return reply.header('cache-control', 'no-cache').sendFile('index.html', { cacheControl: false });
  });

  app.get('/assets/:file', {
    config: { auth: 'public' },
    schema: { hide: true, params: z.object({ file: z.string() }) },
  }, async (request, reply) => {
    if (!ASSET_NAME.test(request.params.file)) return reply.code(404).send({ error: 'not found' });
    return reply.sendFile(request.params.file, { maxAge: 300_000 });
  });
};
