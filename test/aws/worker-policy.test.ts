/**
 * The worker's IAM policy against what a worker really does: the real worker loop runs on
 * the SQS adapter (its client stubbed, recording each call), a file store that records each
 * object operation, and the EC2 compute adapter (pointed at a fake EC2 endpoint, which must
 * see no call at all). Every call must be allowed by workerPolicy, and so the policy cannot
 * lose a permission the worker needs, nor can the worker start needing one silently.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { DeleteMessageCommand, GetQueueUrlCommand, ReceiveMessageCommand, SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { mockClient } from 'aws-sdk-client-mock';
import { workerPolicy } from '../../src/aws/template.js';
import type { Classifier } from '../../src/classifier/port.js';
import { Ec2Compute } from '../../src/compute/ec2.js';
import { inputKey, type LaunchMessage } from '../../src/messages.js';
import { SqsQueueProvider } from '../../src/queue/sqs.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import type { ObjectStore } from '../../src/storage/port.js';
import { runWorker } from '../../src/worker/worker.js';
import { FakeEc2 } from '../compute/fake-ec2.js';
import { makeTempDir } from '../helpers.js';

const REGION = 'eu-west-1';
const ACCOUNT = '123456789012';
const SETTINGS = { region: REGION, deployment: 'prod', queuePrefix: 'prod-', inputBucket: 'acme-in', outputBucket: 'acme-out', deadlineSeconds: 30 };
const queueUrl = (name: string) => `https://sqs.${REGION}.amazonaws.com/${ACCOUNT}/${name}`;

interface Call {
  action: string;
  resource: string;
}

/** Whether the policy allows the action on the resource (Allow statements, `*` wildcards). */
function allows(policy: ReturnType<typeof workerPolicy>, { action, resource }: Call): boolean {
  const matches = (pattern: string) => new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`).test(resource);
  return policy.Statement.some((statement) => statement.Effect === 'Allow' && statement.Action.includes(action) && (statement.Resource ?? []).some((arn) => typeof arn === 'string' && matches(arn)));
}

/** A real file store that records each operation as the S3 action and resource it needs. */
function recordingStore(store: ObjectStore, calls: Call[]): ObjectStore {
  const object = (bucket: string, key: string) => `arn:aws:s3:::${bucket}/${key}`;
  return {
    put: (bucket, key, body, options) => (calls.push({ action: 's3:PutObject', resource: object(bucket, key) }), store.put(bucket, key, body, options)),
    // GetObject and HeadObject both need s3:GetObject; a missing object answers 404 only with s3:ListBucket.
    get: async (bucket, key) => {
      calls.push({ action: 's3:GetObject', resource: object(bucket, key) });
      const found = await store.get(bucket, key);
      if (!found) calls.push({ action: 's3:ListBucket', resource: `arn:aws:s3:::${bucket}` });
      return found;
    },
    head: async (bucket, key) => {
      calls.push({ action: 's3:GetObject', resource: object(bucket, key) });
      const found = await store.head(bucket, key);
      if (!found) calls.push({ action: 's3:ListBucket', resource: `arn:aws:s3:::${bucket}` });
      return found;
    },
    putStream: (bucket, key, body, options) => (calls.push({ action: 's3:PutObject', resource: object(bucket, key) }), store.putStream(bucket, key, body, options)),
    getStream: async (bucket, key) => {
      calls.push({ action: 's3:GetObject', resource: object(bucket, key) });
      const found = await store.getStream(bucket, key);
      if (!found) calls.push({ action: 's3:ListBucket', resource: `arn:aws:s3:::${bucket}` });
      return found;
    },
    list: (bucket, prefix) => (calls.push({ action: 's3:ListBucket', resource: `arn:aws:s3:::${bucket}` }), store.list(bucket, prefix)),
    delete: (bucket, key) => (calls.push({ action: 's3:DeleteObject', resource: object(bucket, key) }), store.delete(bucket, key)),
    ensureBucket: (bucket) => (calls.push({ action: 's3:CreateBucket', resource: `arn:aws:s3:::${bucket}` }), store.ensureBucket(bucket)),
    close: () => store.close(),
  };
}

describe('the worker policy', async () => {
  const temp = await makeTempDir();
  after(() => temp.cleanup());

  it('allows every call a worker makes over its whole life, and the worker makes no EC2 call', async () => {
    const calls: Call[] = [];
    const files = new FsObjectStore(path.join(temp.dir, 'buckets'));
    await files.ensureBucket(SETTINGS.inputBucket);
    await files.ensureBucket(SETTINGS.outputBucket);
    const images = ['a', 'b'].map((imageId): LaunchMessage => ({ type: 'launch', imageId, batchId: 'batch', name: `${imageId}.jpg`, key: inputKey('batch', imageId), attempt: 1, queuedAt: Date.now() }));
    for (const image of images) await files.put(SETTINGS.inputBucket, image.key, Buffer.from(`image ${image.imageId}`));

    const sqsClient = new SQSClient({ region: REGION, credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
    const sqs = mockClient(sqsClient);
    sqs.on(GetQueueUrlCommand).callsFake(({ QueueName }) => ({ QueueUrl: queueUrl(QueueName) }));
    const waiting = images.map((image, i) => ({ MessageId: `m-${i}`, ReceiptHandle: `r-${i}`, Body: JSON.stringify(image), Attributes: { ApproximateReceiveCount: '1', SentTimestamp: String(Date.now()) } }));
    sqs.on(ReceiveMessageCommand).callsFake(() => ({ Messages: waiting.splice(0, 1) }));
    sqs.on(DeleteMessageCommand).resolves({});
    sqs.on(SendMessageCommand).resolves({ MessageId: 'sent' });
    const queues = new SqsQueueProvider({ prefix: SETTINGS.queuePrefix, client: sqsClient });

    const ec2 = await new FakeEc2().listen();
    const store = recordingStore(files, calls);
    const compute = new Ec2Compute({
      endpoint: ec2.endpoint,
      region: REGION,
      maxInstances: 1,
      deployment: 'prod',
      userData: '#!/bin/bash\n',
      heartbeats: { store, bucket: SETTINGS.outputBucket },
    });
    const classifier: Classifier = { description: 'stub', classify: async () => [{ label: 'cat', probability: 0.9, index: 1 }], close: async () => {} };
    try {
      const summary = await runWorker({
        instanceId: 'i-0123456789abcdef0',
        store,
        inputBucket: SETTINGS.inputBucket,
        outputBucket: SETTINGS.outputBucket,
        queues: { launch: queues.queue('launch'), monitor: queues.queue('monitor'), output: queues.queue('output') },
        compute,
        classifier,
        idleWaitSeconds: 0,
      });
      assert.deepEqual(summary, { processed: 2, reason: 'idle' });
      await compute.report('i-0123456789abcdef0', { state: 'stopped', imageId: null });
    } finally {
      await compute.close();
      await ec2.close();
      await queues.close();
      await files.close();
    }

    for (const call of sqs.calls()) {
      const command = call.args[0] as { constructor: { name: string }; input: { QueueUrl?: string; QueueName?: string } };
      const name = command.input.QueueName ?? command.input.QueueUrl!.split('/').pop()!;
      calls.push({ action: `sqs:${command.constructor.name.replace(/Command$/, '')}`, resource: `arn:aws:sqs:${REGION}:${ACCOUNT}:${name}` });
    }
    const queueArn = (suffix: string) => `arn:aws:sqs:${REGION}:${ACCOUNT}:${SETTINGS.queuePrefix}${suffix}`;
    const policy = workerPolicy({
      inputBucket: `arn:aws:s3:::${SETTINGS.inputBucket}`,
      outputBucket: `arn:aws:s3:::${SETTINGS.outputBucket}`,
      launchQueue: queueArn('launch'),
      monitorQueue: queueArn('monitor'),
      outputQueue: queueArn('output'),
    });
    const denied = calls.filter((call) => !allows(policy, call));
    assert.deepEqual(denied, [], 'every call is allowed');
    const actions = new Set(calls.map((call) => call.action));
    for (const expected of ['s3:GetObject', 's3:PutObject', 's3:ListBucket', 'sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:SendMessage', 'sqs:GetQueueUrl']) {
      assert.ok(actions.has(expected), `the run exercised ${expected}`);
    }
    assert.ok(calls.some((call) => call.action === 's3:PutObject' && call.resource.endsWith('/instances/i-0123456789abcdef0.json')), 'the heartbeat was written');
    assert.deepEqual(ec2.calls, [], 'a worker makes no EC2 call');
  });
});
