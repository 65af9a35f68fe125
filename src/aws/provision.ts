/**
 * Creates and removes the AWS resources of one deployment: the input and output buckets,
 * the launch, monitor and output queues, the workers' IAM role and instance profile, and
 * their launch template.
 *
 * Every step reads first and writes only what is missing or different, so running
 * provision again is safe and, when nothing changed, makes no writes. Everything created
 * is tagged `icaas:deployment=<deployment>`; a resource that already exists without that
 * tag (a bucket made by hand, say) is used as it is, never modified, and never deleted by
 * teardown. Teardown checks before it deletes anything: it refuses buckets that hold
 * objects, and worker instances still running, unless forced.
 *
 * A dry run prints every call it would make, reads included, and makes none: it assumes
 * provisioning starts from an empty account and teardown from a complete, empty deployment.
 */
import { isDeepStrictEqual } from 'node:util';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  GetBucketEncryptionCommand,
  GetBucketTaggingCommand,
  GetPublicAccessBlockCommand,
  HeadBucketCommand,
  ListObjectsV2Command,
  PutBucketEncryptionCommand,
  PutBucketTaggingCommand,
  PutPublicAccessBlockCommand,
  S3Client,
  type BucketLocationConstraint,
} from '@aws-sdk/client-s3';
import {
  CreateQueueCommand,
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ListQueueTagsCommand,
  SetQueueAttributesCommand,
  SQSClient,
  type QueueAttributeName,
} from '@aws-sdk/client-sqs';
import {
  AddRoleToInstanceProfileCommand,
  CreateInstanceProfileCommand,
  CreateRoleCommand,
  DeleteInstanceProfileCommand,
  DeleteRoleCommand,
  DeleteRolePolicyCommand,
  DetachRolePolicyCommand,
  GetInstanceProfileCommand,
  GetRoleCommand,
  GetRolePolicyCommand,
  IAMClient,
  ListAttachedRolePoliciesCommand,
  ListRolePoliciesCommand,
  PutRolePolicyCommand,
  RemoveRoleFromInstanceProfileCommand,
} from '@aws-sdk/client-iam';
import {
  CreateLaunchTemplateCommand,
  CreateLaunchTemplateVersionCommand,
  DeleteLaunchTemplateCommand,
  DescribeInstancesCommand,
  DescribeLaunchTemplatesCommand,
  DescribeLaunchTemplateVersionsCommand,
  EC2Client,
  ModifyLaunchTemplateCommand,
  TerminateInstancesCommand,
  type _InstanceType,
  type RequestLaunchTemplateData,
  type ResponseLaunchTemplateData,
} from '@aws-sdk/client-ec2';
import { TAG_DEPLOYMENT, TAG_ROLE, WORKER_ROLE, encodeUserData, heartbeatKey, workerResourceName, workerTags, workerUserData } from '../compute/ec2.js';
import { resultKey } from '../messages.js';
import { attemptKey } from '../outcomes.js';

/** The output-bucket prefixes a worker writes: its results and its heartbeat. */
const RESULTS_PREFIX = resultKey('x').replace(/x\.json$/, '');
const HEARTBEATS_PREFIX = heartbeatKey('x').replace(/x\.json$/, '');
const ATTEMPTS_PREFIX = attemptKey('x', 1).replace(/x\/1$/, '');

export interface AwsClients {
  s3: S3Client;
  sqs: SQSClient;
  iam: IAMClient;
  ec2: EC2Client;
}

/** What one deployment consists of; the names follow the configuration (src/config.ts). */
export interface DeploymentSettings {
  region: string;
  deployment: string;
  queuePrefix: string;
  inputBucket: string;
  outputBucket: string;
  /** The processing deadline: the monitor queue's visibility timeout is at least this. */
  deadlineSeconds: number;
  /** Worker AMI for the launch template; without it the template is skipped. */
  imageId?: string;
  instanceType?: string;
  /** Default `<deployment>-worker`. */
  instanceProfile?: string;
  /** Default `<deployment>-worker`. */
  launchTemplate?: string;
  /** The workers' configuration as environment, for the launch template's user data. */
  workerEnv?: Record<string, string>;
  /** S3-, SQS- or EC2-compatible services to use instead of AWS's own endpoints (an emulator on loopback, say). */
  endpoints?: { s3?: string; s3ForcePathStyle?: boolean; sqs?: string; ec2?: string };
  /**
   * Leave out what only EC2 workers need (the IAM role, its instance profile and the launch
   * template), for a deployment whose workers run as local processes on S3 and SQS.
   */
  skipEc2?: boolean;
}

export interface AwsCommandOptions extends DeploymentSettings {
  /** Clients to use (e.g. mocked); those missing are created for `region`. */
  clients?: Partial<AwsClients>;
  dryRun?: boolean;
  /** Teardown only: empty non-empty buckets and terminate running workers. */
  force?: boolean;
  log: (line: string) => void;
}

export type ProvisionOptions = AwsCommandOptions;
export type TeardownOptions = AwsCommandOptions;

/** In a dry run: what would be created, deleted or left alone on an empty (or complete) account. */
export interface AwsCommandResult {
  /** Resources created (provision) or deleted (teardown), e.g. `S3 bucket icaas-input`. */
  changed: string[];
  /** Resources found as wanted, or (teardown) already gone. */
  unchanged: string[];
  /** Resources left alone because they were not made for this deployment, or skipped. */
  skipped: string[];
}

export class AwsProvisionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AwsProvisionError';
  }
}

/** Teardown found data or running workers and was not forced; nothing was deleted. */
export class TeardownRefusedError extends AwsProvisionError {
  constructor(readonly reasons: string[]) {
    super(`teardown refused, nothing was deleted:\n${reasons.map((reason) => `  - ${reason}`).join('\n')}`);
    this.name = 'TeardownRefusedError';
  }
}

export const QUEUE_SUFFIXES = ['launch', 'monitor', 'output'] as const;
type QueueSuffix = (typeof QUEUE_SUFFIXES)[number];

const RETENTION_SECONDS = 14 * 24 * 3600;

export function deploymentNames(settings: DeploymentSettings) {
  const worker = workerResourceName(settings.deployment);
  return {
    buckets: [settings.inputBucket, settings.outputBucket],
    queues: Object.fromEntries(QUEUE_SUFFIXES.map((suffix) => [suffix, `${settings.queuePrefix}${suffix}`])) as Record<QueueSuffix, string>,
    role: worker,
    rolePolicy: worker,
    instanceProfile: settings.instanceProfile || worker,
    launchTemplate: settings.launchTemplate || worker,
  };
}

/**
 * Queue attributes. Receives always name their own wait and (where it matters) visibility,
 * so these defaults serve other consumers and the console: long polling, the longest
 * retention (an upload waits out a long outage), and server-side encryption.
 */
export function queueAttributes(suffix: QueueSuffix, deadlineSeconds: number): Partial<Record<QueueAttributeName, string>> {
  const visibility = suffix === 'monitor' ? Math.max(60, Math.ceil(deadlineSeconds)) : 60;
  return {
    VisibilityTimeout: String(visibility),
    ReceiveMessageWaitTimeSeconds: '20',
    MessageRetentionPeriod: String(RETENTION_SECONDS),
    SqsManagedSseEnabled: 'true',
  };
}

export const EC2_TRUST_POLICY = {
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { Service: 'ec2.amazonaws.com' }, Action: 'sts:AssumeRole' }],
};

function partitionOf(region: string): string {
  if (region.startsWith('cn-')) return 'aws-cn';
  if (region.startsWith('us-gov-')) return 'aws-us-gov';
  return 'aws';
}

/**
 * The least a worker needs, and nothing for the rest of the service:
 * - read an image by its key (no listing of the input bucket: a worker is given its keys);
 * - check for, and write, results and its own heartbeat, under those two prefixes only, so
 *   a worker cannot touch the launch lease or anything else in the output bucket;
 * - s3:ListBucket on the output bucket, because without it S3 answers 403 instead of 404
 *   for a missing object, and the worker must tell "no result yet" from "not allowed";
 * - receive and delete launch messages (a receive's own VisibilityTimeout needs nothing
 *   beyond sqs:ReceiveMessage), and send to the monitor and output queues.
 * Not: ChangeMessageVisibility or GetQueueAttributes (workers never call them), nor any EC2
 * action: a worker ends by powering its machine off, which the launch makes a terminate.
 */
export function workerPolicy(settings: DeploymentSettings, accountId: string) {
  const partition = partitionOf(settings.region);
  const names = deploymentNames(settings);
  const queueArn = (name: string) => `arn:${partition}:sqs:${settings.region}:${accountId}:${name}`;
  const output = `arn:${partition}:s3:::${settings.outputBucket}`;
  return {
    Version: '2012-10-17',
    Statement: [
      { Sid: 'ReadInputImages', Effect: 'Allow', Action: ['s3:GetObject'], Resource: [`arn:${partition}:s3:::${settings.inputBucket}/*`] },
      { Sid: 'WriteAndCheckResults', Effect: 'Allow', Action: ['s3:GetObject', 's3:PutObject'], Resource: [`${output}/${RESULTS_PREFIX}*`] },
      // A worker drops a delivery whose next attempt the monitor has already claimed.
      { Sid: 'CheckRetryClaims', Effect: 'Allow', Action: ['s3:GetObject'], Resource: [`${output}/${ATTEMPTS_PREFIX}*`] },
      { Sid: 'WriteHeartbeat', Effect: 'Allow', Action: ['s3:PutObject'], Resource: [`${output}/${HEARTBEATS_PREFIX}*`] },
      { Sid: 'MissingResultsAnswer404', Effect: 'Allow', Action: ['s3:ListBucket'], Resource: [output] },
      { Sid: 'TakeWork', Effect: 'Allow', Action: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueUrl'], Resource: [queueArn(names.queues.launch)] },
      { Sid: 'ReportProgress', Effect: 'Allow', Action: ['sqs:SendMessage', 'sqs:GetQueueUrl'], Resource: [queueArn(names.queues.monitor), queueArn(names.queues.output)] },
    ],
  };
}

/** The launch template's data: what a worker needs that RunInstances does not add itself. */
export function launchTemplateData(settings: DeploymentSettings): RequestLaunchTemplateData {
  const names = deploymentNames(settings);
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
  const tags = workerTags(settings.deployment);
  return {
    ImageId: settings.imageId,
    InstanceType: (settings.instanceType || 't3.small') as _InstanceType,
    IamInstanceProfile: { Name: names.instanceProfile },
    UserData: encodeUserData(workerUserData({ configEnv: env })),
    InstanceInitiatedShutdownBehavior: 'terminate',
    MetadataOptions: { HttpTokens: 'required', HttpEndpoint: 'enabled' },
    TagSpecifications: [
      { ResourceType: 'instance', Tags: tags },
      { ResourceType: 'volume', Tags: tags },
    ],
  };
}

/** The fields provisioning sets, as comparable between a request and a described version. */
function templateFingerprint(data: RequestLaunchTemplateData | ResponseLaunchTemplateData | undefined): unknown {
  return {
    ImageId: data?.ImageId,
    InstanceType: data?.InstanceType,
    IamInstanceProfile: data?.IamInstanceProfile?.Name,
    UserData: data?.UserData,
    InstanceInitiatedShutdownBehavior: data?.InstanceInitiatedShutdownBehavior,
    HttpTokens: data?.MetadataOptions?.HttpTokens,
    Tags: (data?.TagSpecifications ?? []).map((spec) => ({ type: spec.ResourceType, tags: (spec.Tags ?? []).map((tag) => `${tag.Key}=${tag.Value}`).sort() })),
  };
}

// ---------------------------------------------------------------------------------------

type Service = 'S3' | 'SQS' | 'IAM' | 'EC2';
interface Described {
  input: object;
}

/** Error codes (or HTTP statuses) that mean "this does not exist". */
type Missing = readonly (string | number)[];

function errorCode(error: unknown): string {
  const { name, Code } = (error ?? {}) as { name?: unknown; Code?: unknown };
  return typeof Code === 'string' ? Code : typeof name === 'string' ? name : '';
}

function errorStatus(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

function isOneOf(error: unknown, codes: Missing): boolean {
  const code = errorCode(error);
  const name = (error as { name?: unknown } | null)?.name;
  const status = errorStatus(error);
  return codes.some((entry) => (typeof entry === 'number' ? entry === status : entry === code || entry === name));
}

/** One line per call: the operation and its parameters, with user data summarised. */
export function describeCall(service: Service, command: Described): string {
  const operation = command.constructor.name.replace(/Command$/, '');
  const params = JSON.stringify(command.input, (key, value: unknown) => {
    if (key === 'UserData' && typeof value === 'string') return `<${Buffer.from(value, 'base64').length} bytes of user data>`;
    if ((key === 'PolicyDocument' || key === 'AssumeRolePolicyDocument') && typeof value === 'string') {
      try {
        return JSON.parse(value) as unknown;
      } catch {
        return value;
      }
    }
    return value;
  });
  return `${service} ${operation} ${params}`;
}

class Calls {
  constructor(
    readonly dryRun: boolean,
    private readonly log: (line: string) => void,
  ) {}

  /** A read: undefined in a dry run, null when the resource does not exist. */
  async read<T>(service: Service, command: Described, run: () => Promise<T>, missing: Missing = []): Promise<T | null | undefined> {
    if (this.dryRun) {
      this.log(`[dry run] ${describeCall(service, command)}`);
      return undefined;
    }
    try {
      return await run();
    } catch (error) {
      if (isOneOf(error, missing)) return null;
      throw wrap(service, command, error);
    }
  }

  /** A write: logged, then made (or, in a dry run, only logged). */
  async write<T>(service: Service, command: Described, run: () => Promise<T>, tolerated: Missing = []): Promise<T | undefined> {
    const line = describeCall(service, command);
    if (this.dryRun) {
      this.log(`[dry run] ${line}`);
      return undefined;
    }
    this.log(`  ${line}`);
    try {
      return await run();
    } catch (error) {
      if (isOneOf(error, tolerated)) return undefined;
      throw wrap(service, command, error);
    }
  }
}

function wrap(service: Service, command: Described, error: unknown): AwsProvisionError {
  const operation = command.constructor.name.replace(/Command$/, '');
  const code = errorCode(error);
  const detail = error instanceof Error ? error.message : String(error);
  let hint = '';
  if (/AccessDenied|UnauthorizedOperation|Forbidden|AuthorizationError/.test(code) || errorStatus(error) === 403) {
    hint = ` (the credentials need permission for ${service.toLowerCase()}:${operation}; see docs/aws.md for the operator policy)`;
  } else if (code === 'CredentialsProviderError' || /InvalidClientTokenId|SignatureDoesNotMatch|ExpiredToken|InvalidAccessKeyId|AuthFailure/.test(code)) {
    hint = ' (run `aws configure`, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)';
  }
  return new AwsProvisionError(`${service} ${operation} failed: ${code ? `${code}: ` : ''}${detail}${hint}`, { cause: error });
}

function ownershipTags(deployment: string) {
  return [{ Key: TAG_DEPLOYMENT, Value: deployment }];
}

function isOurs(tags: { Key?: string | undefined; Value?: string | undefined }[] | undefined, deployment: string): boolean {
  return (tags ?? []).some((tag) => tag.Key === TAG_DEPLOYMENT && tag.Value === deployment);
}

function resolveClients(options: AwsCommandOptions): AwsClients {
  const region = options.region;
  const endpoints = options.endpoints ?? {};
  return {
    s3: options.clients?.s3 ?? new S3Client({ region, ...(endpoints.s3 ? { endpoint: endpoints.s3 } : {}), forcePathStyle: endpoints.s3ForcePathStyle ?? false }),
    sqs: options.clients?.sqs ?? new SQSClient({ region, ...(endpoints.sqs ? { endpoint: endpoints.sqs } : {}) }),
    // IAM is global; its endpoint is reached through any commercial region.
    iam: options.clients?.iam ?? new IAMClient({ region }),
    ec2: options.clients?.ec2 ?? new EC2Client({ region, ...(endpoints.ec2 ? { endpoint: endpoints.ec2 } : {}) }),
  };
}

function destroyOwnClients(options: AwsCommandOptions, clients: AwsClients): void {
  for (const key of ['s3', 'sqs', 'iam', 'ec2'] as const) {
    if (!options.clients?.[key]) clients[key].destroy();
  }
}

type BucketState = 'missing' | 'ours' | 'foreign';

class Deployment {
  readonly names: ReturnType<typeof deploymentNames>;
  readonly calls: Calls;
  readonly result: AwsCommandResult = { changed: [], unchanged: [], skipped: [] };

  constructor(
    readonly options: AwsCommandOptions,
    readonly clients: AwsClients,
  ) {
    this.names = deploymentNames(options);
    this.calls = new Calls(options.dryRun ?? false, options.log);
  }

  get deployment(): string {
    return this.options.deployment;
  }

  private note(kind: keyof AwsCommandResult, what: string, status: string): void {
    this.result[kind].push(what);
    if (!this.calls.dryRun) this.options.log(`${what}: ${status}`);
  }

  private foreignNote(what: string, action: 'used' | 'kept'): void {
    this.note(
      'skipped',
      what,
      action === 'used'
        ? `exists without the tag ${TAG_DEPLOYMENT}=${this.deployment}, so it is used as it is (not modified, and teardown will not delete it)`
        : `not deleted: it lacks the tag ${TAG_DEPLOYMENT}=${this.deployment}, so it was not made for this deployment`,
    );
  }

  /** --skip-ec2: the role, instance profile and launch template are neither made nor removed. */
  skipEc2Resources(): void {
    const what = `IAM role ${this.names.role}, instance profile ${this.names.instanceProfile} and EC2 launch template ${this.names.launchTemplate}`;
    this.note('skipped', what, 'left alone (--skip-ec2: workers run as local processes)');
  }

  // --- S3 ------------------------------------------------------------------------------

  async bucketState(bucket: string, dryRunState: BucketState): Promise<BucketState> {
    const { s3 } = this.clients;
    const head = new HeadBucketCommand({ Bucket: bucket });
    let found;
    try {
      found = await this.calls.read('S3', head, () => s3.send(head), ['NotFound', 'NoSuchBucket', 404]);
    } catch (error) {
      const status = errorStatus((error as Error).cause);
      if (status === 403) throw new AwsProvisionError(`S3 bucket ${bucket} exists but these credentials may not use it (bucket names are global: it may belong to another account); choose another --${bucket === this.options.inputBucket ? 'input' : 'output'}-bucket`, { cause: error });
      if (status === 301) throw new AwsProvisionError(`S3 bucket ${bucket} exists in another region than ${this.options.region}; choose another bucket name or region`, { cause: error });
      throw error;
    }
    if (found === null || (found === undefined && dryRunState === 'missing')) return 'missing';
    const tagging = new GetBucketTaggingCommand({ Bucket: bucket });
    const tags = await this.calls.read('S3', tagging, () => s3.send(tagging), ['NoSuchTagSet']);
    if (found === undefined) return dryRunState;
    return isOurs(tags?.TagSet, this.deployment) ? 'ours' : 'foreign';
  }

  async provisionBucket(bucket: string): Promise<void> {
    const { s3 } = this.clients;
    const what = `S3 bucket ${bucket}`;
    const state = await this.bucketState(bucket, 'missing');
    if (state === 'foreign') return this.foreignNote(what, 'used');
    let changed = false;
    if (state === 'missing') {
      const region = this.options.region;
      const create = new CreateBucketCommand({
        Bucket: bucket,
        // us-east-1 is the default location and refuses to be named explicitly.
        ...(region !== 'us-east-1' ? { CreateBucketConfiguration: { LocationConstraint: region as BucketLocationConstraint } } : {}),
      });
      try {
        await this.calls.write('S3', create, () => s3.send(create), ['BucketAlreadyOwnedByYou']);
      } catch (error) {
        if (errorCode((error as Error).cause) === 'BucketAlreadyExists') {
          throw new AwsProvisionError(`S3 bucket name ${bucket} is taken by another account (bucket names are global); choose another --${bucket === this.options.inputBucket ? 'input' : 'output'}-bucket`, { cause: error });
        }
        throw error;
      }
      const tag = new PutBucketTaggingCommand({ Bucket: bucket, Tagging: { TagSet: ownershipTags(this.deployment) } });
      await this.calls.write('S3', tag, () => s3.send(tag));
      changed = true;
    }

    const getBlock = new GetPublicAccessBlockCommand({ Bucket: bucket });
    const block = state === 'missing' ? null : await this.calls.read('S3', getBlock, () => s3.send(getBlock), ['NoSuchPublicAccessBlockConfiguration']);
    const privateConfig = { BlockPublicAcls: true, IgnorePublicAcls: true, BlockPublicPolicy: true, RestrictPublicBuckets: true };
    if (!block || !isDeepStrictEqual({ ...privateConfig, ...block.PublicAccessBlockConfiguration }, privateConfig)) {
      const put = new PutPublicAccessBlockCommand({ Bucket: bucket, PublicAccessBlockConfiguration: privateConfig });
      await this.calls.write('S3', put, () => s3.send(put));
      changed = true;
    }

    const getEncryption = new GetBucketEncryptionCommand({ Bucket: bucket });
    const encryption = state === 'missing' ? null : await this.calls.read('S3', getEncryption, () => s3.send(getEncryption), ['ServerSideEncryptionConfigurationNotFoundError']);
    const algorithms = (encryption?.ServerSideEncryptionConfiguration?.Rules ?? []).map((rule) => rule.ApplyServerSideEncryptionByDefault?.SSEAlgorithm);
    // Any default encryption will do: a bucket someone moved to KMS keeps its stronger setting.
    if (!algorithms.some((algorithm) => algorithm !== undefined)) {
      const put = new PutBucketEncryptionCommand({
        Bucket: bucket,
        ServerSideEncryptionConfiguration: { Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
      });
      await this.calls.write('S3', put, () => s3.send(put));
      changed = true;
    }
    if (state === 'missing') this.note('changed', what, 'created (private, encrypted)');
    else if (changed) this.note('changed', what, 'made private and encrypted');
    else this.note('unchanged', what, 'exists, private and encrypted');
  }

  /** Whether the bucket holds any object (in a dry run: assumed empty). */
  async bucketHasObjects(bucket: string): Promise<boolean> {
    const list = new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1 });
    const listed = await this.calls.read('S3', list, () => this.clients.s3.send(list), ['NoSuchBucket']);
    return Boolean(listed && (listed.KeyCount ?? listed.Contents?.length ?? 0) > 0);
  }

  async emptyBucket(bucket: string): Promise<number> {
    const { s3 } = this.clients;
    if (this.calls.dryRun) {
      this.options.log(`[dry run] S3 ListObjectsV2 + DeleteObjects {"Bucket":${JSON.stringify(bucket)}} for every page of up to 1000 objects`);
      return 0;
    }
    let deleted = 0;
    for (;;) {
      const list = new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1000 });
      const page = await this.calls.read('S3', list, () => s3.send(list), ['NoSuchBucket']);
      const keys = (page?.Contents ?? []).map((object) => object.Key).filter((key): key is string => Boolean(key));
      if (keys.length === 0) return deleted;
      const remove = new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys.map((Key) => ({ Key })), Quiet: true } });
      const response = await this.calls.write('S3', remove, () => s3.send(remove));
      const errors = response?.Errors ?? [];
      if (errors.length > 0) {
        throw new AwsProvisionError(`could not delete ${errors.length} objects from S3 bucket ${bucket}, e.g. ${errors[0]?.Key}: ${errors[0]?.Code} ${errors[0]?.Message}`);
      }
      deleted += keys.length;
    }
  }

  // --- SQS -----------------------------------------------------------------------------

  /** The queue's URL and whether it is ours, or null when it does not exist. */
  async queueState(name: string): Promise<{ url: string | undefined; ours: boolean } | null> {
    const { sqs } = this.clients;
    const get = new GetQueueUrlCommand({ QueueName: name });
    const found = await this.calls.read('SQS', get, () => sqs.send(get), ['QueueDoesNotExist', 'AWS.SimpleQueueService.NonExistentQueue']);
    if (found === null) return null;
    const url = found?.QueueUrl;
    const listTags = new ListQueueTagsCommand({ QueueUrl: url ?? `<url of ${name}>` });
    const tags = await this.calls.read('SQS', listTags, () => sqs.send(listTags));
    return { url, ours: found === undefined || tags?.Tags?.[TAG_DEPLOYMENT] === this.deployment };
  }

  async provisionQueue(suffix: QueueSuffix): Promise<string | undefined> {
    const { sqs } = this.clients;
    const name = this.names.queues[suffix];
    const what = `SQS queue ${name}`;
    const wanted = queueAttributes(suffix, this.options.deadlineSeconds);
    const state = this.calls.dryRun ? null : await this.queueState(name);
    if (this.calls.dryRun) {
      // Printed as provision would run on an empty account: look up, then create.
      const get = new GetQueueUrlCommand({ QueueName: name });
      await this.calls.read('SQS', get, () => sqs.send(get));
    }
    if (state === null) {
      const create = new CreateQueueCommand({ QueueName: name, Attributes: wanted, tags: { [TAG_DEPLOYMENT]: this.deployment } });
      try {
        const created = await this.calls.write('SQS', create, () => sqs.send(create));
        this.note('changed', what, 'created');
        return created?.QueueUrl;
      } catch (error) {
        const code = errorCode((error as Error).cause);
        if (code === 'QueueDeletedRecently' || code === 'AWS.SimpleQueueService.QueueDeletedRecently') {
          throw new AwsProvisionError(`${what} was deleted less than 60 seconds ago and SQS will not re-create it yet; run provision again in a minute`, { cause: error });
        }
        throw error;
      }
    }
    if (!state.ours) {
      this.foreignNote(what, 'used');
      return state.url;
    }
    const getAttributes = new GetQueueAttributesCommand({ QueueUrl: state.url, AttributeNames: Object.keys(wanted) as QueueAttributeName[] });
    const current = await this.calls.read('SQS', getAttributes, () => sqs.send(getAttributes));
    const differing = Object.fromEntries(Object.entries(wanted).filter(([key, value]) => current?.Attributes?.[key as QueueAttributeName] !== value));
    if (Object.keys(differing).length === 0) {
      this.note('unchanged', what, 'exists with the wanted attributes');
    } else {
      const set = new SetQueueAttributesCommand({ QueueUrl: state.url, Attributes: differing });
      await this.calls.write('SQS', set, () => sqs.send(set));
      this.note('changed', what, `attributes updated (${Object.keys(differing).join(', ')})`);
    }
    return state.url;
  }

  // --- IAM -----------------------------------------------------------------------------

  async provisionRole(accountId: string): Promise<void> {
    const { iam } = this.clients;
    const roleName = this.names.role;
    const what = `IAM role ${roleName}`;
    const get = new GetRoleCommand({ RoleName: roleName });
    const role = await this.calls.read('IAM', get, () => iam.send(get), ['NoSuchEntity', 'NoSuchEntityException']);
    if (role && !isOurs(role.Role?.Tags, this.deployment)) return this.foreignNote(what, 'used');
    if (!role) {
      const create = new CreateRoleCommand({
        RoleName: roleName,
        AssumeRolePolicyDocument: JSON.stringify(EC2_TRUST_POLICY),
        Description: `icaas workers of deployment ${this.deployment}`,
        Tags: ownershipTags(this.deployment),
      });
      await this.calls.write('IAM', create, () => iam.send(create));
      this.note('changed', what, 'created, trusted by EC2');
    } else {
      this.note('unchanged', what, 'exists');
    }

    const policyWhat = `IAM inline policy ${this.names.rolePolicy} of role ${roleName}`;
    const policy = workerPolicy(this.options, accountId);
    const getPolicy = new GetRolePolicyCommand({ RoleName: roleName, PolicyName: this.names.rolePolicy });
    const current = role ? await this.calls.read('IAM', getPolicy, () => iam.send(getPolicy), ['NoSuchEntity', 'NoSuchEntityException']) : null;
    if (current && isDeepStrictEqual(JSON.parse(decodeURIComponent(current.PolicyDocument ?? '{}')), policy)) {
      this.note('unchanged', policyWhat, 'as wanted');
    } else {
      const put = new PutRolePolicyCommand({ RoleName: roleName, PolicyName: this.names.rolePolicy, PolicyDocument: JSON.stringify(policy) });
      await this.calls.write('IAM', put, () => iam.send(put));
      this.note('changed', policyWhat, current ? 'updated' : 'created');
    }
  }

  async provisionInstanceProfile(): Promise<void> {
    const { iam } = this.clients;
    const profileName = this.names.instanceProfile;
    const what = `IAM instance profile ${profileName}`;
    const get = new GetInstanceProfileCommand({ InstanceProfileName: profileName });
    const profile = await this.calls.read('IAM', get, () => iam.send(get), ['NoSuchEntity', 'NoSuchEntityException']);
    if (profile && !isOurs(profile.InstanceProfile?.Tags, this.deployment)) return this.foreignNote(what, 'used');
    if (!profile) {
      const create = new CreateInstanceProfileCommand({ InstanceProfileName: profileName, Tags: ownershipTags(this.deployment) });
      await this.calls.write('IAM', create, () => iam.send(create));
    }
    const roles = (profile?.InstanceProfile?.Roles ?? []).map((role) => role.RoleName);
    if (!roles.includes(this.names.role)) {
      if (roles.length > 0) {
        throw new AwsProvisionError(`${what} holds role ${roles.join(', ')} instead of ${this.names.role} (a profile holds one role); remove it from the profile or run teardown first`);
      }
      const add = new AddRoleToInstanceProfileCommand({ InstanceProfileName: profileName, RoleName: this.names.role });
      await this.calls.write('IAM', add, () => iam.send(add));
      this.note('changed', what, profile ? `role ${this.names.role} added` : `created with role ${this.names.role}`);
    } else {
      this.note('unchanged', what, `exists with role ${this.names.role}`);
    }
  }

  // --- EC2 -----------------------------------------------------------------------------

  async launchTemplateState(): Promise<{ ours: boolean } | null> {
    const describe = new DescribeLaunchTemplatesCommand({ LaunchTemplateNames: [this.names.launchTemplate] });
    const found = await this.calls.read('EC2', describe, () => this.clients.ec2.send(describe), ['InvalidLaunchTemplateName.NotFoundException']);
    if (found === undefined) return this.calls.dryRun ? { ours: true } : null;
    const template = found?.LaunchTemplates?.[0];
    if (!template) return null;
    return { ours: isOurs(template.Tags, this.deployment) };
  }

  async provisionLaunchTemplate(): Promise<void> {
    const { ec2 } = this.clients;
    const name = this.names.launchTemplate;
    const what = `EC2 launch template ${name}`;
    if (!this.options.imageId) {
      this.result.skipped.push(what);
      this.options.log(`${what}: skipped, no worker image was given (--ec2-image-id); see docs/aws.md to build one, then run provision again`);
      return;
    }
    if (/^lt-[0-9a-f]+$/.test(name)) {
      throw new AwsProvisionError(`--ec2-launch-template ${name} is a template id; provisioning creates templates by name, so give a name (or leave it unset for ${workerResourceName(this.deployment)})`);
    }
    const data = launchTemplateData(this.options);
    const state = this.calls.dryRun ? null : await this.launchTemplateState();
    if (this.calls.dryRun) {
      const describe = new DescribeLaunchTemplatesCommand({ LaunchTemplateNames: [name] });
      await this.calls.read('EC2', describe, () => ec2.send(describe));
    }
    if (state === null) {
      const create = new CreateLaunchTemplateCommand({
        LaunchTemplateName: name,
        VersionDescription: 'icaas worker',
        LaunchTemplateData: data,
        TagSpecifications: [{ ResourceType: 'launch-template', Tags: ownershipTags(this.deployment) }],
      });
      await this.calls.write('EC2', create, () => ec2.send(create));
      this.note('changed', what, `created (image ${this.options.imageId}, ${data.InstanceType})`);
      return;
    }
    if (!state.ours) return this.foreignNote(what, 'used');
    const versions = new DescribeLaunchTemplateVersionsCommand({ LaunchTemplateName: name, Versions: ['$Default'] });
    const current = await this.calls.read('EC2', versions, () => ec2.send(versions));
    if (isDeepStrictEqual(templateFingerprint(current?.LaunchTemplateVersions?.[0]?.LaunchTemplateData), templateFingerprint(data))) {
      this.note('unchanged', what, 'default version as wanted');
      return;
    }
    const createVersion = new CreateLaunchTemplateVersionCommand({ LaunchTemplateName: name, VersionDescription: 'icaas worker', LaunchTemplateData: data });
    const created = await this.calls.write('EC2', createVersion, () => ec2.send(createVersion));
    const version = created?.LaunchTemplateVersion?.VersionNumber;
    const modify = new ModifyLaunchTemplateCommand({ LaunchTemplateName: name, DefaultVersion: version === undefined ? '<new version>' : String(version) });
    await this.calls.write('EC2', modify, () => ec2.send(modify));
    this.note('changed', what, `new default version ${version ?? ''}`.trim());
  }

  async activeWorkers(): Promise<string[]> {
    const ids: string[] = [];
    let nextToken: string | undefined;
    do {
      const describe = new DescribeInstancesCommand({
        Filters: [
          { Name: `tag:${TAG_DEPLOYMENT}`, Values: [this.deployment] },
          { Name: `tag:${TAG_ROLE}`, Values: [WORKER_ROLE] },
          { Name: 'instance-state-name', Values: ['pending', 'running', 'stopping', 'stopped'] },
        ],
        ...(nextToken ? { NextToken: nextToken } : {}),
      });
      const page = await this.calls.read('EC2', describe, () => this.clients.ec2.send(describe));
      for (const reservation of page?.Reservations ?? []) {
        for (const instance of reservation.Instances ?? []) if (instance.InstanceId) ids.push(instance.InstanceId);
      }
      nextToken = page?.NextToken || undefined;
    } while (nextToken);
    return ids;
  }

  // --- teardown steps ------------------------------------------------------------------

  async deleteLaunchTemplate(): Promise<void> {
    const name = this.names.launchTemplate;
    const what = `EC2 launch template ${name}`;
    const state = await this.launchTemplateState();
    if (state === null) return this.note('unchanged', what, 'already gone');
    if (!state.ours) return this.foreignNote(what, 'kept');
    const remove = new DeleteLaunchTemplateCommand({ LaunchTemplateName: name });
    await this.calls.write('EC2', remove, () => this.clients.ec2.send(remove), ['InvalidLaunchTemplateName.NotFoundException']);
    this.note('changed', what, 'deleted');
  }

  async deleteInstanceProfile(): Promise<void> {
    const { iam } = this.clients;
    const profileName = this.names.instanceProfile;
    const what = `IAM instance profile ${profileName}`;
    const get = new GetInstanceProfileCommand({ InstanceProfileName: profileName });
    const profile = await this.calls.read('IAM', get, () => iam.send(get), ['NoSuchEntity', 'NoSuchEntityException']);
    if (profile === null) return this.note('unchanged', what, 'already gone');
    if (profile && !isOurs(profile.InstanceProfile?.Tags, this.deployment)) return this.foreignNote(what, 'kept');
    const roles = profile ? (profile.InstanceProfile?.Roles ?? []).map((role) => role.RoleName ?? '') : [this.names.role];
    for (const roleName of roles) {
      const removeRole = new RemoveRoleFromInstanceProfileCommand({ InstanceProfileName: profileName, RoleName: roleName });
      await this.calls.write('IAM', removeRole, () => iam.send(removeRole), ['NoSuchEntity', 'NoSuchEntityException']);
    }
    const remove = new DeleteInstanceProfileCommand({ InstanceProfileName: profileName });
    await this.calls.write('IAM', remove, () => iam.send(remove), ['NoSuchEntity', 'NoSuchEntityException']);
    this.note('changed', what, 'deleted');
  }

  async deleteRole(): Promise<void> {
    const { iam } = this.clients;
    const roleName = this.names.role;
    const what = `IAM role ${roleName}`;
    const get = new GetRoleCommand({ RoleName: roleName });
    const role = await this.calls.read('IAM', get, () => iam.send(get), ['NoSuchEntity', 'NoSuchEntityException']);
    if (role === null) return this.note('unchanged', what, 'already gone');
    if (role && !isOurs(role.Role?.Tags, this.deployment)) return this.foreignNote(what, 'kept');
    // A role with policies cannot be deleted: remove the inline ones and detach any attached.
    const listInline = new ListRolePoliciesCommand({ RoleName: roleName });
    const inline = await this.calls.read('IAM', listInline, () => iam.send(listInline));
    const inlineNames = inline ? (inline.PolicyNames ?? []) : [this.names.rolePolicy];
    for (const policyName of inlineNames) {
      const remove = new DeleteRolePolicyCommand({ RoleName: roleName, PolicyName: policyName });
      await this.calls.write('IAM', remove, () => iam.send(remove), ['NoSuchEntity', 'NoSuchEntityException']);
    }
    const listAttached = new ListAttachedRolePoliciesCommand({ RoleName: roleName });
    const attached = await this.calls.read('IAM', listAttached, () => iam.send(listAttached));
    for (const policy of attached?.AttachedPolicies ?? []) {
      const detach = new DetachRolePolicyCommand({ RoleName: roleName, PolicyArn: policy.PolicyArn });
      await this.calls.write('IAM', detach, () => iam.send(detach), ['NoSuchEntity', 'NoSuchEntityException']);
    }
    const remove = new DeleteRoleCommand({ RoleName: roleName });
    await this.calls.write('IAM', remove, () => iam.send(remove), ['NoSuchEntity', 'NoSuchEntityException']);
    this.note('changed', what, 'deleted');
  }

  async deleteQueue(suffix: QueueSuffix): Promise<void> {
    const name = this.names.queues[suffix];
    const what = `SQS queue ${name}`;
    const state = await this.queueState(name);
    if (state === null) return this.note('unchanged', what, 'already gone');
    if (!state.ours) return this.foreignNote(what, 'kept');
    const remove = new DeleteQueueCommand({ QueueUrl: state.url ?? `<url of ${name}>` });
    await this.calls.write('SQS', remove, () => this.clients.sqs.send(remove), ['QueueDoesNotExist', 'AWS.SimpleQueueService.NonExistentQueue']);
    this.note('changed', what, 'deleted');
  }

  async deleteBucket(bucket: string, state: BucketState): Promise<void> {
    const what = `S3 bucket ${bucket}`;
    if (state === 'missing') return this.note('unchanged', what, 'already gone');
    if (state === 'foreign') return this.foreignNote(what, 'kept');
    const emptied = this.options.force ? await this.emptyBucket(bucket) : 0;
    const remove = new DeleteBucketCommand({ Bucket: bucket });
    await this.calls.write('S3', remove, () => this.clients.s3.send(remove), ['NoSuchBucket']);
    this.note('changed', what, emptied > 0 ? `deleted with its ${emptied} objects` : 'deleted');
  }
}

/** The account id in a queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>). */
function accountFromQueueUrl(url: string | undefined): string | undefined {
  if (!url) return undefined;
  try {
    const account = new URL(url).pathname.split('/')[1];
    return account && /^\d{12}$/.test(account) ? account : undefined;
  } catch {
    return undefined;
  }
}

function checkSettings(options: AwsCommandOptions): void {
  if (!options.region) throw new AwsProvisionError('no AWS region: set AWS_REGION, pass --region, or set a region in the AWS profile');
  if (!options.deployment) throw new AwsProvisionError('no deployment name (--deployment)');
  if (options.inputBucket === options.outputBucket) throw new AwsProvisionError(`the input and output buckets must differ (both are ${options.inputBucket})`);
}

/** Creates what is missing and corrects what differs; see the module comment. */
export async function provision(options: ProvisionOptions): Promise<AwsCommandResult> {
  checkSettings(options);
  const clients = resolveClients(options);
  const deployment = new Deployment(options, clients);
  try {
    for (const bucket of deployment.names.buckets) await deployment.provisionBucket(bucket);
    const urls: (string | undefined)[] = [];
    for (const suffix of QUEUE_SUFFIXES) urls.push(await deployment.provisionQueue(suffix));
    const accountId = urls.map(accountFromQueueUrl).find(Boolean) ?? (options.dryRun ? '<account-id>' : undefined);
    if (!accountId) throw new AwsProvisionError(`could not tell the AWS account from the queue URLs (${urls.join(', ')})`);
    if (options.skipEc2) {
      deployment.skipEc2Resources();
      return deployment.result;
    }
    await deployment.provisionRole(accountId);
    await deployment.provisionInstanceProfile();
    await deployment.provisionLaunchTemplate();
    return deployment.result;
  } finally {
    destroyOwnClients(options, clients);
  }
}

/**
 * Removes what provision made, in reverse order. Checks first and deletes nothing when a
 * bucket holds objects or workers are still running, unless forced (then it empties the
 * buckets and terminates the workers).
 */
export async function teardown(options: TeardownOptions): Promise<AwsCommandResult> {
  checkSettings(options);
  const clients = resolveClients(options);
  const deployment = new Deployment(options, clients);
  try {
    const refusals: string[] = [];
    const workers = options.skipEc2 ? [] : await deployment.activeWorkers();
    if (workers.length > 0 && !options.force) {
      refusals.push(`${workers.length} worker instance(s) of deployment ${options.deployment} still exist (${workers.slice(0, 5).join(', ')}${workers.length > 5 ? ', ...' : ''}); stop the web tier and controllers and let them finish, or pass --force to terminate them`);
    }
    const bucketStates = new Map<string, BucketState>();
    for (const bucket of deployment.names.buckets) {
      const state = await deployment.bucketState(bucket, 'ours');
      bucketStates.set(bucket, state);
      if (state === 'ours' && !options.force && (await deployment.bucketHasObjects(bucket))) {
        refusals.push(`S3 bucket ${bucket} holds objects (uploaded images or results); pass --force to delete them with the bucket`);
      }
    }
    if (refusals.length > 0) throw new TeardownRefusedError(refusals);

    if (workers.length > 0) {
      const terminate = new TerminateInstancesCommand({ InstanceIds: workers });
      await deployment.calls.write('EC2', terminate, () => clients.ec2.send(terminate), ['InvalidInstanceID.NotFound']);
      deployment.result.changed.push(...workers.map((id) => `EC2 instance ${id}`));
    }
    if (options.skipEc2) {
      deployment.skipEc2Resources();
    } else {
      await deployment.deleteLaunchTemplate();
      await deployment.deleteInstanceProfile();
      await deployment.deleteRole();
    }
    for (const suffix of [...QUEUE_SUFFIXES].reverse()) await deployment.deleteQueue(suffix);
    for (const bucket of [...deployment.names.buckets].reverse()) await deployment.deleteBucket(bucket, bucketStates.get(bucket) ?? 'missing');
    return deployment.result;
  } finally {
    destroyOwnClients(options, clients);
  }
}
