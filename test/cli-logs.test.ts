/**
 * What the service's processes log when their output is not a terminal: JSON lines with
 * level, time, component and message, the ids of what they are about as fields, and only
 * the levels asked for. Real `icaas start` and `icaas worker` processes.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { cliPath, makeTempDir } from './helpers.js';
import { logged, parseLogLines, showLog, type LogEntry } from './log-capture.js';
import { readShared, sharedImages, startService, uploadForm, waitForBatch, type Service } from './e2e/harness.js';

/** Every line is a JSON object with the fields every line must have. */
function assertAllJsonLines(text: string, where: string): LogEntry[] {
  const lines = text.split('\n').filter((line) => line.trim() !== '');
  const entries = parseLogLines(text);
  assert.equal(entries.length, lines.length, `every line of ${where} is JSON:\n${text}`);
  // A child logger must not set a field its parent set: the line would hold the key twice.
  for (const line of lines) assert.doesNotMatch(line, /"component":.*"component":/, `one component a line in ${where}`);
  for (const entry of entries) {
    assert.ok(['fatal', 'error', 'warn', 'info', 'debug', 'trace'].includes(entry.level), `a level name: ${JSON.stringify(entry)}`);
    assert.ok(!Number.isNaN(Date.parse(entry.time)), `an ISO time: ${JSON.stringify(entry)}`);
    assert.equal(typeof entry.component, 'string', `a component: ${JSON.stringify(entry)}`);
    assert.equal(typeof entry.msg, 'string', `a message: ${JSON.stringify(entry)}`);
  }
  return entries;
}

describe('icaas start logs JSON lines into a pipe', () => {
  let service: Service | undefined;
  after(() => service?.cleanup());

  it('with the component on every line, the instance on every worker line and the image and batch on an image\'s lines', async () => {
    service = await startService({ maxInstances: 1, idleWaitSeconds: 1, env: { ICAAS_LOG_LEVEL: 'debug' } });
    const images = (await sharedImages()).slice(0, 2);
    const upload = await uploadForm(service.url, await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) }))));
    assert.equal(upload.status, 202, JSON.stringify(upload.body));
    const batchId = upload.body.batchId as string;
    const imageIds = (upload.body.images as { id: string }[]).map((image) => image.id).sort();
    const batch = await waitForBatch(service.url, batchId, 60_000);
    assert.equal(batch.done, 2, JSON.stringify(batch.images));
    await service.stop('SIGTERM');

    const entries = assertAllJsonLines(service.output(), 'icaas start');
    assert.equal(logged(entries, { msg: 'listening', component: 'service', level: 'info', url: service.url }).length, 1, showLog(entries));
    const recorded = logged(entries, { msg: 'result recorded', component: 'results', level: 'debug', batchId });
    assert.deepEqual(recorded.map((entry) => entry.imageId).sort(), imageIds, showLog(entries));
    assert.equal(entries.at(-1)?.msg, 'stopped');

    const logDir = path.join(service.dataDir, 'logs');
    const files = await readdir(logDir);
    assert.ok(files.length >= 1, 'a worker ran');
    const classified: LogEntry[] = [];
    for (const file of files) {
      const instanceId = file.replace(/\.log$/, '');
      const text = await readFile(path.join(logDir, file), 'utf8');
      const lines = assertAllJsonLines(text, `worker log ${file}`);
      assert.ok(lines.every((entry) => entry.instanceId === instanceId), `every line names instance ${instanceId}:\n${text}`);
      assert.equal(logged(lines, { msg: 'worker ready', component: 'worker' }).length, 1, text);
      classified.push(...logged(lines, { msg: 'image classified', component: 'worker', level: 'debug', batchId }));
    }
    assert.deepEqual(classified.map((entry) => entry.imageId).sort(), imageIds, showLog(classified));
    assert.ok(classified.every((entry) => entry.status === 'ok' && typeof entry.label === 'string' && entry.attempt === 1), showLog(classified));
  });
});

describe('ICAAS_LOG_LEVEL', async () => {
  const temp = await makeTempDir('icaas-log-level-');
  after(() => temp.cleanup());

  /** A worker on an empty queue: it loads the model, finds no work and stops. */
  const worker = (env: Record<string, string>): Promise<{ stdout: string; stderr: string }> => new Promise((resolve, reject) => {
    const args = [cliPath, 'worker', '--instance-id', 'i-00000000000a', '--data', temp.dir, '--idle-wait', '0'];
    execFile(process.execPath, args, { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env }, timeout: 60_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${error.message}\n${stdout}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });

  it('warn leaves out the info lines a worker writes by default', async () => {
    const normal = await worker({});
    const routine = assertAllJsonLines(normal.stdout, 'a worker at the default level');
    assert.deepEqual(routine.map((entry) => entry.msg), ['classifier loaded', 'worker ready', 'no work; stopping', 'worker stopping'], normal.stdout);
    assert.ok(routine.every((entry) => entry.level === 'info' && entry.instanceId === 'i-00000000000a'), normal.stdout);

    const quiet = await worker({ ICAAS_LOG_LEVEL: 'warn' });
    assert.equal(quiet.stdout, '', 'nothing at info');
    assert.equal(quiet.stderr, '');
  });

  it('a worker that cannot start says why in a JSON line with its instance', async () => {
    const failed = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const args = [cliPath, 'worker', '--instance-id', 'i-00000000000b', '--data', temp.dir, '--model', path.join(temp.dir, 'gone.onnx')];
      execFile(process.execPath, args, { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' }, timeout: 60_000 }, (error, stdout) => {
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : null) : 0, stdout });
      });
    });
    assert.equal(failed.code, 2, failed.stdout);
    const [fatal, ...rest] = assertAllJsonLines(failed.stdout, 'a worker that cannot start');
    assert.deepEqual(rest, []);
    assert.equal(fatal?.level, 'fatal');
    assert.equal(fatal?.instanceId, 'i-00000000000b');
    assert.match(JSON.stringify(fatal?.err), /gone\.onnx.*does not exist/);
  });
});
