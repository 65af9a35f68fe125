/**
 * Deploys the deployment's template (template.ts) as a CloudFormation stack, and deletes it.
 *
 * Every deploy goes through a change set, so what will change is known before anything
 * does: a dry run prints it and deletes the change set; a change set without changes means
 * the stack is up to date, and nothing is executed. Waiting prints each stack event once,
 * and a failure ends with the failed resources and CloudFormation's reasons.
 *
 * A stack of the deployment's name that lacks the tag `icaas:deployment=<deployment>` was
 * not made by icaas: it is neither updated nor deleted.
 */
import {
  CreateChangeSetCommand,
  DeleteChangeSetCommand,
  DeleteStackCommand,
  DescribeChangeSetCommand,
  DescribeStackEventsCommand,
  DescribeStacksCommand,
  ExecuteChangeSetCommand,
  ListStackResourcesCommand,
  type CloudFormationClient,
  type Change,
  type Stack,
  type StackEvent,
  type StackResourceSummary,
} from '@aws-sdk/client-cloudformation';
import { Backoff, sleep } from '../backoff.js';
import { TAG_DEPLOYMENT } from '../compute/ec2.js';
import type { Template } from './cfn.js';
import { attempt, AwsProvisionError, describeFailure, errorCode, isThrottling } from './errors.js';

export interface StackOptions {
  cfn: CloudFormationClient;
  stackName: string;
  deployment: string;
  log: (line: string) => void;
  dryRun?: boolean;
  /** Between two looks at a change set or a stack operation. Default 5 s. */
  pollMs?: number;
  /** How long to wait for a change set or stack operation. Default 1 h. */
  timeoutMs?: number;
}

export interface ResourceChangeLine {
  action: string;
  logicalId: string;
  type: string;
  physicalId?: string;
  replacement?: string;
}

export interface DeployResult {
  outcome: 'created' | 'updated' | 'unchanged' | 'dry-run';
  changes: ResourceChangeLine[];
  outputs: Record<string, string>;
}

const BUSY = /_IN_PROGRESS$/;
/** States a change set cannot start from, with what to do about each. */
const STUCK: Record<string, string> = {
  ROLLBACK_FAILED: 'its creation failed and so did the rollback; run `icaas aws teardown` (after fixing what the events below name), then provision again',
  DELETE_FAILED: 'a teardown could not delete it; run `icaas aws teardown` again after fixing the cause',
  UPDATE_ROLLBACK_FAILED: 'an update failed and so did its rollback; fix the cause, then continue the rollback (console: Stack actions, Continue update rollback; or `aws cloudformation continue-update-rollback`) and provision again',
  IMPORT_ROLLBACK_FAILED: 'an import failed and so did its rollback; see its events in the CloudFormation console',
};
const FAILURE_HINTS: Record<string, string> = {
  ...STUCK,
  ROLLBACK_COMPLETE: 'CloudFormation rolled the creation back; the stack holds nothing. Fix the cause and run provision again (it deletes the empty stack first)',
  UPDATE_ROLLBACK_COMPLETE: 'CloudFormation rolled the update back; the deployment is as it was before',
  DELETE_FAILED: 'the stack and what could not be deleted remain; fix the cause and run teardown again',
};
/** What CloudFormation reports for the resources it stopped because another failed. */
const CANCELLED = /^Resource (creation|update) cancelled$/;
const NO_CHANGES = /didn't contain changes|No updates are to be performed/i;

export function isOurs(stack: Stack, deployment: string): boolean {
  return (stack.Tags ?? []).some((tag) => tag.Key === TAG_DEPLOYMENT && tag.Value === deployment);
}

/** The stack by name or id, or null when there is none (or it was deleted); SDK errors as they are. */
async function findStack(cfn: CloudFormationClient, stack: string): Promise<Stack | null> {
  try {
    const found = (await cfn.send(new DescribeStacksCommand({ StackName: stack }))).Stacks?.[0];
    return found && found.StackStatus !== 'DELETE_COMPLETE' ? found : null;
  } catch (error) {
    if (errorCode(error) === 'ValidationError' && /does not exist/.test((error as Error).message)) return null;
    throw error;
  }
}

export function describeStack(cfn: CloudFormationClient, stack: string): Promise<Stack | null> {
  return attempt(`cloudformation:DescribeStacks ${stack}`, () => findStack(cfn, stack));
}

function assertOurs(stack: Stack, options: StackOptions): void {
  if (!isOurs(stack, options.deployment)) {
    throw new AwsProvisionError(`a stack named ${options.stackName} exists but was not made for deployment ${options.deployment} (it lacks the tag ${TAG_DEPLOYMENT}=${options.deployment}); it is left alone: choose another --deployment`);
  }
}

export function outputsOf(stack: Stack | null): Record<string, string> {
  return Object.fromEntries((stack?.Outputs ?? []).flatMap((output) => (output.OutputKey ? [[output.OutputKey, output.OutputValue ?? '']] : [])));
}

/**
 * Looks at a change set or stack until `done` says it settled. A throttled look is retried
 * with backoff a few times in a row before giving up; the operation itself goes on in AWS.
 */
class Watcher {
  private readonly pollMs: number;
  private readonly deadline: number;

  constructor(private readonly options: StackOptions) {
    this.pollMs = options.pollMs ?? 5000;
    this.deadline = Date.now() + (options.timeoutMs ?? 3_600_000);
  }

  async look<T>(call: string, run: () => Promise<T>): Promise<T> {
    const backoff = new Backoff({ initialMs: this.pollMs, maxMs: Math.max(this.pollMs, 30_000) });
    for (;;) {
      try {
        return await run();
      } catch (error) {
        if (!isThrottling(error) || backoff.failures >= 4) {
          const failure = describeFailure(call, error);
          throw new AwsProvisionError(`${failure.message}; the stack operation may still be running: see stack ${this.options.stackName} in the CloudFormation console, or run the command again`, { cause: error });
        }
        await sleep(backoff.next());
      }
    }
  }

  async pause(what: string): Promise<void> {
    if (Date.now() > this.deadline) {
      throw new AwsProvisionError(`gave up waiting for ${what} after ${Math.round((this.options.timeoutMs ?? 3_600_000) / 1000)} s; it goes on in AWS: see stack ${this.options.stackName} in the CloudFormation console`);
    }
    await sleep(this.pollMs);
  }
}

/** Prints each stack event once, oldest first, and keeps the failures for the error. */
class EventLog {
  private readonly seen = new Set<string>();
  readonly failures: StackEvent[] = [];

  constructor(
    private readonly cfn: CloudFormationClient,
    private readonly stackId: string,
    private readonly log: (line: string) => void,
  ) {}

  /** Marks the events so far as seen: only this operation's are printed. */
  async start(watcher: Watcher): Promise<void> {
    for (const event of await this.fetch(watcher)) this.seen.add(event.EventId ?? '');
  }

  async update(watcher: Watcher): Promise<void> {
    const fresh = await this.fetch(watcher);
    for (const event of fresh.reverse()) {
      this.seen.add(event.EventId ?? '');
      const reason = event.ResourceStatusReason ? `: ${event.ResourceStatusReason}` : '';
      this.log(`  ${event.LogicalResourceId} (${event.ResourceType}) ${event.ResourceStatus}${reason}`);
      if (/_FAILED$/.test(event.ResourceStatus ?? '') && event.ResourceType !== 'AWS::CloudFormation::Stack') this.failures.push(event);
    }
  }

  /** The events not seen yet, newest first: pages until one reaches a seen event. */
  private async fetch(watcher: Watcher): Promise<StackEvent[]> {
    const fresh: StackEvent[] = [];
    let nextToken: string | undefined;
    do {
      const page = await watcher.look('cloudformation:DescribeStackEvents', () =>
        this.cfn.send(new DescribeStackEventsCommand({ StackName: this.stackId, ...(nextToken ? { NextToken: nextToken } : {}) })),
      );
      const events = page.StackEvents ?? [];
      const unseen = events.filter((event) => !this.seen.has(event.EventId ?? ''));
      fresh.push(...unseen);
      nextToken = unseen.length === events.length ? page.NextToken : undefined;
    } while (nextToken);
    return fresh;
  }
}

/** Waits for the stack operation to end; returns the stack, or throws with the failures. */
async function waitForStack(cfn: CloudFormationClient, stackId: string, success: string, events: EventLog, watcher: Watcher, options: StackOptions): Promise<Stack | null> {
  for (;;) {
    await events.update(watcher);
    const stack = await watcher.look('cloudformation:DescribeStacks', () => findStack(cfn, stackId));
    const status = stack?.StackStatus ?? 'DELETE_COMPLETE';
    if (status === success) return stack;
    if (!BUSY.test(status)) {
      await events.update(watcher);
      const causes = events.failures.filter((event) => !CANCELLED.test(event.ResourceStatusReason ?? ''));
      const reasons = (causes.length ? causes : events.failures).map((event) => `  ${event.LogicalResourceId} (${event.ResourceType}) ${event.ResourceStatus}: ${event.ResourceStatusReason ?? 'no reason given'}`);
      const hint = FAILURE_HINTS[status] ?? 'see its events in the CloudFormation console';
      throw new AwsProvisionError(
        [`stack ${options.stackName} ended in ${status}${stack?.StackStatusReason ? ` (${stack.StackStatusReason})` : ''}; ${hint}.`, ...(reasons.length ? ['failed:', ...reasons] : [])].join('\n'),
      );
    }
    await watcher.pause(`stack ${options.stackName}`);
  }
}

async function deleteAndWait(cfn: CloudFormationClient, stack: Stack, options: StackOptions): Promise<void> {
  const watcher = new Watcher(options);
  const events = new EventLog(cfn, stack.StackId!, options.log);
  await events.start(watcher);
  await attempt(`cloudformation:DeleteStack ${options.stackName}`, () => cfn.send(new DeleteStackCommand({ StackName: stack.StackId })));
  await waitForStack(cfn, stack.StackId!, 'DELETE_COMPLETE', events, watcher, options);
}

interface Review {
  changes: ResourceChangeLine[];
  /** Set when CloudFormation would not make the change set. */
  failure?: string;
}

async function reviewChangeSet(cfn: CloudFormationClient, changeSetId: string, watcher: Watcher): Promise<Review> {
  const changes: Change[] = [];
  let nextToken: string | undefined;
  for (;;) {
    const described = await watcher.look('cloudformation:DescribeChangeSet', () =>
      cfn.send(new DescribeChangeSetCommand({ ChangeSetName: changeSetId, ...(nextToken ? { NextToken: nextToken } : {}) })),
    );
    if (described.Status === 'FAILED') return { changes: [], failure: described.StatusReason ?? 'no reason given' };
    if (described.Status !== 'CREATE_COMPLETE') {
      await watcher.pause('the change set');
      continue;
    }
    changes.push(...(described.Changes ?? []));
    nextToken = described.NextToken;
    if (!nextToken) break;
  }
  return {
    changes: changes.flatMap(({ ResourceChange: change }) =>
      change
        ? [{
            action: change.Action ?? 'Unknown',
            logicalId: change.LogicalResourceId ?? '',
            type: change.ResourceType ?? '',
            ...(change.PhysicalResourceId ? { physicalId: change.PhysicalResourceId } : {}),
            ...(change.Replacement ? { replacement: change.Replacement } : {}),
          }]
        : [],
    ),
  };
}

export function describeChange(change: ResourceChangeLine): string {
  const replacement = change.action === 'Modify' && change.replacement && change.replacement !== 'False' ? `, replacement: ${change.replacement}` : '';
  return `${change.action.toLowerCase().padEnd(6)} ${change.logicalId} (${change.type}${change.physicalId ? ` ${change.physicalId}` : ''}${replacement})`;
}

/** Refuses a stack no change set can start from, saying why and what to do. */
function assertDeployable(stack: Stack | null, options: StackOptions): void {
  const status = stack?.StackStatus;
  if (!status || status === 'REVIEW_IN_PROGRESS') return;
  if (BUSY.test(status)) throw new AwsProvisionError(`stack ${options.stackName} is busy (${status}); wait until it ends (CloudFormation console) and run provision again`);
  if (STUCK[status]) throw new AwsProvisionError(`stack ${options.stackName} is in ${status}: ${STUCK[status]}`);
}

/** Creates or updates the stack to the template; see the module comment. */
export async function deployStack(template: Template, parameters: Record<string, string>, options: StackOptions): Promise<DeployResult> {
  const { cfn, stackName, log } = options;
  let stack = await describeStack(cfn, stackName);
  if (stack) assertOurs(stack, options);
  if (stack?.StackStatus === 'ROLLBACK_COMPLETE') {
    if (options.dryRun) {
      log(`stack ${stackName} is in ROLLBACK_COMPLETE (its creation failed and was rolled back, so it holds nothing); provision deletes it and creates it again, so no change set can be shown until then`);
      return { outcome: 'dry-run', changes: [], outputs: {} };
    }
    log(`stack ${stackName} is in ROLLBACK_COMPLETE: its creation failed and was rolled back, so it holds nothing; deleting it to create it again`);
    await deleteAndWait(cfn, stack, options);
    stack = null;
  }
  assertDeployable(stack, options);

  const type = !stack || stack.StackStatus === 'REVIEW_IN_PROGRESS' ? 'CREATE' : 'UPDATE';
  const created = await attempt(`cloudformation:CreateChangeSet ${stackName}`, () =>
    cfn.send(new CreateChangeSetCommand({
      StackName: stackName,
      ChangeSetName: `icaas-${Date.now()}`,
      ChangeSetType: type,
      Description: `icaas aws provision${options.dryRun ? ' --dry-run' : ''}`,
      TemplateBody: JSON.stringify(template),
      Parameters: Object.entries(parameters).map(([ParameterKey, ParameterValue]) => ({ ParameterKey, ParameterValue })),
      // The worker role and instance profile have names of their own (<deployment>-worker).
      Capabilities: ['CAPABILITY_NAMED_IAM'],
      Tags: [{ Key: TAG_DEPLOYMENT, Value: options.deployment }],
    })),
  );
  const changeSetId = created.Id!;
  const stackId = created.StackId!;
  const watcher = new Watcher(options);
  let executed = false;
  try {
    const review = await reviewChangeSet(cfn, changeSetId, watcher);
    if (review.failure !== undefined) {
      if (NO_CHANGES.test(review.failure)) {
        log(`stack ${stackName} is up to date: nothing to change`);
        return { outcome: options.dryRun ? 'dry-run' : 'unchanged', changes: [], outputs: outputsOf(stack) };
      }
      throw new AwsProvisionError(`CloudFormation could not plan the change to stack ${stackName}: ${review.failure}`);
    }
    log(`${options.dryRun ? 'would change' : 'changes'} in stack ${stackName} (${type === 'CREATE' ? 'new stack' : 'update'}):`);
    for (const change of review.changes) log(`  ${describeChange(change)}`);
    if (options.dryRun) return { outcome: 'dry-run', changes: review.changes, outputs: outputsOf(stack) };

    const events = new EventLog(cfn, stackId, log);
    await events.start(watcher);
    await attempt(`cloudformation:ExecuteChangeSet ${stackName}`, () => cfn.send(new ExecuteChangeSetCommand({ ChangeSetName: changeSetId })));
    executed = true;
    log(`${type === 'CREATE' ? 'creating' : 'updating'} stack ${stackName}:`);
    const done = await waitForStack(cfn, stackId, type === 'CREATE' ? 'CREATE_COMPLETE' : 'UPDATE_COMPLETE', events, watcher, options);
    return { outcome: type === 'CREATE' ? 'created' : 'updated', changes: review.changes, outputs: outputsOf(done) };
  } finally {
    if (!executed) await discardChangeSet(cfn, changeSetId, type === 'CREATE' ? stackId : undefined, options);
  }
}

/**
 * Deletes a change set that will not run; for a new stack also the empty stack that
 * CloudFormation made to hold it (REVIEW_IN_PROGRESS), so a dry run leaves nothing behind.
 * A failure here is reported, not thrown: it must not hide the outcome itself.
 */
async function discardChangeSet(cfn: CloudFormationClient, changeSetId: string, newStackId: string | undefined, options: StackOptions): Promise<void> {
  try {
    await cfn.send(new DeleteChangeSetCommand({ ChangeSetName: changeSetId }));
    if (newStackId) await cfn.send(new DeleteStackCommand({ StackName: newStackId }));
  } catch (error) {
    options.log(`could not clean up change set ${changeSetId}${newStackId ? ' and its empty stack' : ''}: ${describeFailure('cleanup', error).message}; delete it in the CloudFormation console`);
  }
}

export async function listStackResources(cfn: CloudFormationClient, stackId: string): Promise<StackResourceSummary[]> {
  const resources: StackResourceSummary[] = [];
  let nextToken: string | undefined;
  do {
    const page = await attempt('cloudformation:ListStackResources', () => cfn.send(new ListStackResourcesCommand({ StackName: stackId, ...(nextToken ? { NextToken: nextToken } : {}) })));
    resources.push(...(page.StackResourceSummaries ?? []));
    nextToken = page.NextToken;
  } while (nextToken);
  return resources;
}

/** The stack, if it exists and is ours to delete; null when there is none. */
export async function stackToDelete(options: StackOptions): Promise<Stack | null> {
  const stack = await describeStack(options.cfn, options.stackName);
  if (!stack) return null;
  assertOurs(stack, options);
  const status = stack.StackStatus ?? '';
  if (BUSY.test(status) && status !== 'REVIEW_IN_PROGRESS' && status !== 'DELETE_IN_PROGRESS') {
    throw new AwsProvisionError(`stack ${options.stackName} is busy (${status}); wait until it ends (CloudFormation console) and run teardown again`);
  }
  return stack;
}

export async function deleteStack(stack: Stack, options: StackOptions): Promise<void> {
  options.log(`deleting stack ${options.stackName}:`);
  await deleteAndWait(options.cfn, stack, options);
}
