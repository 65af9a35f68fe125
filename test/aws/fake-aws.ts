/**
 * A stateful stand-in for the part of AWS that `icaas aws provision|teardown` talks to on
 * the stack path, on loopback HTTP, for the real SDK clients (with `endpoint` set):
 *
 * - CloudFormation's query protocol for the calls used: CreateChangeSet, DescribeChangeSet,
 *   ExecuteChangeSet, DeleteChangeSet, DescribeStacks, DescribeStackEvents,
 *   ListStackResources, DeleteStack. It evaluates the template's parameters and conditions,
 *   refuses references to things the template does not declare, plans Add/Modify/Remove
 *   per resource, and runs each stack operation one resource per request, with events, so
 *   progress is seen as on AWS. Stack states follow CloudFormation's, failures and rollbacks
 *   included.
 * - Enough of S3 (path style) to hold what the stack's buckets contain: ListObjectVersions,
 *   DeleteObjects, HeadBucket. A bucket the stack made exists here; one that holds objects
 *   fails its deletion as S3 does.
 *
 * Faults a test sets: `throttle` (answer chosen calls with Throttling), `failCreate` (a
 * resource fails with a reason), `takenBuckets` (bucket names another account owns),
 * `lockedKeys` (objects DeleteObjects refuses, as object lock does).
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

const REGION = 'eu-west-1';
export const FAKE_ACCOUNT = '123456789012';
const NS = 'http://cloudformation.amazonaws.com/doc/2010-05-15/';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
interface TemplateResource {
  Type: string;
  Properties: Record<string, Json>;
  Condition?: string;
}
interface TemplateDoc {
  Parameters?: Record<string, { Default?: string; AllowedValues?: string[]; AllowedPattern?: string }>;
  Conditions?: Record<string, Json>;
  Resources: Record<string, TemplateResource>;
  Outputs?: Record<string, { Value: Json; Condition?: string }>;
}

interface Live {
  type: string;
  physicalId: string;
  /** The resolved properties, to plan modifications against. */
  fingerprint: string;
  status: string;
}

interface Event {
  StackId: string;
  EventId: string;
  StackName: string;
  LogicalResourceId: string;
  PhysicalResourceId: string;
  ResourceType: string;
  Timestamp: Date;
  ResourceStatus: string;
  ResourceStatusReason?: string;
}

interface Planned {
  action: 'Add' | 'Modify' | 'Remove';
  logicalId: string;
  type: string;
  fingerprint: string;
  properties: Record<string, Json>;
}

interface FakeStack {
  id: string;
  name: string;
  status: string;
  statusReason?: string;
  tags: { Key: string; Value: string }[];
  template?: TemplateDoc;
  parameters: Record<string, string>;
  resources: Map<string, Live>;
  events: Event[];
  /** The operation under way: steps left, one per request. */
  operation?: { kind: 'CREATE' | 'UPDATE' | 'DELETE'; steps: Planned[]; done: Planned[]; before: Map<string, Live>; next?: FakeStack['template']; nextParameters?: Record<string, string> };
}

interface ChangeSet {
  id: string;
  name: string;
  stackId: string;
  type: 'CREATE' | 'UPDATE';
  template: TemplateDoc;
  parameters: Record<string, string>;
  changes: Planned[];
  looks: number;
  status: string;
  reason?: string;
}

interface FakeBucket {
  versions: { key: string; versionId: string; deleteMarker: boolean }[];
}

class Fault extends Error {
  constructor(readonly code: string, message: string, readonly status = 400) {
    super(message);
  }
}

const xmlEscape = (value: string) => value.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const xmlUnescape = (value: string) => value.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&');

/** The query protocol's XML: lists as <member> elements. */
function toXml(value: unknown): string {
  if (value === undefined || value === null) return '';
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map((item) => `<member>${toXml(item)}</member>`).join('');
  if (typeof value === 'object') {
    return Object.entries(value as Record<string, unknown>)
      .filter(([, item]) => item !== undefined)
      .map(([key, item]) => `<${key}>${toXml(item)}</${key}>`)
      .join('');
  }
  return xmlEscape(String(value));
}

/** `Name.member.N[.Field]` query parameters as a list. */
function members(params: URLSearchParams, name: string): Record<string, string>[] {
  const found: Record<string, string>[] = [];
  for (let i = 1; [...params.keys()].some((key) => key.startsWith(`${name}.member.${i}`)); i++) {
    const item: Record<string, string> = {};
    for (const [key, value] of params) {
      const prefix = `${name}.member.${i}`;
      if (key === prefix) item[''] = value;
      else if (key.startsWith(`${prefix}.`)) item[key.slice(prefix.length + 1)] = value;
    }
    found.push(item);
  }
  return found;
}

export class FakeAws {
  endpoint = '';
  readonly stacks: FakeStack[] = [];
  readonly changeSets = new Map<string, ChangeSet>();
  readonly buckets = new Map<string, FakeBucket>();
  /** Every CloudFormation action, in order. */
  readonly calls: string[] = [];
  /** Called with each CloudFormation action before it is answered. */
  onCall: ((action: string) => void) | undefined;
  /** Answer these CloudFormation actions (or all) with Throttling. */
  throttle: ((action: string) => boolean) | undefined;
  /** A resource whose creation fails, with CloudFormation's reason. */
  failCreate: { logicalId: string; reason: string } | undefined;
  readonly takenBuckets = new Set<string>();
  /** `bucket/key`s that DeleteObjects refuses. */
  readonly lockedKeys = new Set<string>();
  private server: Server | undefined;

  async listen(): Promise<this> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.endpoint = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  /** The live (not deleted) stack of that name. */
  stack(name: string): FakeStack | undefined {
    return this.stacks.find((stack) => stack.name === name && stack.status !== 'DELETE_COMPLETE');
  }

  /** A stack as a test wants to find it (e.g. a failed one left from before). */
  addStack(name: string, status: string, tags: { Key: string; Value: string }[]): FakeStack {
    const stack: FakeStack = { id: this.stackId(name), name, status, tags, parameters: {}, resources: new Map(), events: [] };
    this.stacks.push(stack);
    return stack;
  }

  /** Versions of an object; `deleteMarker` ends them with one, as deleting it in a versioned bucket does. */
  putObject(bucket: string, key: string, versions = 1, deleteMarker = false): void {
    const found = this.buckets.get(bucket);
    if (!found) throw new Error(`no bucket ${bucket}`);
    for (let i = 0; i < versions; i++) found.versions.push({ key, versionId: randomUUID().replace(/-/g, ''), deleteMarker: false });
    if (deleteMarker) found.versions.push({ key, versionId: randomUUID().replace(/-/g, ''), deleteMarker: true });
  }

  private stackId(name: string): string {
    return `arn:aws:cloudformation:${REGION}:${FAKE_ACCOUNT}:stack/${name}/${randomUUID()}`;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString();
    const url = new URL(req.url ?? '/', 'http://fake');
    try {
      if (url.pathname !== '/') return this.s3(req.method ?? 'GET', url, body, res);
      const params = new URLSearchParams(body);
      const action = params.get('Action') ?? '';
      this.calls.push(action);
      this.onCall?.(action);
      if (this.throttle?.(action)) throw new Fault('Throttling', 'Rate exceeded');
      const result = this.cloudFormation(action, params);
      res.writeHead(200, { 'content-type': 'text/xml' });
      res.end(`<${action}Response xmlns="${NS}"><${action}Result>${toXml(result)}</${action}Result><ResponseMetadata><RequestId>${randomUUID()}</RequestId></ResponseMetadata></${action}Response>`);
    } catch (error) {
      const fault = error instanceof Fault ? error : new Fault('InternalFailure', String((error as Error).stack ?? error), 500);
      res.writeHead(fault.status, { 'content-type': 'text/xml' });
      if (url.pathname !== '/') res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${fault.code}</Code><Message>${xmlEscape(fault.message)}</Message></Error>`);
      else res.end(`<ErrorResponse xmlns="${NS}"><Error><Type>Sender</Type><Code>${fault.code}</Code><Message>${xmlEscape(fault.message)}</Message></Error><RequestId>${randomUUID()}</RequestId></ErrorResponse>`);
    }
  }

  // --- CloudFormation --------------------------------------------------------------------

  private cloudFormation(action: string, params: URLSearchParams): unknown {
    for (const stack of this.stacks) this.advance(stack);
    switch (action) {
      case 'DescribeStacks':
        return { Stacks: [this.describe(this.find(params.get('StackName')!))] };
      case 'DescribeStackEvents':
        return { StackEvents: [...this.find(params.get('StackName')!).events].reverse() };
      case 'ListStackResources':
        return {
          StackResourceSummaries: [...this.find(params.get('StackName')!).resources].map(([logicalId, live]) => ({
            LogicalResourceId: logicalId, PhysicalResourceId: live.physicalId, ResourceType: live.type, ResourceStatus: live.status, LastUpdatedTimestamp: new Date(),
          })),
        };
      case 'CreateChangeSet':
        return this.createChangeSet(params);
      case 'DescribeChangeSet':
        return this.describeChangeSet(this.changeSet(params));
      case 'DeleteChangeSet':
        this.changeSets.delete(this.changeSet(params).id);
        return {};
      case 'ExecuteChangeSet':
        this.execute(this.changeSet(params));
        return {};
      case 'DeleteStack':
        this.deleteStack(params.get('StackName')!);
        return {};
      default:
        throw new Fault('InvalidAction', `the fake does not answer ${action}`);
    }
  }

  private find(nameOrId: string): FakeStack {
    const stack = nameOrId.startsWith('arn:') ? this.stacks.find((candidate) => candidate.id === nameOrId) : this.stack(nameOrId);
    if (!stack) throw new Fault('ValidationError', `Stack with id ${nameOrId} does not exist`);
    return stack;
  }

  private describe(stack: FakeStack): unknown {
    return {
      StackId: stack.id,
      StackName: stack.name,
      StackStatus: stack.status,
      StackStatusReason: stack.statusReason,
      CreationTime: new Date(),
      Tags: stack.tags,
      Parameters: Object.entries(stack.parameters).map(([ParameterKey, ParameterValue]) => ({ ParameterKey, ParameterValue })),
      Outputs: stack.template && ['CREATE_COMPLETE', 'UPDATE_COMPLETE', 'UPDATE_ROLLBACK_COMPLETE'].includes(stack.status) ? this.outputs(stack) : undefined,
    };
  }

  private changeSet(params: URLSearchParams): ChangeSet {
    const name = params.get('ChangeSetName')!;
    const found = this.changeSets.get(name) ?? [...this.changeSets.values()].find((candidate) => candidate.name === name && this.find(params.get('StackName') ?? '').id === candidate.stackId);
    if (!found) throw new Fault('ChangeSetNotFound', `ChangeSet [${name}] does not exist`, 404);
    return found;
  }

  private createChangeSet(params: URLSearchParams): unknown {
    const name = params.get('StackName')!;
    const type = params.get('ChangeSetType') as 'CREATE' | 'UPDATE';
    const template = JSON.parse(params.get('TemplateBody')!) as TemplateDoc;
    const parameters = this.parameters(template, members(params, 'Parameters'));
    this.validate(template, parameters);
    const capabilities = members(params, 'Capabilities').map((item) => item['']);
    const namedIam = Object.values(template.Resources).some((resource) => resource.Type.startsWith('AWS::IAM::') && Object.keys(resource.Properties).some((key) => /Name$/.test(key)));
    if (namedIam && !capabilities.includes('CAPABILITY_NAMED_IAM')) throw new Fault('InsufficientCapabilitiesException', 'Requires capabilities : [CAPABILITY_NAMED_IAM]');
    let stack = this.stack(name);
    if (type === 'CREATE') {
      if (stack && stack.status !== 'REVIEW_IN_PROGRESS') throw new Fault('AlreadyExistsException', `Stack [${name}] already exists and cannot be created again with the changeSet [${params.get('ChangeSetName')}].`);
      if (!stack) {
        stack = this.addStack(name, 'REVIEW_IN_PROGRESS', members(params, 'Tags').map((tag) => ({ Key: tag.Key!, Value: tag.Value! })));
      }
    } else {
      if (!stack) throw new Fault('ValidationError', `Stack [${name}] does not exist`);
      if (!['CREATE_COMPLETE', 'UPDATE_COMPLETE', 'UPDATE_ROLLBACK_COMPLETE', 'IMPORT_COMPLETE'].includes(stack.status)) {
        throw new Fault('ValidationError', `Stack:${stack.id} is in ${stack.status} state and can not be updated.`);
      }
      stack.tags = members(params, 'Tags').map((tag) => ({ Key: tag.Key!, Value: tag.Value! }));
    }
    const changes = this.plan(stack, template, parameters);
    const id = `arn:aws:cloudformation:${REGION}:${FAKE_ACCOUNT}:changeSet/${params.get('ChangeSetName')}/${randomUUID()}`;
    this.changeSets.set(id, {
      id, name: params.get('ChangeSetName')!, stackId: stack.id, type, template, parameters, changes, looks: 0,
      status: changes.length ? 'CREATE_COMPLETE' : 'FAILED',
      ...(changes.length ? {} : { reason: "The submitted information didn't contain changes. Submit different information to create a change set." }),
    });
    return { Id: id, StackId: stack.id };
  }

  private describeChangeSet(changeSet: ChangeSet): unknown {
    // Planning takes a moment on AWS: the first look finds it still in progress.
    const status = changeSet.looks++ === 0 ? 'CREATE_IN_PROGRESS' : changeSet.status;
    const stack = this.find(changeSet.stackId);
    return {
      ChangeSetId: changeSet.id, ChangeSetName: changeSet.name, StackId: stack.id, StackName: stack.name,
      Status: status, StatusReason: status === 'FAILED' ? changeSet.reason : undefined,
      ExecutionStatus: status === 'CREATE_COMPLETE' ? 'AVAILABLE' : 'UNAVAILABLE',
      Changes: status === 'CREATE_COMPLETE'
        ? changeSet.changes.map((change) => ({
            Type: 'Resource',
            ResourceChange: {
              Action: change.action, LogicalResourceId: change.logicalId, ResourceType: change.type,
              PhysicalResourceId: stack.resources.get(change.logicalId)?.physicalId,
              ...(change.action === 'Modify' ? { Replacement: 'False' } : {}),
            },
          }))
        : undefined,
    };
  }

  private execute(changeSet: ChangeSet): void {
    if (changeSet.looks === 0 || changeSet.status !== 'CREATE_COMPLETE') throw new Fault('InvalidChangeSetStatus', `ChangeSet [${changeSet.id}] cannot be executed in its current status of [${changeSet.status}]`);
    const stack = this.find(changeSet.stackId);
    this.changeSets.delete(changeSet.id);
    for (const other of [...this.changeSets.values()].filter((candidate) => candidate.stackId === stack.id)) this.changeSets.delete(other.id);
    const kind = changeSet.type;
    stack.operation = { kind, steps: [...changeSet.changes], done: [], before: new Map(stack.resources), next: changeSet.template, nextParameters: changeSet.parameters };
    this.setStatus(stack, `${kind}_IN_PROGRESS`, 'User Initiated');
  }

  private deleteStack(nameOrId: string): void {
    const stack = this.stacks.find((candidate) => (candidate.id === nameOrId || candidate.name === nameOrId) && candidate.status !== 'DELETE_COMPLETE');
    if (!stack) return;
    if (stack.status === 'REVIEW_IN_PROGRESS') return this.setStatus(stack, 'DELETE_COMPLETE');
    if (stack.operation && stack.operation.kind !== 'DELETE') throw new Fault('ValidationError', `Stack [${stack.name}] cannot be deleted while in status ${stack.status}`);
    const steps = [...stack.resources].reverse().filter(([, live]) => live.status !== 'DELETE_COMPLETE').map(([logicalId, live]): Planned => ({ action: 'Remove', logicalId, type: live.type, fingerprint: '', properties: {} }));
    stack.operation = { kind: 'DELETE', steps, done: [], before: new Map(stack.resources) };
    this.setStatus(stack, 'DELETE_IN_PROGRESS', 'User Initiated');
  }

  private setStatus(stack: FakeStack, status: string, reason?: string): void {
    stack.status = status;
    stack.statusReason = reason;
    this.event(stack, stack.name, stack.id, 'AWS::CloudFormation::Stack', status, reason);
  }

  private event(stack: FakeStack, logicalId: string, physicalId: string, type: string, status: string, reason?: string): void {
    stack.events.push({ StackId: stack.id, EventId: randomUUID(), StackName: stack.name, LogicalResourceId: logicalId, PhysicalResourceId: physicalId, ResourceType: type, Timestamp: new Date(), ResourceStatus: status, ...(reason ? { ResourceStatusReason: reason } : {}) });
  }

  /** One step of the stack's operation per request, as time passes on AWS. */
  private advance(stack: FakeStack): void {
    const operation = stack.operation;
    if (!operation) return;
    const step = operation.steps.shift();
    if (!step) return this.finish(stack);
    const verb = step.action === 'Add' ? 'CREATE' : step.action === 'Modify' ? 'UPDATE' : 'DELETE';
    const failure = this.stepFailure(stack, step);
    const physicalId = step.action === 'Add' ? this.physicalId(step) : stack.resources.get(step.logicalId)!.physicalId;
    this.event(stack, step.logicalId, physicalId, step.type, `${verb}_IN_PROGRESS`);
    if (failure) {
      this.event(stack, step.logicalId, physicalId, step.type, `${verb}_FAILED`, failure);
      if (operation.kind === 'DELETE') {
        stack.resources.get(step.logicalId)!.status = 'DELETE_FAILED';
        operation.done.push({ ...step, fingerprint: 'failed' });
        return;
      }
      for (const cancelled of operation.steps) this.event(stack, cancelled.logicalId, '', cancelled.type, `${verb}_FAILED`, 'Resource creation cancelled');
      return this.rollBack(stack, `The following resource(s) failed to ${verb.toLowerCase()}: [${step.logicalId}].`);
    }
    this.apply(stack, step, physicalId);
    this.event(stack, step.logicalId, physicalId, step.type, `${verb}_COMPLETE`);
    operation.done.push(step);
  }

  private stepFailure(stack: FakeStack, step: Planned): string | undefined {
    if (step.action === 'Add' && this.failCreate?.logicalId === step.logicalId) return this.failCreate.reason;
    if (step.type !== 'AWS::S3::Bucket') return undefined;
    const name = step.action === 'Remove' ? stack.resources.get(step.logicalId)!.physicalId : String(step.properties.BucketName);
    if (step.action === 'Add' && (this.takenBuckets.has(name) || this.buckets.has(name))) return `${name} already exists`;
    if (step.action === 'Remove' && (this.buckets.get(name)?.versions.length ?? 0) > 0) return 'The bucket you tried to delete is not empty (Service: S3, Status Code: 409)';
    return undefined;
  }

  private apply(stack: FakeStack, step: Planned, physicalId: string): void {
    if (step.action === 'Remove') {
      stack.resources.delete(step.logicalId);
      if (step.type === 'AWS::S3::Bucket') this.buckets.delete(physicalId);
      return;
    }
    stack.resources.set(step.logicalId, { type: step.type, physicalId, fingerprint: step.fingerprint, status: step.action === 'Add' ? 'CREATE_COMPLETE' : 'UPDATE_COMPLETE' });
    if (step.type === 'AWS::S3::Bucket') this.buckets.set(physicalId, this.buckets.get(physicalId) ?? { versions: [] });
  }

  private rollBack(stack: FakeStack, reason: string): void {
    const operation = stack.operation!;
    const rolling = operation.kind === 'CREATE' ? 'ROLLBACK' : 'UPDATE_ROLLBACK';
    this.setStatus(stack, `${rolling}_IN_PROGRESS`, reason);
    for (const done of [...operation.done].reverse()) {
      const live = stack.resources.get(done.logicalId);
      if (done.action === 'Add' && live) {
        this.event(stack, done.logicalId, live.physicalId, done.type, 'DELETE_COMPLETE');
        this.apply(stack, { ...done, action: 'Remove' }, live.physicalId);
      }
    }
    stack.resources = new Map(operation.before);
    stack.operation = undefined;
    this.setStatus(stack, `${rolling}_COMPLETE`);
  }

  private finish(stack: FakeStack): void {
    const operation = stack.operation!;
    stack.operation = undefined;
    if (operation.kind === 'DELETE') {
      const failed = [...stack.resources].filter(([, live]) => live.status === 'DELETE_FAILED').map(([id]) => id);
      if (failed.length) return this.setStatus(stack, 'DELETE_FAILED', `The following resource(s) failed to delete: [${failed.join(', ')}].`);
      return this.setStatus(stack, 'DELETE_COMPLETE');
    }
    stack.template = operation.next;
    stack.parameters = operation.nextParameters ?? {};
    this.setStatus(stack, `${operation.kind}_COMPLETE`);
  }

  // --- templates -------------------------------------------------------------------------

  private parameters(template: TemplateDoc, given: Record<string, string>[]): Record<string, string> {
    const values: Record<string, string> = {};
    for (const item of given) {
      const key = item.ParameterKey!;
      const declared = template.Parameters?.[key];
      if (!declared) throw new Fault('ValidationError', `Parameters: [${key}] do not exist in the template`);
      if (declared.AllowedValues && !declared.AllowedValues.includes(item.ParameterValue ?? '')) throw new Fault('ValidationError', `Parameter '${key}' must be one of AllowedValues`);
      if (declared.AllowedPattern && !new RegExp(declared.AllowedPattern).test(item.ParameterValue ?? '')) throw new Fault('ValidationError', `Parameter '${key}' must match pattern ${declared.AllowedPattern}`);
      values[key] = item.ParameterValue ?? '';
    }
    for (const [key, declared] of Object.entries(template.Parameters ?? {})) {
      if (!(key in values)) {
        if (declared.Default === undefined) throw new Fault('ValidationError', `Parameters: [${key}] must have values`);
        values[key] = declared.Default;
      }
    }
    return values;
  }

  /** Refuses references to what the template does not declare, as CloudFormation does. */
  private validate(template: TemplateDoc, parameters: Record<string, string>): void {
    const known = new Set([...Object.keys(template.Resources), ...Object.keys(parameters)]);
    const conditions = new Set(Object.keys(template.Conditions ?? {}));
    const walk = (value: Json): void => {
      if (Array.isArray(value)) return value.forEach(walk);
      if (!value || typeof value !== 'object') return;
      for (const [key, inner] of Object.entries(value)) {
        if (key === 'Ref' && typeof inner === 'string' && !inner.startsWith('AWS::') && !known.has(inner)) throw new Fault('ValidationError', `Template format error: Unresolved resource dependencies [${inner}] in the Resources block of the template`);
        if (key === 'Fn::GetAtt' && Array.isArray(inner) && !template.Resources[String(inner[0])]) throw new Fault('ValidationError', `Template error: instance of Fn::GetAtt references undefined resource ${String(inner[0])}`);
        if (key === 'Condition' && typeof inner === 'string' && !conditions.has(inner)) throw new Fault('ValidationError', `Template format error: Unresolved condition dependency ${inner}`);
        walk(inner);
      }
    };
    walk(template as unknown as Json);
    for (const [id, resource] of Object.entries(template.Resources)) {
      if (!resource.Type || !resource.Properties) throw new Fault('ValidationError', `Template format error: resource ${id} has no Type or Properties`);
    }
  }

  private condition(template: TemplateDoc, parameters: Record<string, string>, expression: Json): boolean {
    const value = (item: Json): string => (item && typeof item === 'object' && !Array.isArray(item) && 'Ref' in item ? parameters[String(item.Ref)] ?? '' : String(item));
    if (!expression || typeof expression !== 'object' || Array.isArray(expression)) throw new Fault('ValidationError', 'bad condition');
    if ('Fn::Equals' in expression) {
      const [a, b] = expression['Fn::Equals'] as Json[];
      return value(a!) === value(b!);
    }
    if ('Fn::Not' in expression) return !this.condition(template, parameters, (expression['Fn::Not'] as Json[])[0]!);
    if ('Fn::And' in expression) return (expression['Fn::And'] as Json[]).every((item) => this.condition(template, parameters, item));
    if ('Condition' in expression) return this.condition(template, parameters, template.Conditions![String(expression.Condition)]!);
    throw new Fault('ValidationError', `the fake does not evaluate ${JSON.stringify(expression)}`);
  }

  private wanted(template: TemplateDoc, parameters: Record<string, string>): Map<string, TemplateResource> {
    return new Map(Object.entries(template.Resources).filter(([, resource]) => !resource.Condition || this.condition(template, parameters, { Condition: resource.Condition })));
  }

  private plan(stack: FakeStack, template: TemplateDoc, parameters: Record<string, string>): Planned[] {
    const wanted = this.wanted(template, parameters);
    const substitute = (value: Json): Json => {
      if (Array.isArray(value)) return value.map(substitute);
      if (value && typeof value === 'object') {
        if ('Ref' in value && typeof value.Ref === 'string' && value.Ref in parameters) return parameters[value.Ref]!;
        return Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, substitute(inner)]));
      }
      return value;
    };
    const changes: Planned[] = [];
    for (const [logicalId, resource] of wanted) {
      const properties = substitute(resource.Properties) as Record<string, Json>;
      const fingerprint = JSON.stringify(properties);
      const live = stack.resources.get(logicalId);
      if (!live) changes.push({ action: 'Add', logicalId, type: resource.Type, fingerprint, properties });
      else if (live.fingerprint !== fingerprint) changes.push({ action: 'Modify', logicalId, type: resource.Type, fingerprint, properties });
    }
    for (const [logicalId, live] of [...stack.resources].reverse()) {
      if (!wanted.has(logicalId)) changes.push({ action: 'Remove', logicalId, type: live.type, fingerprint: '', properties: {} });
    }
    return changes;
  }

  private physicalId(step: Planned): string {
    const name = (key: string) => String(step.properties[key]);
    switch (step.type) {
      case 'AWS::S3::Bucket': return name('BucketName');
      case 'AWS::SQS::Queue': return `https://sqs.${REGION}.amazonaws.com/${FAKE_ACCOUNT}/${name('QueueName')}`;
      case 'AWS::IAM::Role': return name('RoleName');
      case 'AWS::IAM::InstanceProfile': return name('InstanceProfileName');
      case 'AWS::EC2::LaunchTemplate': return `lt-0${randomUUID().replace(/-/g, '').slice(0, 16)}`;
      default: return `${step.logicalId}-${randomUUID().slice(0, 8)}`;
    }
  }

  private outputs(stack: FakeStack): unknown[] {
    const template = stack.template!;
    const resolve = (value: Json): string => {
      if (typeof value === 'string') return value;
      if (value && typeof value === 'object' && !Array.isArray(value)) {
        if ('Ref' in value) return stack.resources.get(String(value.Ref))?.physicalId ?? stack.parameters[String(value.Ref)] ?? '';
        if ('Fn::GetAtt' in value) {
          const [id] = value['Fn::GetAtt'] as string[];
          const live = stack.resources.get(id!)!;
          return live.type === 'AWS::IAM::Role' ? `arn:aws:iam::${FAKE_ACCOUNT}:role/${live.physicalId}` : `arn:aws:${live.type.split('::')[1]!.toLowerCase()}:::${live.physicalId}`;
        }
        if ('Fn::Join' in value) {
          const [separator, parts] = value['Fn::Join'] as [string, Json[]];
          return parts.map(resolve).join(separator);
        }
      }
      throw new Fault('ValidationError', `the fake does not resolve ${JSON.stringify(value)}`);
    };
    return Object.entries(template.Outputs ?? {})
      .filter(([, output]) => !output.Condition || this.condition(template, stack.parameters, { Condition: output.Condition }))
      .map(([OutputKey, output]) => ({ OutputKey, OutputValue: resolve(output.Value) }));
  }

  // --- S3 --------------------------------------------------------------------------------

  private s3(method: string, url: URL, body: string, res: ServerResponse): void {
    const name = decodeURIComponent(url.pathname.split('/')[1] ?? '');
    const bucket = this.buckets.get(name);
    if (!bucket) throw new Fault('NoSuchBucket', 'The specified bucket does not exist', 404);
    const send = (xml: string) => {
      res.writeHead(200, { 'content-type': 'application/xml' });
      res.end(`<?xml version="1.0" encoding="UTF-8"?>${xml}`);
    };
    if (method === 'HEAD') return void res.writeHead(200).end();
    if (method === 'GET' && url.searchParams.has('versions')) {
      const max = Number(url.searchParams.get('max-keys') ?? 1000);
      const page = bucket.versions.slice(0, max);
      const entries = page.map((entry) => (entry.deleteMarker ? `<DeleteMarker><Key>${xmlEscape(entry.key)}</Key><VersionId>${entry.versionId}</VersionId></DeleteMarker>` : `<Version><Key>${xmlEscape(entry.key)}</Key><VersionId>${entry.versionId}</VersionId></Version>`));
      return send(`<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>${name}</Name><MaxKeys>${max}</MaxKeys><IsTruncated>${bucket.versions.length > max}</IsTruncated>${entries.join('')}</ListVersionsResult>`);
    }
    if (method === 'POST' && url.searchParams.has('delete')) {
      const objects = [...body.matchAll(/<Object>([\s\S]*?)<\/Object>/g)].map((match) => ({
        key: xmlUnescape(/<Key>([\s\S]*?)<\/Key>/.exec(match[1]!)?.[1] ?? ''),
        versionId: /<VersionId>([\s\S]*?)<\/VersionId>/.exec(match[1]!)?.[1],
      }));
      const errors: string[] = [];
      for (const object of objects) {
        if (this.lockedKeys.has(`${name}/${object.key}`)) {
          errors.push(`<Error><Key>${xmlEscape(object.key)}</Key><VersionId>${object.versionId ?? ''}</VersionId><Code>AccessDenied</Code><Message>Access Denied because object protected by object lock.</Message></Error>`);
          continue;
        }
        bucket.versions = bucket.versions.filter((entry) => !(entry.key === object.key && (object.versionId === undefined || entry.versionId === object.versionId)));
      }
      return send(`<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">${errors.join('')}</DeleteResult>`);
    }
    throw new Fault('NotImplemented', `the fake S3 does not answer ${method} ${url.pathname}${url.search}`, 501);
  }
}
