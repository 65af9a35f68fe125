/**
 * A stateful stand-in for EC2, speaking its query protocol over loopback HTTP, so the real
 * SDK client and the real Ec2Compute can be driven through instance lifecycles that the
 * tests control: RunInstances, DescribeInstances (filters on tags and state, instance ids,
 * pages) and TerminateInstances.
 *
 * Each instance is a record with a state machine. Transitions are driven by time (pending
 * becomes running after `pendingMs`; a running instance shuts itself down after
 * `lifetimeMs`, as a worker that ran out of work does; shutting-down becomes terminated
 * after `shuttingDownMs`) and by calls (TerminateInstances, shutdown()). Time is the real
 * clock; every request first applies the transitions that are due. `onTransition` lets a
 * test act on each change.
 *
 * EC2's eventual consistency is modelled too: a new instance is missing from filtered
 * DescribeInstances answers for `describeLagMs`.
 *
 * With `runUserData`, instances are real (see fake-ec2-host.ts): each runs its
 * RunInstances user data as a local process group with a metadata service of its own,
 * and processes drive the states instead of time. An instance is pending until its user
 * data has started and running while it runs; when the user data powers the machine off
 * (`shutdown`), it goes shutting-down and then, once every process is gone, terminated
 * (or stopping, stopped without InstanceInitiatedShutdownBehavior=terminate). User data
 * that ends without powering off leaves the machine running, as on EC2.
 * TerminateInstances kills the process group.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { InstanceHost, type HostExit, type RunUserDataOptions } from './fake-ec2-host.js';

export type FakeState = 'pending' | 'running' | 'stopping' | 'stopped' | 'shutting-down' | 'terminated';

const STATE_CODES: Record<FakeState, number> = { pending: 0, running: 16, 'shutting-down': 32, terminated: 48, stopping: 64, stopped: 80 };

export interface FakeInstance {
  id: string;
  reservationId: string;
  state: FakeState;
  /** Epoch milliseconds, as EC2 reports it. */
  launchTime: number;
  /** When the instance entered its current state. */
  stateSince: number;
  tags: Map<string, string>;
  /** How long this instance stays running before it shuts itself down; none: until terminated. */
  lifetimeMs: number | undefined;
  /** Filtered DescribeInstances calls do not show the instance before this time. */
  visibleAt: number;
  /** The RunInstances user data, decoded. */
  userData: string | undefined;
  /** What `shutdown` inside the instance does: EC2's default is stop. */
  shutdownBehavior: 'stop' | 'terminate';
  /** With runUserData: the machine that runs the user data, once it is prepared. */
  machine?: { host: InstanceHost | undefined; exited: boolean; exit?: HostExit; bootError?: Error };
}

export interface FakeEc2Options {
  pendingMs?: number;
  shuttingDownMs?: number;
  lifetimeMs?: number;
  describeLagMs?: number;
  /** Added before every answer, to widen the windows real latency opens. */
  latencyMs?: number;
  /** Runs each instance's user data as a local process group (see fake-ec2-host.ts). */
  runUserData?: RunUserDataOptions;
}

export interface FakeEc2Call {
  action: string;
  params: URLSearchParams;
}

export class FakeEc2 {
  readonly instances = new Map<string, FakeInstance>();
  readonly calls: FakeEc2Call[] = [];
  /** Called for every state change, after it is applied. */
  onTransition: ((instance: FakeInstance, from: FakeState | null) => void) | undefined;
  /** Called after each RunInstances has added its instances. */
  onRunInstances: ((launched: FakeInstance[]) => void) | undefined;
  endpoint = '';
  private server: Server | undefined;
  private terminateFailures = { left: 0, code: 'OperationNotPermitted' };
  private readonly tokens = new Map<string, FakeInstance[]>();
  private readonly boots = new Set<Promise<void>>();

  constructor(readonly options: FakeEc2Options = {}) {}

  async listen(): Promise<this> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.endpoint = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  /** Stops answering, then kills every instance's processes and removes their machines. */
  async close(): Promise<void> {
    if (this.server) {
      this.server.closeAllConnections();
      await new Promise<void>((resolve) => this.server!.close(() => resolve()));
      this.server = undefined;
    }
    for (const instance of this.instances.values()) instance.machine?.host?.kill();
    await Promise.allSettled([...this.boots]);
    await Promise.allSettled([...this.instances.values()].map((instance) => instance.machine?.host?.close()));
  }

  /** The machine of an instance run with runUserData (its metadata service, console output, exit). */
  host(id: string): InstanceHost | undefined {
    return this.instances.get(id)?.machine?.host;
  }

  /** The next `times` TerminateInstances calls fail with `code` (a client error, not retried by the SDK). */
  failTerminate(times: number, code = 'OperationNotPermitted'): void {
    this.terminateFailures = { left: times, code };
  }

  /** The instance shuts itself down, as `shutdown -h now` does with shutdown behaviour terminate. */
  shutdown(id: string): void {
    const instance = this.instances.get(id);
    if (instance && (instance.state === 'pending' || instance.state === 'running')) this.transition(instance, shutdownState(instance), Date.now());
  }

  /** The instance's state now. */
  stateOf(id: string): FakeState | undefined {
    this.advance(Date.now());
    return this.instances.get(id)?.state;
  }

  /** How many instances are in each state now. */
  countByState(): Record<FakeState, number> {
    this.advance(Date.now());
    const counts: Record<FakeState, number> = { pending: 0, running: 0, stopping: 0, stopped: 0, 'shutting-down': 0, terminated: 0 };
    for (const instance of this.instances.values()) counts[instance.state]++;
    return counts;
  }

  /** Applies every time-driven transition that is due. */
  advance(now: number): void {
    for (const instance of this.instances.values()) {
      for (;;) {
        const next = this.due(instance, now);
        if (!next) break;
        this.transition(instance, next.state, next.at);
      }
    }
  }

  private due(instance: FakeInstance, now: number): { state: FakeState; at: number } | null {
    const { pendingMs = 50, shuttingDownMs = 50 } = this.options;
    const at = (delay: number) => (instance.stateSince + delay <= now ? instance.stateSince + delay : null);
    let when: number | null = null;
    // A machine's processes drive its start and its end; only the last step takes time.
    const machine = instance.machine;
    if (machine && (instance.state === 'pending' || instance.state === 'running')) return null;
    if (machine && !machine.exited) return null;
    switch (instance.state) {
      case 'pending':
        when = at(pendingMs);
        return when === null ? null : { state: 'running', at: when };
      case 'running':
        when = instance.lifetimeMs === undefined ? null : at(instance.lifetimeMs);
        return when === null ? null : { state: shutdownState(instance), at: when };
      case 'shutting-down':
        when = at(shuttingDownMs);
        return when === null ? null : { state: 'terminated', at: when };
      case 'stopping':
        when = at(shuttingDownMs);
        return when === null ? null : { state: 'stopped', at: when };
      default:
        return null;
    }
  }

  private transition(instance: FakeInstance, state: FakeState, at: number): void {
    const from = instance.state;
    instance.state = state;
    instance.stateSince = at;
    if (state === 'shutting-down' || state === 'stopping') instance.machine?.host?.kill();
    this.onTransition?.(instance, from);
  }

  /** Prepares the instance's machine and runs its user data there. */
  private boot(instance: FakeInstance, options: RunUserDataOptions): void {
    const machine: NonNullable<FakeInstance['machine']> = { host: undefined, exited: false };
    instance.machine = machine;
    const exited = (exit: HostExit) => {
      machine.exited = true;
      machine.exit = exit;
      if (exit.poweredOff) this.shutdown(instance.id);
      this.advance(Date.now());
    };
    const booting = (async () => {
      machine.host = await InstanceHost.create(instance.id, options);
      // Terminated while booting: the machine never ran.
      if (instance.state !== 'pending') return exited({ code: null, signal: 'SIGKILL', poweredOff: false });
      await machine.host.run(instance.userData ?? '', options.env ?? {}, {
        onStarted: () => {
          if (instance.state === 'pending') this.transition(instance, 'running', Date.now());
        },
        onExit: exited,
      });
    })().catch((error: Error) => {
      machine.bootError = error;
      exited({ code: null, signal: null, poweredOff: false });
    });
    this.boots.add(booting);
    void booting.finally(() => this.boots.delete(booting));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const params = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
    const action = params.get('Action') ?? '';
    this.calls.push({ action, params });
    if (this.options.latencyMs) await new Promise((resolve) => setTimeout(resolve, this.options.latencyMs));
    this.advance(Date.now());
    try {
      const body = this.answer(action, params);
      res.writeHead(200, { 'content-type': 'text/xml;charset=UTF-8' }).end(`<?xml version="1.0" encoding="UTF-8"?>\n<${action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>${requestId()}</requestId>${body}</${action}Response>`);
    } catch (error) {
      const { code, status } = error instanceof Ec2Fault ? error : { code: 'InternalError', status: 500 };
      res
        .writeHead(status, { 'content-type': 'text/xml;charset=UTF-8' })
        .end(`<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${code}</Code><Message>${xml((error as Error).message)}</Message></Error></Errors><RequestID>${requestId()}</RequestID></Response>`);
    }
  }

  private answer(action: string, params: URLSearchParams): string {
    switch (action) {
      case 'RunInstances':
        return this.runInstances(params);
      case 'DescribeInstances':
        return this.describeInstances(params);
      case 'TerminateInstances':
        return this.terminateInstances(params);
      default:
        throw new Ec2Fault('InvalidAction', 400, `the fake does not implement ${action}`);
    }
  }

  private runInstances(params: URLSearchParams): string {
    const token = params.get('ClientToken');
    let launched = token ? this.tokens.get(token) : undefined;
    if (!launched) {
      const count = Number(params.get('MaxCount'));
      if (!Number.isInteger(count) || count < 1) throw new Ec2Fault('InvalidParameterValue', 400, `MaxCount must be at least 1, got ${params.get('MaxCount')}`);
      const now = Date.now();
      const reservationId = `r-${randomBytes(8).toString('hex')}`;
      const userData = params.get('UserData');
      const tags = new Map<string, string>();
      for (const spec of indexed(params, 'TagSpecification')) {
        if (params.get(`${spec}.ResourceType`) !== 'instance') continue;
        for (const tag of indexed(params, `${spec}.Tag`)) tags.set(params.get(`${tag}.Key`) ?? '', params.get(`${tag}.Value`) ?? '');
      }
      launched = Array.from({ length: count }, () => ({
        id: `i-${randomBytes(9).toString('hex').slice(0, 17)}`,
        reservationId,
        state: 'pending' as FakeState,
        launchTime: now,
        stateSince: now,
        tags: new Map(tags),
        lifetimeMs: this.options.runUserData ? undefined : this.options.lifetimeMs,
        visibleAt: now + (this.options.describeLagMs ?? 0),
        userData: userData === null ? undefined : Buffer.from(userData, 'base64').toString('utf8'),
        shutdownBehavior: (params.get('InstanceInitiatedShutdownBehavior') === 'terminate' ? 'terminate' : 'stop') as FakeInstance['shutdownBehavior'],
      }));
      for (const instance of launched) {
        this.instances.set(instance.id, instance);
        this.onTransition?.(instance, null);
        if (this.options.runUserData) this.boot(instance, this.options.runUserData);
      }
      if (token) this.tokens.set(token, launched);
      this.onRunInstances?.(launched);
    }
    return `<reservationId>${launched[0]!.reservationId}</reservationId><ownerId>123456789012</ownerId><instancesSet>${launched.map(instanceXml).join('')}</instancesSet>`;
  }

  private describeInstances(params: URLSearchParams): string {
    const ids = indexed(params, 'InstanceId').map((key) => params.get(key)!);
    const filters = indexed(params, 'Filter').map((key) => ({
      name: params.get(`${key}.Name`) ?? '',
      values: indexed(params, `${key}.Value`).map((value) => params.get(value)!),
    }));
    const now = Date.now();
    let matched: FakeInstance[];
    if (ids.length > 0) {
      matched = ids.map((id) => {
        const instance = this.instances.get(id);
        if (!instance) throw new Ec2Fault('InvalidInstanceID.NotFound', 400, `The instance ID '${id}' does not exist`);
        return instance;
      });
    } else {
      matched = [...this.instances.values()].filter((instance) => instance.visibleAt <= now);
    }
    matched = matched.filter((instance) => filters.every((filter) => filter.values.includes(filterValue(instance, filter.name) ?? '\u0000')));
    const pageSize = Number(params.get('MaxResults') ?? 1000);
    const start = Number(params.get('NextToken') ?? 0);
    const page = matched.slice(start, start + pageSize);
    const next = start + pageSize < matched.length ? `<nextToken>${start + pageSize}</nextToken>` : '';
    const reservations = page.map((instance) => `<item><reservationId>${instance.reservationId}</reservationId><ownerId>123456789012</ownerId><instancesSet>${instanceXml(instance)}</instancesSet></item>`);
    return `<reservationSet>${reservations.join('')}</reservationSet>${next}`;
  }

  private terminateInstances(params: URLSearchParams): string {
    const ids = indexed(params, 'InstanceId').map((key) => params.get(key)!);
    if (this.terminateFailures.left > 0) {
      this.terminateFailures.left--;
      throw new Ec2Fault(this.terminateFailures.code, 400, `The instance '${ids[0]}' may not be terminated. Modify its 'disableApiTermination' instance attribute and try again.`);
    }
    const items = ids.map((id) => {
      const instance = this.instances.get(id);
      if (!instance) throw new Ec2Fault('InvalidInstanceID.NotFound', 400, `The instance ID '${id}' does not exist`);
      const previous = instance.state;
      if (previous !== 'shutting-down' && previous !== 'terminated') this.transition(instance, 'shutting-down', Date.now());
      return `<item><instanceId>${id}</instanceId><currentState>${stateXml(instance.state)}</currentState><previousState>${stateXml(previous)}</previousState></item>`;
    });
    return `<instancesSet>${items.join('')}</instancesSet>`;
  }
}

class Ec2Fault extends Error {
  constructor(
    readonly code: string,
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The prefixes `Name.1`, `Name.2`, ... present in the request, in order. */
function indexed(params: URLSearchParams, name: string): string[] {
  const found: string[] = [];
  for (let i = 1; [...params.keys()].some((key) => key === `${name}.${i}` || key.startsWith(`${name}.${i}.`)); i++) found.push(`${name}.${i}`);
  return found;
}

function filterValue(instance: FakeInstance, name: string): string | undefined {
  if (name === 'instance-state-name') return instance.state;
  if (name === 'instance-id') return instance.id;
  if (name.startsWith('tag:')) return instance.tags.get(name.slice(4));
  throw new Ec2Fault('InvalidParameterValue', 400, `the fake does not filter on ${name}`);
}

function shutdownState(instance: FakeInstance): FakeState {
  return instance.shutdownBehavior === 'terminate' ? 'shutting-down' : 'stopping';
}

function instanceXml(instance: FakeInstance): string {
  const tags = [...instance.tags].map(([key, value]) => `<item><key>${xml(key)}</key><value>${xml(value)}</value></item>`).join('');
  return `<item><instanceId>${instance.id}</instanceId><imageId>ami-0fake</imageId><instanceState>${stateXml(instance.state)}</instanceState><instanceType>t3.small</instanceType><launchTime>${new Date(instance.launchTime).toISOString()}</launchTime><tagSet>${tags}</tagSet></item>`;
}

function stateXml(state: FakeState): string {
  return `<code>${STATE_CODES[state]}</code><name>${state}</name>`;
}

function xml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function requestId(): string {
  return randomBytes(16).toString('hex');
}
