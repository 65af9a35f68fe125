/**
 * SQS answers the emulator cannot give: refused permissions and credentials (it checks
 * none), throttling, internal errors, the error spellings of the older query protocol and
 * of real SQS for expired or malformed receipt handles, and the 60-second wait after a
 * queue was deleted. Everything the emulator does produce is tested over the wire in
 * test/queue/sqs-emulated.test.ts instead.
 */
import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import {
  ChangeMessageVisibilityCommand,
  CreateQueueCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  QueueDeletedRecently,
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

  it('turns the stale-handle answers of real SQS on changeVisibility into not-in-flight', async () => {
    const queue = provider.queue('launch');
    // The emulator answers MessageNotInflight only; SQS also answers these two.
    const stale = [
      new ReceiptHandleIsInvalid({ message: 'The input receipt handle is invalid.', $metadata: {} }),
      serviceError('InvalidParameterValue', 'Value AQEB for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired.'),
    ];
    for (const error of stale) {
      mock.on(ChangeMessageVisibilityCommand).rejects(error);
      await rejectsWith(queue.changeVisibility('rh-old', 5), 'not-in-flight', /t-launch/);
    }
  });

  it('treats an invalid handle on delete as a no-op, but not a refusal', async () => {
    const queue = provider.queue('launch');
    mock.on(DeleteMessageCommand).rejects(new ReceiptHandleIsInvalid({ message: 'The input receipt handle is invalid.', $metadata: {} }));
    await queue.delete('rh-stale');
    mock.on(DeleteMessageCommand).rejects(serviceError('AccessDenied', 'Access to the resource is denied.', 403));
    await rejectsWith(queue.delete('rh-1'), 'access-denied');
  });

  it('recognises the legacy query-protocol code for a missing queue', async () => {
    const legacy = Object.assign(serviceError('SQSServiceException', 'The specified queue does not exist.'), { Code: 'AWS.SimpleQueueService.NonExistentQueue' });
    mock.on(GetQueueUrlCommand, { QueueName: 't-output' }).rejects(legacy);
    await rejectsWith(provider.queue('output').counts(), 'queue-missing', /icaas aws provision/);
  });

  it('maps access denied and rejected credentials to access-denied', async () => {
    mock.on(ReceiveMessageCommand).rejects(serviceError('AccessDenied', 'Access to the resource https://sqs... is denied.', 403));
    await rejectsWith(provider.queue('launch').receive(), 'access-denied', /receive from SQS queue t-launch/);
    mock.on(ReceiveMessageCommand).rejects(serviceError('InvalidClientTokenId', 'The security token included in the request is invalid.', 403));
    await rejectsWith(provider.queue('launch').receive(), 'access-denied', /aws configure/);
  });

  it('retries the throttles the SDK does not know with backoff, and then succeeds', async () => {
    // The SDK's retry strategy retries ThrottlingException and RequestThrottled itself
    // (test/queue/sqs-retry.test.ts); a mocked client bypasses it, so these are tried once.
    mock
      .on(SendMessageCommand)
      .rejectsOnce(serviceError('KmsThrottled', 'Rate exceeded for KMS'))
      .rejectsOnce(serviceError('OverLimit', 'too many'))
      .resolves({ MessageId: 'm-3' });
    assert.equal(await provider.queue('launch').send('x'), 'm-3');
    assert.equal(mock.commandCalls(SendMessageCommand).length, 3);
  });

  it('leaves the throttles the SDK knows to the SDK, and maps them to throttled', async () => {
    mock.on(SendMessageCommand).rejects(new RequestThrottled({ message: 'Rate exceeded', $metadata: { attempts: 3 } }));
    await rejectsWith(provider.queue('launch').send('x'), 'throttled', /3 attempts/);
    assert.equal(mock.commandCalls(SendMessageCommand).length, 1);
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

  it('ensureQueue explains a name deleted less than a minute ago', async () => {
    mock.on(CreateQueueCommand, { QueueName: 't-again' }).rejects(new QueueDeletedRecently({ message: 'You must wait 60 seconds after deleting a queue', $metadata: {} }));
    await rejectsWith(provider.ensureQueue('again'), 'unavailable', /t-again.*deleted less than 60 seconds ago/);
  });
});
