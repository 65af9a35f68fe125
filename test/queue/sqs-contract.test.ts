/**
 * The shared queue contract against real Amazon SQS. It runs only when given an account to
 * run in: ICAAS_TEST_SQS_PREFIX (a prefix for the throwaway queues, e.g. `icaas-test-`),
 * a region (AWS_REGION or AWS_DEFAULT_REGION) and credentials in the environment
 * (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE). Otherwise it is reported as
 * skipped. Every queue it creates is deleted afterwards; one run creates about twenty queues
 * and sends a few hundred requests, well inside the SQS free tier.
 */
import { randomBytes } from 'node:crypto';
import { DeleteQueueCommand, GetQueueUrlCommand, SQSClient } from '@aws-sdk/client-sqs';
import type { Queue, QueueProvider } from '../../src/queue/port.js';
import { SqsQueueProvider } from '../../src/queue/sqs.js';
import { queueContract } from './contract.js';

const prefix = process.env.ICAAS_TEST_SQS_PREFIX ?? '';
const region = process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || '';
const hasCredentials = Boolean((process.env.AWS_ACCESS_KEY_ID && process.env.AWS_SECRET_ACCESS_KEY) || process.env.AWS_PROFILE);

function skipReason(): string | false {
  const missing = [
    ...(prefix ? [] : ['ICAAS_TEST_SQS_PREFIX']),
    ...(region ? [] : ['AWS_REGION']),
    ...(hasCredentials ? [] : ['AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)']),
  ];
  return missing.length === 0 ? false : `real SQS is used only when given ${missing.join(', ')}`;
}

queueContract(
  'sqs (real AWS)',
  async () => {
    const client = new SQSClient({ region });
    // A fresh prefix per run: SQS refuses to re-create a queue name for 60 s after it was
    // deleted, and two runs at once must not share queues.
    const runPrefix = `${prefix}${randomBytes(3).toString('hex')}-`;
    const sqs = new SqsQueueProvider({ prefix: runPrefix, client, createMissing: true });
    const used = new Set<string>();
    const provider: QueueProvider = {
      queue(name: string): Queue {
        const queue = sqs.queue(name);
        used.add(name);
        return queue;
      },
      close: () => sqs.close(),
    };
    return {
      provider,
      async cleanup() {
        const failures: string[] = [];
        for (const name of used) {
          try {
            // Looked up directly: the provider would create a queue that was named but never used.
            const { QueueUrl } = await client.send(new GetQueueUrlCommand({ QueueName: `${runPrefix}${name}` }));
            if (QueueUrl) await client.send(new DeleteQueueCommand({ QueueUrl }));
          } catch (error) {
            if ((error as Error).name !== 'QueueDoesNotExist') failures.push(`${runPrefix}${name}: ${(error as Error).message}`);
          }
        }
        await sqs.close();
        client.destroy();
        if (failures.length > 0) throw new Error(`could not delete test queues (delete them by hand):\n${failures.join('\n')}`);
      },
    };
  },
  { skip: skipReason(), minVisibilitySeconds: 1 },
);
