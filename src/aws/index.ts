/** `icaas aws provision|teardown [--dry-run] [--force] [--skip-ec2]`: the command-line face of deploy.ts. */
import { CloudFormationClient } from '@aws-sdk/client-cloudformation';
import { configToEnv, type Config } from '../config.js';
import { provision, teardown, type AwsClients, type AwsCommandOptions, type ProvisionResult } from './deploy.js';
import { AwsProvisionError } from './errors.js';

export { provision, teardown, type AwsClients, type AwsCommandOptions, type ProvisionResult } from './deploy.js';
export { AwsProvisionError, TeardownRefusedError } from './errors.js';
export { deploymentNames, deploymentTemplate, stackParameters, workerPolicy, type DeploymentSettings } from './template.js';

export interface AwsCommandArgs {
  config: Config;
  dryRun?: boolean;
  force?: boolean;
  /** Clients to use instead of ones made from the configuration (tests). */
  clients?: Partial<AwsClients>;
  skipEc2?: boolean;
  /** Between looks at a change set or stack operation (tests shorten it). */
  pollMs?: number;
}

/** The region the configuration names, else the one the SDK finds (environment, profile). */
async function resolveRegion(config: Config, clients: Partial<AwsClients> | undefined): Promise<string> {
  if (config.region) return config.region;
  const client = clients?.cfn ?? new CloudFormationClient({});
  try {
    return (await client.config.region()) ?? '';
  } catch {
    return '';
  } finally {
    if (!clients?.cfn) client.destroy();
  }
}

export function settingsFromConfig(config: Config, region: string): Omit<AwsCommandOptions, 'log'> {
  return {
    region,
    deployment: config.deployment,
    queuePrefix: config.queuePrefix,
    inputBucket: config.inputBucket,
    outputBucket: config.outputBucket,
    deadlineSeconds: config.deadlineSeconds,
    ...(config.ec2ImageId ? { imageId: config.ec2ImageId } : {}),
    instanceType: config.ec2InstanceType,
    ...(config.ec2InstanceProfile ? { instanceProfile: config.ec2InstanceProfile } : {}),
    ...(config.ec2LaunchTemplate ? { launchTemplate: config.ec2LaunchTemplate } : {}),
    workerEnv: configToEnv(config),
    endpoints: {
      ...(config.s3Endpoint ? { s3: config.s3Endpoint } : {}),
      s3ForcePathStyle: config.s3ForcePathStyle,
      ...(config.sqsEndpoint ? { sqs: config.sqsEndpoint } : {}),
      ...(config.ec2Endpoint ? { ec2: config.ec2Endpoint } : {}),
    },
  };
}

/** The environment that starts the service on what provision made. */
function startEnvironment(config: Config, region: string, result: ProvisionResult): string[] {
  const { outputs } = result;
  return [
    'ICAAS_STORE=s3',
    'ICAAS_QUEUE=sqs',
    ...(config.s3Endpoint ? [`ICAAS_S3_ENDPOINT=${config.s3Endpoint}`] : []),
    ...(config.s3ForcePathStyle ? ['ICAAS_S3_PATH_STYLE=true'] : []),
    ...(config.sqsEndpoint ? [`ICAAS_SQS_ENDPOINT=${config.sqsEndpoint}`] : []),
    ...(outputs.WorkerLaunchTemplate ? ['ICAAS_COMPUTE=ec2', `ICAAS_EC2_LAUNCH_TEMPLATE=${outputs.WorkerLaunchTemplate}`] : []),
    `AWS_REGION=${region}`,
    `ICAAS_DEPLOYMENT=${config.deployment}`,
    `ICAAS_QUEUE_PREFIX=${outputs.QueuePrefix ?? config.queuePrefix}`,
    `ICAAS_INPUT_BUCKET=${outputs.InputBucket ?? config.inputBucket}`,
    `ICAAS_OUTPUT_BUCKET=${outputs.OutputBucket ?? config.outputBucket}`,
  ];
}

/** Runs the subcommand and returns the process exit code: 0 done, 1 failed or refused. */
export async function runAwsCommand(sub: 'provision' | 'teardown', args: AwsCommandArgs, log: (line: string) => void): Promise<number> {
  const { config } = args;
  const dryRun = args.dryRun ?? false;
  const region = await resolveRegion(config, args.clients);
  if (!region) {
    log('icaas aws: no AWS region; set AWS_REGION, pass --region, or set one in the AWS profile (aws configure)');
    return 1;
  }
  const options: AwsCommandOptions = {
    ...settingsFromConfig(config, region),
    dryRun,
    force: args.force ?? false,
    skipEc2: args.skipEc2 ?? false,
    log,
    ...(args.clients ? { clients: args.clients } : {}),
    ...(args.pollMs !== undefined ? { pollMs: args.pollMs } : {}),
  };
  log(`${dryRun ? 'dry run, nothing is changed: ' : ''}${sub === 'provision' ? 'provisioning' : 'tearing down'} deployment "${config.deployment}" in ${region}`);
  if (sub === 'teardown' && options.skipEc2) log('(--skip-ec2 changes nothing for teardown: it deletes all the deployment made)');
  try {
    if (sub === 'teardown') {
      await teardown(options);
      return 0;
    }
    const result = await provision(options);
    if (result.outcome === 'dry-run') {
      log('dry run finished; run without --dry-run to make these changes');
      return 0;
    }
    log(`start the service on these resources with:\n  ${startEnvironment(config, region, result).join(' ')} icaas start`);
    if (!result.outputs.WorkerLaunchTemplate) {
      log(options.skipEc2 || result.via === 'direct' ? '(workers run as local processes)' : '(workers run as local processes until a worker image is given: see docs/aws.md)');
    }
    return 0;
  } catch (error) {
    log(error instanceof AwsProvisionError ? error.message : `icaas aws ${sub} failed: ${(error as Error).message}`);
    return 1;
  }
}
