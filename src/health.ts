/**
 * Health of the service's loops, as users see it in /api/status and on the page. The web
 * tier and the controllers may be separate processes that share only the buckets and
 * queues, so the controllers publish theirs as a small object in the output bucket and the
 * web tier reads it back.
 */
import { z } from 'zod';
import { QueueError } from './queue/port.js';

export const loopHealthSchema = z.object({
  /** The loop as users know it, e.g. "launch controller". */
  loop: z.string().min(1).max(100),
  ok: z.boolean(),
  /** What is wrong and what to do about it, in the user's words. */
  problem: z.string().max(2000).optional(),
  /** The error as the code met it, for the operator. */
  detail: z.string().max(4000).optional(),
  /** When the current run of failures began (epoch milliseconds). */
  since: z.number().optional(),
  /** Failures in the current run. */
  failures: z.number().int().min(0).optional(),
});
export type LoopHealth = z.infer<typeof loopHealthSchema>;

/** Why the tier has the size it has: the launch policy's last decision and what it saw. */
export const scalingStatusSchema = z.object({
  policy: z.string().max(50),
  /** Instances that can usefully run at once, and the hard maximum. */
  capacity: z.number().int().min(0),
  max: z.number().int().min(0),
  backlog: z.number().int().min(0),
  inFlight: z.number().int().min(0),
  /** Instances after the last decision (not stopped). */
  target: z.number().int().min(0),
  /** Expected time to drain the backlog, in ms; null when nothing waits. */
  drainMs: z.number().nullable(),
  serviceMs: z.number().min(0),
  startupMs: z.number().min(0),
  /** Whether the times are measured, or still the priors. */
  measured: z.object({ service: z.boolean(), startup: z.boolean() }),
  reason: z.string().max(500),
  at: z.number(),
});
export type ScalingStatus = z.infer<typeof scalingStatusSchema>;

/** What the controllers publish under CONTROLLER_HEALTH_KEY in the output bucket. */
export const controllerHealthSchema = z.object({
  /** When it was written, so a reader can tell a stale report from a current one. */
  writtenAt: z.number(),
  loops: z.array(loopHealthSchema).max(20),
  scaling: scalingStatusSchema.optional(),
});
export type ControllerHealth = z.infer<typeof controllerHealthSchema>;

export const CONTROLLER_HEALTH_KEY = 'health/controllers.json';
/** The controllers write their report at least this often... */
export const CONTROLLER_HEALTH_EVERY_MS = 10_000;
/** ...so one older than this means they are not running (or cannot write). */
export const CONTROLLER_HEALTH_STALE_MS = 3 * CONTROLLER_HEALTH_EVERY_MS + 5_000;

export function parseControllerHealth(text: string): ControllerHealth | undefined {
  try {
    const parsed = controllerHealthSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** The error's own message, on one line and of bounded length. */
export function errorDetail(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return oneLine(message, 4000);
}

export function oneLine(text: string, max = 2000): string {
  // eslint-disable-next-line no-control-regex
  const flat = text.replace(/[\u0000-\u001f\u007f]+/g, ' ').replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/**
 * The error in words a user can act on: the usual persistent causes get what to do about
 * them; anything else is its own message.
 */
export function describeProblem(error: unknown): string {
  const detail = errorDetail(error);
  const names = errorNames(error);
  if (error instanceof QueueError) {
    switch (error.code) {
      case 'queue-missing':
        return 'queues missing: run icaas aws provision (or check --queue-prefix and the region)';
      case 'access-denied':
        return `no access to the queues: check the AWS credentials and their permissions (${detail})`;
      case 'throttled':
        return 'the queue service is throttling requests; retrying more slowly';
    }
  }
  if (names.includes('CredentialsProviderError') || /Could not load credentials/i.test(detail)) {
    return 'no AWS credentials: run aws configure, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)';
  }
  if (/Region is missing/i.test(detail)) return 'no AWS region: set --region or AWS_REGION';
  if (names.includes('NoSuchBucket') || /bucket "[^"]+" does not exist/.test(detail)) {
    return `bucket missing: run icaas aws provision, or check --input-bucket and --output-bucket (${detail})`;
  }
  const code = (error as { code?: unknown } | null)?.code ?? (error as { cause?: { code?: unknown } } | null)?.cause?.code;
  if (code === 'ENOSPC') return `the disk is full: free some space (${detail})`;
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return `no permission to write the data folder: check --data and its owner (${detail})`;
  if (code === 'ENOTDIR' || code === 'EISDIR') return `the data folder is damaged (a file where a folder should be): check --data (${detail})`;
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN') return `cannot reach the service: check the endpoint and the network (${detail})`;
  return detail;
}

function errorNames(error: unknown): string[] {
  const names: string[] = [];
  for (let current: unknown = error, depth = 0; current && typeof current === 'object' && depth < 4; current = (current as { cause?: unknown }).cause, depth++) {
    const { name, Code } = current as { name?: unknown; Code?: unknown };
    if (typeof name === 'string') names.push(name);
    if (typeof Code === 'string') names.push(Code);
  }
  return names;
}
