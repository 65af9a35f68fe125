/** For operators and tools: health, metrics and the API's own description. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { apiErrorSchema, healthSchema } from '../../api-schemas.js';
import type { RouteOptions } from './context.js';

export const opsRoutes: FastifyPluginAsyncZod<RouteOptions> = async (app, { context }) => {
  app.get('/healthz', {
    config: { auth: 'public' },
    logLevel: 'warn',
    schema: { summary: 'Liveness: answers while the process serves requests', response: { 200: healthSchema } },
  }, async () => ({ ok: true as const }));

  app.get('/metrics', {
    schema: {
      summary: 'Prometheus metrics',
      response: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: z.string() } } }, '4xx': apiErrorSchema },
    },
  }, async (_request, reply) => {
    const { contentType, body } = await context.metrics.exposition();
    return reply.header('content-type', contentType).send(body);
  });

  // Public like the page, whose script makes the same calls: it describes the API, never its data.
  app.get('/openapi.json', {
    config: { auth: 'public' },
    schema: { summary: 'This document: the HTTP API as OpenAPI 3', response: { 200: { description: 'an OpenAPI 3 document', content: { 'application/json': { schema: z.record(z.string(), z.unknown()) } } } } },
  }, async (_request, reply) => reply.type('application/json; charset=utf-8').send(app.swagger() as unknown as Record<string, unknown>));
};
