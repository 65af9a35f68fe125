/**
 * `npm run cloud:local`: the emulator, provisioning and the service in the distributed
 * shape from one command, classifying for real, and gone again after Ctrl-C.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { projectRoot } from '../../src/runtime.js';
import { readShared, sharedImages, uploadForm, waitForBatch } from '../e2e/harness.js';
import { makeTempDir, waitFor } from '../helpers.js';
import { listeningUrl, parseLogLines } from '../log-capture.js';

const script = path.join(projectRoot, 'dist', 'scripts', 'cloud-local.js');

describe('npm run cloud:local', () => {
  const cleanups: (() => Promise<void>)[] = [];
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('starts the emulator, provisions it, serves the distributed shape, and stops everything on SIGINT', { timeout: 180_000 }, async () => {
    const temp = await makeTempDir('icaas-cloud-local-');
    cleanups.push(() => temp.cleanup());
    const child = spawn(process.execPath, [script, '--emulator-port', '0', '--host', '127.0.0.1', '--port', '0', '--idle-wait', '1', '--data', temp.dir], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group, with the service it starts: a cleanup after a failure kills both.
      detached: true,
    });
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    cleanups.push(async () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // The group is gone already.
      }
      await exited;
    });

    const url = await waitFor('the service to listen', () => {
      if (child.exitCode !== null) throw new Error(`cloud:local exited with ${child.exitCode}:\n${output}`);
      return listeningUrl(output);
    }, { timeoutMs: 60_000 });
    const emulator = /emulator at (http:\/\/127\.0\.0\.1:\d+)/.exec(output)?.[1];
    assert.ok(emulator, output);
    assert.match(output, /SQS queue icaas-launch: created/);
    assert.ok(parseLogLines(output).some((line) => /^object store: S3 at http:\/\/127\.0\.0\.1:\d+/.test(line.msg)), output);

    const images = (await sharedImages()).slice(10, 13);
    const upload = await uploadForm(url, await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) }))));
    assert.equal(upload.status, 202, JSON.stringify(upload.body));
    const batch = await waitForBatch(url, upload.body.batchId, 60_000);
    assert.equal(batch.done, 3, JSON.stringify(batch.images));

    child.kill('SIGINT');
    assert.equal(await exited, 0, output);
    assert.match(output, /service and emulator stopped/);
    await assert.rejects(fetch(emulator), 'the emulator still answers');
    await assert.rejects(fetch(url), 'the service still answers');
  });

  it('refuses a bad emulator port clearly', async () => {
    const child = spawn(process.execPath, [script, '--emulator-port', 'x'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode)));
    assert.equal(code, 1);
    assert.match(output, /--emulator-port must be a port number/);
  });
});
