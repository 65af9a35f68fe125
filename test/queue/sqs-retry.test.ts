/**
 * Retries of SQS requests over the wire, through the SDK's own retry strategy: a fake SQS
 * endpoint on loopback answers throttles, internal errors and refusals as SQS does (AWS
 * JSON protocol), and counts the requests it gets. (A mocked client would bypass the
 * SDK's retry middleware, which is what is under test here.)
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';
import { QueueError } from '../../src/queue/port.js';
import { SqsQueueProvider } from '../../src/queue/sqs.js';

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

/** An SQS endpoint whose answers to SendMessage are scripted; other actions succeed. */
class FakeSqs {
  readonly sends: string[] = [];
  script: Answer[] = [];
  private server: Server | undefined;
  endpoint = '';

  async start(): Promise<void> {
    this.server = createServer((request, response) => void this.answer(request, response));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.endpoint = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  private async answer(request: IncomingMessage, response: ServerResponse): Promise<void> {
    let text = '';
    for await (const chunk of request) text += String(chunk);
    const action = String(request.headers['x-amz-target'] ?? '').replace(/^AmazonSQS\./, '');
    const input = JSON.parse(text || '{}') as { QueueName?: string; MessageBody?: string };
    let answer: Answer;
    if (action === 'GetQueueUrl') {
      answer = { status: 200, body: { QueueUrl: `${this.endpoint}/000000000000/${input.QueueName}` } };
    } else if (action === 'SendMessage') {
      this.sends.push(input.MessageBody ?? '');
      answer = this.script.shift() ?? {
        status: 200,
        body: { MessageId: `m-${this.sends.length}`, MD5OfMessageBody: createHash('md5').update(input.MessageBody ?? '').digest('hex') },
      };
    } else {
      answer = { status: 400, body: { __type: 'com.amazonaws.sqs#InvalidAction', message: `not faked: ${action}` } };
    }
    response.writeHead(answer.status, { 'content-type': 'application/x-amz-json-1.0' });
    response.end(JSON.stringify(answer.body));
  }
}

const throttle: Answer = { status: 400, body: { __type: 'com.amazon.coral.availability#ThrottlingException', message: 'Rate exceeded' } };
const internal: Answer = { status: 500, body: { __type: 'com.amazonaws.sqs#InternalError', message: 'We encountered an internal error.' } };
const denied: Answer = { status: 403, body: { __type: 'com.amazonaws.sqs#AccessDenied', message: 'Access to the resource is denied.' } };

describe('SQS requests retried by the SDK', () => {
  const fake = new FakeSqs();
  let provider: SqsQueueProvider;
  before(() => fake.start());
  after(() => fake.stop());
  beforeEach(() => {
    fake.sends.length = 0;
    fake.script = [];
    process.env.AWS_ACCESS_KEY_ID ??= 'test';
    process.env.AWS_SECRET_ACCESS_KEY ??= 'test';
    // One attempt more than the SDK's default, to see that the setting reaches the client.
    provider = withAttempts(4);
  });

  const withAttempts = (attempts: number) => new SqsQueueProvider({ prefix: 't-', endpoint: fake.endpoint, region: 'eu-west-1', retry: { attempts } });

  async function sendFails(): Promise<QueueError> {
    try {
      await provider.queue('launch').send('x');
    } catch (error) {
      assert.ok(error instanceof QueueError, String(error));
      return error;
    } finally {
      await provider.close();
    }
    assert.fail('send should have failed');
  }

  it('retries throttling until SQS accepts the request', async () => {
    fake.script = [throttle, throttle];
    assert.equal(await provider.queue('launch').send('x'), 'm-3');
    assert.equal(fake.sends.length, 3);
    await provider.close();
  });

  it('retries internal errors as often as configured', async () => {
    fake.script = [internal, internal, internal];
    assert.equal(await provider.queue('launch').send('x'), 'm-4');
    assert.equal(fake.sends.length, 4);
    await provider.close();
  });

  it('gives up after the configured attempts', async () => {
    fake.script = [internal, internal, internal, internal, internal];
    const error = await sendFails();
    assert.equal(error.code, 'unavailable');
    assert.equal(fake.sends.length, 4);
  });

  it('says how many attempts a throttled request made', async () => {
    provider = withAttempts(2);
    fake.script = [throttle, throttle, throttle];
    const error = await sendFails();
    assert.equal(error.code, 'throttled');
    assert.match(error.message, /2 attempts/);
    assert.equal(fake.sends.length, 2);
  });

  it('does not retry a refusal: that is for the loop above, which backs off', async () => {
    fake.script = [denied, denied];
    const error = await sendFails();
    assert.equal(error.code, 'access-denied');
    assert.equal(fake.sends.length, 1);
  });
});
