/** Uploads, and each image: its state and its stored bytes. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { apiErrorSchema, idParamsSchema, imageInputQuerySchema, imageSchema, uploadAcceptedSchema, uploadQuerySchema, uploadRefusedSchema } from '../../api-schemas.js';
import { inputKey } from '../../messages.js';
import { publicImage } from '../events.js';
import { newId, receiveUpload } from '../upload.js';
import type { RouteOptions } from './context.js';

export const imageRoutes: FastifyPluginAsyncZod<RouteOptions> = async (app, { context }) => {
  const { runtime, index } = context;
  const { config } = runtime;

  app.post('/api/images', {
    onRequest: context.limits.uploads,
    schema: {
      summary: 'Upload images (multipart/form-data, one file part per image) into a new batch or an existing one',
      consumes: ['multipart/form-data'],
      querystring: uploadQuerySchema,
      response: { 202: uploadAcceptedSchema, 400: uploadRefusedSchema, '4xx': uploadRefusedSchema, '5xx': apiErrorSchema },
    },
  }, async (request, reply) => {
    if (await context.refuseWhenBusy(reply)) return reply;
    const requested = request.query.batch;
    if (requested !== undefined && !(await index.loadBatch(requested))) {
      return reply.code(404).send({ error: `no batch ${requested}` });
    }
    const batchId = requested ?? newId();
    // Keeps the batch in memory while the upload runs, and makes a delete wait for it.
    const endUpload = index.beginUpload(batchId);
    let outcome;
    try {
      outcome = await receiveUpload(request, context.uploads, batchId);
    } finally {
      endUpload();
    }
    if (outcome.images.length === 0) {
      return reply.code(400).send({ error: 'no file was accepted', ...outcome, batchId: null });
    }
    return reply.code(202).send(outcome);
  });

  app.get('/api/images/:id', {
    schema: {
      summary: 'One image: its state and, once it has one, its result',
      params: idParamsSchema,
      response: { 200: imageSchema, '4xx': apiErrorSchema },
    },
  }, async (request, reply) => {
    const image = await index.findImage(request.params.id);
    if (!image) return reply.code(404).send({ error: `no image ${request.params.id}` });
    return publicImage(image);
  });

  app.get('/api/images/:id/input', {
    config: { auth: 'key-or-query' },
    schema: {
      summary: 'The stored image as it was uploaded',
      params: idParamsSchema,
      querystring: imageInputQuerySchema,
      response: {
        200: { description: 'the image bytes, with their sniffed content type', content: { 'image/*': { schema: z.string().meta({ format: 'binary' }) } } },
        '4xx': apiErrorSchema,
      },
    },
  }, async (request, reply) => {
    const image = await index.findImage(request.params.id);
    // Streamed from the store: a download holds no more than a stream buffer, whatever its size.
    const object = image ? await runtime.store.getStream(config.inputBucket, inputKey(image.batchId, image.id)) : null;
    if (!image || !object) return reply.code(404).send({ error: `no image ${request.params.id}` });
    return reply
      .header('content-type', object.info.contentType)
      .header('content-length', String(object.info.size))
      .header('cache-control', 'private, max-age=86400, immutable')
      .header('content-disposition', `inline; filename*=UTF-8''${encodeURIComponent(image.name.slice(image.name.lastIndexOf('/') + 1))}`)
      // A stream goes out as it is: the schema above only describes it.
      .send(object.body as unknown as string);
  });
};
