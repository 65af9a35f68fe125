/**
 * A deployment of the distributed shape on the emulator: its buckets and queues made by the
 * real `provision`, which on endpoints that are not AWS makes the stack template's buckets
 * and queues directly (src/aws/direct.ts; workers are local processes), under names of its
 * own, so tests can share one emulator without seeing each other's messages.
 */
import { randomBytes } from 'node:crypto';
import { S3Client } from '@aws-sdk/client-s3';
import { SQSClient } from '@aws-sdk/client-sqs';
import { provision, teardown, type AwsCommandOptions } from '../../src/aws/index.js';
import type { Emulator } from './emulator.js';

export interface EmulatedDeployment {
  emulator: Emulator;
  settings: DeploymentSettings;
  /** The flags that point the service at this deployment. */
  args: string[];
  /** The environment its processes need: the emulator's dummy credentials and region. */
  env: Record<string, string>;
  teardown(): Promise<void>;
}

export type DeploymentSettings = Omit<AwsCommandOptions, 'log'>;

export function emulatedSettings(emulator: Emulator, name = `t${randomBytes(4).toString('hex')}`, deadlineSeconds = 30): DeploymentSettings {
  return {
    region: emulator.region,
    deployment: name,
    queuePrefix: `${name}-`,
    inputBucket: `${name}-input`,
    outputBucket: `${name}-output`,
    deadlineSeconds,
    endpoints: { s3: emulator.endpoint, s3ForcePathStyle: true, sqs: emulator.endpoint },
    skipEc2: true,
  };
}

export function emulatorEnv(emulator: Emulator): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: emulator.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: emulator.credentials.secretAccessKey,
    AWS_REGION: emulator.region,
  };
}

/** The flags that point `icaas start` (or web, controller) at a deployment on the emulator. */
export function deploymentArgs(emulator: Emulator, settings: DeploymentSettings): string[] {
  return [
    '--store', 's3', '--queue', 'sqs',
    '--s3-endpoint', emulator.endpoint, '--s3-path-style', '--sqs-endpoint', emulator.endpoint,
    '--region', emulator.region,
    '--deployment', settings.deployment,
    '--queue-prefix', settings.queuePrefix,
    '--input-bucket', settings.inputBucket,
    '--output-bucket', settings.outputBucket,
  ];
}

/** Provisions a fresh deployment on the emulator and says how to start the service on it. */
export async function provisionEmulated(emulator: Emulator, options: { name?: string; deadlineSeconds?: number } = {}): Promise<EmulatedDeployment> {
  const settings = emulatedSettings(emulator, options.name, options.deadlineSeconds);
  await withClients(emulator, (clients) => provision({ ...settings, clients, log: () => {} }));
  return {
    emulator,
    settings,
    args: deploymentArgs(emulator, settings),
    env: emulatorEnv(emulator),
    teardown: () => withClients(emulator, (clients) => teardown({ ...settings, clients, force: true, log: () => {} })),
  };
}

/** Clients with the emulator's dummy credentials: a test never signs with whatever the environment holds. */
export async function withClients<T>(emulator: Emulator, run: (clients: { s3: S3Client; sqs: SQSClient }) => Promise<T>): Promise<T> {
  const common = { region: emulator.region, credentials: emulator.credentials };
  const clients = {
    s3: new S3Client({ ...common, endpoint: emulator.endpoint, forcePathStyle: true }),
    sqs: new SQSClient({ ...common, endpoint: emulator.endpoint }),
  };
  try {
    return await run(clients);
  } finally {
    clients.s3.destroy();
    clients.sqs.destroy();
  }
}
