/**
 * `icaas aws provision|teardown` through the real SDK clients over the wire: on the stack
 * path against a fake CloudFormation and S3 (fake-aws.ts) and a fake EC2, with their
 * failures (rolled-back and stuck stacks, persistent throttling, buckets that will not
 * empty); on the direct path against the S3 and SQS emulator.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { CloudFormationClient } from '@aws-sdk/client-cloudformation';
import { EC2Client, RunInstancesCommand } from '@aws-sdk/client-ec2';
import { GetBucketTaggingCommand, GetPublicAccessBlockCommand, ListBucketsCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { GetQueueAttributesCommand, GetQueueUrlCommand, ListQueuesCommand, SQSClient } from '@aws-sdk/client-sqs';
import { loadConfig } from '../../src/config.js';
import { runAwsCommand, type AwsClients } from '../../src/aws/index.js';
import { withClients } from '../cloud/deployment.js';
import { startEmulator, type InProcessEmulator } from '../cloud/emulator.js';
import { FakeEc2 } from '../compute/fake-ec2.js';
import { FakeAws } from './fake-aws.js';

const REGION = 'eu-west-1';
const CREDENTIALS = { accessKeyId: 'test', secretAccessKey: 'test' };

const config = (env: Record<string, string> = {}) =>
  loadConfig({
    argv: [],
    cwd: '/nonexistent-icaas-test-dir',
    env: {
      AWS_REGION: REGION,
      ICAAS_DEPLOYMENT: 'prod',
      ICAAS_QUEUE_PREFIX: 'prod-',
      ICAAS_INPUT_BUCKET: 'acme-in',
      ICAAS_OUTPUT_BUCKET: 'acme-out',
      ICAAS_EC2_IMAGE_ID: 'ami-0123456789abcdef0',
      ...env,
    },
  }).config;

describe('icaas aws on CloudFormation', () => {
  let aws: FakeAws;
  let ec2: FakeEc2;
  let clients: Pick<AwsClients, 'cfn' | 's3' | 'ec2'>;
  let lines: string[];

  beforeEach(async () => {
    aws = await new FakeAws().listen();
    ec2 = await new FakeEc2().listen();
    clients = {
      // Two attempts: a persistent fault shows after one SDK retry.
      cfn: new CloudFormationClient({ region: REGION, endpoint: aws.endpoint, credentials: CREDENTIALS, maxAttempts: 2 }),
      s3: new S3Client({ region: REGION, endpoint: aws.endpoint, forcePathStyle: true, credentials: CREDENTIALS }),
      ec2: new EC2Client({ region: REGION, endpoint: ec2.endpoint, credentials: CREDENTIALS }),
    };
    lines = [];
  });
  afterEach(async () => {
    for (const client of Object.values(clients)) client.destroy();
    await aws.close();
    await ec2.close();
  });

  const run = (sub: 'provision' | 'teardown', options: { env?: Record<string, string>; dryRun?: boolean; force?: boolean; skipEc2?: boolean } = {}) =>
    runAwsCommand(sub, { config: config(options.env), clients, pollMs: 5, dryRun: options.dryRun ?? false, force: options.force ?? false, skipEc2: options.skipEc2 ?? false }, (line) => lines.push(line));
  const output = () => lines.join('\n');
  const executes = () => aws.calls.filter((call) => call === 'ExecuteChangeSet').length;

  it('creates the stack through a change set, shows its progress, and prints how to start on it', async () => {
    assert.equal(await run('provision'), 0, output());
    const stack = aws.stack('prod')!;
    assert.equal(stack.status, 'CREATE_COMPLETE');
    assert.deepEqual(stack.tags, [{ Key: 'icaas:deployment', Value: 'prod' }]);
    assert.deepEqual([...stack.resources.keys()].sort(), ['InputBucket', 'InputBucketPolicy', 'LaunchQueue', 'MonitorQueue', 'OutputBucket', 'OutputBucketPolicy', 'OutputQueue', 'WorkerInstanceProfile', 'WorkerLaunchTemplate', 'WorkerRole']);
    assert.match(output(), /changes in stack prod \(new stack\):\n {2}add +InputBucket \(AWS::S3::Bucket\)/);
    assert.match(output(), / {2}WorkerRole \(AWS::IAM::Role\) CREATE_IN_PROGRESS\n {2}WorkerRole \(AWS::IAM::Role\) CREATE_COMPLETE/);
    assert.match(output(), / {2}prod \(AWS::CloudFormation::Stack\) CREATE_COMPLETE/);
    // Each event is printed once.
    assert.equal(output().match(/InputBucket \(AWS::S3::Bucket\) CREATE_COMPLETE/g)?.length, 1);
    assert.match(output(), /ICAAS_STORE=s3 ICAAS_QUEUE=sqs ICAAS_COMPUTE=ec2 ICAAS_EC2_LAUNCH_TEMPLATE=prod-worker AWS_REGION=eu-west-1 ICAAS_DEPLOYMENT=prod ICAAS_QUEUE_PREFIX=prod- ICAAS_INPUT_BUCKET=acme-in ICAAS_OUTPUT_BUCKET=acme-out icaas start/);
  });

  it('changes nothing on a second run, and says so', async () => {
    assert.equal(await run('provision'), 0, output());
    lines = [];
    assert.equal(await run('provision'), 0, output());
    assert.match(output(), /stack prod is up to date: nothing to change/);
    assert.equal(executes(), 1);
    assert.equal(aws.changeSets.size, 0, 'the empty change set was deleted');
    assert.equal(aws.stack('prod')!.status, 'CREATE_COMPLETE');
  });

  it('updates only what changed', async () => {
    assert.equal(await run('provision'), 0, output());
    lines = [];
    assert.equal(await run('provision', { env: { ICAAS_DEADLINE: '600' } }), 0, output());
    assert.match(output(), /changes in stack prod \(update\):\n {2}modify MonitorQueue \(AWS::SQS::Queue https:\/\/sqs\.eu-west-1\.amazonaws\.com\/123456789012\/prod-monitor\)/);
    assert.equal(aws.stack('prod')!.status, 'UPDATE_COMPLETE');
    // The deadline also reaches the workers' user data, so the launch template changes with it.
    assert.deepEqual(lines.filter((line) => /^ {2}(add|modify|remove) /.test(line)).map((line) => line.trim().split(/\s+/).slice(0, 2).join(' ')), ['modify MonitorQueue', 'modify WorkerLaunchTemplate']);
  });

  it('a dry run of a new stack prints every resource it would add and leaves nothing behind', async () => {
    assert.equal(await run('provision', { dryRun: true }), 0, output());
    assert.match(output(), /would change in stack prod \(new stack\):/);
    for (const id of ['InputBucket', 'OutputBucket', 'LaunchQueue', 'MonitorQueue', 'OutputQueue', 'WorkerRole', 'WorkerInstanceProfile', 'WorkerLaunchTemplate']) {
      assert.match(output(), new RegExp(`^ {2}add +${id} \\(`, 'm'));
    }
    assert.equal(executes(), 0);
    assert.equal(aws.changeSets.size, 0);
    assert.equal(aws.stack('prod'), undefined, 'the REVIEW_IN_PROGRESS stack that held the change set is deleted');
    assert.doesNotMatch(output(), /start the service/);
  });

  it('a dry run of --skip-ec2 on a full stack shows the EC2 part removed, and changes nothing', async () => {
    assert.equal(await run('provision'), 0, output());
    lines = [];
    assert.equal(await run('provision', { dryRun: true, skipEc2: true }), 0, output());
    const changes = lines.filter((line) => /^ {2}(add|modify|remove) /.test(line)).map((line) => line.trim().split(/\s+/).slice(0, 2).join(' '));
    assert.deepEqual(changes.sort(), ['remove WorkerInstanceProfile', 'remove WorkerLaunchTemplate', 'remove WorkerRole']);
    assert.equal(executes(), 1);
    assert.equal(aws.stack('prod')!.resources.size, 10);
    lines = [];
    assert.equal(await run('provision', { skipEc2: true }), 0, output());
    assert.equal(aws.stack('prod')!.resources.size, 7);
    assert.match(output(), /\(workers run as local processes\)/);
  });

  it('a failed creation ends with the failed resource and its reason; the next run starts over from the rolled-back stack', async () => {
    aws.takenBuckets.add('acme-out');
    assert.equal(await run('provision'), 1);
    assert.match(output(), /stack prod ended in ROLLBACK_COMPLETE; CloudFormation rolled the creation back; the stack holds nothing/);
    // The cause alone: not the resources CloudFormation cancelled because of it.
    assert.match(output(), /failed:\n {2}OutputBucket \(AWS::S3::Bucket\) CREATE_FAILED: acme-out already exists$/);
    assert.doesNotMatch(output(), /start the service/);
    assert.deepEqual([...aws.buckets.keys()], [], 'the rollback removed the input bucket');

    aws.takenBuckets.clear();
    lines = [];
    assert.equal(await run('provision'), 0, output());
    assert.match(output(), /stack prod is in ROLLBACK_COMPLETE: its creation failed and was rolled back, so it holds nothing; deleting it to create it again/);
    assert.equal(aws.stack('prod')!.status, 'CREATE_COMPLETE');
  });

  it('a failed update is rolled back and reported', async () => {
    assert.equal(await run('provision', { skipEc2: true }), 0, output());
    aws.failCreate = { logicalId: 'WorkerLaunchTemplate', reason: 'The specified AMI does not exist' };
    lines = [];
    assert.equal(await run('provision'), 1, output());
    assert.match(output(), /stack prod ended in UPDATE_ROLLBACK_COMPLETE.*the deployment is as it was before/);
    assert.match(output(), /WorkerLaunchTemplate \(AWS::EC2::LaunchTemplate\) CREATE_FAILED: The specified AMI does not exist/);
    assert.equal(aws.stack('prod')!.status, 'UPDATE_ROLLBACK_COMPLETE');
    assert.equal(aws.stack('prod')!.resources.size, 7);
  });

  it('refuses a stack stuck in a failed rollback, or busy, saying what to do, and changes nothing', async () => {
    aws.addStack('prod', 'UPDATE_ROLLBACK_FAILED', [{ Key: 'icaas:deployment', Value: 'prod' }]);
    assert.equal(await run('provision'), 1);
    assert.match(output(), /stack prod is in UPDATE_ROLLBACK_FAILED: an update failed and so did its rollback; .*continue-update-rollback/);
    aws.stack('prod')!.status = 'UPDATE_IN_PROGRESS';
    lines = [];
    assert.equal(await run('provision'), 1);
    assert.match(output(), /stack prod is busy \(UPDATE_IN_PROGRESS\)/);
    lines = [];
    assert.equal(await run('teardown', { force: true }), 1);
    assert.match(output(), /stack prod is busy \(UPDATE_IN_PROGRESS\)/);
    assert.deepEqual(aws.calls.filter((call) => call !== 'DescribeStacks'), []);
  });

  it('neither updates nor deletes a stack of that name that was not made for this deployment', async () => {
    aws.addStack('prod', 'CREATE_COMPLETE', [{ Key: 'team', Value: 'billing' }]);
    assert.equal(await run('provision'), 1);
    assert.match(output(), /a stack named prod exists but was not made for deployment prod \(it lacks the tag icaas:deployment=prod\)/);
    assert.equal(await run('teardown', { force: true }), 1);
    assert.deepEqual(aws.calls.filter((call) => call !== 'DescribeStacks'), []);
  });

  it('gives up clearly when CloudFormation keeps throttling, without retrying forever', async () => {
    aws.throttle = () => true;
    assert.equal(await run('provision'), 1);
    assert.match(output(), /cloudformation:DescribeStacks prod failed: Throttling: Rate exceeded \(AWS kept throttling these requests after retries; wait a minute and run the command again\)/);
    assert.equal(aws.calls.length, 2, 'one request and the SDK\'s one retry');
  });

  it('keeps waiting through a throttled look at a running operation, and says the operation goes on when throttling persists', { timeout: 60_000 }, async () => {
    aws.throttle = (action) => action === 'DescribeStacks' && aws.calls.includes('ExecuteChangeSet');
    assert.equal(await run('provision'), 1);
    assert.match(output(), /failed: Throttling: Rate exceeded.*; the stack operation may still be running: see stack prod in the CloudFormation console/s);
    assert.equal(executes(), 1);
    // Five looks in a row, each with the SDK's retry, then it stops.
    assert.equal(aws.calls.filter((call) => call === 'DescribeStacks').length, 1 + 5 * 2);
  });

  it('teardown refuses buckets holding objects, naming them and deleting nothing; --force empties every version and deletes the stack', async () => {
    assert.equal(await run('provision'), 0, output());
    aws.putObject('acme-in', 'batches/b1/cat.jpg', 3);
    aws.putObject('acme-out', 'results/i1.json');
    // Only old versions and a delete marker: the bucket looks empty to a plain listing.
    aws.putObject('acme-out', 'results/i2.json', 1, true);
    lines = [];
    assert.equal(await run('teardown'), 1);
    assert.match(output(), /teardown refused, nothing was deleted:\n {2}- S3 bucket acme-in holds objects .*\n {2}- S3 bucket acme-out holds objects/);
    assert.ok(!aws.calls.includes('DeleteStack'));
    assert.equal(aws.buckets.get('acme-in')!.versions.length, 3);

    lines = [];
    assert.equal(await run('teardown', { dryRun: true, force: true }), 0, output());
    assert.match(output(), /would delete stack prod \(CREATE_COMPLETE\) and its resources:/);
    assert.match(output(), /would first empty S3 bucket acme-in \(--force\)/);
    assert.ok(!aws.calls.includes('DeleteStack'));
    assert.equal(aws.buckets.get('acme-in')!.versions.length, 3);

    lines = [];
    assert.equal(await run('teardown', { force: true }), 0, output());
    assert.match(output(), /emptied S3 bucket acme-in: 3 objects and versions deleted/);
    assert.match(output(), /emptied S3 bucket acme-out: 3 objects and versions deleted/);
    assert.match(output(), /prod \(AWS::CloudFormation::Stack\) DELETE_COMPLETE/);
    assert.match(output(), /stack prod deleted/);
    assert.equal(aws.stack('prod'), undefined);
    assert.deepEqual([...aws.buckets.keys()], []);

    lines = [];
    assert.equal(await run('teardown'), 0);
    assert.match(output(), /there is no stack prod in eu-west-1: nothing to delete/);
  });

  it('teardown stops at a bucket that cannot be emptied, naming what stayed, and does not delete the stack', { timeout: 30_000 }, async () => {
    assert.equal(await run('provision'), 0, output());
    aws.putObject('acme-out', 'results/a.json');
    aws.putObject('acme-out', 'results/locked.json');
    aws.lockedKeys.add('acme-out/results/locked.json');
    lines = [];
    assert.equal(await run('teardown', { force: true }), 1);
    assert.match(output(), /could not empty S3 bucket acme-out: 1 of 2 objects were not deleted, e\.g\. results\/locked\.json \(version \w+\): AccessDenied .*; 1 were deleted\. Nothing else was deleted/);
    assert.ok(!aws.calls.includes('DeleteStack'));
    assert.equal(aws.stack('prod')!.status, 'CREATE_COMPLETE');
  });

  it('teardown reports a stack deletion that fails with the reason, and a second teardown finishes it', async () => {
    assert.equal(await run('provision'), 0, output());
    // An upload lands after the check: CloudFormation cannot delete the bucket.
    aws.onCall = (action) => {
      if (action === 'DeleteStack') aws.putObject('acme-in', 'batches/late.jpg');
    };
    assert.equal(await run('teardown'), 1);
    assert.match(output(), /stack prod ended in DELETE_FAILED .*; the stack and what could not be deleted remain/);
    assert.match(output(), /InputBucket \(AWS::S3::Bucket\) DELETE_FAILED: The bucket you tried to delete is not empty/);
    aws.onCall = undefined;
    lines = [];
    assert.equal(await run('teardown', { force: true }), 0, output());
    assert.equal(aws.stack('prod'), undefined);
  });

  it('teardown refuses while worker instances exist, and terminates them when forced', async () => {
    assert.equal(await run('provision'), 0, output());
    await clients.ec2.send(new RunInstancesCommand({
      ImageId: 'ami-0123456789abcdef0', MinCount: 2, MaxCount: 2,
      TagSpecifications: [{ ResourceType: 'instance', Tags: [{ Key: 'icaas:deployment', Value: 'prod' }, { Key: 'icaas:role', Value: 'worker' }] }],
    }));
    assert.equal(await run('teardown'), 1);
    assert.match(output(), /2 worker instance\(s\) of deployment prod still exist/);
    assert.ok(!aws.calls.includes('DeleteStack'));
    lines = [];
    assert.equal(await run('teardown', { force: true }), 0, output());
    assert.match(output(), /terminated 2 worker instance\(s\)/);
    assert.ok(ec2.calls.some((call) => call.action === 'TerminateInstances'));
  });

  it('refuses one non-AWS endpoint without the other, before any call', async () => {
    assert.equal(await run('provision', { env: { ICAAS_S3_ENDPOINT: 'http://127.0.0.1:9000' } }), 1);
    assert.match(output(), /only one of --s3-endpoint and --sqs-endpoint is set/);
    assert.deepEqual(aws.calls, []);
  });

  it('fails clearly without a region', async () => {
    const noRegion = { ...config(), region: '' };
    const saved = { AWS_REGION: process.env.AWS_REGION, AWS_DEFAULT_REGION: process.env.AWS_DEFAULT_REGION, AWS_CONFIG_FILE: process.env.AWS_CONFIG_FILE, AWS_PROFILE: process.env.AWS_PROFILE };
    delete process.env.AWS_REGION;
    delete process.env.AWS_DEFAULT_REGION;
    delete process.env.AWS_PROFILE;
    process.env.AWS_CONFIG_FILE = '/nonexistent-icaas-aws-config';
    try {
      assert.equal(await runAwsCommand('provision', { config: noRegion }, (line) => lines.push(line)), 1);
    } finally {
      for (const [key, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
    }
    assert.match(output(), /no AWS region/);
    assert.deepEqual(aws.calls, []);
  });
});

/**
 * The emulator has no CloudFormation: on its endpoints provision makes the template's
 * buckets and queues directly, through the real SDK clients and the wire.
 */
describe('icaas aws on S3 and SQS endpoints that are not AWS', () => {
  let emulator: InProcessEmulator;
  before(async () => {
    emulator = await startEmulator();
  });
  after(async () => {
    await emulator.stop();
  });

  const localConfig = (name: string, env: Record<string, string> = {}) =>
    config({
      AWS_REGION: emulator.region,
      ICAAS_DEPLOYMENT: name,
      ICAAS_QUEUE_PREFIX: `${name}-`,
      ICAAS_INPUT_BUCKET: `${name}-in`,
      ICAAS_OUTPUT_BUCKET: `${name}-out`,
      ICAAS_S3_ENDPOINT: emulator.endpoint,
      ICAAS_S3_PATH_STYLE: 'true',
      ICAAS_SQS_ENDPOINT: emulator.endpoint,
      ...env,
    });

  async function ownResources(clients: { s3: S3Client; sqs: SQSClient }, name: string): Promise<string[]> {
    const { Buckets = [] } = await clients.s3.send(new ListBucketsCommand({}));
    const { QueueUrls = [] } = await clients.sqs.send(new ListQueuesCommand({ QueueNamePrefix: name }));
    return [...Buckets.flatMap((bucket) => (bucket.Name?.startsWith(name) ? [`bucket ${bucket.Name}`] : [])), ...QueueUrls.map((url) => `queue ${url.split('/').pop()}`)].sort();
  }

  it('makes the template\'s buckets and queues, changes nothing on a second run, and teardown refuses data unless forced', async () => {
    await withClients(emulator, async (clients) => {
      const lines: string[] = [];
      const run = (sub: 'provision' | 'teardown', options: { force?: boolean; env?: Record<string, string> } = {}) =>
        runAwsCommand(sub, { config: localConfig('direct', options.env), clients, force: options.force ?? false }, (line) => lines.push(line));
      assert.equal(await run('provision'), 0, lines.join('\n'));
      assert.match(lines.join('\n'), /not AWS and have no CloudFormation: making the stack's buckets and queues there directly/);
      assert.match(lines.join('\n'), /SQS queue direct-launch: created/);
      assert.deepEqual(await ownResources(clients, 'direct'), ['bucket direct-in', 'bucket direct-out', 'queue direct-launch', 'queue direct-monitor', 'queue direct-output']);
      const tags = await clients.s3.send(new GetBucketTaggingCommand({ Bucket: 'direct-in' }));
      assert.deepEqual(tags.TagSet, [{ Key: 'icaas:deployment', Value: 'direct' }]);
      const block = await clients.s3.send(new GetPublicAccessBlockCommand({ Bucket: 'direct-out' }));
      assert.deepEqual(block.PublicAccessBlockConfiguration, { BlockPublicAcls: true, IgnorePublicAcls: true, BlockPublicPolicy: true, RestrictPublicBuckets: true });
      const { QueueUrl } = await clients.sqs.send(new GetQueueUrlCommand({ QueueName: 'direct-monitor' }));
      const { Attributes } = await clients.sqs.send(new GetQueueAttributesCommand({ QueueUrl, AttributeNames: ['VisibilityTimeout'] }));
      assert.equal(Attributes?.VisibilityTimeout, '60');
      assert.match(lines.join('\n'), /ICAAS_STORE=s3 ICAAS_QUEUE=sqs ICAAS_S3_ENDPOINT=http:\/\/127\.0\.0\.1:\d+ ICAAS_S3_PATH_STYLE=true ICAAS_SQS_ENDPOINT=/);
      assert.doesNotMatch(lines.join('\n'), /ICAAS_COMPUTE=ec2/);

      lines.length = 0;
      assert.equal(await run('provision'), 0, lines.join('\n'));
      assert.match(lines.join('\n'), /SQS queue direct-launch: unchanged/);
      lines.length = 0;
      assert.equal(await run('provision', { env: { ICAAS_DEADLINE: '120' } }), 0, lines.join('\n'));
      assert.match(lines.join('\n'), /SQS queue direct-monitor: attributes updated \(VisibilityTimeout\)/);

      await clients.s3.send(new PutObjectCommand({ Bucket: 'direct-in', Key: 'batches/b/x.jpg', Body: 'x' }));
      lines.length = 0;
      assert.equal(await run('teardown'), 1);
      assert.match(lines.join('\n'), /teardown refused, nothing was deleted:\n {2}- S3 bucket direct-in holds objects/);
      assert.equal((await ownResources(clients, 'direct')).length, 5);
      lines.length = 0;
      assert.equal(await run('teardown', { force: true }), 0, lines.join('\n'));
      assert.match(lines.join('\n'), /S3 bucket direct-in: deleted with its 1 objects/);
      assert.deepEqual(await ownResources(clients, 'direct'), []);
    });
  });
});
