/**
 * `icaas controller` on its own, as a real process with real worker processes, serving its
 * metrics on --metrics-port: launches, start-up times, the wait in the launch queue, and
 * the monitor's terminations of hung instances and its retries, counted exactly.
 */
import { logged, parseLogLines } from '../log-capture.js';
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { loadConfig } from '../../src/config.js';
import { inputKey, parseImageResult, resultKey, type LaunchMessage } from '../../src/messages.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { cliPath, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';
import { scrape, type Exposition } from '../metrics-text.js';

/** A port nothing listens on now (the kernel's pick, released again). */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('controller metrics', async () => {
  const temp = await makeTempDir();
  const key = 'metrics-test-key';
  let runtime: Runtime | undefined;
  let child: ChildProcess | undefined;
  let output = '';
  after(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    for (const instance of (await runtime?.compute.list()) ?? []) await runtime!.compute.terminate(instance.id).catch(() => {});
    await runtime?.close();
    await temp.cleanup();
  });

  it('counts launches, start-ups, queue waits, hung-instance terminations and retries, served on its own port', async () => {
    const args = ['--host', '127.0.0.1', '--data', temp.dir, '--max-instances', '1', '--deadline', '2', '--monitor-check', '0.5',
      '--max-attempts', '2', '--idle-wait', '1', '--launch-interval', '100', '--api-keys', key];
    const { config } = loadConfig({ argv: args, env: {} });
    runtime = await openRuntime(config);
    await runtime.store.ensureBucket(config.inputBucket);
    await runtime.store.ensureBucket(config.outputBucket);
    const image = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
    const launch: LaunchMessage = { type: 'launch', imageId: 'hung1', batchId: 'b1', name: 'hang-me.jpg', key: inputKey('b1', 'hung1'), attempt: 1, queuedAt: Date.now() };
    await runtime.store.put(config.inputBucket, launch.key, image, { contentType: 'image/jpeg' });
    await runtime.queues.launch.send(JSON.stringify(launch));

    const port = await freePort();
    child = spawn(process.execPath, [cliPath, 'controller', ...args, '--metrics-port', String(port)], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ICAAS_TEST_HANG_ON: 'hang-me' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const url = await waitFor('the controller to serve its metrics', () => {
      if (child!.exitCode !== null) throw new Error(`exited: ${output}`);
      return logged(parseLogLines(output), { msg: 'metrics served' })[0]?.url as string | undefined;
    }, { timeoutMs: 20_000 });
    assert.equal(url, `http://127.0.0.1:${port}/metrics`);
    const metrics = () => scrape(url, { headers: { authorization: `Bearer ${key}` } });

    // Each attempt hangs its worker; the monitor terminates it at the deadline, retries
    // once, and ends the image as an error after the second.
    const result = await waitFor('the image to end as an error', async () => {
      const stored = await runtime!.store.get(config.outputBucket, resultKey('hung1'));
      return stored && parseImageResult(stored.body.toString('utf8'));
    }, { timeoutMs: 60_000, intervalMs: 200 });
    assert.equal(result.status, 'error');
    assert.equal(result.attempts, 2);

    // The policy's last decision may predate the last hung instance being gone (it counted
    // that instance as existing); the next tick, 100 ms later, wants none.
    const settled: Exposition = await waitFor('every instance\'s start-up to be measured and the policy to want no instance', async () => {
      const now = await metrics();
      const launches = now.value('icaas_instance_launches_total');
      const measured = launches >= 2 && now.value('icaas_instance_startup_seconds_count') === launches;
      return measured && now.value('icaas_desired_instances') === 0 ? now : undefined;
    }, { timeoutMs: 20_000, intervalMs: 200 });
    assert.equal(settled.value('icaas_instance_launches_total'), 2, 'one instance per attempt, at most one at a time');
    assert.equal(settled.value('icaas_hung_instance_terminations_total'), 2);
    assert.equal(settled.value('icaas_retries_total'), 1);
    assert.equal(settled.value('icaas_queue_wait_seconds_count'), 2, 'each attempt waited once');
    assert.equal(settled.value('icaas_instance_start_failures_total'), 0);
    assert.equal(settled.value('icaas_instance_deadline_terminations_total', { reason: 'busy-timeout' }), 0, 'the monitor ended them before the sweep');
    assert.equal(settled.value('icaas_queue_messages', { queue: 'launch', state: 'visible' }), 0);
    assert.ok(settled.types.has('icaas_process_cpu_user_seconds_total'));
    // The controller's process counts no uploads: it never sees them.
    assert.ok(!settled.types.has('icaas_images_accepted_total'));

    // The metrics port serves metrics only, and only with the key.
    assert.equal((await fetch(url)).status, 401);
    assert.equal((await fetch(url, { headers: { authorization: 'Bearer wrong' } })).status, 401);
    assert.equal((await fetch(url.replace('/metrics', '/api/status'), { headers: { authorization: `Bearer ${key}` } })).status, 404);
  });

  it('refuses to start when its metrics port is taken, before anything runs', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const { port } = blocker.address() as net.AddressInfo;
    try {
      const second = spawn(process.execPath, [cliPath, 'controller', '--host', '127.0.0.1', '--data', temp.dir, '--metrics-port', String(port)], {
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let said = '';
      second.stdout!.on('data', (chunk: Buffer) => (said += chunk.toString()));
      second.stderr!.on('data', (chunk: Buffer) => (said += chunk.toString()));
      const code = await new Promise<number | null>((resolve) => second.once('exit', resolve));
      assert.notEqual(code, 0);
      assert.match(said, new RegExp(`cannot serve metrics on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`));
    } finally {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
  });
});
