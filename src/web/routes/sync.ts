/**
 * The synchronous endpoint, for load generators and scripts: one image in, its label out,
 * waiting for the result. Plain text (`name:label`) unless the client asks for JSON.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { imageSchema, syncErrorSchema } from '../../api-schemas.js';
import { publicImage } from '../events.js';
import { stem } from '../inspect.js';
import { BatchDeletedError } from '../results.js';
import { newId, receiveUpload } from '../upload.js';
import type { RouteOptions } from './context.js';

const text = z.string();
const answer = (json: z.ZodType, description: string) => ({ description, content: { 'application/json': { schema: json }, 'text/plain': { schema: text } } });

const syncSchema = {
  summary: 'Classify one image (multipart/form-data) and wait for its result; JSON with Accept: application/json, else text',
  consumes: ['multipart/form-data'],
  response: {
    200: answer(imageSchema, 'the result; as text, `name:label`'),
    '4xx': answer(syncErrorSchema, 'refused; as text, `error: <reason>`'),
    // An image that ended as an error comes back as the image, with its result's error.
    500: answer(z.union([imageSchema, syncErrorSchema]), 'the image could not be classified'),
    '5xx': answer(syncErrorSchema, 'shutting down (503) or no result in time (504); the image stays queued'),
  },
};

export const syncRoutes: FastifyPluginAsyncZod<RouteOptions> = async (app, { context }) => {
  const { index } = context;
  const { config } = context.runtime;

  const classifySync = async (request: FastifyRequest, reply: FastifyReply) => {
    const wantsJson = (request.headers.accept ?? '').includes('application/json');
    const fail = (code: number, body: z.infer<typeof syncErrorSchema>) => wantsJson
      ? reply.code(code).type('application/json; charset=utf-8').send(body)
      : reply.code(code).type('text/plain; charset=utf-8').send(`error: ${body.error}\n`);
    if (await context.refuseWhenBusy(reply)) return reply;
    const outcome = await receiveUpload(request, context.uploads, newId(), 1);
    const accepted = outcome.images[0];
    if (!accepted) return fail(400, { error: outcome.rejected[0]?.reason ?? 'no image', rejected: outcome.rejected });
    const timeout = AbortSignal.timeout(config.syncTimeoutSeconds * 1000);
    let image;
    try {
      image = await index.waitForResult(accepted.id, AbortSignal.any([timeout, context.closing]));
    } catch (error) {
      if (error instanceof BatchDeletedError) return fail(404, { error: `image ${accepted.id} was deleted before it had a result`, id: accepted.id });
      return context.closing.aborted
        ? fail(503, { error: `the server is shutting down; image ${accepted.id} stays queued and its result will be at /api/images/${accepted.id}`, id: accepted.id })
        : fail(504, { error: `no result within ${config.syncTimeoutSeconds}s; it is still queued as image ${accepted.id}`, id: accepted.id });
    }
    const code = image.status === 'done' ? 200 : 500;
    if (wantsJson) return reply.code(code).type('application/json; charset=utf-8').send(publicImage(image));
    const line = image.result && 'label' in image.result ? `${stem(image.name)}:${image.result.label}` : `${stem(image.name)}:error: ${image.result && 'error' in image.result ? image.result.error : 'unknown'}`;
    return reply.code(code).type('text/plain; charset=utf-8').send(line);
  };
  for (const url of ['/', '/classify']) app.post(url, { onRequest: context.limits.sync, schema: syncSchema }, classifySync);
};
