/**
 * Exponential backoff with jitter: the one rule every retrying loop follows, so a fault
 * that persists costs a few attempts a minute instead of thousands, and many processes
 * that failed together do not retry in step.
 */
import { setTimeout as delay } from 'node:timers/promises';

export interface BackoffOptions {
  /** Ceiling of the wait after the first failure. */
  initialMs: number;
  /** The ceiling doubles with each failure in a row up to this. */
  maxMs: number;
}

/**
 * The wait after `failures` failures in a row: at least half the ceiling, so the wait
 * really grows, plus a random part of the other half.
 */
export function backoffDelay(failures: number, { initialMs, maxMs }: BackoffOptions, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(Math.max(failures, 1) - 1, 40));
  return ceiling / 2 + random() * (ceiling / 2);
}

/** Counts failures in a row and says how long to wait before the next attempt. */
export class Backoff {
  private failuresInRow = 0;

  constructor(
    private readonly options: BackoffOptions,
    private readonly random: () => number = Math.random,
  ) {
    if (!(options.initialMs > 0) || !(options.maxMs >= options.initialMs)) {
      throw new RangeError(`backoff needs 0 < initialMs <= maxMs, got ${options.initialMs} and ${options.maxMs}`);
    }
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

/** Waits `ms`; returns false, without throwing, when the signal ends the wait early. */
export async function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return false;
  try {
    await delay(Math.max(0, ms), undefined, signal ? { signal } : undefined);
    return true;
  } catch (error) {
    if (signal?.aborted) return false;
    throw error;
  }
}
