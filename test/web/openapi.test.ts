/**
 * GET /openapi.json: an OpenAPI 3 document of every route, generated from the schemas the
 * server validates and answers with. Real answers of the running server are validated
 * against the document's own response schemas (by Ajv, a JSON Schema validator independent
 * of the library that wrote them), so the document cannot drift from what the server sends.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Ajv } from 'ajv';
import type { OpenAPIV3 } from 'openapi-types';
import { resultKey, type ImageResult } from '../../src/messages.js';
import type { Runtime } from '../../src/runtime.js';
import type { WebTier } from '../../src/web/index.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';
import { drainQueue, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;

/** /api/images/:id as OpenAPI spells it: /api/images/{id}. */
const openApiPath = (url: string) => url.replace(/:(\w+)/g, '{$1}');

describe('OpenAPI document', async () => {
  const temp = await makeTempDir();
  let runtime: Runtime;
  let web: WebTier;
  let url: string;
  let doc: OpenAPIV3.Document;
  const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));

  let tier: InProcessWebTier | undefined;
  before(async () => {
    tier = await startInProcessWebTier(temp.dir, []);
    ({ runtime, web, url } = tier);
    const response = await fetch(`${url}/openapi.json`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
    doc = (await response.json()) as OpenAPIV3.Document;
  });
  after(async () => {
    await tier?.stop();
    await temp.cleanup();
  });

  /** The response schema the document gives for this operation, status and media type, ready to validate with. */
  const validatorFor = (method: string, route: string, status: number, mediaType = 'application/json') => {
    const operation = doc.paths[route]?.[method as (typeof METHODS)[number]];
    assert.ok(operation, `the document has ${method.toUpperCase()} ${route}`);
    const response = (operation.responses[String(status)] ?? operation.responses[`${String(status)[0]}XX`]) as OpenAPIV3.ResponseObject | undefined;
    const schema = response?.content?.[mediaType]?.schema;
    assert.ok(schema, `${method.toUpperCase()} ${route} documents a ${mediaType} answer for ${status}`);
    // One root for the schema and the components its $refs name.
    const root = JSON.parse(JSON.stringify({ ...schema, $defs: doc.components?.schemas ?? {} }).replaceAll('"#/components/schemas/', '"#/$defs/'));
    const validate = new Ajv({ allErrors: true, validateFormats: false }).compile(root);
    return (body: unknown, what: string) => assert.ok(validate(body), `${what}: ${JSON.stringify(validate.errors)}\n${JSON.stringify(body).slice(0, 500)}`);
  };

  const finish = async (imageId: string, label: string) => {
    const image = web.index.image(imageId)!;
    const result: ImageResult = {
      status: 'ok', imageId, batchId: image.batchId, name: image.name, attempts: 1, instanceId: 'i-test',
      label, probability: 0.9, top5: [{ label, probability: 0.9 }], durationMs: 5, finishedAt: Date.now(),
    };
    await runtime.store.put(runtime.config.outputBucket, resultKey(imageId), Buffer.from(JSON.stringify(result)));
    await runtime.queues.output.send(JSON.stringify({ type: 'result', result }));
  };

  it('is an OpenAPI 3 document whose operations all answer something and whose references all resolve', () => {
    assert.match(doc.openapi, /^3\.\d+\.\d+$/);
    assert.equal(typeof doc.info.title, 'string');
    assert.equal(typeof doc.info.version, 'string');
    assert.equal(typeof doc.paths, 'object');
    let operations = 0;
    for (const [route, item] of Object.entries(doc.paths)) {
      assert.match(route, /^\//, route);
      for (const method of METHODS) {
        const operation = item?.[method];
        if (!operation) continue;
        operations++;
        const statuses = Object.keys(operation.responses);
        assert.ok(statuses.some((status) => /^2/.test(status)), `${method} ${route} documents a success: ${statuses.join(', ')}`);
        for (const status of statuses) assert.match(status, /^([1-5]\d\d|[1-5]XX|default)$/, `${method} ${route}: ${status}`);
        for (const parameter of (operation.parameters ?? []) as OpenAPIV3.ParameterObject[]) {
          assert.ok(['path', 'query', 'header', 'cookie'].includes(parameter.in), `${method} ${route}: ${parameter.in}`);
          if (parameter.in === 'path') assert.ok(route.includes(`{${parameter.name}}`), `${method} ${route}: path parameter ${parameter.name}`);
        }
      }
    }
    assert.ok(operations >= 12, `${operations} operations`);
    const text = JSON.stringify(doc);
    const references = [...text.matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)].map((match) => match[1]!);
    assert.ok(references.length > 0, 'shared shapes are components');
    for (const name of references) assert.ok(doc.components?.schemas?.[name], `$ref ${name} resolves`);
  });

  it('lists every route the server has, and no other', () => {
    const served = web.server.routes
      // HEAD answers as GET does; the page's static assets are not part of the API.
      .filter((route) => route.method !== 'HEAD' && route.url !== '/assets/:file')
      .map((route) => `${route.method.toLowerCase()} ${openApiPath(route.url)}`)
      .sort();
    const documented = Object.entries(doc.paths)
      .flatMap(([route, item]) => METHODS.filter((method) => item?.[method]).map((method) => `${method} ${route}`))
      .sort();
    assert.deepEqual(documented, served);
    for (const expected of ['post /api/images', 'get /api/batches/{id}', 'delete /api/batches/{id}', 'get /api/images/{id}', 'get /api/status', 'get /api/events', 'post /', 'post /classify', 'get /healthz', 'get /metrics', 'get /openapi.json']) {
      assert.ok(documented.includes(expected), expected);
    }
  });

  it('describes what the server actually answers, success and error alike', async () => {
    const form = new FormData();
    form.append('images', new Blob([tench]), 'a.jpg');
    form.append('images', new Blob(['not an image']), 'b.jpg');
    const uploaded = await fetch(`${url}/api/images`, { method: 'POST', body: form });
    assert.equal(uploaded.status, 202);
    const upload = (await uploaded.json()) as { batchId: string; images: { id: string }[]; rejected: unknown[] };
    assert.equal(upload.rejected.length, 1);
    validatorFor('post', '/api/images', 202)(upload, 'upload');
    await drainQueue(runtime.queues.launch);

    const refusedForm = new FormData();
    refusedForm.append('images', new Blob(['still not an image']), 'c.jpg');
    const refused = await fetch(`${url}/api/images`, { method: 'POST', body: refusedForm });
    assert.equal(refused.status, 400);
    validatorFor('post', '/api/images', 400)(await refused.json(), 'refused upload');

    const imageId = upload.images[0]!.id;
    const busy = await fetch(`${url}/api/batches/${upload.batchId}`, { method: 'DELETE' });
    assert.equal(busy.status, 409);
    validatorFor('delete', '/api/batches/{id}', 409)(await busy.json(), 'delete while busy');

    await finish(imageId, 'tench');
    await waitFor('the result', () => web.index.image(imageId)?.status === 'done');
    validatorFor('get', '/api/batches/{id}', 200)(await (await fetch(`${url}/api/batches/${upload.batchId}`)).json(), 'batch');
    validatorFor('get', '/api/images/{id}', 200)(await (await fetch(`${url}/api/images/${imageId}`)).json(), 'image');
    validatorFor('get', '/api/status', 200)(await (await fetch(`${url}/api/status?batch=${upload.batchId}`)).json(), 'status');
    validatorFor('get', '/healthz', 200)(await (await fetch(`${url}/healthz`)).json(), 'health');

    const missing = await fetch(`${url}/api/images/nope`);
    assert.equal(missing.status, 404);
    validatorFor('get', '/api/images/{id}', 404)(await missing.json(), 'unknown image');
    const invalid = await fetch(`${url}/api/batches/${upload.batchId}?force=maybe`, { method: 'DELETE' });
    assert.equal(invalid.status, 400);
    validatorFor('delete', '/api/batches/{id}', 400)(await invalid.json(), 'invalid query');

    // The synchronous endpoint, as JSON: its answer is the image with its result.
    const syncForm = new FormData();
    syncForm.append('image', new Blob([tench]), 'sync.jpg');
    const pending = fetch(`${url}/classify`, { method: 'POST', body: syncForm, headers: { accept: 'application/json' } });
    const launched = await waitFor('the synchronous image to be queued', async () => (await drainQueue(runtime.queues.launch))[0]);
    await finish((JSON.parse(launched) as { imageId: string }).imageId, 'tench');
    const sync = await pending;
    assert.equal(sync.status, 200);
    validatorFor('post', '/classify', 200)(await sync.json(), 'synchronous answer');

    // And the schema is no formality: an answer with a field it does not declare fails.
    const image = (await (await fetch(`${url}/api/images/${imageId}`)).json()) as Record<string, unknown>;
    assert.throws(() => validatorFor('get', '/api/images/{id}', 200)({ ...image, secret: 'x' }, 'an undeclared field'));
    assert.throws(() => validatorFor('get', '/api/images/{id}', 200)({ ...image, status: 'lost' }, 'an undeclared status'));
  });

  it('is public, like the page, even when the API needs a key', async () => {
    const keyed = await makeTempDir();
    const other = await startInProcessWebTier(keyed.dir, ['--api-keys', 'k-0123456789']);
    try {
      const response = await fetch(`${other.url}/openapi.json`);
      assert.equal(response.status, 200);
      assert.match(((await response.json()) as { openapi: string }).openapi, /^3\./);
      assert.equal((await fetch(`${other.url}/api/status`)).status, 401);
    } finally {
      await other.stop();
      await keyed.cleanup();
    }
  });
});
