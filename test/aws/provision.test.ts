import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  GetBucketEncryptionCommand,
  GetBucketTaggingCommand,
  GetPublicAccessBlockCommand,
  HeadBucketCommand,
  ListBucketsCommand,
  ListObjectsV2Command,
  PutBucketEncryptionCommand,
  PutBucketTaggingCommand,
  PutObjectCommand,
  PutPublicAccessBlockCommand,
  S3Client,
  S3ServiceException,
  type PublicAccessBlockConfiguration,
  type ServerSideEncryptionConfiguration,
} from '@aws-sdk/client-s3';
import {
  CreateQueueCommand,
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ListQueuesCommand,
  ListQueueTagsCommand,
  QueueDoesNotExist,
  SetQueueAttributesCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import {
  AddRoleToInstanceProfileCommand,
  CreateInstanceProfileCommand,
  CreateRoleCommand,
  DeleteInstanceProfileCommand,
  DeleteRoleCommand,
  DeleteRolePolicyCommand,
  GetInstanceProfileCommand,
  GetRoleCommand,
  GetRolePolicyCommand,
  IAMClient,
  ListAttachedRolePoliciesCommand,
  ListRolePoliciesCommand,
  NoSuchEntityException,
  PutRolePolicyCommand,
  RemoveRoleFromInstanceProfileCommand,
  type Tag as IamTag,
} from '@aws-sdk/client-iam';
import {
  CreateLaunchTemplateCommand,
  CreateLaunchTemplateVersionCommand,
  DeleteLaunchTemplateCommand,
  DescribeInstancesCommand,
  DescribeLaunchTemplatesCommand,
  DescribeLaunchTemplateVersionsCommand,
  EC2Client,
  EC2ServiceException,
  ModifyLaunchTemplateCommand,
  TerminateInstancesCommand,
  type Instance,
  type RequestLaunchTemplateData,
} from '@aws-sdk/client-ec2';
import { mockClient, type AwsClientStub } from 'aws-sdk-client-mock';
import { loadConfig } from '../../src/config.js';
import { runAwsCommand } from '../../src/aws/index.js';
import { provision, teardown, TeardownRefusedError, type AwsCommandOptions } from '../../src/aws/provision.js';
import { withClients } from '../cloud/deployment.js';
import { startEmulator, type InProcessEmulator } from '../cloud/emulator.js';

const ACCOUNT = '123456789012';
const REGION = 'eu-west-1';

function s3Error(name: string, status: number): S3ServiceException {
  return new S3ServiceException({ name, $fault: 'client', $metadata: { httpStatusCode: status }, message: name });
}
function ec2Error(name: string): EC2ServiceException {
  return new EC2ServiceException({ name, $fault: 'client', $metadata: { httpStatusCode: 400 }, message: name });
}
const noSuchEntity = () => new NoSuchEntityException({ message: 'The role cannot be found.', $metadata: { httpStatusCode: 404 } });

interface Bucket {
  tags?: { Key: string; Value: string }[];
  publicAccessBlock?: PublicAccessBlockConfiguration;
  encryption?: ServerSideEncryptionConfiguration;
  objects: Set<string>;
}

/**
 * Just enough of S3, SQS, IAM and EC2, with state, to tell what provisioning and teardown
 * did and whether a second run finds everything as it left it.
 */
class FakeAws {
  readonly s3 = new S3Client({ region: REGION, credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
  readonly sqs = new SQSClient({ region: REGION, credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
  readonly iam = new IAMClient({ region: REGION, credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
  readonly ec2 = new EC2Client({ region: REGION, credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
  readonly mocks: { s3: AwsClientStub<S3Client>; sqs: AwsClientStub<SQSClient>; iam: AwsClientStub<IAMClient>; ec2: AwsClientStub<EC2Client> };

  readonly buckets = new Map<string, Bucket>();
  readonly queues = new Map<string, { attributes: Record<string, string>; tags: Record<string, string> }>();
  readonly roles = new Map<string, { tags: IamTag[]; trust: string; policies: Map<string, string> }>();
  readonly profiles = new Map<string, { tags: IamTag[]; roles: string[] }>();
  readonly templates = new Map<string, { tags: { Key?: string; Value?: string }[]; versions: RequestLaunchTemplateData[]; defaultVersion: number }>();
  instances: Instance[] = [];

  constructor() {
    this.mocks = { s3: mockClient(this.s3), sqs: mockClient(this.sqs), iam: mockClient(this.iam), ec2: mockClient(this.ec2) };
    this.wireS3();
    this.wireSqs();
    this.wireIam();
    this.wireEc2();
  }

  get clients() {
    return { s3: this.s3, sqs: this.sqs, iam: this.iam, ec2: this.ec2 };
  }

  /** Every request made, as `Service Operation`. */
  calls(): string[] {
    // Sinon numbers calls across all stubs, which gives the order across the four clients.
    return Object.entries(this.mocks)
      .flatMap(([service, mock]) => mock.calls().map((call) => ({ order: (call as unknown as { callId: number }).callId, name: `${service} ${(call.args[0] as object).constructor.name.replace(/Command$/, '')}` })))
      .sort((a, b) => a.order - b.order)
      .map((call) => call.name);
  }

  writes(): string[] {
    return this.calls().filter((call) => !/ (Head|Get|List|Describe)/.test(call));
  }

  resetHistory(): void {
    for (const mock of Object.values(this.mocks)) mock.resetHistory();
  }

  private bucket(name: string): Bucket {
    const bucket = this.buckets.get(name);
    if (!bucket) throw s3Error('NoSuchBucket', 404);
    return bucket;
  }

  private wireS3(): void {
    const s3 = this.mocks.s3;
    s3.on(HeadBucketCommand).callsFake(({ Bucket }) => {
      if (!this.buckets.has(Bucket)) throw s3Error('NotFound', 404);
      return {};
    });
    s3.on(CreateBucketCommand).callsFake(({ Bucket }) => {
      if (this.buckets.has(Bucket)) throw s3Error('BucketAlreadyOwnedByYou', 409);
      this.buckets.set(Bucket, { objects: new Set(), encryption: { Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] } });
      return {};
    });
    s3.on(GetBucketTaggingCommand).callsFake(({ Bucket }) => {
      const tags = this.bucket(Bucket).tags;
      if (!tags) throw s3Error('NoSuchTagSet', 404);
      return { TagSet: tags };
    });
    s3.on(PutBucketTaggingCommand).callsFake(({ Bucket, Tagging }) => {
      this.bucket(Bucket).tags = Tagging.TagSet;
      return {};
    });
    s3.on(GetPublicAccessBlockCommand).callsFake(({ Bucket }) => {
      const block = this.bucket(Bucket).publicAccessBlock;
      if (!block) throw s3Error('NoSuchPublicAccessBlockConfiguration', 404);
      return { PublicAccessBlockConfiguration: block };
    });
    s3.on(PutPublicAccessBlockCommand).callsFake(({ Bucket, PublicAccessBlockConfiguration }) => {
      this.bucket(Bucket).publicAccessBlock = PublicAccessBlockConfiguration;
      return {};
    });
    s3.on(GetBucketEncryptionCommand).callsFake(({ Bucket }) => {
      const encryption = this.bucket(Bucket).encryption;
      if (!encryption) throw s3Error('ServerSideEncryptionConfigurationNotFoundError', 404);
      return { ServerSideEncryptionConfiguration: encryption };
    });
    s3.on(PutBucketEncryptionCommand).callsFake(({ Bucket, ServerSideEncryptionConfiguration }) => {
      this.bucket(Bucket).encryption = ServerSideEncryptionConfiguration;
      return {};
    });
    s3.on(ListObjectsV2Command).callsFake(({ Bucket, MaxKeys }) => {
      const keys = [...this.bucket(Bucket).objects].sort().slice(0, MaxKeys ?? 1000);
      return { KeyCount: keys.length, Contents: keys.map((Key) => ({ Key })), IsTruncated: keys.length < this.bucket(Bucket).objects.size };
    });
    s3.on(DeleteObjectsCommand).callsFake(({ Bucket, Delete }) => {
      for (const object of Delete.Objects) this.bucket(Bucket).objects.delete(object.Key);
      return { Errors: [] };
    });
    s3.on(DeleteBucketCommand).callsFake(({ Bucket }) => {
      if (this.bucket(Bucket).objects.size > 0) throw s3Error('BucketNotEmpty', 409);
      this.buckets.delete(Bucket);
      return {};
    });
  }

  private queueName(url: string): string {
    const name = url.split('/').pop()!;
    if (!this.queues.has(name)) throw new QueueDoesNotExist({ message: 'The specified queue does not exist.', $metadata: {} });
    return name;
  }

  private wireSqs(): void {
    const sqs = this.mocks.sqs;
    const urlOf = (name: string) => `https://sqs.${REGION}.amazonaws.com/${ACCOUNT}/${name}`;
    sqs.on(GetQueueUrlCommand).callsFake(({ QueueName }) => {
      if (!this.queues.has(QueueName)) throw new QueueDoesNotExist({ message: 'The specified queue does not exist.', $metadata: {} });
      return { QueueUrl: urlOf(QueueName) };
    });
    sqs.on(CreateQueueCommand).callsFake(({ QueueName, Attributes, tags }) => {
      this.queues.set(QueueName, { attributes: { ...Attributes }, tags: { ...tags } });
      return { QueueUrl: urlOf(QueueName) };
    });
    sqs.on(ListQueueTagsCommand).callsFake(({ QueueUrl }) => ({ Tags: this.queues.get(this.queueName(QueueUrl))!.tags }));
    sqs.on(GetQueueAttributesCommand).callsFake(({ QueueUrl, AttributeNames }) => {
      const attributes = this.queues.get(this.queueName(QueueUrl))!.attributes;
      return { Attributes: Object.fromEntries((AttributeNames as string[]).filter((name) => name in attributes).map((name) => [name, attributes[name]])) };
    });
    sqs.on(SetQueueAttributesCommand).callsFake(({ QueueUrl, Attributes }) => {
      Object.assign(this.queues.get(this.queueName(QueueUrl))!.attributes, Attributes);
      return {};
    });
    sqs.on(DeleteQueueCommand).callsFake(({ QueueUrl }) => {
      this.queues.delete(this.queueName(QueueUrl));
      return {};
    });
  }

  private wireIam(): void {
    const iam = this.mocks.iam;
    const role = (name: string) => {
      const found = this.roles.get(name);
      if (!found) throw noSuchEntity();
      return found;
    };
    const profile = (name: string) => {
      const found = this.profiles.get(name);
      if (!found) throw noSuchEntity();
      return found;
    };
    iam.on(GetRoleCommand).callsFake(({ RoleName }) => ({ Role: { RoleName, Tags: role(RoleName).tags } }));
    iam.on(CreateRoleCommand).callsFake(({ RoleName, Tags, AssumeRolePolicyDocument }) => {
      this.roles.set(RoleName, { tags: Tags ?? [], trust: AssumeRolePolicyDocument, policies: new Map() });
      return { Role: { RoleName } };
    });
    iam.on(GetRolePolicyCommand).callsFake(({ RoleName, PolicyName }) => {
      const document = role(RoleName).policies.get(PolicyName);
      if (!document) throw noSuchEntity();
      // IAM answers with the document URL-encoded.
      return { RoleName, PolicyName, PolicyDocument: encodeURIComponent(document) };
    });
    iam.on(PutRolePolicyCommand).callsFake(({ RoleName, PolicyName, PolicyDocument }) => {
      role(RoleName).policies.set(PolicyName, PolicyDocument);
      return {};
    });
    iam.on(ListRolePoliciesCommand).callsFake(({ RoleName }) => ({ PolicyNames: [...role(RoleName).policies.keys()] }));
    iam.on(ListAttachedRolePoliciesCommand).callsFake(({ RoleName }) => (role(RoleName), { AttachedPolicies: [] }));
    iam.on(DeleteRolePolicyCommand).callsFake(({ RoleName, PolicyName }) => {
      role(RoleName).policies.delete(PolicyName);
      return {};
    });
    iam.on(DeleteRoleCommand).callsFake(({ RoleName }) => {
      if (role(RoleName).policies.size > 0) throw new Error('DeleteConflict');
      if ([...this.profiles.values()].some((entry) => entry.roles.includes(RoleName))) throw new Error('DeleteConflict: in a profile');
      this.roles.delete(RoleName);
      return {};
    });
    iam.on(GetInstanceProfileCommand).callsFake(({ InstanceProfileName }) => {
      const found = profile(InstanceProfileName);
      return { InstanceProfile: { InstanceProfileName, Tags: found.tags, Roles: found.roles.map((RoleName) => ({ RoleName })) } };
    });
    iam.on(CreateInstanceProfileCommand).callsFake(({ InstanceProfileName, Tags }) => {
      this.profiles.set(InstanceProfileName, { tags: Tags ?? [], roles: [] });
      return {};
    });
    iam.on(AddRoleToInstanceProfileCommand).callsFake(({ InstanceProfileName, RoleName }) => {
      role(RoleName);
      profile(InstanceProfileName).roles.push(RoleName);
      return {};
    });
    iam.on(RemoveRoleFromInstanceProfileCommand).callsFake(({ InstanceProfileName, RoleName }) => {
      const found = profile(InstanceProfileName);
      found.roles = found.roles.filter((name) => name !== RoleName);
      return {};
    });
    iam.on(DeleteInstanceProfileCommand).callsFake(({ InstanceProfileName }) => {
      profile(InstanceProfileName);
      this.profiles.delete(InstanceProfileName);
      return {};
    });
  }

  private wireEc2(): void {
    const ec2 = this.mocks.ec2;
    const template = (name: string) => {
      const found = this.templates.get(name);
      if (!found) throw ec2Error('InvalidLaunchTemplateName.NotFoundException');
      return found;
    };
    ec2.on(DescribeLaunchTemplatesCommand).callsFake(({ LaunchTemplateNames }) => {
      const name = LaunchTemplateNames[0];
      return { LaunchTemplates: [{ LaunchTemplateName: name, Tags: template(name).tags }] };
    });
    ec2.on(CreateLaunchTemplateCommand).callsFake(({ LaunchTemplateName, LaunchTemplateData, TagSpecifications }) => {
      if (this.templates.has(LaunchTemplateName)) throw ec2Error('InvalidLaunchTemplateName.AlreadyExistsException');
      this.templates.set(LaunchTemplateName, { tags: TagSpecifications?.[0]?.Tags ?? [], versions: [LaunchTemplateData], defaultVersion: 1 });
      return {};
    });
    ec2.on(DescribeLaunchTemplateVersionsCommand).callsFake(({ LaunchTemplateName }) => {
      const found = template(LaunchTemplateName);
      return { LaunchTemplateVersions: [{ VersionNumber: found.defaultVersion, LaunchTemplateData: found.versions[found.defaultVersion - 1] }] };
    });
    ec2.on(CreateLaunchTemplateVersionCommand).callsFake(({ LaunchTemplateName, LaunchTemplateData }) => {
      const found = template(LaunchTemplateName);
      found.versions.push(LaunchTemplateData);
      return { LaunchTemplateVersion: { VersionNumber: found.versions.length } };
    });
    ec2.on(ModifyLaunchTemplateCommand).callsFake(({ LaunchTemplateName, DefaultVersion }) => {
      template(LaunchTemplateName).defaultVersion = Number(DefaultVersion);
      return {};
    });
    ec2.on(DeleteLaunchTemplateCommand).callsFake(({ LaunchTemplateName }) => {
      template(LaunchTemplateName);
      this.templates.delete(LaunchTemplateName);
      return {};
    });
    ec2.on(DescribeInstancesCommand).callsFake(() => ({ Reservations: [{ Instances: this.instances }] }));
    ec2.on(TerminateInstancesCommand).callsFake(({ InstanceIds }) => {
      this.instances = this.instances.filter((instance) => !InstanceIds.includes(instance.InstanceId));
      return {};
    });
  }
}

const SETTINGS = {
  region: REGION,
  deployment: 'prod',
  queuePrefix: 'prod-',
  inputBucket: 'acme-icaas-in',
  outputBucket: 'acme-icaas-out',
  deadlineSeconds: 90,
  imageId: 'ami-0123456789abcdef0',
  instanceType: 't3.small',
  workerEnv: { ICAAS_MAX_ATTEMPTS: '3', ICAAS_API_KEYS: 'secret' },
};

describe('provision and teardown', () => {
  let aws: FakeAws;
  let lines: string[];
  const options = (extra: Partial<AwsCommandOptions> = {}): AwsCommandOptions => ({ ...SETTINGS, clients: aws.clients, log: (line) => lines.push(line), ...extra });

  beforeEach(() => {
    aws = new FakeAws();
    lines = [];
  });

  it('creates every resource of an empty account with the right parameters', async () => {
    const result = await provision(options());
    assert.deepEqual(aws.writes(), [
      ...['acme-icaas-in', 'acme-icaas-out'].flatMap(() => ['s3 CreateBucket', 's3 PutBucketTagging', 's3 PutPublicAccessBlock', 's3 PutBucketEncryption']),
      'sqs CreateQueue',
      'sqs CreateQueue',
      'sqs CreateQueue',
      'iam CreateRole',
      'iam PutRolePolicy',
      'iam CreateInstanceProfile',
      'iam AddRoleToInstanceProfile',
      'ec2 CreateLaunchTemplate',
    ]);
    assert.equal(result.changed.length, 2 + 3 + 2 + 1 + 1);

    const s3 = aws.mocks.s3;
    assert.deepEqual(s3.commandCalls(CreateBucketCommand)[0]!.args[0].input, { Bucket: 'acme-icaas-in', CreateBucketConfiguration: { LocationConstraint: REGION } });
    assert.deepEqual(s3.commandCalls(PutPublicAccessBlockCommand)[0]!.args[0].input, {
      Bucket: 'acme-icaas-in',
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, IgnorePublicAcls: true, BlockPublicPolicy: true, RestrictPublicBuckets: true },
    });
    assert.deepEqual(s3.commandCalls(PutBucketEncryptionCommand)[1]!.args[0].input, {
      Bucket: 'acme-icaas-out',
      ServerSideEncryptionConfiguration: { Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
    });
    assert.deepEqual(aws.buckets.get('acme-icaas-out')!.tags, [{ Key: 'icaas:deployment', Value: 'prod' }]);

    const queues = aws.mocks.sqs.commandCalls(CreateQueueCommand).map((call) => call.args[0].input);
    assert.deepEqual(queues.map((queue) => queue.QueueName), ['prod-launch', 'prod-monitor', 'prod-output']);
    assert.deepEqual(queues[0], {
      QueueName: 'prod-launch',
      Attributes: { VisibilityTimeout: '60', ReceiveMessageWaitTimeSeconds: '20', MessageRetentionPeriod: '1209600', SqsManagedSseEnabled: 'true' },
      tags: { 'icaas:deployment': 'prod' },
    });
    assert.equal(queues[1]!.Attributes!.VisibilityTimeout, '90', 'the monitor queue keeps a notice hidden for the whole deadline');

    const role = aws.mocks.iam.commandCalls(CreateRoleCommand)[0]!.args[0].input;
    assert.equal(role.RoleName, 'prod-worker');
    assert.deepEqual(JSON.parse(role.AssumeRolePolicyDocument!), {
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Principal: { Service: 'ec2.amazonaws.com' }, Action: 'sts:AssumeRole' }],
    });
    const policy = JSON.parse(aws.mocks.iam.commandCalls(PutRolePolicyCommand)[0]!.args[0].input.PolicyDocument!) as unknown;
    // Exactly these statements: anything more is a permission a compromised worker would have.
    assert.deepEqual(policy, {
      Version: '2012-10-17',
      Statement: [
        { Sid: 'ReadInputImages', Effect: 'Allow', Action: ['s3:GetObject'], Resource: ['arn:aws:s3:::acme-icaas-in/*'] },
        { Sid: 'WriteAndCheckResults', Effect: 'Allow', Action: ['s3:GetObject', 's3:PutObject'], Resource: ['arn:aws:s3:::acme-icaas-out/results/*'] },
        { Sid: 'CheckRetryClaims', Effect: 'Allow', Action: ['s3:GetObject'], Resource: ['arn:aws:s3:::acme-icaas-out/attempts/*'] },
        { Sid: 'WriteHeartbeat', Effect: 'Allow', Action: ['s3:PutObject'], Resource: ['arn:aws:s3:::acme-icaas-out/instances/*'] },
        { Sid: 'MissingResultsAnswer404', Effect: 'Allow', Action: ['s3:ListBucket'], Resource: ['arn:aws:s3:::acme-icaas-out'] },
        { Sid: 'TakeWork', Effect: 'Allow', Action: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueUrl'], Resource: [`arn:aws:sqs:${REGION}:${ACCOUNT}:prod-launch`] },
        {
          Sid: 'ReportProgress',
          Effect: 'Allow',
          Action: ['sqs:SendMessage', 'sqs:GetQueueUrl'],
          Resource: [`arn:aws:sqs:${REGION}:${ACCOUNT}:prod-monitor`, `arn:aws:sqs:${REGION}:${ACCOUNT}:prod-output`],
        },
      ],
    });
    assert.deepEqual(aws.profiles.get('prod-worker')!.roles, ['prod-worker']);

    const template = aws.mocks.ec2.commandCalls(CreateLaunchTemplateCommand)[0]!.args[0].input;
    assert.equal(template.LaunchTemplateName, 'prod-worker');
    assert.deepEqual(template.TagSpecifications, [{ ResourceType: 'launch-template', Tags: [{ Key: 'icaas:deployment', Value: 'prod' }] }]);
    const data = template.LaunchTemplateData!;
    assert.equal(data.ImageId, 'ami-0123456789abcdef0');
    assert.equal(data.InstanceType, 't3.small');
    assert.deepEqual(data.IamInstanceProfile, { Name: 'prod-worker' });
    assert.equal(data.InstanceInitiatedShutdownBehavior, 'terminate');
    assert.equal(data.MetadataOptions?.HttpTokens, 'required');
    assert.deepEqual(data.TagSpecifications?.[0], {
      ResourceType: 'instance',
      Tags: [
        { Key: 'icaas:deployment', Value: 'prod' },
        { Key: 'icaas:role', Value: 'worker' },
        { Key: 'Name', Value: 'prod-worker' },
      ],
    });
    const script = Buffer.from(data.UserData!, 'base64').toString();
    assert.match(script, /icaas worker/);
    for (const line of ["export ICAAS_STORE='s3'", "export ICAAS_QUEUE='sqs'", "export ICAAS_COMPUTE='ec2'", `export AWS_REGION='${REGION}'`, "export ICAAS_MAX_ATTEMPTS='3'"]) {
      assert.ok(script.includes(line), `user data has ${line}`);
    }
    assert.doesNotMatch(script, /secret/);
  });

  it('creates nothing on a second run, and says so', async () => {
    await provision(options());
    aws.resetHistory();
    lines = [];
    const result = await provision(options());
    assert.deepEqual(aws.writes(), []);
    assert.deepEqual(result.changed, []);
    assert.equal(result.unchanged.length, 2 + 3 + 2 + 1 + 1);
    assert.ok(lines.some((line) => /S3 bucket acme-icaas-in: exists, private and encrypted/.test(line)), lines.join('\n'));
    assert.ok(lines.some((line) => /EC2 launch template prod-worker: default version as wanted/.test(line)), lines.join('\n'));
  });

  it('corrects only what changed: queue attributes and a new launch template version', async () => {
    await provision(options());
    aws.resetHistory();
    await provision(options({ deadlineSeconds: 300, imageId: 'ami-0fedcba9876543210' }));
    assert.deepEqual(aws.writes(), ['sqs SetQueueAttributes', 'ec2 CreateLaunchTemplateVersion', 'ec2 ModifyLaunchTemplate']);
    assert.deepEqual(aws.mocks.sqs.commandCalls(SetQueueAttributesCommand)[0]!.args[0].input, {
      QueueUrl: `https://sqs.${REGION}.amazonaws.com/${ACCOUNT}/prod-monitor`,
      Attributes: { VisibilityTimeout: '300' },
    });
    assert.deepEqual(aws.mocks.ec2.commandCalls(ModifyLaunchTemplateCommand)[0]!.args[0].input, { LaunchTemplateName: 'prod-worker', DefaultVersion: '2' });
    aws.resetHistory();
    await provision(options({ deadlineSeconds: 300, imageId: 'ami-0fedcba9876543210' }));
    assert.deepEqual(aws.writes(), []);
  });

  it('repairs an own bucket that lost its settings, and leaves a foreign bucket alone', async () => {
    await provision(options());
    aws.buckets.get('acme-icaas-in')!.publicAccessBlock = { BlockPublicAcls: false, IgnorePublicAcls: true, BlockPublicPolicy: true, RestrictPublicBuckets: true };
    aws.buckets.set('shared-bucket', { objects: new Set(['keep-me']) });
    aws.resetHistory();
    await provision(options({ outputBucket: 'shared-bucket' }));
    // The policy and the workers' configuration name the bucket, so both follow it.
    assert.deepEqual(aws.writes(), ['s3 PutPublicAccessBlock', 'iam PutRolePolicy', 'ec2 CreateLaunchTemplateVersion', 'ec2 ModifyLaunchTemplate']);
    assert.deepEqual(aws.buckets.get('shared-bucket'), { objects: new Set(['keep-me']) });
    assert.ok(lines.some((line) => /S3 bucket shared-bucket: exists without the tag icaas:deployment=prod, so it is used as it is/.test(line)));
  });

  it('skips the launch template, with a pointer, when no worker image is given', async () => {
    const result = await provision(options({ imageId: undefined }));
    assert.equal(aws.mocks.ec2.calls().length, 0);
    assert.deepEqual(result.skipped, ['EC2 launch template prod-worker']);
    assert.ok(lines.some((line) => /no worker image was given \(--ec2-image-id\); see docs\/aws\.md/.test(line)));
  });

  it('explains a bucket name taken by another account', async () => {
    aws.mocks.s3.on(HeadBucketCommand).rejects(s3Error('Forbidden', 403));
    await assert.rejects(provision(options()), /S3 bucket acme-icaas-in exists but these credentials may not use it.*--input-bucket/);
  });

  it('a dry run makes no calls and prints each one it would make', async () => {
    const result = await provision(options({ dryRun: true }));
    assert.deepEqual(aws.calls(), []);
    const printed = lines.map((line) => line.replace(/^\[dry run\] (\S+ \S+) .*$/, '$1'));
    assert.deepEqual(printed, [
      ...['acme-icaas-in', 'acme-icaas-out'].flatMap(() => ['S3 HeadBucket', 'S3 CreateBucket', 'S3 PutBucketTagging', 'S3 PutPublicAccessBlock', 'S3 PutBucketEncryption']),
      ...['launch', 'monitor', 'output'].flatMap(() => ['SQS GetQueueUrl', 'SQS CreateQueue']),
      'IAM GetRole',
      'IAM CreateRole',
      'IAM PutRolePolicy',
      'IAM GetInstanceProfile',
      'IAM CreateInstanceProfile',
      'IAM AddRoleToInstanceProfile',
      'EC2 DescribeLaunchTemplates',
      'EC2 CreateLaunchTemplate',
    ]);
    assert.ok(lines.every((line) => line.startsWith('[dry run] ')));
    assert.ok(lines.some((line) => line.includes('"QueueName":"prod-monitor"') && line.includes('"VisibilityTimeout":"90"')));
    assert.ok(lines.some((line) => line.includes('CreateLaunchTemplate') && /<\d+ bytes of user data>/.test(line)));
    assert.ok(lines.some((line) => line.includes('PutRolePolicy') && line.includes('<account-id>')), 'the policy is printed in full');
    assert.equal(result.changed.length, 9, 'the result lists what would be created');
    aws.resetHistory();
    lines = [];
    await teardown(options({ dryRun: true, force: true }));
    assert.deepEqual(aws.calls(), []);
    const deletes = lines.filter((line) => / (Delete|Remove|Terminate)/.test(line)).map((line) => line.replace(/^\[dry run\] (\S+ \S+) .*$/, '$1'));
    assert.deepEqual(deletes, [
      'EC2 DeleteLaunchTemplate',
      'IAM RemoveRoleFromInstanceProfile',
      'IAM DeleteInstanceProfile',
      'IAM DeleteRolePolicy',
      'IAM DeleteRole',
      'SQS DeleteQueue',
      'SQS DeleteQueue',
      'SQS DeleteQueue',
      'S3 ListObjectsV2',
      'S3 DeleteBucket',
      'S3 ListObjectsV2',
      'S3 DeleteBucket',
    ]);
    assert.ok(lines.includes('[dry run] S3 ListObjectsV2 + DeleteObjects {"Bucket":"acme-icaas-out"} for every page of up to 1000 objects'));
  });

  it('teardown removes everything provision made, in reverse order', async () => {
    await provision(options());
    aws.resetHistory();
    const result = await teardown(options());
    assert.deepEqual(aws.writes(), [
      'ec2 DeleteLaunchTemplate',
      'iam RemoveRoleFromInstanceProfile',
      'iam DeleteInstanceProfile',
      'iam DeleteRolePolicy',
      'iam DeleteRole',
      'sqs DeleteQueue',
      'sqs DeleteQueue',
      'sqs DeleteQueue',
      's3 DeleteBucket',
      's3 DeleteBucket',
    ]);
    assert.equal(result.changed.length, 8);
    assert.equal(aws.buckets.size + aws.queues.size + aws.roles.size + aws.profiles.size + aws.templates.size, 0);
    aws.resetHistory();
    const again = await teardown(options());
    assert.deepEqual(aws.writes(), []);
    assert.equal(again.unchanged.length, 8);
  });

  it('teardown refuses a bucket with objects, deleting nothing, and empties it when forced', async () => {
    await provision(options());
    for (let i = 0; i < 2500; i++) aws.buckets.get('acme-icaas-out')!.objects.add(`results/${i}.json`);
    aws.resetHistory();
    await assert.rejects(teardown(options()), (error: unknown) => {
      assert.ok(error instanceof TeardownRefusedError);
      assert.equal(error.reasons.length, 1);
      assert.match(error.reasons[0]!, /S3 bucket acme-icaas-out holds objects .*--force/);
      return true;
    });
    assert.deepEqual(aws.writes(), []);
    assert.equal(aws.queues.size, 3);

    await teardown(options({ force: true }));
    assert.equal(aws.buckets.size, 0);
    assert.equal(aws.mocks.s3.commandCalls(DeleteObjectsCommand).length, 3, '1000 keys per DeleteObjects');
    assert.ok(lines.some((line) => /S3 bucket acme-icaas-out: deleted with its 2500 objects/.test(line)));
  });

  it('teardown refuses while workers run, and terminates them when forced', async () => {
    await provision(options());
    aws.instances = [{ InstanceId: 'i-0123456789abcdef0', State: { Name: 'running' } }];
    await assert.rejects(teardown(options()), /1 worker instance\(s\) of deployment prod still exist \(i-0123456789abcdef0\)/);
    aws.resetHistory();
    await teardown(options({ force: true }));
    assert.deepEqual(aws.mocks.ec2.commandCalls(TerminateInstancesCommand)[0]!.args[0].input, { InstanceIds: ['i-0123456789abcdef0'] });
    const filters = aws.mocks.ec2.commandCalls(DescribeInstancesCommand)[0]!.args[0].input.Filters;
    assert.deepEqual(filters?.slice(0, 2), [
      { Name: 'tag:icaas:deployment', Values: ['prod'] },
      { Name: 'tag:icaas:role', Values: ['worker'] },
    ]);
  });

  it('teardown keeps resources that were not made for this deployment', async () => {
    aws.buckets.set('acme-icaas-in', { objects: new Set(['precious']) });
    aws.queues.set('prod-launch', { attributes: {}, tags: { 'icaas:deployment': 'other' } });
    const result = await teardown(options());
    assert.ok(aws.buckets.has('acme-icaas-in'));
    assert.ok(aws.queues.has('prod-launch'));
    assert.deepEqual(result.skipped.sort(), ['S3 bucket acme-icaas-in', 'SQS queue prod-launch']);
    assert.deepEqual(aws.writes(), []);
  });
});

describe('runAwsCommand', () => {
  const config = (env: Record<string, string> = {}) =>
    loadConfig({
      argv: [],
      cwd: '/nonexistent-icaas-test-dir',
      env: {
        AWS_REGION: REGION,
        ICAAS_DEPLOYMENT: 'prod',
        ICAAS_QUEUE_PREFIX: 'prod-',
        ICAAS_INPUT_BUCKET: 'acme-icaas-in',
        ICAAS_OUTPUT_BUCKET: 'acme-icaas-out',
        ICAAS_EC2_IMAGE_ID: 'ami-0123456789abcdef0',
        ...env,
      },
    }).config;

  it('provisions from the configuration and prints how to start on it', async () => {
    const aws = new FakeAws();
    const lines: string[] = [];
    assert.equal(await runAwsCommand('provision', { config: config(), clients: aws.clients }, (line) => lines.push(line)), 0);
    assert.equal(aws.templates.size, 1);
    assert.match(lines[0]!, /provisioning deployment "prod" in eu-west-1/);
    const hint = lines.find((line) => line.startsWith('start the service'));
    assert.ok(hint, lines.join('\n'));
    assert.match(hint, /ICAAS_STORE=s3 ICAAS_QUEUE=sqs ICAAS_COMPUTE=ec2 ICAAS_EC2_LAUNCH_TEMPLATE=prod-worker AWS_REGION=eu-west-1/);
  });

  it('with --skip-ec2 and endpoints, makes buckets and queues only and prints how to start on those endpoints', async () => {
    const aws = new FakeAws();
    const lines: string[] = [];
    const local = config({ ICAAS_S3_ENDPOINT: 'http://127.0.0.1:4566', ICAAS_S3_PATH_STYLE: 'true', ICAAS_SQS_ENDPOINT: 'http://127.0.0.1:4566' });
    assert.equal(await runAwsCommand('provision', { config: local, clients: aws.clients, skipEc2: true }, (line) => lines.push(line)), 0);
    assert.equal(aws.templates.size + aws.roles.size + aws.profiles.size, 0);
    assert.deepEqual(aws.calls().filter((call) => /^(iam|ec2) /.test(call)), []);
    const hint = lines.find((line) => line.startsWith('start the service'));
    assert.match(hint ?? '', /ICAAS_STORE=s3 ICAAS_QUEUE=sqs ICAAS_S3_ENDPOINT=http:\/\/127\.0\.0\.1:4566 ICAAS_S3_PATH_STYLE=true ICAAS_SQS_ENDPOINT=http:\/\/127\.0\.0\.1:4566 AWS_REGION=/);
    assert.doesNotMatch(hint ?? '', /ICAAS_COMPUTE=ec2/);
  });

  it('returns 1 with the reasons when teardown is refused, and 0 for a dry run', async () => {
    const aws = new FakeAws();
    await runAwsCommand('provision', { config: config(), clients: aws.clients }, () => {});
    aws.buckets.get('acme-icaas-in')!.objects.add('batches/x/y.jpg');
    const lines: string[] = [];
    assert.equal(await runAwsCommand('teardown', { config: config(), clients: aws.clients }, (line) => lines.push(line)), 1);
    assert.match(lines.join('\n'), /teardown refused, nothing was deleted:\n {2}- S3 bucket acme-icaas-in holds objects/);
    aws.resetHistory();
    assert.equal(await runAwsCommand('teardown', { config: config(), clients: aws.clients, dryRun: true, force: true }, () => {}), 0);
    assert.deepEqual(aws.calls(), []);
  });

  it('fails clearly without a region', async () => {
    const aws = new FakeAws();
    const lines: string[] = [];
    const noRegion = { ...config(), region: '' };
    // The mocked client has a region, so it must not be asked: use a client-less run.
    const saved = { AWS_REGION: process.env.AWS_REGION, AWS_DEFAULT_REGION: process.env.AWS_DEFAULT_REGION, AWS_CONFIG_FILE: process.env.AWS_CONFIG_FILE, AWS_PROFILE: process.env.AWS_PROFILE };
    delete process.env.AWS_REGION;
    delete process.env.AWS_DEFAULT_REGION;
    delete process.env.AWS_PROFILE;
    process.env.AWS_CONFIG_FILE = '/nonexistent-icaas-aws-config';
    try {
      assert.equal(await runAwsCommand('provision', { config: noRegion, clients: { s3: aws.s3 } }, (line) => lines.push(line)), 1);
    } finally {
      for (const [key, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
    }
    assert.match(lines.join('\n'), /no AWS region/);
    assert.deepEqual(aws.calls(), []);
  });
});

/**
 * The S3 and SQS halves of provisioning on the protocol emulator, through the real SDK
 * clients and the wire; IAM and EC2 stay on the stateful fakes above (no emulator for them).
 */
describe('provision and teardown on the S3 and SQS emulator', () => {
  let emulator: InProcessEmulator;
  before(async () => {
    emulator = await startEmulator();
  });
  after(async () => {
    await emulator.stop();
  });

  async function ownResources(s3: S3Client, sqs: SQSClient, prefix: string): Promise<string[]> {
    const { Buckets = [] } = await s3.send(new ListBucketsCommand({}));
    const { QueueUrls = [] } = await sqs.send(new ListQueuesCommand({ QueueNamePrefix: prefix }));
    return [...Buckets.map((bucket) => `bucket ${bucket.Name}`).filter((name) => name.includes(prefix)), ...QueueUrls.map((url) => `queue ${url.split('/').pop()}`)];
  }

  it('creates buckets and queues once, changes nothing on a second run, and teardown leaves nothing', async () => {
    const aws = new FakeAws();
    const settings = { ...SETTINGS, region: emulator.region, deployment: 'emu', queuePrefix: 'emu-', inputBucket: 'emu-input', outputBucket: 'emu-output' };
    await withClients(emulator, async ({ s3, sqs }) => {
      const lines: string[] = [];
      const options = (extra: Partial<AwsCommandOptions> = {}): AwsCommandOptions => ({ ...settings, clients: { ...aws.clients, s3, sqs }, log: (line) => lines.push(line), ...extra });
      const first = await provision(options());
      assert.deepEqual(first.changed.filter((what) => /^(S3|SQS)/.test(what)).sort(), ['S3 bucket emu-input', 'S3 bucket emu-output', 'SQS queue emu-launch', 'SQS queue emu-monitor', 'SQS queue emu-output']);
      assert.deepEqual((await ownResources(s3, sqs, 'emu-')).sort(), ['bucket emu-input', 'bucket emu-output', 'queue emu-launch', 'queue emu-monitor', 'queue emu-output']);
      const tags = await s3.send(new GetBucketTaggingCommand({ Bucket: 'emu-input' }));
      assert.deepEqual(tags.TagSet, [{ Key: 'icaas:deployment', Value: 'emu' }]);
      const { QueueUrl } = await sqs.send(new GetQueueUrlCommand({ QueueName: 'emu-monitor' }));
      const { Attributes } = await sqs.send(new GetQueueAttributesCommand({ QueueUrl, AttributeNames: ['VisibilityTimeout', 'MessageRetentionPeriod'] }));
      assert.deepEqual(Attributes, { VisibilityTimeout: '90', MessageRetentionPeriod: '1209600' });

      // The second run reads and writes nothing: no SQS write reaches the wire either.
      emulator.sqsRequests.length = 0;
      aws.resetHistory();
      const second = await provision(options());
      assert.deepEqual(second.changed, []);
      assert.deepEqual(aws.writes(), []);
      assert.deepEqual(emulator.sqsRequests.map((request) => request.operation).filter((operation) => !/^(Get|List)/.test(operation)), []);

      // Objects in a bucket refuse a plain teardown; forced, it deletes them with everything else.
      await s3.send(new PutObjectCommand({ Bucket: 'emu-input', Key: 'batches/b/i', Body: 'x' }));
      await assert.rejects(teardown(options()), TeardownRefusedError);
      assert.equal((await ownResources(s3, sqs, 'emu-')).length, 5, 'a refused teardown deleted something');
      await teardown(options({ force: true }));
      assert.deepEqual(await ownResources(s3, sqs, 'emu-'), []);
      assert.equal(aws.roles.size + aws.profiles.size + aws.templates.size, 0);
      // And once more: nothing left to delete, nothing fails.
      const again = await teardown(options());
      assert.deepEqual(again.changed, []);
    });
  });

  it('with --skip-ec2 makes and removes only buckets and queues, never calling IAM or EC2', async () => {
    const aws = new FakeAws();
    const settings = { ...SETTINGS, region: emulator.region, deployment: 'loc', queuePrefix: 'loc-', inputBucket: 'loc-input', outputBucket: 'loc-output', skipEc2: true };
    await withClients(emulator, async ({ s3, sqs }) => {
      const options = { ...settings, clients: { ...aws.clients, s3, sqs }, log: () => {} };
      const result = await provision(options);
      assert.equal(result.changed.length, 5);
      assert.deepEqual(result.skipped, ['IAM role loc-worker, instance profile loc-worker and EC2 launch template loc-worker']);
      await teardown(options);
      assert.deepEqual(await ownResources(s3, sqs, 'loc-'), []);
      assert.deepEqual(aws.calls().filter((call) => /^(iam|ec2) /.test(call)), []);
    });
  });
});
