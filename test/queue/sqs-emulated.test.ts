/**
 * The shared queue contract against the SQS adapter over the real SQS wire protocol, on
 * the fauxqs emulator on loopback: the same SDK requests as in production, without an AWS
 * account. test/queue/sqs-contract.test.ts runs the same contract on real SQS when given
 * credentials. The request-level tests below check what the adapter puts on the wire and
 * how it handles what SQS answers; test/queue/sqs.test.ts keeps the faults the emulator
 * cannot produce.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { CreateQueueCommand, DeleteQueueCommand, GetQueueAttributesCommand, SQSClient } from '@aws-sdk/client-sqs';
import { QueueError } from '../../src/queue/port.js';
import { SqsQueueProvider } from '../../src/queue/sqs.js';
import { startEmulator, type InProcessEmulator } from '../cloud/emulator.js';
import { queueContract } from './contract.js';

queueContract('sqs (fauxqs emulator)', async () => {
  const emulator = await startEmulator();
  const client = new SQSClient({ endpoint: emulator.endpoint, region: emulator.region, credentials: emulator.credentials });
  const provider = new SqsQueueProvider({ prefix: 'icaas-', client, createMissing: true });
  return {
    provider,
    async cleanup() {
      await provider.close();
      client.destroy();
      await emulator.stop();
    },
  };
}, {
  emulatorDifferences: {
    astralCharacters: 'fauxqs refuses characters above U+FFFF (InvalidMessageContents); SQS accepts #x10000 to #x10FFFF',
  },
});

describe('SqsQueueProvider over the SQS wire protocol', () => {
  let emulator: InProcessEmulator;
  let client: SQSClient;
  let provider: SqsQueueProvider;
  let runs = 0;
  /** A prefix of its own for each test, so each starts with no queues. */
  let prefix = '';
  const sent = (operation: string) => emulator.sqsRequests.filter((request) => request.operation === operation).map((request) => request.input);
  const createRaw = async (name: string, attributes?: Record<string, string>): Promise<string> =>
    (await client.send(new CreateQueueCommand({ QueueName: `${prefix}${name}`, ...(attributes ? { Attributes: attributes } : {}) }))).QueueUrl!;

  before(async () => {
    emulator = await startEmulator();
    client = new SQSClient({ endpoint: emulator.endpoint, region: emulator.region, credentials: emulator.credentials });
  });
  beforeEach(() => {
    prefix = `w${++runs}-`;
    provider = new SqsQueueProvider({ prefix, client });
    emulator.sqsRequests.length = 0;
  });
  after(async () => {
    client.destroy();
    await emulator.stop();
  });

  it('looks the queue URL up once, by the prefixed name, and reuses it', async () => {
    const url = await createRaw('launch');
    emulator.sqsRequests.length = 0;
    const queue = provider.queue('launch');
    assert.equal(queue.name, 'launch');
    assert.equal(emulator.sqsRequests.length, 0, 'opening a queue makes no request');
    await Promise.all([queue.send('a'), queue.send('b'), queue.counts()]);
    await provider.queue('launch').send('c');
    assert.deepEqual(sent('GetQueueUrl'), [{ QueueName: `${prefix}launch` }]);
    assert.deepEqual(sent('SendMessage').map((input) => input.QueueUrl), [url, url, url]);
  });

  it('rounds fractional visibility timeouts up to whole seconds, on receive and on change', async () => {
    await createRaw('round');
    const queue = provider.queue('round');
    await queue.send('x');
    const [message] = await queue.receive({ waitSeconds: 5, visibilityTimeoutSeconds: 0.2 });
    assert.ok(message, 'expected a message');
    // Rounded down, 0.2 would be 0: the message would be visible again at once.
    assert.equal(sent('ReceiveMessage')[0]?.VisibilityTimeout, 1);
    await queue.changeVisibility(message.receiptHandle, 2.1);
    assert.equal(sent('ChangeMessageVisibility')[0]?.VisibilityTimeout, 3);
    assert.deepEqual(await queue.counts(), { visible: 0, inFlight: 1, delayed: 0 });
    await queue.delete(message.receiptHandle);
  });

  it('a receive without a wait returns at once on a queue whose default is a long poll', async () => {
    // As `icaas aws provision` creates them: a 20 s receive wait unless the request says otherwise.
    await provider.ensureQueue('polled', { ReceiveMessageWaitTimeSeconds: '20' });
    const started = Date.now();
    assert.deepEqual(await provider.queue('polled').receive(), []);
    assert.ok(Date.now() - started < 10_000, `the receive took ${Date.now() - started} ms, as if it had long-polled`);
    assert.equal(sent('ReceiveMessage')[0]?.WaitTimeSeconds, 0);
  });

  it('refuses arguments outside the SQS limits without making a request', async () => {
    const queue = provider.queue('launch');
    const invalid = (pattern: RegExp) => (error: unknown): boolean => error instanceof QueueError && error.code === 'invalid-argument' && pattern.test(error.message);
    await assert.rejects(queue.receive({ maxMessages: 11 }), invalid(/maxMessages/));
    await assert.rejects(queue.receive({ waitSeconds: 21 }), invalid(/waitSeconds/));
    await assert.rejects(queue.receive({ visibilityTimeoutSeconds: 43_201 }), invalid(/visibility/));
    await assert.rejects(queue.send('x', { delaySeconds: 901 }), invalid(/delaySeconds/));
    await assert.rejects(queue.send('x'.repeat(262_145)), invalid(/larger/));
    await assert.rejects(queue.changeVisibility('rh', -1), invalid(/visibility/));
    await assert.rejects(queue.delete(''), invalid(/receipt handle/));
    assert.throws(() => provider.queue(''), /1-80 characters/, 'an empty name is refused even though the prefix alone is a valid name');
    assert.throws(() => provider.queue('x'.repeat(80)), /1-80 characters/, 'the prefix counts towards the limit');
    // Nor does a receive whose signal is already aborted.
    assert.deepEqual(await queue.receive({ waitSeconds: 20, signal: AbortSignal.abort() }), []);
    assert.deepEqual(emulator.sqsRequests, []);
  });

  it('a body with characters SQS refuses fails with invalid-argument, not as if SQS were down', async () => {
    await createRaw('contents');
    // fauxqs answers with the legacy code AWS.SimpleQueueService.InvalidMessageContents.
    for (const body of ['nul \u0000 inside', 'bell \u0007 inside', 'lone surrogate \ud800 inside']) {
      await assert.rejects(provider.queue('contents').send(body), (error: unknown) => {
        assert.ok(error instanceof QueueError, String(error));
        assert.equal(error.code, 'invalid-argument', error.message);
        assert.match(error.message, /SQS refused the request to send to queue w\d+-contents/);
        return true;
      }, JSON.stringify(body));
    }
    assert.deepEqual(await provider.queue('contents').counts(), { visible: 0, inFlight: 0, delayed: 0 });
  });

  it('reports a missing queue with the way out, and looks it up again next time', async () => {
    const queue = provider.queue('monitor');
    await assert.rejects(queue.send('x'), (error: unknown) => error instanceof QueueError && error.code === 'queue-missing' && /monitor.*icaas aws provision/.test(error.message));
    await assert.rejects(queue.counts(), (error: unknown) => error instanceof QueueError && error.code === 'queue-missing');
    // Provisioned meanwhile: the failed lookups were not cached.
    await createRaw('monitor');
    await queue.send('x');
    assert.equal(sent('GetQueueUrl').length, 3);
    assert.equal(sent('CreateQueue').length, 1, 'the provider created no queue itself');
  });

  it('forgets a cached URL when the queue turns out to be gone', async () => {
    const url = await createRaw('launch');
    const queue = provider.queue('launch');
    await queue.send('before');
    await client.send(new DeleteQueueCommand({ QueueUrl: url }));
    await assert.rejects(queue.send('x'), (error: unknown) => error instanceof QueueError && error.code === 'queue-missing');
    await createRaw('launch');
    await queue.send('after');
    assert.equal(sent('GetQueueUrl').length, 2);
    assert.deepEqual((await provider.queue('launch').receive({ waitSeconds: 5 })).map((message) => message.body), ['after']);
  });

  it('creates a missing queue when asked to, with the default visibility timeout rounded up', async () => {
    const creating = new SqsQueueProvider({ prefix, client, createMissing: true, visibilityTimeoutSeconds: 1.5 });
    await creating.queue('new').send('x');
    const { Attributes } = await client.send(new GetQueueAttributesCommand({ QueueUrl: await creating.queueUrl('new'), AttributeNames: ['VisibilityTimeout'] }));
    assert.equal(Attributes?.VisibilityTimeout, '2');
  });

  it('ensureQueue creates the queue with its attributes, caches the URL, and uses a queue that exists with other attributes', async () => {
    const url = await provider.ensureQueue('made', { ReceiveMessageWaitTimeSeconds: '20' });
    await provider.queue('made').counts();
    assert.equal(sent('GetQueueUrl').length, 0, 'the URL from CreateQueue was reused');
    const { Attributes } = await client.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['ReceiveMessageWaitTimeSeconds'] }));
    assert.equal(Attributes?.ReceiveMessageWaitTimeSeconds, '20');
    // SQS answers QueueNameExists for other attributes; the queue is then used as it is.
    assert.equal(await provider.ensureQueue('made', { ReceiveMessageWaitTimeSeconds: '5' }), url);
  });
});

describe('fauxqs differences the contract skips', () => {
  it('still refuses characters above U+FFFF (when this fails, run that contract case on fauxqs too)', async () => {
    const emulator = await startEmulator();
    const client = new SQSClient({ endpoint: emulator.endpoint, region: emulator.region, credentials: emulator.credentials });
    const provider = new SqsQueueProvider({ prefix: 'astral-', client, createMissing: true });
    try {
      await assert.rejects(provider.queue('q').send('🐈'), (error: unknown) => error instanceof QueueError && error.code === 'invalid-argument',
        'fauxqs now accepts characters above U+FFFF: drop the astralCharacters skip above');
    } finally {
      await provider.close();
      client.destroy();
      await emulator.stop();
    }
  });
});
