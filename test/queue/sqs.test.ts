import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import {
  ChangeMessageVisibilityCommand,
  CreateQueueCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  MessageNotInflight,
  QueueDeletedRecently,
  QueueDoesNotExist,
  QueueNameExists,
  ReceiptHandleIsInvalid,
  ReceiveMessageCommand,
  RequestThrottled,
  SendMessageCommand,
  SQSClient,
  SQSServiceException,
} from '@aws-sdk/client-sqs';
import { mockClient, type AwsClientStub } from 'aws-sdk-client-mock';
import { QueueError, type QueueErrorCode } from '../../src/queue/port.js';
import { SqsQueueProvider } from '../../src/queue/sqs.js';

const URL_LAUNCH = 'https://sqs.eu-west-1.amazonaws.com/123456789012/t-launch';

function serviceError(name: string, message = name, status = 400): SQSServiceException {
  return new SQSServiceException({ name, $fault: status >= 500 ? 'server' : 'client', $metadata: { httpStatusCode: status }, message });
}

async function rejectsWith(promise: Promise<unknown>, code: QueueErrorCode, pattern?: RegExp): Promise<QueueError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof QueueError, `expected a QueueError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (pattern) assert.match(caught.message, pattern);
  return caught;
}

describe('SqsQueueProvider against a mocked client', () => {
  let client: SQSClient;
  let mock: AwsClientStub<SQSClient>;
  let provider: SqsQueueProvider;

  beforeEach(() => {
    client = new SQSClient({ region: 'eu-west-1', credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
    mock = mockClient(client);
    mock.on(GetQueueUrlCommand, { QueueName: 't-launch' }).resolves({ QueueUrl: URL_LAUNCH });
    provider = new SqsQueueProvider({ prefix: 't-', client, retry: { attempts: 3, baseDelayMs: 1 } });
  });

  it('looks the queue URL up once, by the prefixed name, and reuses it', async () => {
    mock.on(SendMessageCommand).resolves({ MessageId: 'm-1' });
    mock.on(GetQueueAttributesCommand).resolves({ Attributes: {} });
    const queue = provider.queue('launch');
    assert.equal(queue.name, 'launch');
    assert.equal(mock.calls().length, 0, 'opening a queue makes no request');
    await Promise.all([queue.send('a'), queue.send('b'), queue.counts()]);
    await provider.queue('launch').send('c');
    const lookups = mock.commandCalls(GetQueueUrlCommand);
    assert.equal(lookups.length, 1);
    assert.deepEqual(lookups[0]!.args[0].input, { QueueName: 't-launch' });
    for (const call of mock.commandCalls(SendMessageCommand)) assert.equal(call.args[0].input.QueueUrl, URL_LAUNCH);
  });

  it('sends the body with its delay and returns the message id', async () => {
    mock.on(SendMessageCommand).resolves({ MessageId: 'm-1' });
    const queue = provider.queue('launch');
    assert.equal(await queue.send('hello', { delaySeconds: 900 }), 'm-1');
    assert.equal(await queue.send('again'), 'm-1');
    const sends = mock.commandCalls(SendMessageCommand).map((call) => call.args[0].input);
    assert.deepEqual(sends, [
      { QueueUrl: URL_LAUNCH, MessageBody: 'hello', DelaySeconds: 900 },
      { QueueUrl: URL_LAUNCH, MessageBody: 'again', DelaySeconds: 0 },
    ]);
  });

  it('receives with the exact long-poll, batch and visibility parameters, rounding visibility up', async () => {
    mock.on(ReceiveMessageCommand).resolves({
      Messages: [
        { MessageId: 'id-1', ReceiptHandle: 'rh-1', Body: 'one', Attributes: { ApproximateReceiveCount: '3', SentTimestamp: '1700000000123' } },
        { MessageId: 'id-2', ReceiptHandle: 'rh-2', Body: 'two', Attributes: { ApproximateReceiveCount: '1', SentTimestamp: '1700000000456' } },
      ],
    });
    const messages = await provider.queue('launch').receive({ maxMessages: 10, waitSeconds: 20, visibilityTimeoutSeconds: 2.1 });
    assert.deepEqual(mock.commandCalls(ReceiveMessageCommand)[0]!.args[0].input, {
      QueueUrl: URL_LAUNCH,
      MaxNumberOfMessages: 10,
      WaitTimeSeconds: 20,
      VisibilityTimeout: 3,
      MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp'],
    });
    assert.deepEqual(messages, [
      { id: 'id-1', body: 'one', receiptHandle: 'rh-1', receiveCount: 3, sentAt: 1_700_000_000_123 },
      { id: 'id-2', body: 'two', receiptHandle: 'rh-2', receiveCount: 1, sentAt: 1_700_000_000_456 },
    ]);
  });

  it('always sends WaitTimeSeconds (0 by default) and leaves the visibility to the queue when none is given', async () => {
    mock.on(ReceiveMessageCommand).resolves({});
    assert.deepEqual(await provider.queue('launch').receive(), []);
    assert.deepEqual(mock.commandCalls(ReceiveMessageCommand)[0]!.args[0].input, {
      QueueUrl: URL_LAUNCH,
      MaxNumberOfMessages: 1,
      WaitTimeSeconds: 0,
      MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp'],
    });
  });

  it('rejects arguments outside the SQS limits without making a request', async () => {
    const queue = provider.queue('launch');
    await rejectsWith(queue.receive({ maxMessages: 11 }), 'invalid-argument', /maxMessages/);
    await rejectsWith(queue.receive({ maxMessages: 0 }), 'invalid-argument', /maxMessages/);
    await rejectsWith(queue.receive({ waitSeconds: 21 }), 'invalid-argument', /waitSeconds/);
    await rejectsWith(queue.receive({ visibilityTimeoutSeconds: 43_201 }), 'invalid-argument', /visibility/);
    await rejectsWith(queue.send('x', { delaySeconds: 901 }), 'invalid-argument', /delaySeconds/);
    await rejectsWith(queue.send('x'.repeat(262_145)), 'invalid-argument', /larger/);
    await rejectsWith(queue.changeVisibility('rh', -1), 'invalid-argument', /visibility/);
    await rejectsWith(queue.delete(''), 'invalid-argument', /receipt handle/);
    assert.throws(() => provider.queue('bad name!'), (error: unknown) => error instanceof QueueError && error.code === 'invalid-argument');
    assert.throws(() => provider.queue(''), /1-80 characters/, 'an empty name is refused even though the prefix alone is a valid name');
    assert.throws(() => provider.queue('x'.repeat(79)), /1-80 characters/);
    assert.equal(mock.calls().length, 0);
  });

  it('changes visibility in whole seconds, rounding up', async () => {
    mock.on(ChangeMessageVisibilityCommand).resolves({});
    const queue = provider.queue('launch');
    await queue.changeVisibility('rh-1', 0.2);
    await queue.changeVisibility('rh-1', 0);
    await queue.changeVisibility('rh-1', 30);
    assert.deepEqual(
      mock.commandCalls(ChangeMessageVisibilityCommand).map((call) => call.args[0].input),
      [0.2, 0, 30].map((seconds) => ({ QueueUrl: URL_LAUNCH, ReceiptHandle: 'rh-1', VisibilityTimeout: Math.ceil(seconds) })),
    );
  });

  it('turns stale receipt handles on changeVisibility into not-in-flight', async () => {
    const queue = provider.queue('launch');
    const stale = [
      new ReceiptHandleIsInvalid({ message: 'The input receipt handle is invalid.', $metadata: {} }),
      new MessageNotInflight({ message: 'The message referred to is not in flight.', $metadata: {} }),
      serviceError('InvalidParameterValue', 'Value AQEB for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired.'),
    ];
    for (const error of stale) {
      mock.on(ChangeMessageVisibilityCommand).rejects(error);
      await rejectsWith(queue.changeVisibility('rh-old', 5), 'not-in-flight', /t-launch/);
    }
  });

  it('deletes by receipt handle and treats a stale handle as a no-op', async () => {
    const queue = provider.queue('launch');
    mock.on(DeleteMessageCommand).resolves({});
    await queue.delete('rh-1');
    assert.deepEqual(mock.commandCalls(DeleteMessageCommand)[0]!.args[0].input, { QueueUrl: URL_LAUNCH, ReceiptHandle: 'rh-1' });
    mock.on(DeleteMessageCommand).rejects(new ReceiptHandleIsInvalid({ message: 'The input receipt handle is invalid.', $metadata: {} }));
    await queue.delete('rh-stale');
    mock.on(DeleteMessageCommand).rejects(serviceError('AccessDenied', 'Access to the resource is denied.', 403));
    await rejectsWith(queue.delete('rh-1'), 'access-denied');
  });

  it('reads the approximate counts from the queue attributes', async () => {
    mock.on(GetQueueAttributesCommand).resolves({
      Attributes: { ApproximateNumberOfMessages: '7', ApproximateNumberOfMessagesNotVisible: '2', ApproximateNumberOfMessagesDelayed: '1' },
    });
    assert.deepEqual(await provider.queue('launch').counts(), { visible: 7, inFlight: 2, delayed: 1 });
    assert.deepEqual(mock.commandCalls(GetQueueAttributesCommand)[0]!.args[0].input, {
      QueueUrl: URL_LAUNCH,
      AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesDelayed'],
    });
  });

  it('reports a missing queue with the way out, and looks it up again next time', async () => {
    mock.on(GetQueueUrlCommand, { QueueName: 't-monitor' }).rejects(new QueueDoesNotExist({ message: 'The specified queue does not exist.', $metadata: {} }));
    const queue = provider.queue('monitor');
    await rejectsWith(queue.send('x'), 'queue-missing', /t-monitor.*icaas aws provision/);
    await rejectsWith(queue.counts(), 'queue-missing');
    assert.equal(mock.commandCalls(GetQueueUrlCommand, { QueueName: 't-monitor' }).length, 2, 'a failed lookup is not cached');
  });

  it('recognises the legacy query-protocol code for a missing queue', async () => {
    const legacy = Object.assign(serviceError('SQSServiceException', 'The specified queue does not exist.'), { Code: 'AWS.SimpleQueueService.NonExistentQueue' });
    mock.on(GetQueueUrlCommand, { QueueName: 't-output' }).rejects(legacy);
    await rejectsWith(provider.queue('output').counts(), 'queue-missing', /icaas aws provision/);
  });

  it('forgets a cached URL when the queue turns out to be gone', async () => {
    mock.on(SendMessageCommand).rejectsOnce(new QueueDoesNotExist({ message: 'gone', $metadata: {} })).resolves({ MessageId: 'm-2' });
    const queue = provider.queue('launch');
    await rejectsWith(queue.send('x'), 'queue-missing');
    assert.equal(await queue.send('x'), 'm-2');
    assert.equal(mock.commandCalls(GetQueueUrlCommand).length, 2);
  });

  it('maps access denied and rejected credentials to access-denied', async () => {
    mock.on(ReceiveMessageCommand).rejects(serviceError('AccessDenied', 'Access to the resource https://sqs... is denied.', 403));
    await rejectsWith(provider.queue('launch').receive(), 'access-denied', /receive from SQS queue t-launch/);
    mock.on(ReceiveMessageCommand).rejects(serviceError('InvalidClientTokenId', 'The security token included in the request is invalid.', 403));
    await rejectsWith(provider.queue('launch').receive(), 'access-denied', /aws configure/);
  });

  it('retries throttled requests with backoff and then succeeds', async () => {
    mock
      .on(SendMessageCommand)
      .rejectsOnce(new RequestThrottled({ message: 'Rate exceeded', $metadata: {} }))
      .rejectsOnce(serviceError('ThrottlingException', 'Rate exceeded'))
      .resolves({ MessageId: 'm-3' });
    assert.equal(await provider.queue('launch').send('x'), 'm-3');
    assert.equal(mock.commandCalls(SendMessageCommand).length, 3);
  });

  it('gives up on throttling after the configured attempts', async () => {
    mock.on(GetQueueAttributesCommand).rejects(serviceError('OverLimit', 'too many'));
    await rejectsWith(provider.queue('launch').counts(), 'throttled', /3 attempts/);
    assert.equal(mock.commandCalls(GetQueueAttributesCommand).length, 3);
  });

  it('does not retry other errors', async () => {
    mock.on(SendMessageCommand).rejects(serviceError('InternalError', 'We encountered an internal error.', 500));
    await rejectsWith(provider.queue('launch').send('x'), 'unavailable', /could not send to SQS queue t-launch/);
    assert.equal(mock.commandCalls(SendMessageCommand).length, 1);
  });

  it('passes the abort signal to the SDK and resolves [] when a long poll is aborted', async () => {
    mock.on(ReceiveMessageCommand).callsFake(() => new Promise(() => {}));
    const controller = new AbortController();
    const received = provider.queue('launch').receive({ waitSeconds: 20, signal: controller.signal });
    await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(mock.commandCalls(ReceiveMessageCommand).length, 1);
    controller.abort();
    assert.deepEqual(await received, []);
    const options = mock.send.getCall(1).args[1 as 0] as unknown as { abortSignal?: AbortSignal };
    assert.equal(options.abortSignal, controller.signal);
  });

  it('resolves [] at once, without a request, for a signal that is already aborted', async () => {
    assert.deepEqual(await provider.queue('launch').receive({ signal: AbortSignal.abort() }), []);
    assert.equal(mock.calls().length, 0);
  });

  it('creates a missing queue when asked to, with the default visibility timeout', async () => {
    const creating = new SqsQueueProvider({ prefix: 't-', client, createMissing: true, visibilityTimeoutSeconds: 1.5 });
    mock.on(GetQueueUrlCommand, { QueueName: 't-new' }).rejects(new QueueDoesNotExist({ message: 'no', $metadata: {} }));
    mock.on(CreateQueueCommand).resolves({ QueueUrl: 'https://sqs/t-new' });
    mock.on(SendMessageCommand).resolves({ MessageId: 'm-4' });
    await creating.queue('new').send('x');
    assert.deepEqual(mock.commandCalls(CreateQueueCommand)[0]!.args[0].input, { QueueName: 't-new', Attributes: { VisibilityTimeout: '2' } });
    assert.equal(mock.commandCalls(SendMessageCommand)[0]!.args[0].input.QueueUrl, 'https://sqs/t-new');
  });

  it('ensureQueue uses a queue that exists with other attributes, and explains a recently deleted name', async () => {
    mock.on(CreateQueueCommand, { QueueName: 't-launch' }).rejects(new QueueNameExists({ message: 'A queue already exists with the same name and a different value for attribute VisibilityTimeout', $metadata: {} }));
    assert.equal(await provider.ensureQueue('launch', { VisibilityTimeout: '5' }), URL_LAUNCH);
    mock.on(CreateQueueCommand, { QueueName: 't-again' }).rejects(new QueueDeletedRecently({ message: 'You must wait 60 seconds after deleting a queue', $metadata: {} }));
    await rejectsWith(provider.ensureQueue('again'), 'unavailable', /t-again.*deleted less than 60 seconds ago/);
  });

  it('ensureQueue creates the queue with its attributes and caches the URL', async () => {
    mock.on(CreateQueueCommand).resolves({ QueueUrl: 'https://sqs/t-made' });
    mock.on(GetQueueAttributesCommand).resolves({ Attributes: {} });
    assert.equal(await provider.ensureQueue('made', { ReceiveMessageWaitTimeSeconds: '20' }), 'https://sqs/t-made');
    await provider.queue('made').counts();
    assert.deepEqual(mock.commandCalls(CreateQueueCommand)[0]!.args[0].input, { QueueName: 't-made', Attributes: { ReceiveMessageWaitTimeSeconds: '20' } });
    assert.equal(mock.commandCalls(GetQueueUrlCommand).length, 0);
  });
});
