/**
 * The deployment as one CloudFormation stack: its buckets, queues, the workers' IAM role,
 * instance profile and launch template, every one tagged `icaas:deployment=<deployment>`.
 * The names follow the configuration (src/config.ts), so the service finds what the stack
 * made without reading the stack.
 *
 * `Ec2Workers=false` (`--skip-ec2`) leaves out the role, profile and launch template, for
 * workers that run as local processes; the launch template also waits for a worker image
 * (`WorkerImageId`).
 */
import { encodeUserData, heartbeatKey, TAG_DEPLOYMENT, workerResourceName, workerTags, workerUserData } from '../compute/ec2.js';
import { resultKey } from '../messages.js';
import { attemptKey } from '../outcomes.js';
import { AwsProvisionError } from './errors.js';
import { getAtt, join, ref, resource, type Output, type PolicyDocument, type Resource, type Tag, type Template, type Value } from './cfn.js';

export interface DeploymentSettings {
  region: string;
  deployment: string;
  queuePrefix: string;
  inputBucket: string;
  outputBucket: string;
  /** The processing deadline: the monitor queue's visibility timeout is at least this. */
  deadlineSeconds: number;
  /** Worker AMI for the launch template; without it there is no launch template. */
  imageId?: string;
  instanceType?: string;
  /** Default `<deployment>-worker`. */
  instanceProfile?: string;
  /** Default `<deployment>-worker`. */
  launchTemplate?: string;
  /** The workers' configuration as environment, for the launch template's user data. */
  workerEnv?: Record<string, string>;
}

export const QUEUE_SUFFIXES = ['launch', 'monitor', 'output'] as const;
export type QueueSuffix = (typeof QUEUE_SUFFIXES)[number];

const RETENTION_SECONDS = 14 * 24 * 3600;
const DEFAULT_INSTANCE_TYPE = 't3.small';

/** Logical ids, as the console's Resources tab and change sets show them. */
export const LOGICAL_IDS = {
  inputBucket: 'InputBucket',
  outputBucket: 'OutputBucket',
  queues: { launch: 'LaunchQueue', monitor: 'MonitorQueue', output: 'OutputQueue' } satisfies Record<QueueSuffix, string>,
  role: 'WorkerRole',
  instanceProfile: 'WorkerInstanceProfile',
  launchTemplate: 'WorkerLaunchTemplate',
} as const;

export const PARAMETERS = { ec2Workers: 'Ec2Workers', imageId: 'WorkerImageId', instanceType: 'WorkerInstanceType' } as const;
export const CONDITIONS = { ec2Workers: 'Ec2Workers', launchTemplate: 'WorkerLaunchTemplate' } as const;

export function deploymentNames(settings: DeploymentSettings) {
  const worker = workerResourceName(settings.deployment);
  return {
    stack: settings.deployment,
    buckets: [settings.inputBucket, settings.outputBucket],
    queues: Object.fromEntries(QUEUE_SUFFIXES.map((suffix) => [suffix, `${settings.queuePrefix}${suffix}`])) as Record<QueueSuffix, string>,
    role: worker,
    rolePolicy: worker,
    instanceProfile: settings.instanceProfile || worker,
    launchTemplate: settings.launchTemplate || worker,
  };
}

/** Refuses settings no stack could be made from, before any call. */
export function checkSettings(settings: DeploymentSettings): void {
  if (!settings.region) throw new AwsProvisionError('no AWS region: set AWS_REGION, pass --region, or set a region in the AWS profile');
  // The stack is named after the deployment, and IAM role names are at most 64 characters.
  if (!/^[A-Za-z][A-Za-z0-9-]{0,56}$/.test(settings.deployment)) {
    throw new AwsProvisionError(`deployment name ${JSON.stringify(settings.deployment)} cannot name a stack: use up to 57 letters, digits and hyphens, starting with a letter (--deployment)`);
  }
  if (settings.inputBucket === settings.outputBucket) throw new AwsProvisionError(`the input and output buckets must differ (both are ${settings.inputBucket})`);
  const template = deploymentNames(settings).launchTemplate;
  if (/^lt-[0-9a-f]+$/.test(template)) {
    throw new AwsProvisionError(`--ec2-launch-template ${template} is a template id; the stack names its template, so give a name (or leave it unset for ${workerResourceName(settings.deployment)})`);
  }
}

function deploymentTags(deployment: string): Tag[] {
  return [{ Key: TAG_DEPLOYMENT, Value: deployment }];
}

/** The output-bucket prefixes a worker touches: results, retry claims, its heartbeat. */
const RESULTS_PREFIX = resultKey('x').replace(/x\.json$/, '');
const HEARTBEATS_PREFIX = heartbeatKey('x').replace(/x\.json$/, '');
const ATTEMPTS_PREFIX = attemptKey('x', 1).replace(/x\/1$/, '');

export interface WorkerArns {
  inputBucket: Value;
  outputBucket: Value;
  launchQueue: Value;
  monitorQueue: Value;
  outputQueue: Value;
}

/**
 * The least a worker needs, and nothing for the rest of the service:
 * - read an image by its key (no listing of the input bucket: a worker is given its keys);
 * - check for, and write, results and its own heartbeat, under those prefixes only, so a
 *   worker cannot touch the launch lease or anything else in the output bucket;
 * - s3:ListBucket on the output bucket, because without it S3 answers 403 instead of 404
 *   for a missing object, and the worker must tell "no result yet" from "not allowed";
 * - receive and delete launch messages (a receive's own VisibilityTimeout needs nothing
 *   beyond sqs:ReceiveMessage), and send to the monitor and output queues.
 * Not: ChangeMessageVisibility or GetQueueAttributes (workers never call them), nor any EC2
 * action: a worker ends by powering its machine off, which the launch makes a terminate.
 */
export function workerPolicy(arns: WorkerArns): PolicyDocument {
  const output = arns.outputBucket;
  return {
    Version: '2012-10-17',
    Statement: [
      { Sid: 'ReadInputImages', Effect: 'Allow', Action: ['s3:GetObject'], Resource: [join(arns.inputBucket, '/*')] },
      { Sid: 'WriteAndCheckResults', Effect: 'Allow', Action: ['s3:GetObject', 's3:PutObject'], Resource: [join(output, `/${RESULTS_PREFIX}*`)] },
      // A worker drops a delivery whose next attempt the monitor has already claimed.
      { Sid: 'CheckRetryClaims', Effect: 'Allow', Action: ['s3:GetObject'], Resource: [join(output, `/${ATTEMPTS_PREFIX}*`)] },
      { Sid: 'WriteHeartbeat', Effect: 'Allow', Action: ['s3:PutObject'], Resource: [join(output, `/${HEARTBEATS_PREFIX}*`)] },
      { Sid: 'MissingResultsAnswer404', Effect: 'Allow', Action: ['s3:ListBucket'], Resource: [output] },
      { Sid: 'TakeWork', Effect: 'Allow', Action: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueUrl'], Resource: [arns.launchQueue] },
      { Sid: 'ReportProgress', Effect: 'Allow', Action: ['sqs:SendMessage', 'sqs:GetQueueUrl'], Resource: [arns.monitorQueue, arns.outputQueue] },
    ],
  };
}

export const EC2_TRUST_POLICY: PolicyDocument = {
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { Service: 'ec2.amazonaws.com' }, Action: ['sts:AssumeRole'] }],
};

function bucket(name: string, deployment: string): Resource<'AWS::S3::Bucket'> {
  return resource('AWS::S3::Bucket', {
    BucketName: name,
    BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
    PublicAccessBlockConfiguration: { BlockPublicAcls: true, IgnorePublicAcls: true, BlockPublicPolicy: true, RestrictPublicBuckets: true },
    OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] },
    // Uploads over 8 MiB are multipart; one the web tier never completed is only cost.
    LifecycleConfiguration: { Rules: [{ Id: 'abort-incomplete-uploads', Status: 'Enabled', AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 } }] },
    Tags: deploymentTags(deployment),
  }, {
    // Teardown deletes the buckets (after emptying them, when forced); a replacement (a
    // renamed bucket) keeps the old one with its images and results.
    deletion: 'Delete',
    updateReplace: 'Retain',
  });
}

/** Refuses plain HTTP to a bucket: the SDK always uses TLS, so only a mistake would not. */
function tlsOnlyPolicy(bucketLogicalId: string): Resource<'AWS::S3::BucketPolicy'> {
  const arn = getAtt(bucketLogicalId, 'Arn');
  return resource('AWS::S3::BucketPolicy', {
    Bucket: ref(bucketLogicalId),
    PolicyDocument: {
      Version: '2012-10-17',
      Statement: [{ Sid: 'TlsOnly', Effect: 'Deny', Principal: '*', Action: ['s3:*'], Resource: [arn, join(arn, '/*')], Condition: { Bool: { 'aws:SecureTransport': 'false' } } }],
    },
  }, { deletion: 'Delete' });
}

/**
 * Queue settings. Receives always name their own wait and (where it matters) visibility,
 * so these serve other consumers and the console: long polling, the longest retention (an
 * upload waits out a long outage), and server-side encryption. No dead-letter queue: the
 * monitor counts attempts itself and ends an image as an error after --max-attempts.
 */
export function queue(name: string, suffix: QueueSuffix, settings: DeploymentSettings): Resource<'AWS::SQS::Queue'> {
  return resource('AWS::SQS::Queue', {
    QueueName: name,
    VisibilityTimeout: suffix === 'monitor' ? Math.max(60, Math.ceil(settings.deadlineSeconds)) : 60,
    ReceiveMessageWaitTimeSeconds: 20,
    MessageRetentionPeriod: RETENTION_SECONDS,
    SqsManagedSseEnabled: true,
    Tags: deploymentTags(settings.deployment),
  }, { deletion: 'Delete' });
}

function workerUserDataBase64(settings: DeploymentSettings): string {
  const env = {
    ...settings.workerEnv,
    // A worker started from this template alone (e.g. from the console) must still use the
    // cloud adapters, whatever the configuration provision was run with.
    ICAAS_STORE: 's3',
    ICAAS_QUEUE: 'sqs',
    ICAAS_COMPUTE: 'ec2',
    AWS_REGION: settings.region,
    ICAAS_DEPLOYMENT: settings.deployment,
    ICAAS_QUEUE_PREFIX: settings.queuePrefix,
    ICAAS_INPUT_BUCKET: settings.inputBucket,
    ICAAS_OUTPUT_BUCKET: settings.outputBucket,
  };
  return encodeUserData(workerUserData({ configEnv: env }));
}

function ec2Resources(settings: DeploymentSettings): Record<string, Resource> {
  const names = deploymentNames(settings);
  const tags = deploymentTags(settings.deployment);
  const instanceTags = workerTags(settings.deployment).map((tag) => ({ Key: tag.Key ?? '', Value: tag.Value ?? '' }));
  const onlyWithEc2 = { deletion: 'Delete', condition: CONDITIONS.ec2Workers } as const;
  return {
    [LOGICAL_IDS.role]: resource('AWS::IAM::Role', {
      RoleName: names.role,
      Description: `icaas workers of deployment ${settings.deployment}`,
      AssumeRolePolicyDocument: EC2_TRUST_POLICY,
      Policies: [{
        PolicyName: names.rolePolicy,
        PolicyDocument: workerPolicy({
          inputBucket: getAtt(LOGICAL_IDS.inputBucket, 'Arn'),
          outputBucket: getAtt(LOGICAL_IDS.outputBucket, 'Arn'),
          launchQueue: getAtt(LOGICAL_IDS.queues.launch, 'Arn'),
          monitorQueue: getAtt(LOGICAL_IDS.queues.monitor, 'Arn'),
          outputQueue: getAtt(LOGICAL_IDS.queues.output, 'Arn'),
        }),
      }],
      Tags: tags,
    }, onlyWithEc2),
    // CloudFormation cannot tag an instance profile; it holds only the role.
    [LOGICAL_IDS.instanceProfile]: resource('AWS::IAM::InstanceProfile', { InstanceProfileName: names.instanceProfile, Roles: [ref(LOGICAL_IDS.role)] }, onlyWithEc2),
    [LOGICAL_IDS.launchTemplate]: resource('AWS::EC2::LaunchTemplate', {
      LaunchTemplateName: names.launchTemplate,
      VersionDescription: 'icaas worker',
      LaunchTemplateData: {
        ImageId: ref(PARAMETERS.imageId),
        InstanceType: ref(PARAMETERS.instanceType),
        IamInstanceProfile: { Name: ref(LOGICAL_IDS.instanceProfile) },
        UserData: workerUserDataBase64(settings),
        InstanceInitiatedShutdownBehavior: 'terminate',
        MetadataOptions: { HttpTokens: 'required', HttpEndpoint: 'enabled' },
        TagSpecifications: [
          { ResourceType: 'instance', Tags: instanceTags },
          { ResourceType: 'volume', Tags: instanceTags },
        ],
      },
      TagSpecifications: [{ ResourceType: 'launch-template', Tags: tags }],
    }, { deletion: 'Delete', condition: CONDITIONS.launchTemplate }),
  };
}

function outputs(settings: DeploymentSettings): Record<string, Output> {
  const names = deploymentNames(settings);
  const queueUrls = Object.fromEntries(
    QUEUE_SUFFIXES.map((suffix) => [`${LOGICAL_IDS.queues[suffix]}Url`, { Description: `URL of the ${suffix} queue`, Value: ref(LOGICAL_IDS.queues[suffix]) }]),
  );
  return {
    InputBucket: { Description: 'bucket for uploaded images (--input-bucket)', Value: ref(LOGICAL_IDS.inputBucket) },
    OutputBucket: { Description: 'bucket for results (--output-bucket)', Value: ref(LOGICAL_IDS.outputBucket) },
    QueuePrefix: { Description: 'prefix of the queue names (--queue-prefix)', Value: settings.queuePrefix },
    ...queueUrls,
    WorkerRoleArn: { Description: "the workers' role: the web tier and controllers need iam:PassRole on it", Value: getAtt(LOGICAL_IDS.role, 'Arn'), Condition: CONDITIONS.ec2Workers },
    WorkerInstanceProfile: { Description: "the workers' instance profile (--ec2-instance-profile)", Value: ref(LOGICAL_IDS.instanceProfile), Condition: CONDITIONS.ec2Workers },
    WorkerLaunchTemplate: { Description: 'launch template for workers (--ec2-launch-template)', Value: names.launchTemplate, Condition: CONDITIONS.launchTemplate },
    WorkerLaunchTemplateId: { Description: 'id of the launch template', Value: ref(LOGICAL_IDS.launchTemplate), Condition: CONDITIONS.launchTemplate },
  };
}

/** The whole stack, as a template object. */
export function deploymentTemplate(settings: DeploymentSettings): Template {
  const names = deploymentNames(settings);
  const queues = Object.fromEntries(QUEUE_SUFFIXES.map((suffix) => [LOGICAL_IDS.queues[suffix], queue(names.queues[suffix], suffix, settings)]));
  return {
    AWSTemplateFormatVersion: '2010-09-09',
    Description: `icaas deployment ${settings.deployment}: buckets, queues, and the EC2 workers' role and launch template (icaas aws provision)`,
    Parameters: {
      [PARAMETERS.ec2Workers]: { Type: 'String', Description: 'make the IAM role, instance profile and launch template of EC2 workers (false: --skip-ec2)', Default: 'true', AllowedValues: ['true', 'false'] },
      [PARAMETERS.imageId]: { Type: 'String', Description: 'worker AMI (--ec2-image-id); empty: no launch template yet', Default: '', AllowedPattern: '^(ami-[0-9a-zA-Z]+)?$' },
      [PARAMETERS.instanceType]: { Type: 'String', Description: 'worker instance type (--ec2-instance-type)', Default: DEFAULT_INSTANCE_TYPE },
    },
    Conditions: {
      [CONDITIONS.ec2Workers]: { 'Fn::Equals': [ref(PARAMETERS.ec2Workers), 'true'] },
      [CONDITIONS.launchTemplate]: { 'Fn::And': [{ Condition: CONDITIONS.ec2Workers }, { 'Fn::Not': [{ 'Fn::Equals': [ref(PARAMETERS.imageId), ''] }] }] },
    },
    Resources: {
      [LOGICAL_IDS.inputBucket]: bucket(settings.inputBucket, settings.deployment),
      InputBucketPolicy: tlsOnlyPolicy(LOGICAL_IDS.inputBucket),
      [LOGICAL_IDS.outputBucket]: bucket(settings.outputBucket, settings.deployment),
      OutputBucketPolicy: tlsOnlyPolicy(LOGICAL_IDS.outputBucket),
      ...queues,
      ...ec2Resources(settings),
    },
    Outputs: outputs(settings),
  };
}

/** The parameter values for these settings; `skipEc2` leaves out the EC2 workers' part. */
export function stackParameters(settings: DeploymentSettings, skipEc2: boolean): Record<string, string> {
  return {
    [PARAMETERS.ec2Workers]: skipEc2 ? 'false' : 'true',
    [PARAMETERS.imageId]: settings.imageId ?? '',
    [PARAMETERS.instanceType]: settings.instanceType || DEFAULT_INSTANCE_TYPE,
  };
}
