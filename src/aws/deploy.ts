/**
 * Provision and teardown of one deployment: on AWS by deploying or deleting its stack
 * (stack.ts); on S3 and SQS endpoints that are not AWS by making or deleting the stack's
 * buckets and queues directly (direct.ts), since those have no CloudFormation.
 */
import { CloudFormationClient } from '@aws-sdk/client-cloudformation';
import { EC2Client } from '@aws-sdk/client-ec2';
import { S3Client } from '@aws-sdk/client-s3';
import { SQSClient } from '@aws-sdk/client-sqs';
import { activeWorkers, bucketHoldsObjects, emptyBucket, terminateWorkers } from './contents.js';
import { applyBucketsAndQueues, removeBucketsAndQueues } from './direct.js';
import { AwsProvisionError, TeardownRefusedError } from './errors.js';
import { deleteStack, deployStack, listStackResources, stackToDelete, type DeployResult, type StackOptions } from './stack.js';
import { checkSettings, deploymentNames, deploymentTemplate, stackParameters, type DeploymentSettings } from './template.js';

export interface AwsClients {
  cfn: CloudFormationClient;
  s3: S3Client;
  sqs: SQSClient;
  ec2: EC2Client;
}

export interface AwsCommandOptions extends DeploymentSettings {
  /** S3-, SQS- or EC2-compatible services instead of AWS's own endpoints. */
  endpoints?: { s3?: string; s3ForcePathStyle?: boolean; sqs?: string; ec2?: string };
  /** Leave out the EC2 workers' role, instance profile and launch template. */
  skipEc2?: boolean;
  dryRun?: boolean;
  /** Teardown: empty buckets that hold objects and terminate workers instead of refusing. */
  force?: boolean;
  /** Clients to use; those missing are made for `region` and the endpoints. */
  clients?: Partial<AwsClients>;
  log: (line: string) => void;
  /** Between looks at a change set or stack operation (default 5 s). */
  pollMs?: number;
  timeoutMs?: number;
}

export interface ProvisionResult {
  /** `stack`: deployed through CloudFormation; `direct`: buckets and queues made directly. */
  via: 'stack' | 'direct';
  outcome: DeployResult['outcome'] | 'applied';
  /** The stack's outputs; in the direct case the same keys for buckets and queues. */
  outputs: Record<string, string>;
}

/** The S3 and SQS endpoints have no CloudFormation when they are not AWS's own. */
function usesOtherEndpoints(options: AwsCommandOptions): boolean {
  const { s3, sqs } = options.endpoints ?? {};
  if (Boolean(s3) !== Boolean(sqs)) {
    throw new AwsProvisionError(
      'only one of --s3-endpoint and --sqs-endpoint is set: CloudFormation makes resources on AWS only, and an endpoint that is not AWS has no CloudFormation. Set both to make the buckets and queues there directly, or neither to deploy the stack on AWS',
    );
  }
  return Boolean(s3 && sqs);
}

function resolveClients(options: AwsCommandOptions): AwsClients {
  const { region, clients } = options;
  const endpoints = options.endpoints ?? {};
  return {
    cfn: clients?.cfn ?? new CloudFormationClient({ region }),
    s3: clients?.s3 ?? new S3Client({ region, ...(endpoints.s3 ? { endpoint: endpoints.s3 } : {}), forcePathStyle: endpoints.s3ForcePathStyle ?? false }),
    sqs: clients?.sqs ?? new SQSClient({ region, ...(endpoints.sqs ? { endpoint: endpoints.sqs } : {}) }),
    ec2: clients?.ec2 ?? new EC2Client({ region, ...(endpoints.ec2 ? { endpoint: endpoints.ec2 } : {}) }),
  };
}

async function withClients<T>(options: AwsCommandOptions, run: (clients: AwsClients) => Promise<T>): Promise<T> {
  const clients = resolveClients(options);
  try {
    return await run(clients);
  } finally {
    for (const key of ['cfn', 's3', 'sqs', 'ec2'] as const) if (!options.clients?.[key]) clients[key].destroy();
  }
}

function stackOptions(options: AwsCommandOptions, clients: AwsClients): StackOptions {
  return {
    cfn: clients.cfn,
    stackName: deploymentNames(options).stack,
    deployment: options.deployment,
    log: options.log,
    dryRun: options.dryRun ?? false,
    ...(options.pollMs !== undefined ? { pollMs: options.pollMs } : {}),
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
  };
}

/** Creates or updates the deployment; a dry run shows what would change and changes nothing. */
export async function provision(options: AwsCommandOptions): Promise<ProvisionResult> {
  checkSettings(options);
  const direct = usesOtherEndpoints(options);
  const template = deploymentTemplate(options);
  return withClients(options, async (clients) => {
    if (!direct) {
      const result = await deployStack(template, stackParameters(options, options.skipEc2 ?? false), stackOptions(options, clients));
      return { via: 'stack', outcome: result.outcome, outputs: result.outputs };
    }
    options.log('the S3 and SQS endpoints are not AWS and have no CloudFormation: making the stack\'s buckets and queues there directly (no IAM role, launch template or bucket policies)');
    const urls = await applyBucketsAndQueues(template, { s3: clients.s3, sqs: clients.sqs, region: options.region, log: options.log, dryRun: options.dryRun ?? false });
    const names = deploymentNames(options);
    return {
      via: 'direct',
      outcome: options.dryRun ? 'dry-run' : 'applied',
      outputs: {
        InputBucket: options.inputBucket,
        OutputBucket: options.outputBucket,
        QueuePrefix: options.queuePrefix,
        ...(urls[names.queues.launch] ? { LaunchQueueUrl: urls[names.queues.launch] } : {}),
        ...(urls[names.queues.monitor] ? { MonitorQueueUrl: urls[names.queues.monitor] } : {}),
        ...(urls[names.queues.output] ? { OutputQueueUrl: urls[names.queues.output] } : {}),
      },
    };
  });
}

/**
 * Deletes the deployment. Checks first, and deletes nothing while a bucket holds objects
 * or worker instances exist, unless forced: then it terminates the workers and empties the
 * buckets (every object version) before deleting the stack.
 */
export async function teardown(options: AwsCommandOptions): Promise<void> {
  checkSettings(options);
  const direct = usesOtherEndpoints(options);
  await withClients(options, async (clients) => {
    if (direct) {
      const template = deploymentTemplate(options);
      return removeBucketsAndQueues(template, { s3: clients.s3, sqs: clients.sqs, region: options.region, log: options.log, dryRun: options.dryRun ?? false, force: options.force ?? false });
    }
    return teardownStack(options, clients);
  });
}

async function teardownStack(options: AwsCommandOptions, clients: AwsClients): Promise<void> {
  const { log } = options;
  const stackOpts = stackOptions(options, clients);
  const stack = await stackToDelete(stackOpts);
  if (!stack) return log(`there is no stack ${stackOpts.stackName} in ${options.region}: nothing to delete`);
  const resources = (await listStackResources(clients.cfn, stack.StackId!)).filter((resource) => resource.PhysicalResourceId && resource.ResourceStatus !== 'DELETE_COMPLETE');
  const buckets = resources.filter((resource) => resource.ResourceType === 'AWS::S3::Bucket').map((resource) => resource.PhysicalResourceId!);
  const workers = resources.some((resource) => resource.ResourceType === 'AWS::IAM::Role') ? await activeWorkers(clients.ec2, options.deployment) : [];
  const full: string[] = [];
  for (const bucket of buckets) if (await bucketHoldsObjects(clients.s3, bucket, 'versions')) full.push(bucket);

  if (!options.force && (workers.length > 0 || full.length > 0)) {
    throw new TeardownRefusedError([
      ...(workers.length > 0 ? [`${workers.length} worker instance(s) of deployment ${options.deployment} still exist (${workers.slice(0, 5).join(', ')}${workers.length > 5 ? ', ...' : ''}); stop the web tier and controllers and let them finish, or pass --force to terminate them`] : []),
      ...full.map((bucket) => `S3 bucket ${bucket} holds objects (uploaded images or results); pass --force to delete them with the bucket`),
    ]);
  }
  if (options.dryRun) {
    log(`would delete stack ${stackOpts.stackName} (${stack.StackStatus}) and its resources:`);
    for (const resource of resources) log(`  ${resource.LogicalResourceId} (${resource.ResourceType} ${resource.PhysicalResourceId})`);
    for (const bucket of full) log(`would first empty S3 bucket ${bucket} (--force)`);
    if (workers.length > 0) log(`would first terminate ${workers.length} worker instance(s) (--force)`);
    return;
  }
  if (workers.length > 0) {
    await terminateWorkers(clients.ec2, workers);
    log(`terminated ${workers.length} worker instance(s): ${workers.join(', ')}`);
  }
  for (const bucket of full) {
    const deleted = await emptyBucket(clients.s3, bucket, 'versions');
    log(`emptied S3 bucket ${bucket}: ${deleted} objects and versions deleted`);
  }
  await deleteStack(stack, stackOpts);
  log(`stack ${stackOpts.stackName} deleted`);
}
