/**
 * Compute adapter on Amazon EC2: each worker instance is an EC2 instance that runs
 * `icaas worker` from its user data and shuts itself down when the worker exits on idle.
 *
 * Instances are found by tag (`icaas:deployment` and `icaas:role`), never by a registry
 * of our own, so every process of the deployment sees the same instances and a restarted
 * controller picks up those already running.
 *
 * What EC2 can and cannot tell us:
 * - `pending` is 'starting'; `stopping`, `stopped`, `shutting-down` are 'stopped'.
 * - `running` says only that the machine is up, not that the worker runs. Workers
 *   therefore report themselves (report()) in a heartbeat object `instances/<id>.json` in
 *   the output bucket, which they may already write (they need no new permission, and the
 *   heartbeat costs one S3 PUT per state change, about two per image). A running instance
 *   without a heartbeat is 'starting'; with one it is what the worker last said: idle,
 *   busy (with the image) or stopped (exited, the machine shutting down).
 *   Without a heartbeat store (e.g. in tests of the launch path alone) running means 'idle'.
 * - DescribeInstances is eventually consistent: an instance may be missing from it for a
 *   few seconds after RunInstances returned. Instances this process launched are therefore
 *   remembered and counted (as 'starting') until DescribeInstances shows them or a grace
 *   period passes, so two quick ticks cannot together start more than the maximum.
 *
 * Deadlines (enforceDeadlines): an instance pending, or running without a heartbeat, for
 * longer than the start timeout; idle, busy or exited for longer than its timeout by its
 * heartbeat; or whose terminate failed earlier, is terminated. A failed terminate is kept
 * and retried on every sweep until EC2 shows the instance shutting down or gone; until
 * then the instance counts against the maximum, as any pending or running one does.
 *
 * The maximum holds across concurrent start() calls in one process (they are serialized),
 * and across processes through the launch lease (src/controller/lease.ts): start()
 * launches only while this process holds it with at least half its duration left, and
 * counts the launches the lease records that DescribeInstances does not show yet, so a
 * controller that takes over from another counts that one's last launches too.
 */
import { randomUUID } from 'node:crypto';
import {
  DescribeInstancesCommand,
  EC2Client,
  RunInstancesCommand,
  TerminateInstancesCommand,
  type EC2ClientConfig,
  type Instance,
  type _InstanceType,
  type InstanceStateName,
  type RunInstancesCommandInput,
  type Tag,
} from '@aws-sdk/client-ec2';
import type { LaunchLease } from '../controller/lease.js';
import type { ObjectStore } from '../storage/port.js';
import { describeDeadline, WORKER_PROCESS_ENV, type Compute, type DeadlineReason, type DeadlineSweep, type InstanceDeadlines, type InstanceInfo, type InstanceReport, type InstanceState } from './port.js';
import { awsRetry } from '../backoff.js';

export const TAG_DEPLOYMENT = 'icaas:deployment';
export const TAG_ROLE = 'icaas:role';
export const WORKER_ROLE = 'worker';

/** Name of the launch template, IAM role and instance profile `icaas aws provision` creates. */
export function workerResourceName(deployment: string): string {
  return `${deployment}-worker`;
}

/** The tags every worker instance (and its volumes) carries. */
export function workerTags(deployment: string): Tag[] {
  return [
    { Key: TAG_DEPLOYMENT, Value: deployment },
    { Key: TAG_ROLE, Value: WORKER_ROLE },
    { Key: 'Name', Value: workerResourceName(deployment) },
  ];
}

export interface Ec2ComputeOptions extends InstanceDeadlines {
  region?: string;
  /** A ready client (shared or mocked); the adapter then leaves destroying it to the caller. */
  client?: EC2Client;
  /** For an EC2-compatible endpoint (tests); leave unset for AWS. */
  endpoint?: string;
  /**
   * Where workers report themselves: `instances/<id>.json` in this bucket. Without it
   * report() is a no-op and running instances count as idle.
   */
  heartbeats?: { store: ObjectStore; bucket: string };
  /**
   * Serialises launches across processes. Without it the maximum holds only within this
   * process (one launch controller per deployment).
   */
  lease?: LaunchLease;
  maxInstances: number;
  /** Instances that can usefully run at once; the maximum when absent (each has its own cores). */
  capacity?: number;
  /** Tags the instances, so several deployments can share an account. */
  deployment: string;
  /**
   * Launch template name or id (`lt-...`). It supplies the image, instance type and
   * whatever else it holds; the options below that are set override it. When neither a
   * template nor an image id is given, the template `icaas aws provision` creates
   * (`<deployment>-worker`) is used.
   */
  launchTemplate?: string;
  /** Default `$Default`, the version provisioning keeps current. */
  launchTemplateVersion?: string;
  /** AMI for workers, used when there is no launch template. */
  imageId?: string;
  /** Used with imageId; a launch template carries its own. Default t3.small. */
  instanceType?: string;
  subnetId?: string;
  securityGroupIds?: string[];
  /** IAM instance profile name, or its ARN. */
  instanceProfile?: string;
  /** The cloud-init script each worker runs (see workerUserData), or a function building it. */
  userData: string | (() => string);
  /**
   * How long an instance this process launched counts as starting while DescribeInstances
   * does not show it yet. Default 60 s.
   */
  launchGraceMs?: number;
}

/** EC2 allows 16 KB of user data before base64. */
const MAX_USER_DATA_BYTES = 16 * 1024;
const ACTIVE_STATES: InstanceStateName[] = ['pending', 'running', 'stopping'];
const LISTED_STATES: InstanceStateName[] = ['pending', 'running', 'stopping', 'stopped', 'shutting-down'];
const SWEPT_STATES: InstanceStateName[] = ['pending', 'running', 'stopping', 'shutting-down', 'terminated'];
const ALL_STATES: InstanceStateName[] = [...LISTED_STATES, 'terminated'];
/** Default start timeout: boot, cloud-init and loading the model take minutes at worst. */
const DEFAULT_START_TIMEOUT_MS = 600_000;
/** Heartbeats read within this are reused, so one controller tick reads each once. */
const HEARTBEAT_REUSE_MS = 1000;
const HEARTBEAT_READS_AT_ONCE = 16;

export function heartbeatKey(instanceId: string): string {
  return `instances/${instanceId}.json`;
}

/** What a worker last said about itself, and when (the object's time, by the store's clock). */
interface Heartbeat {
  state: Exclude<InstanceState, 'starting'>;
  imageId: string | null;
  processed: number;
  serviceMs?: number;
  at: number;
}

/** The heartbeat could not be read: no deadline may be judged from it. */
const UNKNOWN = 'unknown';
type HeartbeatReading = Heartbeat | typeof UNKNOWN;

export class Ec2ComputeError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'Ec2ComputeError';
  }
}

/** A terminate refused for good: the instance is not one of this deployment's workers. */
class Ec2RefusedError extends Ec2ComputeError {}

/** An EC2 worker boots, installs nothing (the AMI holds everything) and loads the model: about 40 s. */
const EC2_STARTUP_PRIOR_MS = 40_000;

export class Ec2Compute implements Compute {
  readonly maxInstances: number;
  readonly capacity: number;
  readonly startupPriorMs = EC2_STARTUP_PRIOR_MS;
  readonly startCostMs = 0;
  readonly deployment: string;
  private readonly client: EC2Client;
  private readonly ownsClient: boolean;
  private readonly options: Ec2ComputeOptions;
  private readonly launchGraceMs: number;
  /** Instances launched here that DescribeInstances has not shown yet: id to launch time. */
  private readonly launched = new Map<string, number>();
  /** Instances whose terminate failed: id to the deadline reason; retried by every sweep. */
  private readonly terminating = new Map<string, DeadlineReason>();
  private readonly heartbeatCache = new Map<string, { heartbeat: Heartbeat | null; readAt: number }>();
  /** Terminated instances whose heartbeat object was deleted already. */
  private readonly heartbeatsRemoved = new Set<string>();
  private readonly deadlines: InstanceDeadlines & { startTimeoutMs: number };
  private startChain: Promise<unknown> = Promise.resolve();

  constructor(options: Ec2ComputeOptions) {
    if (!Number.isInteger(options.maxInstances) || options.maxInstances < 0) {
      throw new Ec2ComputeError(`maxInstances must be a whole number >= 0, got ${options.maxInstances}`);
    }
    if (!options.deployment) throw new Ec2ComputeError('the EC2 compute adapter needs a deployment name to tag and find its instances');
    this.options = options;
    this.maxInstances = options.maxInstances;
    this.capacity = Math.min(options.maxInstances, options.capacity ?? options.maxInstances);
    this.deployment = options.deployment;
    this.launchGraceMs = options.launchGraceMs ?? 60_000;
    this.deadlines = { ...options, startTimeoutMs: options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS };
    if (options.client) {
      this.client = options.client;
      this.ownsClient = false;
    } else {
      const config: EC2ClientConfig = { ...awsRetry() };
      const region = options.region || process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION;
      if (region) config.region = region;
      if (options.endpoint) config.endpoint = options.endpoint;
      this.client = new EC2Client(config);
      this.ownsClient = true;
    }
  }

  start(n: number): Promise<string[]> {
    if (!Number.isInteger(n) || n < 0) return Promise.reject(new Ec2ComputeError(`cannot start ${n} instances: need a whole number`));
    if (n === 0) return Promise.resolve([]);
    // Serialized: each start counts the instances the previous one launched.
    const run = this.startChain.then(() => this.startNow(n));
    this.startChain = run.catch(() => {});
    return run;
  }

  private async startNow(n: number): Promise<string[]> {
    const { lease } = this.options;
    const hold = lease ? await lease.acquire() : null;
    // A launch (a describe, then RunInstances) must finish well within the lease, or a
    // controller taking over could count before this launch shows.
    const leaseLeft = () => (hold ? hold.validUntil - Date.now() : Infinity);
    if (lease && (!hold || leaseLeft() < lease.durationMs / 2)) return [];
    for (const launch of hold?.launches ?? []) if (!this.launched.has(launch.id)) this.launched.set(launch.id, launch.at);
    // Every state, so that a launch EC2 shows ended already is not counted as unseen.
    const described = await this.describe(ALL_STATES);
    const instances = described.filter((instance) => ACTIVE_STATES.includes(instance.State!.Name!));
    const active = instances.length + this.unseenLaunches(described).length;
    const count = Math.max(0, Math.min(n, this.maxInstances - active));
    if (count === 0) return [];
    if (lease && leaseLeft() < lease.durationMs / 3) return [];
    const input = this.runInstancesInput(count);
    let response;
    try {
      response = await this.client.send(new RunInstancesCommand(input));
    } catch (error) {
      throw describeRunError(error, input);
    }
    const now = Date.now();
    const ids = (response.Instances ?? []).map((instance) => instance.InstanceId).filter((id): id is string => Boolean(id));
    for (const id of ids) this.launched.set(id, now);
    // Recorded for a controller that takes over; if the lease was lost meanwhile, the
    // taker-over waited for it to expire, by which time EC2 shows these instances.
    await lease?.recordLaunches(ids.map((id) => ({ id, at: now }))).catch(() => false);
    return ids;
  }

  /** @internal The RunInstances request for `count` workers (exported for provisioning's dry run). */
  runInstancesInput(count: number): RunInstancesCommandInput {
    const { launchTemplate, imageId, subnetId, securityGroupIds, instanceProfile } = this.options;
    const template = launchTemplate || (imageId ? undefined : workerResourceName(this.deployment));
    const tags = workerTags(this.deployment);
    return {
      MinCount: 1,
      MaxCount: count,
      // Idempotency: if the SDK retries this request after a timeout, EC2 returns the
      // instances of the first attempt instead of launching a second set.
      ClientToken: randomUUID(),
      ...(template
        ? {
            LaunchTemplate: {
              ...(/^lt-[0-9a-f]+$/.test(template) ? { LaunchTemplateId: template } : { LaunchTemplateName: template }),
              Version: this.options.launchTemplateVersion ?? '$Default',
            },
          }
        : { ImageId: imageId, InstanceType: (this.options.instanceType || 't3.small') as _InstanceType }),
      ...(subnetId ? { SubnetId: subnetId } : {}),
      ...(securityGroupIds && securityGroupIds.length > 0 ? { SecurityGroupIds: securityGroupIds } : {}),
      ...(instanceProfile ? { IamInstanceProfile: instanceProfile.startsWith('arn:') ? { Arn: instanceProfile } : { Name: instanceProfile } } : {}),
      UserData: encodeUserData(typeof this.options.userData === 'function' ? this.options.userData() : this.options.userData),
      // The worker ends by shutting the machine down; this turns that into termination.
      InstanceInitiatedShutdownBehavior: 'terminate',
      MetadataOptions: { HttpTokens: 'required', HttpEndpoint: 'enabled' },
      TagSpecifications: [
        { ResourceType: 'instance', Tags: tags },
        { ResourceType: 'volume', Tags: tags },
      ],
    };
  }

  async list(): Promise<InstanceInfo[]> {
    const instances = await this.describe(LISTED_STATES);
    const heartbeats = await this.readHeartbeats(instances);
    const listed: InstanceInfo[] = instances.map((instance) => {
      const reading = heartbeats.get(instance.InstanceId!);
      const heartbeat = reading === UNKNOWN ? undefined : reading;
      return {
        id: instance.InstanceId!,
        state: this.stateOf(instance.State?.Name, reading),
        startedAt: instance.LaunchTime?.getTime() ?? Date.now(),
        ...(heartbeat?.state === 'busy' && heartbeat.imageId ? { imageId: heartbeat.imageId } : {}),
        ...(heartbeat ? { processed: heartbeat.processed } : {}),
        ...(heartbeat?.serviceMs !== undefined ? { serviceMs: heartbeat.serviceMs } : {}),
      };
    });
    for (const [id, launchedAt] of this.unseenLaunches(instances)) listed.push({ id, state: 'starting', startedAt: launchedAt });
    return listed.sort((a, b) => a.startedAt - b.startedAt || a.id.localeCompare(b.id));
  }

  /**
   * Terminates one of this deployment's workers. A failure is remembered: the instance
   * still counts, and every enforceDeadlines tries again until EC2 confirms it.
   */
  async terminate(id: string): Promise<void> {
    try {
      await this.terminateNow(id);
      this.terminating.delete(id);
    } catch (error) {
      // A refusal (not ours, not an instance id) is final; anything else is tried again.
      if (!(error instanceof Ec2RefusedError) && !this.terminating.has(id)) this.terminating.set(id, 'terminate-retry');
      throw error;
    }
  }

  private async terminateNow(id: string): Promise<void> {
    if (!this.launched.has(id)) {
      let instance: Instance | undefined;
      try {
        const response = await this.client.send(new DescribeInstancesCommand({ InstanceIds: [id] }));
        instance = response.Reservations?.flatMap((reservation) => reservation.Instances ?? []).find((candidate) => candidate.InstanceId === id);
      } catch (error) {
        // Terminated instances drop out of EC2's answers after about an hour: gone is done.
        if (errorName(error) === 'InvalidInstanceID.NotFound') return;
        if (errorName(error) === 'InvalidInstanceID.Malformed') throw new Ec2RefusedError(`cannot terminate ${JSON.stringify(id)}: not an EC2 instance id`, { cause: error });
        throw describeEc2Error(error, `look up instance ${id}`);
      }
      if (!instance) return;
      if (!this.isOurs(instance)) {
        const tags = (instance.Tags ?? []).filter((tag) => tag.Key?.startsWith('icaas:')).map((tag) => `${tag.Key}=${tag.Value}`);
        throw new Ec2RefusedError(
          `refusing to terminate ${id}: it is not a worker of deployment "${this.deployment}" (${tags.length > 0 ? `its tags: ${tags.join(', ')}` : 'it has no icaas tags'})`,
        );
      }
      const state = instance.State?.Name;
      if (state === 'shutting-down' || state === 'terminated') return;
    }
    try {
      await this.client.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
    } catch (error) {
      if (errorName(error) === 'InvalidInstanceID.NotFound') return;
      throw describeEc2Error(error, `terminate instance ${id}`);
    }
  }

  /** EC2 keeps a worker's output in its console, which only the AWS API reads back. */
  async startFailure(id: string): Promise<string | undefined> {
    return `see the console output of instance ${id} (aws ec2 get-console-output --instance-id ${id})`;
  }

  /** Writes the worker's heartbeat (see the module comment); a no-op without a heartbeat store. */
  async report(id: string, report: InstanceReport): Promise<void> {
    if (!this.options.heartbeats) return;
    const { store, bucket } = this.options.heartbeats;
    const body = { state: report.state, imageId: report.imageId ?? null, processed: report.processed ?? 0, ...(report.serviceMs !== undefined ? { serviceMs: report.serviceMs } : {}) };
    await store.put(bucket, heartbeatKey(id), Buffer.from(JSON.stringify(body)), { contentType: 'application/json' });
  }

  async enforceDeadlines(): Promise<DeadlineSweep> {
    const now = Date.now();
    const instances = await this.describe(SWEPT_STATES);
    const live = instances.filter((instance) => ACTIVE_STATES.includes(instance.State!.Name!));
    const heartbeats = await this.readHeartbeats(live);
    const due = new Map<string, DeadlineReason>();
    for (const instance of live) {
      const reason = this.overdue(instance, heartbeats.get(instance.InstanceId!), now);
      if (reason) due.set(instance.InstanceId!, reason);
    }
    // A failed terminate is retried while EC2 still shows the instance live, or does not show
    // a fresh launch yet; shutting-down, terminated or gone is the confirmation.
    const liveIds = new Set(live.map((instance) => instance.InstanceId!));
    const unseen = new Set(this.unseenLaunches(instances).map(([id]) => id));
    for (const [id, reason] of this.terminating) {
      if (liveIds.has(id) || unseen.has(id)) due.set(id, due.get(id) ?? reason);
      else this.terminating.delete(id);
    }
    const sweep: DeadlineSweep = { terminated: [], failed: [] };
    for (const [id, reason] of due) {
      const detail = describeDeadline(reason, this.deadlines);
      try {
        await this.terminate(id);
        sweep.terminated.push({ id, reason, detail });
      } catch (error) {
        sweep.failed.push({ id, reason, detail, error: (error as Error).message });
      }
    }
    await this.removeHeartbeats(instances.filter((instance) => !ACTIVE_STATES.includes(instance.State!.Name!)));
    return sweep;
  }

  /** Which deadline a live instance has overrun, if any. */
  private overdue(instance: Instance, heartbeat: HeartbeatReading | undefined, now: number): DeadlineReason | null {
    const { startTimeoutMs, idleTimeoutMs, busyTimeoutMs, exitTimeoutMs } = this.deadlines;
    const launchedAt = instance.LaunchTime?.getTime() ?? now;
    const state = instance.State?.Name;
    if (state === 'pending') return now - launchedAt > startTimeoutMs ? 'start-timeout' : null;
    if (state !== 'running' || !this.options.heartbeats || heartbeat === UNKNOWN) return null;
    if (!heartbeat) return now - launchedAt > startTimeoutMs ? 'start-timeout' : null;
    const since = now - heartbeat.at;
    const limits = { idle: [idleTimeoutMs, 'idle-timeout'], busy: [busyTimeoutMs, 'busy-timeout'], stopped: [exitTimeoutMs, 'exit-timeout'] } as const;
    const [limit, reason] = limits[heartbeat.state];
    return limit !== undefined && since > limit ? reason : null;
  }

  /** The heartbeats of the running ones among these instances (none without a heartbeat store). */
  private async readHeartbeats(instances: Instance[]): Promise<Map<string, HeartbeatReading>> {
    const found = new Map<string, HeartbeatReading>();
    if (!this.options.heartbeats) return found;
    const { store, bucket } = this.options.heartbeats;
    const now = Date.now();
    const running = instances.filter((instance) => instance.State?.Name === 'running').map((instance) => instance.InstanceId!);
    await forEachLimited(running, HEARTBEAT_READS_AT_ONCE, async (id) => {
      let cached = this.heartbeatCache.get(id);
      if (!cached || now - cached.readAt > HEARTBEAT_REUSE_MS) {
        let object;
        try {
          object = await store.get(bucket, heartbeatKey(id));
        } catch {
          // Unknown is not absent: a store outage must not look like workers that never started.
          found.set(id, UNKNOWN);
          return;
        }
        cached = { heartbeat: object ? parseHeartbeat(object.body, object.lastModified) : null, readAt: now };
        this.heartbeatCache.set(id, cached);
      }
      if (cached.heartbeat) found.set(id, cached.heartbeat);
    });
    for (const id of this.heartbeatCache.keys()) if (!running.includes(id)) this.heartbeatCache.delete(id);
    return found;
  }

  /** Heartbeats of instances that are gone are deleted once, so the bucket does not fill up. */
  private async removeHeartbeats(ended: Instance[]): Promise<void> {
    if (!this.options.heartbeats) return;
    const { store, bucket } = this.options.heartbeats;
    const ids = ended.map((instance) => instance.InstanceId!).filter((id) => !this.heartbeatsRemoved.has(id));
    await forEachLimited(ids, HEARTBEAT_READS_AT_ONCE, async (id) => {
      try {
        await store.delete(bucket, heartbeatKey(id));
        this.heartbeatsRemoved.add(id);
      } catch {
        // Housekeeping: the next sweep tries again.
      }
    });
    // Terminated instances drop out of EC2's answers after about an hour.
    const seen = new Set(ended.map((instance) => instance.InstanceId));
    for (const id of this.heartbeatsRemoved) if (!seen.has(id)) this.heartbeatsRemoved.delete(id);
  }

  private stateOf(state: InstanceStateName | string | undefined, heartbeat: HeartbeatReading | undefined): InstanceState {
    switch (state) {
      case 'pending':
        return 'starting';
      case 'running':
        if (!this.options.heartbeats || heartbeat === UNKNOWN) return 'idle';
        return heartbeat?.state ?? 'starting';
      default:
        return 'stopped';
    }
  }

  async close(): Promise<void> {
    // Released so that another controller may launch at once instead of after the expiry.
    await this.options.lease?.release().catch(() => {});
    if (this.ownsClient) this.client.destroy();
  }

  private isOurs(instance: Instance): boolean {
    const tags = new Map((instance.Tags ?? []).map((tag) => [tag.Key, tag.Value]));
    return tags.get(TAG_DEPLOYMENT) === this.deployment && tags.get(TAG_ROLE) === WORKER_ROLE;
  }

  /** This deployment's workers in the given states, across every page. */
  private async describe(states: InstanceStateName[]): Promise<Instance[]> {
    const instances: Instance[] = [];
    let nextToken: string | undefined;
    do {
      let response;
      try {
        response = await this.client.send(
          new DescribeInstancesCommand({
            Filters: [
              { Name: `tag:${TAG_DEPLOYMENT}`, Values: [this.deployment] },
              { Name: `tag:${TAG_ROLE}`, Values: [WORKER_ROLE] },
              { Name: 'instance-state-name', Values: states },
            ],
            MaxResults: 1000,
            ...(nextToken ? { NextToken: nextToken } : {}),
          }),
        );
      } catch (error) {
        throw describeEc2Error(error, `list the worker instances of deployment "${this.deployment}"`);
      }
      for (const reservation of response.Reservations ?? []) {
        for (const instance of reservation.Instances ?? []) if (instance.InstanceId) instances.push(instance);
      }
      nextToken = response.NextToken || undefined;
    } while (nextToken);
    return instances;
  }

  /**
   * Launches that DescribeInstances did not show, within the grace period. Those it shows
   * (in any state asked about) or that are older than the grace are forgotten.
   */
  private unseenLaunches(seen: Instance[]): [string, number][] {
    const seenIds = new Set(seen.map((instance) => instance.InstanceId));
    const cutoff = Date.now() - this.launchGraceMs;
    const unseen: [string, number][] = [];
    for (const [id, launchedAt] of this.launched) {
      if (seenIds.has(id) || launchedAt < cutoff) this.launched.delete(id);
      else unseen.push([id, launchedAt]);
    }
    return unseen;
  }
}

/** A heartbeat as a worker wrote it; anything else reads as no heartbeat. */
function parseHeartbeat(body: Buffer, lastModified: Date): Heartbeat | null {
  try {
    const value = JSON.parse(body.toString('utf8')) as Partial<Heartbeat>;
    if (value.state !== 'idle' && value.state !== 'busy' && value.state !== 'stopped') return null;
    return {
      state: value.state,
      imageId: typeof value.imageId === 'string' ? value.imageId : null,
      processed: Number.isInteger(value.processed) ? value.processed! : 0,
      ...(typeof value.serviceMs === 'number' && Number.isFinite(value.serviceMs) && value.serviceMs >= 0 ? { serviceMs: value.serviceMs } : {}),
      at: lastModified.getTime(),
    };
  } catch {
    return null;
  }
}

async function forEachLimited<T>(items: T[], limit: number, run: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await run(items[next++]!);
  });
  await Promise.all(lanes);
}

export function encodeUserData(script: string): string {
  const bytes = Buffer.byteLength(script);
  if (bytes > MAX_USER_DATA_BYTES) {
    throw new Ec2ComputeError(`worker user data is ${bytes} bytes; EC2 allows ${MAX_USER_DATA_BYTES}. Put less configuration in the environment (e.g. use a config file baked into the image)`);
  }
  return Buffer.from(script).toString('base64');
}

function errorName(error: unknown): string {
  const { name, Code } = (error ?? {}) as { name?: unknown; Code?: unknown };
  return typeof Code === 'string' ? Code : typeof name === 'string' ? name : '';
}

function describeEc2Error(error: unknown, what: string): Ec2ComputeError {
  const name = errorName(error);
  const detail = error instanceof Error ? error.message : String(error);
  if (name === 'UnauthorizedOperation' || name === 'AccessDenied' || name === 'AccessDeniedException') {
    return new Ec2ComputeError(`not allowed to ${what}: ${detail}`, { cause: error });
  }
  if (['AuthFailure', 'InvalidClientTokenId', 'SignatureDoesNotMatch', 'ExpiredToken', 'CredentialsProviderError'].includes(name)) {
    return new Ec2ComputeError(`AWS rejected the credentials used to ${what}: ${detail} (run \`aws configure\` or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)`, { cause: error });
  }
  return new Ec2ComputeError(`could not ${what}: ${detail}`, { cause: error });
}

function describeRunError(error: unknown, input: RunInstancesCommandInput): Ec2ComputeError {
  const name = errorName(error);
  const detail = error instanceof Error ? error.message : String(error);
  const template = input.LaunchTemplate?.LaunchTemplateName ?? input.LaunchTemplate?.LaunchTemplateId;
  if (name.startsWith('InvalidLaunchTemplateName.') || name.startsWith('InvalidLaunchTemplateId.')) {
    return new Ec2ComputeError(`EC2 launch template ${template} was not found: run \`icaas aws provision\`, or set --ec2-launch-template (or --ec2-image-id) (${detail})`, { cause: error });
  }
  if (name.startsWith('InvalidAMIID.')) {
    return new Ec2ComputeError(`worker image ${input.ImageId ?? '(from the launch template)'} was not found in this region: ${detail}`, { cause: error });
  }
  if (name === 'InvalidParameterValue' && /iamInstanceProfile/i.test(detail)) {
    return new Ec2ComputeError(`EC2 does not accept the instance profile (a newly created one takes a few seconds to become usable; check --ec2-instance-profile): ${detail}`, { cause: error });
  }
  if (['InstanceLimitExceeded', 'VcpuLimitExceeded', 'InsufficientInstanceCapacity', 'InsufficientFreeAddressesInSubnet'].includes(name)) {
    return new Ec2ComputeError(`EC2 could not start more workers now (${name}): ${detail}`, { cause: error });
  }
  if (name === 'UnauthorizedOperation') {
    return new Ec2ComputeError(`not allowed to start EC2 workers (the credentials need ec2:RunInstances, ec2:CreateTags and iam:PassRole on the worker role): ${detail}`, { cause: error });
  }
  return describeEc2Error(error, 'start EC2 workers');
}

/**
 * Variables that never go into user data: secrets (user data is readable by anyone who may
 * describe the instance; workers get AWS credentials from their instance role) and
 * settings of the machine that launched the worker, which mean nothing on the worker.
 */
const LEFT_OUT_ENV = new Set(['ICAAS_API_KEYS', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE', 'HOST', 'PORT', 'ICAAS_DATA']);

export interface WorkerUserDataOptions {
  /** The worker's configuration as environment variables (see configToEnv). */
  configEnv: Record<string, string>;
  /** Shell commands run before the worker, e.g. to install or update the project. */
  installCommand?: string;
  /** Default `icaas worker`: the image must have `icaas` on the PATH. */
  workerCommand?: string;
  /** Runs the worker as this user when it exists on the image (default `icaas`), else as root. */
  user?: string;
}

/**
 * The cloud-init script a worker instance runs on boot: it starts `icaas worker` with its
 * configuration as environment and powers the machine off when the worker exits, which
 * (with shutdown behaviour 'terminate') ends the instance. Output goes to the cloud-init
 * log (/var/log/cloud-init-output.log) and the instance console.
 */
export function workerUserData(options: WorkerUserDataOptions): string {
  const exports: string[] = [];
  for (const [name, value] of Object.entries({ ...WORKER_PROCESS_ENV, ...options.configEnv }).sort(([a], [b]) => a.localeCompare(b))) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Ec2ComputeError(`cannot pass ${JSON.stringify(name)} to workers: not an environment variable name`);
    if (value === '' || LEFT_OUT_ENV.has(name)) continue;
    exports.push(`export ${name}=${shellQuote(value)}`);
  }
  const user = options.user ?? 'icaas';
  const lines = [
    '#!/bin/bash',
    '# icaas worker instance: runs one worker until the launch queue is empty, then powers',
    '# off; the instance was launched to terminate on shutdown, so that ends it.',
    'set -u',
    ...exports,
    '',
    '# The region, when the configuration leaves it to the SDK, is the instance\'s own.',
    'if [ -z "${AWS_REGION:-}" ]; then',
    '  imds_token=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" http://169.254.169.254/latest/api/token)',
    '  export AWS_REGION=$(curl -sf -H "X-aws-ec2-metadata-token: $imds_token" http://169.254.169.254/latest/meta-data/placement/region)',
    'fi',
    '',
  ];
  if (options.installCommand) {
    lines.push(
      'install_worker() {',
      ...options.installCommand.split('\n').map((line) => `  ${line}`),
      '}',
      'if ! install_worker; then',
      '  echo "icaas: installing the worker failed; shutting down" >&2',
      '  shutdown -h now',
      '  exit 1',
      'fi',
      '',
    );
  }
  lines.push(
    `if id -u ${shellQuote(user)} >/dev/null 2>&1; then`,
    `  runuser -u ${shellQuote(user)} -- ${options.workerCommand ?? 'icaas worker'}`,
    'else',
    `  ${options.workerCommand ?? 'icaas worker'}`,
    'fi',
    'status=$?',
    'echo "icaas: worker exited with status $status; shutting down"',
    'shutdown -h now',
    '',
  );
  return lines.join('\n');
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
