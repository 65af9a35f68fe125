/** For operators and tools: health, metrics and the API's own description. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { apiErrorSchema, healthSchema } from '../../api-schemas.js';
import type { RouteOptions } from './context.js';

export const opsRoutes: FastifyPluginAsyncZod<RouteOptions> = async (app, { context }) => {
  const { index, hub } = context;

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
    const snapshot = await context.status();
    const lines = [
      '# HELP icaas_images Images of the batches this web tier holds in memory, by status (not every stored image).',
      '# TYPE icaas_images gauge',
      ...Object.entries(snapshot.images).map(([state, count]) => `icaas_images{status="${state}"} ${count}`),
      '# HELP icaas_queue_messages Approximate messages per queue and state.',
      '# TYPE icaas_queue_messages gauge',
      ...Object.entries(snapshot.queues).flatMap(([queue, counts]) =>
        Object.entries(counts).map(([state, count]) => `icaas_queue_messages{queue="${queue}",state="${state}"} ${count}`)),
      '# HELP icaas_instances Worker instances by state.',
      '# TYPE icaas_instances gauge',
      ...(['starting', 'idle', 'busy'] as const).map((state) => `icaas_instances{state="${state}"} ${snapshot.instances.filter((i) => i.state === state).length}`),
      '# HELP icaas_event_clients Connected live-event clients.',
      '# TYPE icaas_event_clients gauge',
      `icaas_event_clients ${hub.clientCount}`,
      '# HELP icaas_event_buffered_bytes Bytes written to live-event clients that they have not taken yet.',
      '# TYPE icaas_event_buffered_bytes gauge',
      `icaas_event_buffered_bytes ${hub.bufferedBytes().reduce((sum, bytes) => sum + bytes, 0)}`,
      '# HELP icaas_event_slow_disconnects_total Live-event clients disconnected because they did not keep up.',
      '# TYPE icaas_event_slow_disconnects_total counter',
      `icaas_event_slow_disconnects_total ${hub.slowDisconnects}`,
      '# HELP icaas_loaded_batches Batches this web tier holds in memory.',
      '# TYPE icaas_loaded_batches gauge',
      `icaas_loaded_batches ${index.size().batches}`,
    ];
    return reply.header('content-type', 'text/plain; version=0.0.4').send(lines.join('\n') + '\n');
  });

  // Public like the page, whose script makes the same calls: it describes the API, never its data.
  app.get('/openapi.json', {
    config: { auth: 'public' },
    schema: { summary: 'This document: the HTTP API as OpenAPI 3', response: { 200: { description: 'an OpenAPI 3 document', content: { 'application/json': { schema: z.record(z.string(), z.unknown()) } } } } },
  }, async (_request, reply) => reply.type('application/json; charset=utf-8').send(app.swagger() as unknown as Record<string, unknown>));
};
