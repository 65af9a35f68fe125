/**
 * The controllers and the web tier against queues that are missing, through the real SQS
 * client and a loopback SQS endpoint: the loops back off, log the fault once, show it in
 * /api/status with what to do, and recover when the queues appear.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig } from '../../src/config.js';
import { startControllers, type Controllers } from '../../src/controller/index.js';
import type { LoopHealth } from '../../src/health.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { startWebTier, type WebTier } from '../../src/web/index.js';
import { makeTempDir, waitFor } from '../helpers.js';
import { startSqsEndpoint, type SqsEndpoint } from '../queue/sqs-endpoint.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

describe('loops against missing queues', async () => {
  const temp = await makeTempDir();
  process.env.AWS_ACCESS_KEY_ID = 'AKIDLOOPTEST';
  process.env.AWS_SECRET_ACCESS_KEY = 'loop-test-secret';
  const { log, entries } = capturingLogger('info');
  let sqs: SqsEndpoint | undefined;
  let runtime: Runtime | undefined;
  let controllers: Controllers | undefined;
  let web: WebTier | undefined;
  after(async () => {
    await controllers?.stop();
    await web?.stop();
    await runtime?.close();
    await sqs?.close();
    await temp.cleanup();
  });

  const status = async (): Promise<{ health: LoopHealth[] }> => (await fetch(`${web!.url}/api/status`)).json() as Promise<{ health: LoopHealth[] }>;
  const loop = (health: LoopHealth[], name: string) => health.find((entry) => entry.loop === name);

  it('back off, log the fault once, and show it in the status with what to do', async () => {
    sqs = await startSqsEndpoint('missing');
    const { config } = loadConfig({
      argv: ['--host', '127.0.0.1', '--port', '0', '--data', temp.dir, '--queue', 'sqs', '--sqs-endpoint', sqs.url, '--region', 'eu-west-1'],
      env: {},
    });
    runtime = await openRuntime(config);
    controllers = startControllers(runtime, log);
    web = await startWebTier(runtime, log);

    // A measuring window: without backoff the monitor and output loops, which long-poll
    // with no pause between passes, send thousands of requests in it.
    await sleep(5000);
    const attempts = sqs.requests.length;
    assert.ok(attempts >= 6, `the three loops kept trying (${attempts} requests)`);
    assert.ok(attempts <= 36, `at most a dozen attempts per loop in 5 s, got ${attempts} requests`);
    const faultLines = logged(entries, { msg: 'loop failing', level: 'error' }).filter((entry) => /SQS queue icaas-\w+ does not exist/.test(String(entry.detail)));
    assert.deepEqual(faultLines.map((entry) => entry.loop).sort(), ['launch controller', 'monitor controller', 'output phase'], `one line per loop, got:\n${showLog(entries)}`);
    assert.ok(faultLines.every((entry) => /^queues missing: run icaas aws provision/.test(String(entry.problem))), showLog(faultLines));
    assert.ok(entries.length <= 6, `few log lines in all, got:\n${showLog(entries)}`);

    const health = await waitFor('the controllers\' fault in /api/status', async () => {
      const { health } = await status();
      return loop(health, 'launch controller')?.ok === false && loop(health, 'monitor controller')?.ok === false ? health : undefined;
    }, { timeoutMs: 15_000 });
    for (const name of ['launch controller', 'monitor controller', 'output phase', 'web tier']) {
      const entry = loop(health, name);
      assert.equal(entry?.ok, false, `${name} failing: ${JSON.stringify(health)}`);
      assert.match(entry.problem ?? '', /^queues missing: run icaas aws provision/);
      assert.match(entry.detail ?? '', /icaas-(launch|monitor|output) does not exist/);
      assert.ok((entry.failures ?? 0) >= 1 && typeof entry.since === 'number');
    }
  });

  it('recover once the queues exist, and say so once', async () => {
    sqs!.mode = 'empty';
    await waitFor('every loop working again in /api/status', async () => {
      const { health } = await status();
      return ['launch controller', 'monitor controller', 'output phase', 'web tier'].every((name) => loop(health, name)?.ok === true);
    }, { timeoutMs: 40_000, intervalMs: 250 });
    for (const name of ['launch controller', 'monitor controller', 'output phase']) {
      const recovered = logged(entries, { msg: 'loop working again', loop: name });
      assert.equal(recovered.length, 1, `${name} logs its recovery once:\n${showLog(entries)}`);
      assert.ok(Number(recovered[0]!.failures) >= 1, showLog(recovered));
    }
    const repeats = logged(entries, { msg: 'loop failed repeatedly' });
    assert.ok(repeats.some((entry) => Number(entry.repeated) >= 1 && Number(entry.inSeconds) >= 1), `the repeats are counted:\n${showLog(entries)}`);
  });
});
