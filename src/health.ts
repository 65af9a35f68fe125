/**
 * Health of the service's loops, as users see it in /api/status and on the page. The web
 * tier and the controllers may be separate processes that share only the buckets and
 * queues, so the controllers publish theirs as a small object in the output bucket and the
 * web tier reads it back.
 */
import { z } from 'zod';
import { loopHealthSchema, scalingStatusSchema, type LoopHealth, type ScalingStatus } from './api-schemas.js';
import { QueueError } from './queue/port.js';

// Their shapes are part of the HTTP API (/api/status), so they are declared with it.
export { loopHealthSchema, scalingStatusSchema, type LoopHealth, type ScalingStatus };

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
