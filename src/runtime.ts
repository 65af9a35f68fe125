/**
 * Opens the adapters the configuration chooses. Store, queue and compute are chosen
 * independently; the cloud adapters are imported only when chosen, so the embedded
 * default never loads the AWS SDK (worker start-up time matters when scaling out).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Compute, InstanceDeadlines } from './compute/port.js';
import { configToEnv, type Config } from './config.js';
import type { Queue, QueueProvider } from './queue/port.js';
import type { ObjectStore } from './storage/port.js';

export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const cliScript = path.join(projectRoot, 'dist', 'src', 'cli.js');

export interface Runtime {
  config: Config;
  store: ObjectStore;
  queueProvider: QueueProvider;
  queues: { launch: Queue; monitor: Queue; output: Queue };
  compute: Compute;
  /** What is in use, for start-up messages. */
  describe(): string[];
  close(): Promise<void>;
}

export const QUEUE_NAMES = { launch: 'launch', monitor: 'monitor', output: 'output' } as const;

export async function openRuntime(config: Config): Promise<Runtime> {
  const store = await openStore(config);
  const queueProvider = await openQueues(config);
  const compute = await openCompute(config, store);
  const queues = {
    launch: queueProvider.queue(QUEUE_NAMES.launch),
    monitor: queueProvider.queue(QUEUE_NAMES.monitor),
    output: queueProvider.queue(QUEUE_NAMES.output),
  };
  return {
    config,
    store,
    queueProvider,
    queues,
    compute,
    describe: () => [
      `object store: ${config.store === 'fs' ? `files in ${path.join(config.data, 'buckets')}` : `S3${config.s3Endpoint ? ` at ${config.s3Endpoint}` : ''}`} (buckets ${config.inputBucket}, ${config.outputBucket})`,
      `queues: ${config.queue === 'sqlite' ? `SQLite file ${path.join(config.data, 'queues.db')}` : `SQS, prefix ${config.queuePrefix}`}`,
      `compute: ${config.compute === 'process' ? 'local worker processes' : `EC2 (${config.ec2LaunchTemplate ? `template ${config.ec2LaunchTemplate}` : config.ec2ImageId || 'no image configured'})`}, at most ${config.maxInstances}`,
    ],
    async close() {
      await Promise.allSettled([store.close(), queueProvider.close(), compute.close()]);
    },
  };
}

async function openStore(config: Config): Promise<ObjectStore> {
  if (config.store === 's3') {
    const { S3ObjectStore } = await import('./storage/s3.js');
    return new S3ObjectStore({
      ...(config.region ? { region: config.region } : {}),
      ...(config.s3Endpoint ? { endpoint: config.s3Endpoint } : {}),
      forcePathStyle: config.s3ForcePathStyle,
    });
  }
  const { FsObjectStore } = await import('./storage/fs.js');
  return new FsObjectStore(path.join(config.data, 'buckets'));
}

async function openQueues(config: Config): Promise<QueueProvider> {
  if (config.queue === 'sqs') {
    const { SqsQueueProvider } = await import('./queue/sqs.js');
    return new SqsQueueProvider({
      prefix: config.queuePrefix,
      ...(config.region ? { region: config.region } : {}),
      ...(config.sqsEndpoint ? { endpoint: config.sqsEndpoint } : {}),
    });
  }
  const { SqliteQueueProvider } = await import('./queue/sqlite.js');
  return new SqliteQueueProvider(path.join(config.data, 'queues.db'));
}

/** The deadlines by which every instance ends (see Compute.enforceDeadlines). */
function instanceDeadlines(config: Config, startTimeoutSeconds: number): InstanceDeadlines {
  const grace = config.instanceGraceSeconds;
  return {
    startTimeoutMs: startTimeoutSeconds * 1000,
    idleTimeoutMs: (config.idleWaitSeconds + grace) * 1000,
    busyTimeoutMs: (config.deadlineSeconds + grace) * 1000,
    exitTimeoutMs: grace * 1000,
  };
}

async function openCompute(config: Config, store: ObjectStore): Promise<Compute> {
  if (config.compute === 'ec2') {
    const { Ec2Compute, workerUserData } = await import('./compute/ec2.js');
    const { LaunchLease } = await import('./controller/lease.js');
    return new Ec2Compute({
      lease: new LaunchLease({ store, bucket: config.outputBucket }),
      ...instanceDeadlines(config, config.ec2StartTimeoutSeconds),
      heartbeats: { store, bucket: config.outputBucket },
      ...(config.ec2Endpoint ? { endpoint: config.ec2Endpoint } : {}),
      ...(config.region ? { region: config.region } : {}),
      maxInstances: config.maxInstances,
      ...(config.capacity > 0 ? { capacity: config.capacity } : {}),
      deployment: config.deployment,
      ...(config.ec2LaunchTemplate ? { launchTemplate: config.ec2LaunchTemplate } : {}),
      ...(config.ec2ImageId ? { imageId: config.ec2ImageId } : {}),
      instanceType: config.ec2InstanceType,
      ...(config.ec2SubnetId ? { subnetId: config.ec2SubnetId } : {}),
      securityGroupIds: config.ec2SecurityGroupIds,
      ...(config.ec2InstanceProfile ? { instanceProfile: config.ec2InstanceProfile } : {}),
      userData: workerUserData({ configEnv: workerEnv(config) }),
    });
  }
  const { ProcessCompute } = await import('./compute/process.js');
  return new ProcessCompute({
    ...instanceDeadlines(config, config.startTimeoutSeconds),
    registryPath: path.join(config.data, 'instances.db'),
    maxInstances: config.maxInstances,
    ...(config.capacity > 0 ? { capacity: config.capacity } : {}),
    workerCommand: { script: cliScript, args: ['worker'] },
    workerEnv: withoutEmpty({ ...workerEnv(config), ...awsEnvForLocalWorkers(config), ...testFaultEnv() }),
    logDir: path.join(config.data, 'logs'),
  });
}

/** The configuration a worker needs, as environment variables. */
export function workerEnv(config: Config): Record<string, string> {
  return configToEnv(config);
}

/**
 * What the AWS SDK in a local worker needs to reach S3 or SQS as this process does:
 * credentials (static, profile, container or web identity), region and the SDK's own
 * endpoint settings. Local workers run as this user on this machine, so passing them on
 * exposes nothing new; EC2 workers never get them (they use their instance role).
 */
export const AWS_WORKER_VARIABLES = [
  'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_CREDENTIAL_EXPIRATION',
  'AWS_PROFILE', 'AWS_REGION', 'AWS_DEFAULT_REGION', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE',
  'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI', 'AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_AUTHORIZATION_TOKEN', 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE',
  'AWS_WEB_IDENTITY_TOKEN_FILE', 'AWS_ROLE_ARN', 'AWS_ROLE_SESSION_NAME', 'AWS_STS_REGIONAL_ENDPOINTS',
  'AWS_EC2_METADATA_DISABLED', 'AWS_EC2_METADATA_SERVICE_ENDPOINT', 'AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE',
  'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL_SQS', 'AWS_USE_FIPS_ENDPOINT', 'AWS_USE_DUALSTACK_ENDPOINT', 'AWS_CA_BUNDLE',
] as const;

/** The AWS variables of this process, for local workers of a configuration that uses S3 or SQS. */
export function awsEnvForLocalWorkers(config: Config, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  if (config.store !== 's3' && config.queue !== 'sqs') return {};
  const passed: Record<string, string> = {};
  for (const name of AWS_WORKER_VARIABLES) {
    const value = env[name];
    if (value) passed[name] = value;
  }
  // The region as this process resolves it (the SQS adapter falls back to
  // AWS_DEFAULT_REGION; the SDK itself reads only AWS_REGION).
  const region = config.region || env.AWS_REGION || env.AWS_DEFAULT_REGION;
  if (region) passed.AWS_REGION = region;
  return passed;
}

/**
 * An unset option is an empty variable in configToEnv; the configuration reads that as
 * unset, but the AWS SDK takes an empty AWS_REGION for a region and fails on it.
 */
function withoutEmpty(env: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(env).filter(([, value]) => value !== ''));
}

/** Fault-injection switches pass through to workers only when a test set them. */
function testFaultEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ['ICAAS_TEST_HANG_ON', 'ICAAS_TEST_CRASH_ON', 'ICAAS_TEST_DELAY_MS', 'ICAAS_TEST_CLOCK_FILE']) {
    const value = process.env[name];
    if (value) env[name] = value;
  }
  return env;
}
