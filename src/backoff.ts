/**
 * Exponential backoff with jitter: the one rule every retrying loop follows, so a fault
 * that persists costs a few attempts a minute instead of thousands, and many processes
 * that failed together do not retry in step.
 *
 * Requests to AWS are retried by the SDK's own standard retry mode (see awsRetry below),
 * which backs off on throttling and transient errors; what is here covers what the SDK
 * does not retry (credentials, permissions, missing queues: faults an operator fixes while
 * the loops wait) and everything that is not an AWS call.
 */
import { setTimeout as delay } from 'node:timers/promises';

export interface BackoffOptions {
  /** Ceiling of the wait after the first failure. */
  initialMs: number;
  /** The ceiling doubles with each failure in a row up to this. */
  maxMs: number;
  /**
   * 'full' (the default): anywhere from 0 to the ceiling, which spreads retries of many
   * clients best. 'equal': at least half the ceiling, for loops that promise a wait that
   * really grows (a crash-looping worker is not restarted sooner than that).
   */
  jitter?: 'full' | 'equal';
}

/** The wait after `failures` failures in a row (the first failure is 1). */
export function backoffDelay(failures: number, { initialMs, maxMs, jitter = 'full' }: BackoffOptions, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(Math.max(failures, 1) - 1, 40));
  return jitter === 'equal' ? ceiling / 2 + random() * (ceiling / 2) : random() * ceiling;
}

function checkOptions(options: BackoffOptions): void {
  if (!(options.initialMs > 0) || !(options.maxMs >= options.initialMs)) {
    throw new RangeError(`backoff needs 0 < initialMs <= maxMs, got ${options.initialMs} and ${options.maxMs}`);
  }
}

/** Counts failures in a row and says how long to wait before the next attempt. */
export class Backoff {
  private failuresInRow = 0;

  constructor(
    private readonly options: BackoffOptions,
    private readonly random: () => number = Math.random,
  ) {
    checkOptions(options);
  }

  get failures(): number {
    return this.failuresInRow;
  }

  /** Records one more failure; returns the wait before the next attempt. */
  next(): number {
    this.failuresInRow++;
    return backoffDelay(this.failuresInRow, this.options, this.random);
  }

  reset(): void {
    this.failuresInRow = 0;
  }
}

/**
 * Waits `ms`; returns false, without throwing, as soon as any of the signals ends the
 * wait early (true when the whole wait passed).
 */
export async function sleep(ms: number, ...signals: (AbortSignal | undefined)[]): Promise<boolean> {
  const active = signals.filter((signal): signal is AbortSignal => signal !== undefined);
  if (active.some((signal) => signal.aborted)) return false;
  // One controller linked by listeners that are removed afterwards, rather than
  // AbortSignal.any, whose result long-lived signals (a provider's closing) would keep.
  const ended = new AbortController();
  const end = (): void => ended.abort();
  for (const signal of active) signal.addEventListener('abort', end, { once: true });
  try {
    await delay(Math.max(0, ms), undefined, active.length > 0 ? { signal: ended.signal } : undefined);
    return true;
  } catch (error) {
    if (ended.signal.aborted) return false;
    throw error;
  } finally {
    for (const signal of active) signal.removeEventListener('abort', end);
  }
}

export interface RetryOptions extends BackoffOptions {
  /** Attempts in all, the first included. Default: no limit (then set deadlineMs). */
  attempts?: number;
  /** No attempt starts later than this after the first one. Default: no limit. */
  deadlineMs?: number;
  /** Ends the waits and stops retrying; the last error is thrown. */
  signal?: AbortSignal;
  /** Whether this error is worth another attempt. Default: every error. */
  retryable?: (error: unknown, attempt: number) => boolean;
  /** Told before each wait, e.g. to log the failure. */
  onRetry?: (error: unknown, attempt: number, waitMs: number) => void;
  /** For tests: the random source of the jitter, and the clock of the deadline. */
  random?: () => number;
  now?: () => number;
}

/**
 * Runs `work` until it succeeds, waiting with backoff between attempts. Gives up, throwing
 * the last error, when the error is not retryable, the attempts are spent, the next
 * attempt would start after the deadline, or the signal aborts.
 */
export async function retry<T>(work: (attempt: number) => Promise<T>, options: RetryOptions): Promise<T> {
  checkOptions(options);
  if (options.attempts === undefined && options.deadlineMs === undefined) throw new RangeError('retry needs attempts or deadlineMs, or it may never end');
  if (options.attempts !== undefined && !(Number.isInteger(options.attempts) && options.attempts >= 1)) throw new RangeError(`retry needs attempts >= 1, got ${options.attempts}`);
  const now = options.now ?? performance.now.bind(performance);
  const random = options.random ?? Math.random;
  const started = now();
  for (let attempt = 1; ; attempt++) {
    try {
      return await work(attempt);
    } catch (error) {
      if (options.signal?.aborted) throw error;
      if (options.retryable && !options.retryable(error, attempt)) throw error;
      if (options.attempts !== undefined && attempt >= options.attempts) throw error;
      const waitMs = backoffDelay(attempt, options, random);
      if (options.deadlineMs !== undefined && now() + waitMs - started > options.deadlineMs) throw error;
      options.onRetry?.(error, attempt, waitMs);
      if (!(await sleep(waitMs, options.signal))) throw error;
    }
  }
}

/**
 * How the AWS SDK clients (S3, SQS, EC2) retry: the SDK's standard mode backs off with
 * full jitter on throttling and transient errors (5xx, timeouts, connection resets) and
 * keeps a retry quota so an outage does not multiply the load. Not retried: errors of
 * the request itself, credentials and permissions. Three attempts, the SDK's default,
 * because the loops above retry a failed pass anyway.
 */
export const AWS_MAX_ATTEMPTS = 3;

export function awsRetry(maxAttempts: number = AWS_MAX_ATTEMPTS): { retryMode: 'standard'; maxAttempts: number } {
  return { retryMode: 'standard', maxAttempts };
}
