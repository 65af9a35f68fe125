/**
 * The synthesised stack template: what it holds, and that it holds nothing more open than
 * needed (least-privilege policies scoped to the deployment's own resources, private and
 * encrypted buckets, tags everywhere they can go, explicit deletion policies).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { PolicyDocument, Template, Value } from '../../src/aws/cfn.js';
import { checkSettings, deploymentTemplate, LOGICAL_IDS, stackParameters, type DeploymentSettings } from '../../src/aws/template.js';

const SETTINGS: DeploymentSettings = {
  region: 'eu-west-1',
  deployment: 'prod',
  queuePrefix: 'prod-',
  inputBucket: 'acme-in',
  outputBucket: 'acme-out',
  deadlineSeconds: 300,
  imageId: 'ami-0123456789abcdef0',
  instanceType: 'c7g.large',
  workerEnv: { ICAAS_IDLE_WAIT: '20', AWS_SECRET_ACCESS_KEY: 'must-not-leak', ICAAS_API_KEYS: 'nor-this' },
};
const TAG = { Key: 'icaas:deployment', Value: 'prod' };
/** CloudFormation cannot tag these; everything else must carry the deployment's tag. */
const UNTAGGABLE = new Set(['AWS::IAM::InstanceProfile', 'AWS::S3::BucketPolicy']);

const template: Template = deploymentTemplate(SETTINGS);
const properties = (id: string) => template.Resources[id]!.Properties as unknown as Record<string, unknown>;

describe('the stack template', () => {
  it('holds the buckets, queues, worker role, instance profile and launch template under the configured names', () => {
    const resources = Object.fromEntries(Object.entries(template.Resources).map(([id, resource]) => [id, resource.Type]));
    assert.deepEqual(resources, {
      InputBucket: 'AWS::S3::Bucket',
      InputBucketPolicy: 'AWS::S3::BucketPolicy',
      OutputBucket: 'AWS::S3::Bucket',
      OutputBucketPolicy: 'AWS::S3::BucketPolicy',
      LaunchQueue: 'AWS::SQS::Queue',
      MonitorQueue: 'AWS::SQS::Queue',
      OutputQueue: 'AWS::SQS::Queue',
      WorkerRole: 'AWS::IAM::Role',
      WorkerInstanceProfile: 'AWS::IAM::InstanceProfile',
      WorkerLaunchTemplate: 'AWS::EC2::LaunchTemplate',
    });
    assert.equal(properties('InputBucket').BucketName, 'acme-in');
    assert.equal(properties('OutputBucket').BucketName, 'acme-out');
    assert.deepEqual(['LaunchQueue', 'MonitorQueue', 'OutputQueue'].map((id) => properties(id).QueueName), ['prod-launch', 'prod-monitor', 'prod-output']);
    assert.equal(properties('WorkerRole').RoleName, 'prod-worker');
    assert.equal(properties('WorkerInstanceProfile').InstanceProfileName, 'prod-worker');
    assert.equal(properties('WorkerLaunchTemplate').LaunchTemplateName, 'prod-worker');
  });

  it('makes every bucket private and encrypted, owner-enforced, and refuses plain HTTP to it', () => {
    for (const id of [LOGICAL_IDS.inputBucket, LOGICAL_IDS.outputBucket]) {
      const bucket = properties(id);
      assert.deepEqual(bucket.PublicAccessBlockConfiguration, { BlockPublicAcls: true, IgnorePublicAcls: true, BlockPublicPolicy: true, RestrictPublicBuckets: true });
      assert.deepEqual(bucket.BucketEncryption, { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] });
      assert.deepEqual(bucket.OwnershipControls, { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] });
      const policy = properties(`${id}Policy`);
      assert.deepEqual(policy.Bucket, { Ref: id });
      const [statement] = (policy.PolicyDocument as PolicyDocument).Statement;
      assert.equal(statement!.Effect, 'Deny');
      assert.deepEqual(statement!.Condition, { Bool: { 'aws:SecureTransport': 'false' } });
    }
    // No statement anywhere grants anything to everyone.
    for (const document of policyDocuments(template)) {
      for (const statement of document.Statement) assert.ok(!(statement.Effect === 'Allow' && statement.Principal === '*'), JSON.stringify(statement));
    }
  });

  it('gives the workers only what they use, on the deployment\'s own buckets and queues', () => {
    const role = properties('WorkerRole') as { AssumeRolePolicyDocument: PolicyDocument; Policies: { PolicyDocument: PolicyDocument }[] };
    assert.deepEqual(role.AssumeRolePolicyDocument.Statement, [{ Effect: 'Allow', Principal: { Service: 'ec2.amazonaws.com' }, Action: ['sts:AssumeRole'] }]);
    assert.equal(role.Policies.length, 1);
    const grants = new Map<string, Set<string>>();
    for (const statement of role.Policies[0]!.PolicyDocument.Statement) {
      assert.equal(statement.Effect, 'Allow');
      for (const action of statement.Action) assert.doesNotMatch(action, /\*/, `wildcard action ${action}`);
      for (const resource of statement.Resource ?? []) {
        const target = describeResource(resource);
        for (const action of statement.Action) grants.set(target, new Set([...(grants.get(target) ?? []), action]));
      }
    }
    assert.deepEqual(Object.fromEntries([...grants].map(([target, actions]) => [target, [...actions].sort()])), {
      'InputBucket/*': ['s3:GetObject'],
      'OutputBucket/results/*': ['s3:GetObject', 's3:PutObject'],
      'OutputBucket/attempts/*': ['s3:GetObject'],
      'OutputBucket/instances/*': ['s3:PutObject'],
      OutputBucket: ['s3:ListBucket'],
      LaunchQueue: ['sqs:DeleteMessage', 'sqs:GetQueueUrl', 'sqs:ReceiveMessage'],
      MonitorQueue: ['sqs:GetQueueUrl', 'sqs:SendMessage'],
      OutputQueue: ['sqs:GetQueueUrl', 'sqs:SendMessage'],
    });
  });

  it('tags every resource that can carry tags, and the workers\' instances and volumes', () => {
    for (const [id, resource] of Object.entries(template.Resources)) {
      if (UNTAGGABLE.has(resource.Type)) continue;
      const props = resource.Properties as unknown as { Tags?: unknown[]; TagSpecifications?: { Tags: unknown[] }[] };
      const tags = props.Tags ?? props.TagSpecifications?.flatMap((spec) => spec.Tags);
      assert.ok(tags?.some((tag) => JSON.stringify(tag) === JSON.stringify(TAG)), `${id} carries ${JSON.stringify(TAG)}`);
    }
    const data = properties('WorkerLaunchTemplate').LaunchTemplateData as { TagSpecifications: { ResourceType: string; Tags: { Key: string; Value: string }[] }[] };
    assert.deepEqual(data.TagSpecifications.map((spec) => spec.ResourceType), ['instance', 'volume']);
    for (const spec of data.TagSpecifications) assert.ok(spec.Tags.some((tag) => tag.Key === 'icaas:role' && tag.Value === 'worker'));
  });

  it('declares what deleting the stack and replacing a resource do, and keeps a replaced bucket', () => {
    for (const [id, resource] of Object.entries(template.Resources)) {
      assert.ok(resource.DeletionPolicy === 'Delete' || resource.DeletionPolicy === 'Retain', `${id} DeletionPolicy`);
      assert.ok(resource.UpdateReplacePolicy === 'Delete' || resource.UpdateReplacePolicy === 'Retain', `${id} UpdateReplacePolicy`);
    }
    for (const id of [LOGICAL_IDS.inputBucket, LOGICAL_IDS.outputBucket]) {
      // Teardown deletes the buckets (emptied first only when forced); a rename keeps the old one.
      assert.equal(template.Resources[id]!.DeletionPolicy, 'Delete');
      assert.equal(template.Resources[id]!.UpdateReplacePolicy, 'Retain');
    }
  });

  it('launches workers with IMDSv2, terminate on shutdown, and user data that carries no secret', () => {
    const data = properties('WorkerLaunchTemplate').LaunchTemplateData as Record<string, unknown>;
    assert.deepEqual(data.MetadataOptions, { HttpTokens: 'required', HttpEndpoint: 'enabled' });
    assert.equal(data.InstanceInitiatedShutdownBehavior, 'terminate');
    assert.deepEqual(data.ImageId, { Ref: 'WorkerImageId' });
    assert.deepEqual(data.IamInstanceProfile, { Name: { Ref: 'WorkerInstanceProfile' } });
    const script = Buffer.from(data.UserData as string, 'base64').toString();
    for (const line of ["export ICAAS_STORE='s3'", "export ICAAS_QUEUE='sqs'", "export ICAAS_COMPUTE='ec2'", "export ICAAS_INPUT_BUCKET='acme-in'", "export ICAAS_IDLE_WAIT='20'"]) {
      assert.ok(script.includes(line), `${line} in\n${script}`);
    }
    assert.doesNotMatch(script, /must-not-leak|nor-this/);
  });

  it('sets the monitor queue\'s visibility to at least the deadline, and encrypts every queue', () => {
    assert.equal(properties('MonitorQueue').VisibilityTimeout, 300);
    assert.equal(properties('LaunchQueue').VisibilityTimeout, 60);
    for (const id of Object.values(LOGICAL_IDS.queues)) {
      assert.equal(properties(id).SqsManagedSseEnabled, true);
      assert.equal(properties(id).ReceiveMessageWaitTimeSeconds, 20);
    }
  });

  it('leaves out the EC2 part with Ec2Workers=false, and the launch template until there is an image', () => {
    assert.deepEqual(stackParameters(SETTINGS, false), { Ec2Workers: 'true', WorkerImageId: 'ami-0123456789abcdef0', WorkerInstanceType: 'c7g.large' });
    assert.deepEqual(stackParameters({ ...SETTINGS, imageId: '' }, true), { Ec2Workers: 'false', WorkerImageId: '', WorkerInstanceType: 'c7g.large' });
    const conditional = Object.entries(template.Resources).filter(([, resource]) => resource.Condition).map(([id, resource]) => [id, resource.Condition]);
    assert.deepEqual(conditional, [['WorkerRole', 'Ec2Workers'], ['WorkerInstanceProfile', 'Ec2Workers'], ['WorkerLaunchTemplate', 'WorkerLaunchTemplate']]);
    assert.deepEqual(template.Conditions.WorkerLaunchTemplate, { 'Fn::And': [{ Condition: 'Ec2Workers' }, { 'Fn::Not': [{ 'Fn::Equals': [{ Ref: 'WorkerImageId' }, ''] }] }] });
    // Outputs of resources that may be left out carry the same condition.
    assert.equal(template.Outputs.WorkerRoleArn!.Condition, 'Ec2Workers');
    assert.equal(template.Outputs.WorkerLaunchTemplate!.Condition, 'WorkerLaunchTemplate');
    assert.deepEqual(template.Outputs.LaunchQueueUrl!.Value, { Ref: 'LaunchQueue' });
  });

  it('refers only to what it declares, and fits CloudFormation\'s limit for a template body', () => {
    const declared = new Set([...Object.keys(template.Resources), ...Object.keys(template.Parameters)]);
    for (const target of references(template)) assert.ok(declared.has(target) || target.startsWith('AWS::'), `reference to undeclared ${target}`);
    assert.ok(JSON.stringify(template).length < 51_200);
  });

  it('refuses settings no stack can be made from', () => {
    assert.throws(() => checkSettings({ ...SETTINGS, deployment: 'my_deployment' }), /cannot name a stack/);
    assert.throws(() => checkSettings({ ...SETTINGS, deployment: 'a'.repeat(58) }), /cannot name a stack/);
    assert.throws(() => checkSettings({ ...SETTINGS, outputBucket: 'acme-in' }), /must differ/);
    assert.throws(() => checkSettings({ ...SETTINGS, launchTemplate: 'lt-0123abcd' }), /is a template id/);
    assert.throws(() => checkSettings({ ...SETTINGS, region: '' }), /no AWS region/);
  });
});

function policyDocuments(value: unknown): PolicyDocument[] {
  if (!value || typeof value !== 'object') return [];
  if (Array.isArray(value)) return value.flatMap(policyDocuments);
  const object = value as Record<string, unknown>;
  const own = object.Version === '2012-10-17' && Array.isArray(object.Statement) ? [object as unknown as PolicyDocument] : [];
  return [...own, ...Object.values(object).flatMap(policyDocuments)];
}

function references(value: unknown): string[] {
  if (!value || typeof value !== 'object') return [];
  if (Array.isArray(value)) return value.flatMap(references);
  const object = value as Record<string, unknown>;
  const own = typeof object.Ref === 'string' ? [object.Ref] : Array.isArray(object['Fn::GetAtt']) ? [String(object['Fn::GetAtt'][0])] : [];
  return [...own, ...Object.values(object).flatMap(references)];
}

/**
 * A policy resource as `<LogicalId>[/<key pattern>]`; fails on anything that is not an ARN
 * of one of the template's own resources (a `*`, or a hand-written ARN).
 */
function describeResource(resource: Value): string {
  const arnOf = (value: Value): string => {
    assert.ok(typeof value === 'object' && 'Fn::GetAtt' in value && value['Fn::GetAtt'][1] === 'Arn', `not an ARN of the stack's own: ${JSON.stringify(value)}`);
    assert.ok(template.Resources[value['Fn::GetAtt'][0]]);
    return value['Fn::GetAtt'][0];
  };
  if (typeof resource === 'object' && 'Fn::Join' in resource) {
    const [separator, [arn, suffix, ...rest]] = resource['Fn::Join'];
    assert.equal(separator, '');
    assert.equal(rest.length, 0);
    assert.ok(typeof suffix === 'string' && /^\/([a-z]+\/)?\*$/.test(suffix), `key pattern ${JSON.stringify(suffix)}`);
    return `${arnOf(arn!)}${suffix}`;
  }
  return arnOf(resource);
}
