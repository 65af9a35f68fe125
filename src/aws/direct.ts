/**
 * For S3 and SQS endpoints that are not AWS (an emulator on loopback, MinIO, ...): they
 * have no CloudFormation, so the template's buckets and queues (and only those) are made
 * directly through S3 and SQS, with the properties the template gives them. The IAM and
 * EC2 resources and the bucket policies need AWS, and are left out.
 *
 * Never used for AWS itself: there the stack is the one source of truth.
 */
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  HeadBucketCommand,
  PutBucketEncryptionCommand,
  PutBucketTaggingCommand,
  PutPublicAccessBlockCommand,
  type BucketLocationConstraint,
  type S3Client,
} from '@aws-sdk/client-s3';
import {
  CreateQueueCommand,
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  SetQueueAttributesCommand,
  type QueueAttributeName,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { resourcesOfType, type ResourceProperties, type Template } from './cfn.js';
import { bucketHoldsObjects, emptyBucket } from './contents.js';
import { attempt, errorCode, TeardownRefusedError } from './errors.js';

export interface DirectOptions {
  s3: S3Client;
  sqs: SQSClient;
  region: string;
  log: (line: string) => void;
  dryRun?: boolean;
  /** Teardown: empty buckets that hold objects instead of refusing. */
  force?: boolean;
}

type QueueProperties = ResourceProperties['AWS::SQS::Queue'];
type BucketProperties = ResourceProperties['AWS::S3::Bucket'];

function queueAttributes(properties: QueueProperties): Partial<Record<QueueAttributeName, string>> {
  return {
    VisibilityTimeout: String(properties.VisibilityTimeout),
    ReceiveMessageWaitTimeSeconds: String(properties.ReceiveMessageWaitTimeSeconds),
    MessageRetentionPeriod: String(properties.MessageRetentionPeriod),
    SqsManagedSseEnabled: String(properties.SqsManagedSseEnabled),
  };
}

const buckets = (template: Template) => resourcesOfType(template, 'AWS::S3::Bucket').map(([, bucket]) => bucket.Properties);
const queues = (template: Template) => resourcesOfType(template, 'AWS::SQS::Queue').map(([, queue]) => queue.Properties);

async function bucketExists(s3: S3Client, name: string): Promise<boolean> {
  try {
    await s3.send(new HeadBucketCommand({ Bucket: name }));
    return true;
  } catch (error) {
    if (['NotFound', 'NoSuchBucket'].includes(errorCode(error))) return false;
    throw error;
  }
}

async function applyBucket(properties: BucketProperties, options: DirectOptions): Promise<void> {
  const { s3, region } = options;
  const name = properties.BucketName;
  const exists = await attempt(`s3:HeadBucket ${name}`, () => bucketExists(s3, name));
  if (options.dryRun) return options.log(`would ${exists ? 'apply the settings of' : 'create'} S3 bucket ${name}`);
  if (!exists) {
    await attempt(`s3:CreateBucket ${name}`, () => s3.send(new CreateBucketCommand({
      Bucket: name,
      // us-east-1 is the default location and refuses to be named explicitly.
      ...(region !== 'us-east-1' ? { CreateBucketConfiguration: { LocationConstraint: region as BucketLocationConstraint } } : {}),
    })));
  }
  await attempt(`s3:PutBucketTagging ${name}`, () => s3.send(new PutBucketTaggingCommand({ Bucket: name, Tagging: { TagSet: properties.Tags } })));
  await attempt(`s3:PutPublicAccessBlock ${name}`, () => s3.send(new PutPublicAccessBlockCommand({ Bucket: name, PublicAccessBlockConfiguration: properties.PublicAccessBlockConfiguration })));
  const rules = properties.BucketEncryption.ServerSideEncryptionConfiguration.map((rule) => ({ ApplyServerSideEncryptionByDefault: rule.ServerSideEncryptionByDefault }));
  await attempt(`s3:PutBucketEncryption ${name}`, () => s3.send(new PutBucketEncryptionCommand({ Bucket: name, ServerSideEncryptionConfiguration: { Rules: rules } })));
  options.log(`S3 bucket ${name}: ${exists ? 'exists, settings applied' : 'created (private, encrypted)'}`);
}

async function queueUrl(sqs: SQSClient, name: string): Promise<string | undefined> {
  try {
    return (await sqs.send(new GetQueueUrlCommand({ QueueName: name }))).QueueUrl;
  } catch (error) {
    if (['QueueDoesNotExist', 'AWS.SimpleQueueService.NonExistentQueue'].includes(errorCode(error))) return undefined;
    throw error;
  }
}

async function applyQueue(properties: QueueProperties, options: DirectOptions): Promise<string | undefined> {
  const { sqs } = options;
  const name = properties.QueueName;
  const wanted = queueAttributes(properties);
  const url = await attempt(`sqs:GetQueueUrl ${name}`, () => queueUrl(sqs, name));
  if (options.dryRun) {
    options.log(`would ${url ? 'check the attributes of' : 'create'} SQS queue ${name}`);
    return url;
  }
  if (!url) {
    const tags = Object.fromEntries(properties.Tags.map((tag) => [tag.Key, tag.Value]));
    const created = await attempt(`sqs:CreateQueue ${name}`, () => sqs.send(new CreateQueueCommand({ QueueName: name, Attributes: wanted, tags })));
    options.log(`SQS queue ${name}: created`);
    return created.QueueUrl;
  }
  const current = await attempt(`sqs:GetQueueAttributes ${name}`, () => sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: Object.keys(wanted) as QueueAttributeName[] })));
  const differing = Object.fromEntries(Object.entries(wanted).filter(([key, value]) => current.Attributes?.[key as QueueAttributeName] !== value));
  if (Object.keys(differing).length === 0) {
    options.log(`SQS queue ${name}: unchanged`);
  } else {
    await attempt(`sqs:SetQueueAttributes ${name}`, () => sqs.send(new SetQueueAttributesCommand({ QueueUrl: url, Attributes: differing })));
    options.log(`SQS queue ${name}: attributes updated (${Object.keys(differing).join(', ')})`);
  }
  return url;
}

/** Makes the template's buckets and queues; returns the queue URLs by name. */
export async function applyBucketsAndQueues(template: Template, options: DirectOptions): Promise<Record<string, string>> {
  for (const bucket of buckets(template)) await applyBucket(bucket, options);
  const urls: Record<string, string> = {};
  for (const queue of queues(template)) {
    const url = await applyQueue(queue, options);
    if (url) urls[queue.QueueName] = url;
  }
  return urls;
}

/**
 * Deletes the template's queues and buckets. Checks first and deletes nothing while a
 * bucket holds objects, unless forced (then empties it).
 */
export async function removeBucketsAndQueues(template: Template, options: DirectOptions): Promise<void> {
  const { s3, sqs } = options;
  const full: string[] = [];
  for (const { BucketName: name } of buckets(template)) {
    if (await bucketHoldsObjects(s3, name, 'objects')) full.push(name);
  }
  if (full.length > 0 && !options.force) {
    throw new TeardownRefusedError(full.map((name) => `S3 bucket ${name} holds objects (uploaded images or results); pass --force to delete them with the bucket`));
  }
  if (options.dryRun) {
    for (const { QueueName } of queues(template)) options.log(`would delete SQS queue ${QueueName}`);
    for (const { BucketName } of buckets(template)) options.log(`would ${full.includes(BucketName) ? 'empty and ' : ''}delete S3 bucket ${BucketName}`);
    return;
  }
  for (const { QueueName: name } of queues(template)) {
    const url = await attempt(`sqs:GetQueueUrl ${name}`, () => queueUrl(sqs, name));
    if (url) await attempt(`sqs:DeleteQueue ${name}`, () => sqs.send(new DeleteQueueCommand({ QueueUrl: url })));
    options.log(`SQS queue ${name}: ${url ? 'deleted' : 'already gone'}`);
  }
  for (const { BucketName: name } of buckets(template)) {
    const emptied = full.includes(name) ? await emptyBucket(s3, name, 'objects') : 0;
    const exists = await attempt(`s3:HeadBucket ${name}`, () => bucketExists(s3, name));
    if (exists) await attempt(`s3:DeleteBucket ${name}`, () => s3.send(new DeleteBucketCommand({ Bucket: name })));
    options.log(`S3 bucket ${name}: ${exists ? `deleted${emptied ? ` with its ${emptied} objects` : ''}` : 'already gone'}`);
  }
}
