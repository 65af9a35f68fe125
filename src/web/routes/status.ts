/** The service's status, as a snapshot and as live events. */
import type { FastifyReply } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { apiErrorSchema, batchQuerySchema, eventsQuerySchema, statusSnapshotSchema, type StatusSnapshot } from '../../api-schemas.js';
import { FailureLog } from '../../controller/loop.js';
import type { LoopHealth, ScalingStatus } from '../../health.js';
import type { Logger } from '../../log.js';
import type { Runtime } from '../../runtime.js';
import { statusForBatch } from '../events.js';
import type { ResultsIndex } from '../results.js';
import type { RouteOptions } from './context.js';

export interface StatusSources {
  runtime: Runtime;
  index: ResultsIndex;
  log: Logger;
  health?: () => Promise<LoopHealth[]>;
  scaling?: () => Promise<ScalingStatus | undefined>;
}

/**
 * The status must answer even when the queues or instances cannot be read: that is when
 * users most need it. Its own failures are logged once, like a loop's.
 */
export function statusReader({ runtime, index, log, health, scaling }: StatusSources): () => Promise<StatusSnapshot> {
  const failures = new FailureLog('web tier', log);
  return async () => {
    const errors: unknown[] = [];
    const orElse = <T>(work: Promise<T>, fallback: T): Promise<T> => work.catch((error: unknown) => {
      errors.push(error);
      return fallback;
    });
    const [launch, monitor, output, instances, loops, decision] = await Promise.all([
      orElse(runtime.queues.launch.counts(), undefined),
      orElse(runtime.queues.monitor.counts(), undefined),
      orElse(runtime.queues.output.counts(), undefined),
      orElse(runtime.compute.list(), []),
      orElse(health?.() ?? Promise.resolve([]), []),
      orElse(scaling?.() ?? Promise.resolve(undefined), undefined),
    ]);
    if (errors.length > 0) failures.failed(errors[0]);
    else failures.succeeded();
    return {
      max: runtime.compute.maxInstances,
      queues: { ...(launch ? { launch } : {}), ...(monitor ? { monitor } : {}), ...(output ? { output } : {}) },
      // Only what the API declares: the event stream sends this snapshot as it is.
      instances: instances.map(({ id, state, startedAt, imageId, processed }) => ({
        id, state, startedAt, ...(imageId !== undefined ? { imageId } : {}), ...(processed !== undefined ? { processed } : {}),
      })),
      images: index.totals(),
      health: [failures.health(), ...loops],
      ...(decision ? { scaling: decision } : {}),
      at: Date.now(),
    };
  };
}

export const statusRoutes: FastifyPluginAsyncZod<RouteOptions> = async (app, { context }) => {
  const { index, hub } = context;
  const { config } = context.runtime;

  // Which image an instance holds is shown only for the batch the client names: image ids
  // are capabilities, and the status is visible to every client.
  app.get('/api/status', {
    schema: {
      summary: 'Queues, instances, the health of every loop and why the tier has its size',
      querystring: batchQuerySchema,
      response: { 200: statusSnapshotSchema, '4xx': apiErrorSchema },
    },
  }, async (request) => {
    const batchId = request.query.batch || undefined;
    if (batchId !== undefined) await index.loadBatch(batchId);
    return statusForBatch(await context.status(), index, batchId);
  });

  const refuseWhenFull = (reply: FastifyReply): boolean => {
    if (!hub.isFull()) return false;
    reply.code(429).header('retry-after', '10').send({ error: `the server has ${hub.clientCount} live-event clients, at its limit of ${config.maxEventClients}; retry in 10s` });
    return true;
  };

  app.get('/api/events', {
    config: { auth: 'key-or-query' },
    // Streams stay open for hours and reconnect often: not worth a line each.
    logLevel: 'warn',
    schema: {
      summary: 'Live events (server-sent events): image (an Image), status (a Status), hello, reset and deleted',
      querystring: eventsQuerySchema,
      response: {
        200: { description: 'an event stream; reconnect with Last-Event-ID to receive what was missed', content: { 'text/event-stream': { schema: z.string() } } },
        '4xx': apiErrorSchema,
      },
    },
  }, async (request, reply) => {
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
};
