import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeEach, describe, it } from 'node:test';
import {
  DescribeInstancesCommand,
  EC2Client,
  EC2ServiceException,
  RunInstancesCommand,
  TerminateInstancesCommand,
  type Instance,
  type InstanceStateName,
  type RunInstancesCommandInput,
} from '@aws-sdk/client-ec2';
import { mockClient, type AwsClientStub } from 'aws-sdk-client-mock';
import { Ec2Compute, workerUserData, type Ec2ComputeOptions } from '../../src/compute/ec2.js';
import { makeTempDir } from '../helpers.js';

const run = promisify(execFile);

function ec2Error(name: string, message = name): EC2ServiceException {
  return new EC2ServiceException({ name, $fault: 'client', $metadata: { httpStatusCode: 400 }, message });
}

function instance(id: string, state: InstanceStateName, options: { deployment?: string; launchedAt?: string } = {}): Instance {
  return {
    InstanceId: id,
    State: { Name: state },
    LaunchTime: new Date(options.launchedAt ?? '2025-01-01T00:00:00Z'),
    Tags: [
      { Key: 'icaas:deployment', Value: options.deployment ?? 'prod' },
      { Key: 'icaas:role', Value: 'worker' },
    ],
  };
}

const FILTERS = (states: string[]) => [
  { Name: 'tag:icaas:deployment', Values: ['prod'] },
  { Name: 'tag:icaas:role', Values: ['worker'] },
  { Name: 'instance-state-name', Values: states },
];

describe('Ec2Compute against a mocked client', () => {
  let client: EC2Client;
  let mock: AwsClientStub<EC2Client>;
  let launchedCount: number;

  beforeEach(() => {
    client = new EC2Client({ region: 'eu-west-1', credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
    mock = mockClient(client);
    launchedCount = 0;
    mock.on(RunInstancesCommand).callsFake((input: RunInstancesCommandInput) => ({
      Instances: Array.from({ length: input.MaxCount ?? 0 }, () => ({ InstanceId: `i-0000000000000${String(++launchedCount).padStart(4, '0')}` })),
    }));
  });

  const compute = (options: Partial<Ec2ComputeOptions> = {}): Ec2Compute =>
    new Ec2Compute({ client, maxInstances: 5, deployment: 'prod', launchTemplate: 'prod-worker', userData: '#!/bin/bash\necho hi\n', ...options });
  const runInputs = (): RunInstancesCommandInput[] => mock.commandCalls(RunInstancesCommand).map((call) => call.args[0].input);

  it('launches only up to the maximum, counting pending and running instances', async () => {
    mock.on(DescribeInstancesCommand).resolves({
      Reservations: [{ Instances: [instance('i-0a0000000000000a1', 'pending'), instance('i-0a0000000000000a2', 'running')] }, { Instances: [instance('i-0a0000000000000a3', 'stopping')] }],
    });
    const ids = await compute().start(10);
    assert.equal(ids.length, 2);
    assert.equal(runInputs()[0]!.MaxCount, 2);
    assert.equal(runInputs()[0]!.MinCount, 1);
    assert.deepEqual(mock.commandCalls(DescribeInstancesCommand)[0]!.args[0].input, {
      Filters: FILTERS(['pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated']),
      MaxResults: 1000,
    });
  });

  it('launches nothing when the instances already reach the maximum', async () => {
    mock.on(DescribeInstancesCommand).resolves({ Reservations: [{ Instances: ['1', '2', '3'].map((n) => instance(`i-0b000000000000${n}`, 'pending')) }] });
    assert.deepEqual(await compute({ maxInstances: 3 }).start(1), []);
    assert.equal(runInputs().length, 0);
  });

  it('counts its own launches that DescribeInstances does not show yet', async () => {
    mock.on(DescribeInstancesCommand).resolves({ Reservations: [] });
    const ec2 = compute({ maxInstances: 3 });
    assert.equal((await ec2.start(2)).length, 2);
    assert.equal((await ec2.start(5)).length, 1);
    assert.deepEqual(await ec2.start(5), []);
    assert.deepEqual(runInputs().map((input) => input.MaxCount), [2, 1]);
    const listed = await ec2.list();
    assert.deepEqual(listed.map((entry) => entry.state), ['starting', 'starting', 'starting']);
  });

  it('forgets its own launches once the grace period passes', async () => {
    mock.on(DescribeInstancesCommand).resolves({ Reservations: [] });
    const ec2 = compute({ maxInstances: 2, launchGraceMs: 0 });
    await ec2.start(2);
    await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal((await ec2.start(2)).length, 2);
  });

  it('holds the maximum across concurrent start calls', async () => {
    mock.on(DescribeInstancesCommand).callsFake(async () => {
      await new Promise((resolve) => setTimeout(resolve, 5));
      return { Reservations: [] };
    });
    const ec2 = compute({ maxInstances: 4 });
    const started = await Promise.all([ec2.start(3), ec2.start(3), ec2.start(3)]);
    assert.equal(started.flat().length, 4);
  });

  it('starts from a launch template with tags, user data, shutdown behaviour and a client token', async () => {
    mock.on(DescribeInstancesCommand).resolves({});
    await compute({ subnetId: 'subnet-1', securityGroupIds: ['sg-1', 'sg-2'], instanceProfile: 'prod-worker' }).start(1);
    const input = runInputs()[0]!;
    assert.match(input.ClientToken ?? '', /^[0-9a-f-]{36}$/);
    const tags = [
      { Key: 'icaas:deployment', Value: 'prod' },
      { Key: 'icaas:role', Value: 'worker' },
      { Key: 'Name', Value: 'prod-worker' },
    ];
    assert.deepEqual({ ...input, ClientToken: undefined }, {
      MinCount: 1,
      MaxCount: 1,
      ClientToken: undefined,
      LaunchTemplate: { LaunchTemplateName: 'prod-worker', Version: '$Default' },
      SubnetId: 'subnet-1',
      SecurityGroupIds: ['sg-1', 'sg-2'],
      IamInstanceProfile: { Name: 'prod-worker' },
      UserData: Buffer.from('#!/bin/bash\necho hi\n').toString('base64'),
      InstanceInitiatedShutdownBehavior: 'terminate',
      MetadataOptions: { HttpTokens: 'required', HttpEndpoint: 'enabled' },
      TagSpecifications: [
        { ResourceType: 'instance', Tags: tags },
        { ResourceType: 'volume', Tags: tags },
      ],
    });
  });

  it('takes a template id as an id, and each start gets a fresh client token', async () => {
    mock.on(DescribeInstancesCommand).resolves({});
    const ec2 = compute({ launchTemplate: 'lt-0123456789abcdef0', launchTemplateVersion: '7' });
    await ec2.start(1);
    await ec2.start(1);
    const [first, second] = runInputs();
    assert.deepEqual(first!.LaunchTemplate, { LaunchTemplateId: 'lt-0123456789abcdef0', Version: '7' });
    assert.notEqual(first!.ClientToken, second!.ClientToken);
  });

  it('starts from an image id and instance type when there is no template', async () => {
    mock.on(DescribeInstancesCommand).resolves({});
    await compute({ launchTemplate: undefined, imageId: 'ami-0abc', instanceType: 'c7g.large', instanceProfile: 'arn:aws:iam::123456789012:instance-profile/p' }).start(3);
    const input = runInputs()[0]!;
    assert.equal(input.LaunchTemplate, undefined);
    assert.equal(input.ImageId, 'ami-0abc');
    assert.equal(input.InstanceType, 'c7g.large');
    assert.deepEqual(input.IamInstanceProfile, { Arn: 'arn:aws:iam::123456789012:instance-profile/p' });
    assert.equal(input.MaxCount, 3);
    assert.equal(input.SubnetId, undefined);
    assert.equal(input.SecurityGroupIds, undefined);
  });

  it('falls back to the provisioned template when given neither template nor image', async () => {
    mock.on(DescribeInstancesCommand).resolves({});
    await compute({ launchTemplate: undefined, deployment: 'staging' }).start(1);
    assert.deepEqual(runInputs()[0]!.LaunchTemplate, { LaunchTemplateName: 'staging-worker', Version: '$Default' });
  });

  it('builds the user data when it is given as a function', async () => {
    mock.on(DescribeInstancesCommand).resolves({});
    let built = 0;
    await compute({ userData: () => `#!/bin/bash\n# ${++built}\n` }).start(1);
    assert.equal(Buffer.from(runInputs()[0]!.UserData ?? '', 'base64').toString(), '#!/bin/bash\n# 1\n');
  });

  it('explains a missing launch template', async () => {
    mock.on(DescribeInstancesCommand).resolves({});
    mock.on(RunInstancesCommand).rejects(ec2Error('InvalidLaunchTemplateName.NotFoundException', "The specified launch template, with template name prod-worker, does not exist."));
    await assert.rejects(compute().start(1), /launch template prod-worker was not found: run `icaas aws provision`/);
  });

  it('explains capacity and permission failures', async () => {
    mock.on(DescribeInstancesCommand).resolves({});
    mock.on(RunInstancesCommand).rejects(ec2Error('VcpuLimitExceeded', 'You have requested more vCPU capacity than your current vCPU limit'));
    await assert.rejects(compute().start(1), /could not start more workers now \(VcpuLimitExceeded\)/);
    mock.on(RunInstancesCommand).rejects(ec2Error('UnauthorizedOperation', 'You are not authorized to perform this operation.'));
    await assert.rejects(compute().start(1), /iam:PassRole/);
  });

  it('refuses a bad count and starts nothing for 0', async () => {
    await assert.rejects(compute().start(-1), /whole number/);
    await assert.rejects(compute().start(1.5), /whole number/);
    assert.deepEqual(await compute().start(0), []);
    assert.equal(mock.calls().length, 0);
  });

  it('lists every page of instances, mapping EC2 states to instance states', async () => {
    mock
      .on(DescribeInstancesCommand, { NextToken: undefined })
      .resolves({
        Reservations: [{ Instances: [instance('i-0c0000000000000c1', 'pending', { launchedAt: '2025-01-01T00:00:01Z' }), instance('i-0c0000000000000c2', 'running', { launchedAt: '2025-01-01T00:00:02Z' })] }],
        NextToken: 'page-2',
      })
      .on(DescribeInstancesCommand, { NextToken: 'page-2' })
      .resolves({
        Reservations: [
          { Instances: [instance('i-0c0000000000000c3', 'stopping', { launchedAt: '2025-01-01T00:00:03Z' }), instance('i-0c0000000000000c4', 'shutting-down', { launchedAt: '2025-01-01T00:00:04Z' })] },
          { Instances: [instance('i-0c0000000000000c5', 'stopped', { launchedAt: '2025-01-01T00:00:05Z' })] },
        ],
      });
    const listed = await compute().list();
    assert.deepEqual(listed, [
      { id: 'i-0c0000000000000c1', state: 'starting', startedAt: Date.parse('2025-01-01T00:00:01Z') },
      { id: 'i-0c0000000000000c2', state: 'idle', startedAt: Date.parse('2025-01-01T00:00:02Z') },
      { id: 'i-0c0000000000000c3', state: 'stopped', startedAt: Date.parse('2025-01-01T00:00:03Z') },
      { id: 'i-0c0000000000000c4', state: 'stopped', startedAt: Date.parse('2025-01-01T00:00:04Z') },
      { id: 'i-0c0000000000000c5', state: 'stopped', startedAt: Date.parse('2025-01-01T00:00:05Z') },
    ]);
    const calls = mock.commandCalls(DescribeInstancesCommand).map((call) => call.args[0].input);
    assert.deepEqual(calls, [
      { Filters: FILTERS(['pending', 'running', 'stopping', 'stopped', 'shutting-down']), MaxResults: 1000 },
      { Filters: FILTERS(['pending', 'running', 'stopping', 'stopped', 'shutting-down']), MaxResults: 1000, NextToken: 'page-2' },
    ]);
  });

  it('counts every page when deciding how many to start', async () => {
    mock
      .on(DescribeInstancesCommand, { NextToken: undefined })
      .resolves({ Reservations: [{ Instances: [instance('i-0d0000000000000d1', 'running')] }], NextToken: 'p2' })
      .on(DescribeInstancesCommand, { NextToken: 'p2' })
      .resolves({ Reservations: [{ Instances: [instance('i-0d0000000000000d2', 'pending')] }] });
    await compute({ maxInstances: 3 }).start(5);
    assert.equal(runInputs()[0]!.MaxCount, 1);
  });

  it('terminates its own workers', async () => {
    mock.on(DescribeInstancesCommand, { InstanceIds: ['i-0e0000000000000e1'] }).resolves({ Reservations: [{ Instances: [instance('i-0e0000000000000e1', 'running')] }] });
    mock.on(TerminateInstancesCommand).resolves({});
    await compute().terminate('i-0e0000000000000e1');
    assert.deepEqual(mock.commandCalls(TerminateInstancesCommand).map((call) => call.args[0].input), [{ InstanceIds: ['i-0e0000000000000e1'] }]);
  });

  it('refuses to terminate an instance of another deployment or without icaas tags', async () => {
    mock.on(DescribeInstancesCommand, { InstanceIds: ['i-0f0000000000000f1'] }).resolves({ Reservations: [{ Instances: [instance('i-0f0000000000000f1', 'running', { deployment: 'other' })] }] });
    mock.on(DescribeInstancesCommand, { InstanceIds: ['i-0f0000000000000f2'] }).resolves({ Reservations: [{ Instances: [{ InstanceId: 'i-0f0000000000000f2', State: { Name: 'running' }, Tags: [{ Key: 'Name', Value: 'database' }] }] }] });
    await assert.rejects(compute().terminate('i-0f0000000000000f1'), /refusing to terminate i-0f0000000000000f1: it is not a worker of deployment "prod" \(its tags: icaas:deployment=other, icaas:role=worker\)/);
    await assert.rejects(compute().terminate('i-0f0000000000000f2'), /refusing to terminate i-0f0000000000000f2.*no icaas tags/);
    assert.equal(mock.commandCalls(TerminateInstancesCommand).length, 0);
  });

  it('treats terminating a terminated or vanished instance as done', async () => {
    mock.on(DescribeInstancesCommand, { InstanceIds: ['i-01000000000000001'] }).resolves({ Reservations: [{ Instances: [instance('i-01000000000000001', 'terminated')] }] });
    mock.on(DescribeInstancesCommand, { InstanceIds: ['i-01000000000000002'] }).rejects(ec2Error('InvalidInstanceID.NotFound', "The instance ID 'i-01000000000000002' does not exist"));
    await compute().terminate('i-01000000000000001');
    await compute().terminate('i-01000000000000002');
    assert.equal(mock.commandCalls(TerminateInstancesCommand).length, 0);
    mock.on(DescribeInstancesCommand, { InstanceIds: ['bogus'] }).rejects(ec2Error('InvalidInstanceID.Malformed', 'Invalid id: "bogus"'));
    await assert.rejects(compute().terminate('bogus'), /not an EC2 instance id/);
  });

  it('terminates its own fresh launch even before DescribeInstances shows it', async () => {
    mock.on(DescribeInstancesCommand).resolves({ Reservations: [] });
    mock.on(TerminateInstancesCommand).resolves({});
    const ec2 = compute();
    const [id] = await ec2.start(1);
    await ec2.terminate(id!);
    assert.deepEqual(mock.commandCalls(TerminateInstancesCommand)[0]!.args[0].input, { InstanceIds: [id] });
  });

  it('report is a no-op', async () => {
    await compute().report('i-01', { state: 'busy', imageId: 'x' });
    assert.equal(mock.calls().length, 0);
  });
});

describe('workerUserData', () => {
  const configEnv = {
    ICAAS_STORE: 's3',
    ICAAS_QUEUE: 'sqs',
    ICAAS_COMPUTE: 'ec2',
    ICAAS_INPUT_BUCKET: "it's-in",
    ICAAS_DEPLOYMENT: 'prod $HOME `id` "x"',
    AWS_REGION: 'eu-west-1',
    ICAAS_API_KEYS: 'secret-key',
    ICAAS_MODEL: '',
    ICAAS_DATA: '/home/operator/icaas/data',
    PORT: '3000',
  };

  it('is a bash script that runs the worker and then powers off', async () => {
    const script = workerUserData({ configEnv });
    assert.ok(script.startsWith('#!/bin/bash\n'));
    assert.match(script, /icaas worker/);
    assert.match(script, /shutdown -h now\n$/);
    assert.doesNotMatch(script, /secret-key/, 'API keys never go into user data');
    assert.doesNotMatch(script, /ICAAS_MODEL/, 'empty values are left out');
    assert.doesNotMatch(script, /ICAAS_DATA|PORT/, 'settings of the launching machine are left out');
    await run('bash', ['-n', '-c', script]);
  });

  it('starts the worker with exactly its configuration, however the values are quoted, and shuts down after it', async () => {
    const temp = await makeTempDir('icaas-userdata-');
    try {
      const bin = path.join(temp.dir, 'bin');
      const log = path.join(temp.dir, 'log');
      await run('mkdir', [bin]);
      const stub = async (name: string, body: string) => {
        await writeFile(path.join(bin, name), `#!/bin/bash\n${body}\n`);
        await chmod(path.join(bin, name), 0o755);
      };
      await stub('icaas', `{ echo "args: $*"; env | grep -E '^(ICAAS_|AWS_)' | sort; } >> '${log}'; exit 3`);
      await stub('shutdown', `echo "shutdown $*" >> '${log}'`);
      await stub('id', 'exit 1');
      await stub('curl', `echo "curl must not be called when the region is set" >> '${log}'; exit 1`);
      const script = workerUserData({ configEnv, installCommand: `echo installing >> '${log}'` });
      await run('bash', ['-c', script], { env: { PATH: `${bin}:/usr/bin:/bin` } });
      const lines = (await readFile(log, 'utf8')).trim().split('\n');
      assert.deepEqual(lines, [
        'installing',
        'args: worker',
        'AWS_REGION=eu-west-1',
        'ICAAS_COMPUTE=ec2',
        'ICAAS_DEPLOYMENT=prod $HOME `id` "x"',
        "ICAAS_INPUT_BUCKET=it's-in",
        'ICAAS_QUEUE=sqs',
        'ICAAS_STORE=s3',
        'shutdown -h now',
      ]);
    } finally {
      await temp.cleanup();
    }
  });

  it('shuts down without starting the worker when the install command fails', async () => {
    const temp = await makeTempDir('icaas-userdata-');
    try {
      const bin = path.join(temp.dir, 'bin');
      const log = path.join(temp.dir, 'log');
      await run('mkdir', [bin]);
      for (const [name, body] of [['icaas', `echo worker >> '${log}'`], ['shutdown', `echo shutdown >> '${log}'`]] as const) {
        await writeFile(path.join(bin, name), `#!/bin/bash\n${body}\n`);
        await chmod(path.join(bin, name), 0o755);
      }
      const script = workerUserData({ configEnv: { AWS_REGION: 'eu-west-1' }, installCommand: 'false' });
      await run('bash', ['-c', script], { env: { PATH: `${bin}:/usr/bin:/bin` } }).catch(() => {});
      assert.equal((await readFile(log, 'utf8')).trim(), 'shutdown');
    } finally {
      await temp.cleanup();
    }
  });

  it('refuses names that are not environment variables', () => {
    assert.throws(() => workerUserData({ configEnv: { 'BAD-NAME': 'x' } }), /not an environment variable name/);
  });
});
