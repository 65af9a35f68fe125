import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CreateQueueCommand, SQSClient } from '@aws-sdk/client-sqs';
import { assertLoopback, startEmulator, startEmulatorProcess, type Emulator } from './emulator.js';

async function queueUrlOn(emulator: Emulator): Promise<string> {
  const client = new SQSClient({ endpoint: emulator.endpoint, region: emulator.region, credentials: emulator.credentials });
  try {
    const { QueueUrl } = await client.send(new CreateQueueCommand({ QueueName: 'fixture-check' }));
    return QueueUrl ?? '';
  } finally {
    client.destroy();
  }
}

describe('protocol emulator fixture', () => {
  it('refuses endpoints that are not loopback', () => {
    for (const endpoint of ['http://127.0.0.1:4566', 'http://127.1.2.3:1', 'http://[::1]:4566']) assertLoopback(endpoint);
    for (const endpoint of ['http://localhost:4566', 'http://10.0.0.1:4566', 'https://sqs.us-east-1.amazonaws.com', 'http://127.0.0.1.evil.example:80', 'http://0.0.0.0:4566']) {
      assert.throws(() => assertLoopback(endpoint), /not a loopback address/, endpoint);
    }
  });

  it('in process: listens on 127.0.0.1 only and hands out loopback queue URLs', async () => {
    const emulator = await startEmulator();
    try {
      assert.match(emulator.endpoint, /^http:\/\/127\.0\.0\.1:\d+$/);
      const queueUrl = await queueUrlOn(emulator);
      assertLoopback(queueUrl);
      assert.ok(queueUrl.startsWith(emulator.endpoint), `queue URL ${queueUrl} is not on ${emulator.endpoint}`);
    } finally {
      await emulator.stop();
    }
    await assert.rejects(fetch(emulator.endpoint), 'the emulator still answers after stop()');
  });

  it('as a child process: reports its endpoint, serves, and exits on stop()', async () => {
    const emulator = await startEmulatorProcess();
    try {
      assertLoopback(await queueUrlOn(emulator));
    } finally {
      await emulator.stop();
    }
    assert.throws(() => process.kill(emulator.pid, 0), /ESRCH/, 'the emulator process is still running');
  });
});
