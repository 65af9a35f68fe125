/**
 * What workers learn of the launcher's AWS settings: local workers of a configuration
 * that uses S3 or SQS get the credentials and region (checked end to end: a real worker
 * process signs its SQS requests with them), EC2 workers get none of them.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Ec2Compute } from '../../src/compute/ec2.js';
import { loadConfig } from '../../src/config.js';
import { awsEnvForLocalWorkers, openRuntime } from '../../src/runtime.js';
import { makeTempDir, waitFor } from '../helpers.js';
import { startSqsEndpoint } from '../queue/sqs-endpoint.js';
import { logged, parseLogLines } from '../log-capture.js';

const SECRETS = {
  AWS_ACCESS_KEY_ID: 'AKIDLOCALWORKER',
  AWS_SECRET_ACCESS_KEY: 'local-worker-secret-value',
  AWS_SESSION_TOKEN: 'local-worker-session-token',
};

describe('AWS settings for workers', async () => {
  const temp = await makeTempDir();
  const saved = { ...process.env };
  after(async () => {
    process.env = saved;
    await temp.cleanup();
  });

  it('reach local workers when the queues are SQS: a real worker signs with them', async () => {
    Object.assign(process.env, SECRETS, { AWS_DEFAULT_REGION: 'eu-central-1' });
    delete process.env.AWS_REGION;
    const sqs = await startSqsEndpoint('empty');
    const data = path.join(temp.dir, 'local');
    const { config } = loadConfig({
      argv: ['--data', data, '--store', 's3', '--s3-endpoint', 'http://127.0.0.1:9', '--queue', 'sqs', '--sqs-endpoint', sqs.url, '--idle-wait', '0'],
      env: {},
    });
    const runtime = await openRuntime(config);
    try {
      const [id] = await runtime.compute.start(1);
      await waitFor('the worker to stop', async () => (await runtime.compute.list()).find((instance) => instance.id === id)?.state === 'stopped', { timeoutMs: 60_000, intervalMs: 100 });
      const workerLog = await readFile(path.join(data, 'logs', `${id}.log`), 'utf8');
      assert.equal(logged(parseLogLines(workerLog), { msg: 'worker stopping', reason: 'idle', processed: 0, instanceId: id }).length, 1, workerLog);
      const signed = sqs.requests.map((request) => request.credential);
      assert.ok(signed.length >= 2, `the worker reached SQS: ${JSON.stringify(sqs.requests)}`);
      for (const credential of signed) assert.match(credential ?? '', /^AKIDLOCALWORKER\/\d{8}\/eu-central-1\/sqs\/aws4_request$/);
    } finally {
      await runtime.close();
      await sqs.close();
    }
  });

  it('stay away from local workers of the embedded shape', () => {
    Object.assign(process.env, SECRETS);
    const { config } = loadConfig({ argv: ['--data', temp.dir], env: {} });
    assert.deepEqual(awsEnvForLocalWorkers(config), {});
  });

  it('never go into EC2 user data, even when the launcher has them', async () => {
    Object.assign(process.env, SECRETS, { AWS_PROFILE: 'launcher-profile', AWS_REGION: 'eu-west-1' });
    const { config } = loadConfig({ argv: ['--compute', 'ec2', '--store', 's3', '--queue', 'sqs', '--region', 'eu-west-1', '--ec2-image-id', 'ami-12345678'], env: {} });
    const runtime = await openRuntime(config);
    try {
      assert.ok(runtime.compute instanceof Ec2Compute);
      const userData = Buffer.from(runtime.compute.runInstancesInput(1).UserData ?? '', 'base64').toString('utf8');
      assert.match(userData, /icaas worker/);
      for (const name of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_CONTAINER_CREDENTIALS']) {
        assert.ok(!userData.includes(name), `user data names ${name}`);
      }
      for (const value of [...Object.values(SECRETS), 'launcher-profile']) assert.ok(!userData.includes(value), `user data holds ${value}`);
    } finally {
      await runtime.close();
    }
  });
});
