/**
 * A small SQS-protocol endpoint on loopback (AWS JSON 1.0, as the SDK speaks it), for
 * tests that need the real SDK client to meet a fault SQS really answers: every queue
 * missing, or queues that exist and stay empty. It records each request with the
 * credential scope it was signed with.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SqsRequest {
  /** The operation, e.g. "ReceiveMessage". */
  operation: string;
  /** From the SigV4 Authorization header: "<key id>/<date>/<region>/sqs/aws4_request". */
  credential: string | undefined;
  at: number;
}

export interface SqsEndpoint {
  url: string;
  requests: SqsRequest[];
  /** 'missing': every queue is missing; 'empty': every queue exists and has no messages. */
  mode: 'missing' | 'empty';
  close(): Promise<void>;
}

export async function startSqsEndpoint(mode: SqsEndpoint['mode'] = 'missing'): Promise<SqsEndpoint> {
  const requests: SqsRequest[] = [];
  const waits = new Set<NodeJS.Timeout>();
  const endpoint: SqsEndpoint = { url: '', requests, mode, close: async () => {} };

  const answer = (response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    if (response.destroyed) return;
    response.writeHead(status, { 'content-type': 'application/x-amz-json-1.0', 'x-amzn-requestid': randomUUID(), ...headers });
    response.end(JSON.stringify(body));
  };

  const handle = async (request: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const operation = String(request.headers['x-amz-target'] ?? '').replace(/^AmazonSQS\./, '');
    const credential = /Credential=([^,]+)/.exec(String(request.headers.authorization ?? ''))?.[1];
    requests.push({ operation, credential, at: Date.now() });
    let input: Record<string, unknown> = {};
    try {
      input = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as Record<string, unknown>;
    } catch {
      // Answered below like any other request.
    }
    if (endpoint.mode === 'missing') {
      answer(response, 400, { __type: 'com.amazonaws.sqs#QueueDoesNotExist', message: 'The specified queue does not exist.' }, {
        'x-amzn-query-error': 'AWS.SimpleQueueService.NonExistentQueue;Sender',
      });
      return;
    }
    switch (operation) {
      case 'GetQueueUrl':
        return answer(response, 200, { QueueUrl: `${endpoint.url}/000000000000/${String(input.QueueName)}` });
      case 'GetQueueAttributes':
        return answer(response, 200, { Attributes: { ApproximateNumberOfMessages: '0', ApproximateNumberOfMessagesNotVisible: '0', ApproximateNumberOfMessagesDelayed: '0' } });
      case 'ReceiveMessage': {
        // A long poll on an empty queue: answered empty when the wait is over.
        const waitMs = Math.min(20, Number(input.WaitTimeSeconds ?? 0)) * 1000;
        const timer = setTimeout(() => {
          waits.delete(timer);
          answer(response, 200, {});
        }, waitMs);
        waits.add(timer);
        response.on('close', () => {
          clearTimeout(timer);
          waits.delete(timer);
        });
        return;
      }
      case 'SendMessage': {
        const body = String(input.MessageBody ?? '');
        return answer(response, 200, { MessageId: randomUUID(), MD5OfMessageBody: createHash('md5').update(body).digest('hex') });
      }
      default:
        return answer(response, 200, {});
    }
  };

  const server = createServer((request, response) => {
    handle(request, response).catch(() => response.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  endpoint.close = async () => {
    for (const timer of waits) clearTimeout(timer);
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return endpoint;
}
