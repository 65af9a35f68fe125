/**
 * The one source of time for the service. `now()` is the wall clock (epoch milliseconds):
 * use it for timestamps that other processes or users read. `monotonic()` never jumps when
 * the wall clock is stepped (NTP, a VM resumed, an operator): use it for durations, timeouts
 * and waits inside one process.
 *
 * For tests and the chaos run the wall clock can be offset without touching the machine's:
 * when ICAAS_TEST_CLOCK_FILE names a file, its content is an offset in milliseconds added to
 * every process's now(), re-read at most every 100 ms, so a running set of processes can have
 * their clock stepped together by rewriting one file. Like the other ICAAS_TEST_* switches it
 * is honoured only when set; the monotonic clock is never offset, as a real step leaves it
 * alone too.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

export interface Clock {
  /** Wall-clock epoch milliseconds; may jump backwards or forwards. */
  now(): number;
  /** Milliseconds from an arbitrary origin; never goes backwards. Compare within one process only. */
  monotonic(): number;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
};

/** The system clock with its wall time shifted by whatever `offsetMs()` returns at each call. */
export function offsetClock(offsetMs: () => number, base: Clock = systemClock): Clock {
  return {
    now: () => base.now() + offsetMs(),
    monotonic: () => base.monotonic(),
  };
}

const CLOCK_FILE_REREAD_MS = 100;

/** A wall clock offset by the number in `file`; a missing or unreadable file means no offset. */
export function fileOffsetClock(file: string, base: Clock = systemClock): Clock {
  let offset = 0;
  let readAt = -Infinity;
  return offsetClock(() => {
    const at = base.monotonic();
    if (at - readAt >= CLOCK_FILE_REREAD_MS) {
      readAt = at;
      offset = readOffset(file);
    }
    return offset;
  }, base);
}

function readOffset(file: string): number {
  try {
    const value = Number(readFileSync(file, 'utf8').trim());
    return Number.isFinite(value) ? value : 0;
  } catch {
    return 0;
  }
}

/** The clock every component uses unless a test hands it another. */
export const clock: Clock = process.env.ICAAS_TEST_CLOCK_FILE ? fileOffsetClock(process.env.ICAAS_TEST_CLOCK_FILE) : systemClock;
