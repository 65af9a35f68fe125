/** A batch: its images and results, and its deletion. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { apiErrorSchema, batchBusySchema, batchSchema, deleteQuerySchema, idParamsSchema } from '../../api-schemas.js';
import { deleteBatch } from '../deletion.js';
import { publicImage } from '../events.js';
import type { RouteOptions } from './context.js';

export const batchRoutes: FastifyPluginAsyncZod<RouteOptions> = async (app, { context }) => {
  const { runtime, index } = context;
  const { config } = runtime;

  app.get('/api/batches/:id', {
    schema: {
      summary: 'A batch with every image and result (there is no listing: only whoever has the id sees it)',
      params: idParamsSchema,
      response: { 200: batchSchema, '4xx': apiErrorSchema },
    },
  }, async (request, reply) => {
    const batch = await index.findBatch(request.params.id);
    if (!batch) return reply.code(404).send({ error: `no batch ${request.params.id}` });
    return { ...batch, images: batch.images.map(publicImage) };
  });

  const deletion = { store: runtime.store, inputBucket: config.inputBucket, outputBucket: config.outputBucket, index };
  app.delete('/api/batches/:id', {
    schema: {
      summary: 'Delete a batch: its images, results and records',
      params: idParamsSchema,
      querystring: deleteQuerySchema,
      response: { 204: z.undefined().describe('deleted'), 409: batchBusySchema, '4xx': apiErrorSchema },
    },
  }, async (request, reply) => {
    const batchId = request.params.id;
    const outcome = await deleteBatch(deletion, batchId, { force: request.query.force === 'true' });
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
};
