import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  LABELS_FILE,
  MODEL_FILE,
  MODEL_SHA256,
  ModelNotFoundError,
  defaultCacheDir,
  defaultSharedDir,
  downloadAllowedByEnv,
  locateModel,
  projectRoot,
} from '../../src/classifier/model.js';
import { makeTempDir, projectRoot as testProjectRoot, sharedModelsDir } from '../helpers.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

const sharedModel = path.join(sharedModelsDir, MODEL_FILE);
const sharedLabels = path.join(sharedModelsDir, LABELS_FILE);

async function assertNotFound(promise: Promise<unknown>, ...patterns: RegExp[]): Promise<ModelNotFoundError> {
  let caught: unknown;
  await assert.rejects(promise, (error: unknown) => {
    caught = error;
    return true;
  });
  assert.ok(caught instanceof ModelNotFoundError, `expected ModelNotFoundError, got ${String(caught)}`);
  for (const pattern of patterns) assert.match(caught.message, pattern);
  return caught;
}

const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('locateModel', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  let emptyDir: string;
  let cacheWithModel: string;

  before(async () => {
    temp = await makeTempDir('icaas-model-');
    emptyDir = path.join(temp.dir, 'empty');
    await mkdir(emptyDir);
    cacheWithModel = path.join(temp.dir, 'cache');
    await mkdir(cacheWithModel);
    await symlink(sharedModel, path.join(cacheWithModel, MODEL_FILE));
    await symlink(sharedLabels, path.join(cacheWithModel, LABELS_FILE));
  });
  after(() => temp.cleanup());

  it('computes the project root and default folders from its own location', () => {
    assert.equal(projectRoot(), testProjectRoot);
    assert.equal(defaultCacheDir(), path.join(testProjectRoot, '.cache', 'models'));
    assert.equal(defaultSharedDir(), sharedModelsDir);
  });

  it('uses a configured model, with the labels next to it, over cache and shared', async () => {
    const dir = path.join(temp.dir, 'configured');
    await mkdir(dir);
    await copyFile(sharedModel, path.join(dir, 'my-model.onnx'));
    await copyFile(sharedLabels, path.join(dir, 'labels.json'));
    const found = await locateModel({ modelPath: path.join(dir, 'my-model.onnx'), cacheDir: cacheWithModel, allowDownload: false });
    assert.deepEqual(found, { modelPath: path.join(dir, 'my-model.onnx'), labelsPath: path.join(dir, 'labels.json'), source: 'configured' });
  });

  it('uses configured labels wherever the model comes from', async () => {
    const labels = path.join(temp.dir, 'my-labels.json');
    await copyFile(sharedLabels, labels);
    const found = await locateModel({ labelsPath: labels, cacheDir: emptyDir, allowDownload: false });
    assert.deepEqual(found, { modelPath: sharedModel, labelsPath: labels, source: 'shared' });
  });

  it('says clearly when a configured model does not exist', async () => {
    const missing = path.join(temp.dir, 'nope', 'model.onnx');
    const error = await assertNotFound(
      locateModel({ modelPath: missing, cacheDir: cacheWithModel, allowDownload: false }),
      new RegExp(escape(missing)),
      /--model \/ ICAAS_MODEL/,
    );
    assert.deepEqual(error.searched, [`configured model ${missing}: not found`]);
  });

  it('says clearly when a configured model has no labels next to it', async () => {
    const dir = path.join(temp.dir, 'lonely');
    await mkdir(dir);
    await symlink(sharedModel, path.join(dir, 'model.onnx'));
    await assertNotFound(locateModel({ modelPath: path.join(dir, 'model.onnx'), cacheDir: emptyDir, allowDownload: false }), /no labels file next to/, /--labels \/ ICAAS_LABELS/);
  });

  it('says clearly when configured labels do not exist', async () => {
    await assertNotFound(locateModel({ labelsPath: path.join(temp.dir, 'missing.json'), cacheDir: cacheWithModel, allowDownload: false }), /missing\.json/, /ICAAS_LABELS/);
  });

  it('prefers the cache over the shared folder', async () => {
    const found = await locateModel({ cacheDir: cacheWithModel, allowDownload: false });
    assert.deepEqual(found, { modelPath: path.join(cacheWithModel, MODEL_FILE), labelsPath: path.join(cacheWithModel, LABELS_FILE), source: 'cache' });
  });

  it('finds ../shared/models by default', async () => {
    const found = await locateModel({ cacheDir: emptyDir, allowDownload: false });
    assert.deepEqual(found, { modelPath: sharedModel, labelsPath: sharedLabels, source: 'shared' });
  });

  it('skips a cache that has the model but not its labels', async () => {
    const half = path.join(temp.dir, 'half');
    await mkdir(half);
    await symlink(sharedModel, path.join(half, MODEL_FILE));
    assert.equal((await locateModel({ cacheDir: half, allowDownload: false })).source, 'shared');
  });

  it('with nothing anywhere and downloads off, lists every place it looked and what to do', async () => {
    const cacheDir = path.join(temp.dir, 'no-cache');
    const sharedDir = emptyDir;
    const error = await assertNotFound(
      locateModel({ cacheDir, sharedDir, allowDownload: false }),
      new RegExp(`model cache ${escape(cacheDir)}: folder does not exist`),
      new RegExp(`shared models folder ${escape(sharedDir)}: no ${MODEL_FILE} or ${LABELS_FILE}`),
      /download of https:\/\/github\.com\/onnx\/models\/.*: disabled/,
      /--model \/ ICAAS_MODEL/,
      new RegExp(`copy ${MODEL_FILE} and ${LABELS_FILE} into ${escape(cacheDir)}`),
      /allow internet access/,
    );
    assert.equal(error.searched.length, 3);
  });

  it('reads ICAAS_MODEL_DOWNLOAD to allow or forbid downloads', () => {
    assert.equal(downloadAllowedByEnv({}), true);
    assert.equal(downloadAllowedByEnv({ ICAAS_MODEL_DOWNLOAD: '1' }), true);
    for (const off of ['0', 'false', 'no', 'off', 'OFF']) assert.equal(downloadAllowedByEnv({ ICAAS_MODEL_DOWNLOAD: off }), false, off);
  });
});

describe('locateModel download', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  let server: http.Server;
  let base: string;
  let modelBytes: Buffer;
  let labelsBytes: Buffer;
  const hits: string[] = [];

  before(async () => {
    temp = await makeTempDir('icaas-download-');
    modelBytes = await readFile(sharedModel);
    labelsBytes = await readFile(sharedLabels);
    const corrupted = Buffer.from(modelBytes);
    const middle = corrupted.length >> 1;
    corrupted.writeUInt8(corrupted.readUInt8(middle) ^ 0xff, middle);
    const routes: Record<string, Buffer> = {
      '/model.onnx': modelBytes,
      '/labels.json': labelsBytes,
      '/corrupted.onnx': corrupted,
      '/short-labels.json': Buffer.from(JSON.stringify(['just', 'three', 'labels'])),
    };
    server = http.createServer((request, response) => {
      hits.push(request.url ?? '');
      if (request.url === '/hang') return; // never answers
      if (request.url === '/redirect') {
        response.writeHead(302, { location: '/model.onnx' }).end();
        return;
      }
      const body = routes[request.url ?? ''];
      if (!body) {
        response.writeHead(404).end('not found');
        return;
      }
      response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length }).end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await temp.cleanup();
  });

  function attempt(name: string, urls: { model: string; labels: string }, extra: { downloadTimeoutMs?: number } = {}) {
    const cacheDir = path.join(temp.dir, name, 'cache');
    const sharedDir = path.join(temp.dir, name, 'shared');
    const { log, entries } = capturingLogger();
    const result = locateModel({ cacheDir, sharedDir, allowDownload: true, downloadUrls: urls, log, ...extra });
    return { cacheDir, entries, result };
  }

  async function cacheContents(cacheDir: string): Promise<string[]> {
    return readdir(cacheDir).catch(() => []);
  }

  it('downloads into the cache when the sha256 matches, leaving no temporary files', async () => {
    const { cacheDir, entries, result } = attempt('good', { model: `${base}/redirect`, labels: `${base}/labels.json` });
    assert.deepEqual(await result, { modelPath: path.join(cacheDir, MODEL_FILE), labelsPath: path.join(cacheDir, LABELS_FILE), source: 'download' });
    assert.deepEqual((await cacheContents(cacheDir)).sort(), [LABELS_FILE, MODEL_FILE].sort());
    const saved = await readFile(path.join(cacheDir, MODEL_FILE));
    assert.equal(createHash('sha256').update(saved).digest('hex'), MODEL_SHA256);
    assert.deepEqual(await readFile(path.join(cacheDir, LABELS_FILE)), labelsBytes);
    const savedLines = logged(entries, { msg: 'model saved, sha256 verified' });
    assert.equal(savedLines[0]?.file, path.join(cacheDir, MODEL_FILE), showLog(entries));
    // Found in the cache next time, without asking the server.
    const before = hits.length;
    assert.equal((await locateModel({ cacheDir, sharedDir: path.join(temp.dir, 'good', 'shared'), allowDownload: true, downloadUrls: { model: `${base}/gone`, labels: `${base}/gone` } })).source, 'cache');
    assert.equal(hits.length, before);
  });

  it('rejects a model whose sha256 does not match and saves nothing', async () => {
    const { cacheDir, result } = attempt('corrupted', { model: `${base}/corrupted.onnx`, labels: `${base}/labels.json` });
    await assertNotFound(result, /sha256 [0-9a-f]{64} does not match the expected 83530ad8/, /nothing was saved/, /model cache/);
    assert.deepEqual(await cacheContents(cacheDir), []);
  });

  it('rejects labels that do not fit the model and saves nothing', async () => {
    const { cacheDir, result } = attempt('short-labels', { model: `${base}/model.onnx`, labels: `${base}/short-labels.json` });
    await assertNotFound(result, /has 3 class names but the model has 1000 outputs/);
    assert.deepEqual(await cacheContents(cacheDir), []);
  });

  it('reports an HTTP error with its status', async () => {
    const { result } = attempt('missing', { model: `${base}/missing.onnx`, labels: `${base}/labels.json` });
    await assertNotFound(result, /missing\.onnx: HTTP 404/);
  });

  it('gives up on a server that does not answer after the timeout', async () => {
    const started = Date.now();
    const { cacheDir, result } = attempt('hang', { model: `${base}/hang`, labels: `${base}/labels.json` }, { downloadTimeoutMs: 300 });
    await assertNotFound(result, /\/hang: timed out after 0\.3 s/);
    assert.ok(Date.now() - started < 5_000, 'should fail fast');
    assert.deepEqual(await cacheContents(cacheDir), []);
  });

  it('reports a server that cannot be reached', async () => {
    // A port that was just free and is closed again: the connection is refused at once.
    const probe = http.createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const closedPort = (probe.address() as AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    const { result } = attempt('refused', { model: `http://127.0.0.1:${closedPort}/model.onnx`, labels: `${base}/labels.json` });
    await assertNotFound(result, /fetch failed \(connect ECONNREFUSED 127\.0\.0\.1:\d+\)/);
  });

  it('does not write labels it was not asked for when labels are configured', async () => {
    const cacheDir = path.join(temp.dir, 'model-only', 'cache');
    const labels = path.join(temp.dir, 'configured-labels.json');
    await writeFile(labels, labelsBytes);
    const found = await locateModel({ cacheDir, sharedDir: path.join(temp.dir, 'none'), labelsPath: labels, allowDownload: true, downloadUrls: { model: `${base}/model.onnx`, labels: `${base}/gone` } });
    assert.deepEqual(found, { modelPath: path.join(cacheDir, MODEL_FILE), labelsPath: labels, source: 'download' });
    assert.deepEqual(await cacheContents(cacheDir), [MODEL_FILE]);
  });
});
