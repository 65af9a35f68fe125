/** `icaas aws provision|teardown [--dry-run] [--force]`: the command-line face of provision.ts. */
import { SQSClient } from '@aws-sdk/client-sqs';
import { configToEnv, type Config } from '../config.js';
import { AwsProvisionError, deploymentNames, provision, teardown, type AwsClients, type AwsCommandOptions, type AwsCommandResult } from './provision.js';

export * from './provision.js';

export interface AwsCommandArgs {
  config: Config;
  dryRun?: boolean;
  force?: boolean;
  /** Clients to use instead of ones made from the configuration (tests). */
  clients?: Partial<AwsClients>;
  skipEc2?: boolean;
}

/** The region the configuration names, else the one the SDK finds (environment, profile). */
async function resolveRegion(config: Config, clients: Partial<AwsClients> | undefined): Promise<string> {
  if (config.region) return config.region;
  const client = clients?.sqs ?? new SQSClient({});
  try {
    return (await client.config.region()) ?? '';
  } catch {
    return '';
  } finally {
    if (!clients?.sqs) client.destroy();
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

/** Runs the subcommand and returns the process exit code: 0 done, 1 failed or refused. */
export async function runAwsCommand(sub: 'provision' | 'teardown', args: AwsCommandArgs, log: (line: string) => void): Promise<number> {
  const { config } = args;
  const dryRun = args.dryRun ?? false;
  const force = args.force ?? false;
  const region = await resolveRegion(config, args.clients);
  if (!region) {
    log('icaas aws: no AWS region; set AWS_REGION, pass --region, or set one in the AWS profile (aws configure)');
    return 1;
  }
  const options: AwsCommandOptions = { ...settingsFromConfig(config, region), dryRun, force, log, skipEc2: args.skipEc2 ?? false, ...(args.clients ? { clients: args.clients } : {}) };
  log(`${dryRun ? 'dry run, no calls are made: ' : ''}${sub === 'provision' ? 'provisioning' : 'tearing down'} deployment "${config.deployment}" in ${region}`);
  let result: AwsCommandResult;
  try {
    result = sub === 'provision' ? await provision(options) : await teardown(options);
  } catch (error) {
    log(error instanceof AwsProvisionError ? error.message : `icaas aws ${sub} failed: ${(error as Error).message}`);
    return 1;
  }
  if (dryRun) {
    log(`dry run finished; run without --dry-run to make these calls`);
    return 0;
  }
  const verb = sub === 'provision' ? 'created or updated' : 'deleted';
  log(`done: ${result.changed.length} ${verb}, ${result.unchanged.length} unchanged, ${result.skipped.length} left alone`);
  if (sub === 'provision') {
    const names = deploymentNames(options);
    const hasTemplate = !options.skipEc2 && !result.skipped.includes(`EC2 launch template ${names.launchTemplate}`);
    const env = [
      'ICAAS_STORE=s3',
      'ICAAS_QUEUE=sqs',
      ...(config.s3Endpoint ? [`ICAAS_S3_ENDPOINT=${config.s3Endpoint}`] : []),
      ...(config.s3ForcePathStyle ? ['ICAAS_S3_PATH_STYLE=true'] : []),
      ...(config.sqsEndpoint ? [`ICAAS_SQS_ENDPOINT=${config.sqsEndpoint}`] : []),
      ...(hasTemplate ? ['ICAAS_COMPUTE=ec2', `ICAAS_EC2_LAUNCH_TEMPLATE=${names.launchTemplate}`] : []),
      `AWS_REGION=${region}`,
      `ICAAS_DEPLOYMENT=${config.deployment}`,
      `ICAAS_QUEUE_PREFIX=${config.queuePrefix}`,
      `ICAAS_INPUT_BUCKET=${config.inputBucket}`,
      `ICAAS_OUTPUT_BUCKET=${config.outputBucket}`,
    ];
    log(`start the service on these resources with:\n  ${env.join(' ')} icaas start`);
    if (!hasTemplate) log(options.skipEc2 ? '(workers run as local processes)' : '(workers run as local processes until a worker image is given: see docs/aws.md)');
  }
  return 0;
}
