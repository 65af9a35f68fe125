/**
 * The long-running loops of the service (launch and monitor controllers, the output phase,
 * status broadcasts) and how they live with faults: a failed pass is retried after a wait
 * that grows while the failure lasts, and the failure is logged once with a count instead
 * of once per pass, because a fault that persists (queues missing, a full disk) would
 * otherwise flood the log and the service it cannot reach.
 */
import { Backoff, sleep, type BackoffOptions } from '../backoff.js';
import { describeProblem, errorDetail, type LoopHealth } from '../health.js';
import type { Logger } from '../log.js';

/** Repeated failures are summarised in the log at most this often while they last. */
const SUMMARY_EVERY_MS = 60_000;
const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 15_000 };

interface FailureKind {
  detail: string;
  problem: string;
  /** Failures of this kind since it was last written to the log. */
  unlogged: number;
}

/**
 * Tracks one loop's run of failures: logs each kind of failure when it first appears,
 * then a count at most once a minute, and one line when the loop works again.
 */
export class FailureLog {
  private since: number | undefined;
  private failuresInRun = 0;
  private lastSummaryAt = 0;
  private readonly kinds = new Map<string, FailureKind>();
  private latest: FailureKind | undefined;

  constructor(
    readonly name: string,
    private readonly log: Logger,
    private readonly onChange: (health: LoopHealth) => void = () => {},
  ) {}

  get failing(): boolean {
    return this.since !== undefined;
  }

  /** When the current run of failures began. */
  get failingSince(): number | undefined {
    return this.since;
  }

  /**
   * Records a failure. `key` says which failures count as the same one; by default the
   * message with its numbers left out, so ids and timings do not make each one new.
   */
  failed(error: unknown, key?: string): void {
    const now = Date.now();
    const detail = errorDetail(error);
    const problem = describeProblem(error);
    const kindKey = key ?? detail.replace(/\d+/g, '#');
    const first = this.since === undefined;
    if (first) {
      this.since = now;
      this.lastSummaryAt = now;
    }
    this.failuresInRun++;
    let kind = this.kinds.get(kindKey);
    const changed = first || kind === undefined || this.latest !== kind || kind.problem !== problem;
    if (!kind) {
      kind = { detail, problem, unlogged: 0 };
      this.kinds.set(kindKey, kind);
      this.log.error({ loop: this.name, problem, ...(problem.includes(detail) ? {} : { detail }) }, 'loop failing');
    } else {
      kind.unlogged++;
      kind.detail = detail;
      kind.problem = problem;
    }
    this.latest = kind;
    if (now - this.lastSummaryAt >= SUMMARY_EVERY_MS) this.summarise(now, true);
    if (changed) this.onChange(this.health());
  }

  /** Records a pass that worked; logs the recovery (or `how`) when it ends a run of failures. */
  succeeded(how?: string): void {
    if (this.since === undefined) return;
    const now = Date.now();
    this.summarise(now, false);
    this.log.info({ loop: this.name, failures: this.failuresInRun, failingSeconds: seconds(now - this.since), ...(how ? { how } : {}) }, 'loop working again');
    this.since = undefined;
    this.failuresInRun = 0;
    this.kinds.clear();
    this.latest = undefined;
    this.onChange(this.health());
  }

  health(): LoopHealth {
    if (this.since === undefined || !this.latest) return { loop: this.name, ok: true };
    return { loop: this.name, ok: false, problem: this.latest.problem, detail: this.latest.detail, since: this.since, failures: this.failuresInRun };
  }

  private summarise(now: number, stillFailing: boolean): void {
    for (const kind of this.kinds.values()) {
      if (kind.unlogged === 0) continue;
      this.log.warn({ loop: this.name, detail: kind.detail, repeated: kind.unlogged, inSeconds: seconds(now - this.lastSummaryAt) }, stillFailing ? 'loop still failing' : 'loop failed repeatedly');
      kind.unlogged = 0;
    }
    this.lastSummaryAt = now;
  }
}

function seconds(ms: number): number {
  return Math.max(1, Math.round(ms / 1000));
}

/**
 * Pause of a consumer after a receive that got some messages but not a full batch, before
 * it receives again. A long poll returns as soon as one message is there, so under a steady
 * stream a consumer that asks again at once takes the one or two that arrived meanwhile:
 * measured with two workers on 900 images, the output phase and the monitor each received
 * about 3.5 messages a time, and every receive and every delete is a write to the queue.
 * Pausing lets a batch fill: about half the receives and deletes, and 15 % less CPU in the
 * web tier, for at most this much delay before a result is shown or a notice looked at.
 */
export const GATHER_MS = 100;

/** Waits GATHER_MS when a receive got some messages but fewer than `maxMessages`; returns early when `signal` ends. */
export async function pauseToGather(received: number, maxMessages: number, signal: AbortSignal, gatherMs: number = GATHER_MS): Promise<void> {
  // None: the long poll has waited already. A full batch: more may be waiting now.
  if (received === 0 || received >= maxMessages) return;
  await sleep(gatherMs, signal);
}

export interface LoopOptions {
  /** As users know the loop, in logs and in the status: "launch controller". */
  name: string;
  /** Pause between passes that worked. */
  intervalMs: number;
  /** Its failures and recoveries are logged with the field `loop` set to `name`. */
  log: Logger;
  /** Waits after failed passes; default from 0.5 s doubling to 15 s, each at least half its ceiling. */
  backoff?: BackoffOptions;
  /** Told when the loop starts failing, fails differently, or works again. */
  onHealthChange?: (health: LoopHealth) => void;
}

export interface Loop {
  /** Ends the current pause early (not a backoff wait), e.g. because there is news to publish. */
  wake(): void;
  health(): LoopHealth;
  stop(): Promise<void>;
}

/**
 * Runs a pass every interval until stopped, never overlapping passes, and keeps going
 * after a failed pass because the loops must outlive passing faults.
 */
export function every(options: LoopOptions, pass: (signal: AbortSignal) => Promise<void>): Loop {
  const stopping = new AbortController();
  const failures = new FailureLog(options.name, options.log, options.onHealthChange);
  // Equal jitter: a fault that persists is met less and less often, never in a quick run of passes.
  const backoff = new Backoff({ jitter: 'equal', ...(options.backoff ?? DEFAULT_BACKOFF) });
  let pause: AbortController | undefined;
  /** A wake that came during a pass ends the pause that follows it. */
  let woken = false;
  const running = (async () => {
    while (!stopping.signal.aborted) {
      let wait = options.intervalMs;
      let wakeable = true;
      try {
        await pass(stopping.signal);
        backoff.reset();
        failures.succeeded();
      } catch (error) {
        if (stopping.signal.aborted) break;
        failures.failed(error);
        wait = Math.max(options.intervalMs, backoff.next());
        wakeable = false;
      }
      if (stopping.signal.aborted) break;
      if (wakeable && woken) {
        woken = false;
        continue;
      }
      pause = new AbortController();
      const ended = wakeable ? AbortSignal.any([stopping.signal, pause.signal]) : stopping.signal;
      await sleep(wait, ended);
      pause = undefined;
      if (wakeable) woken = false;
    }
  })();
  return {
    wake: () => {
      woken = true;
      pause?.abort();
    },
    health: () => failures.health(),
    async stop() {
      stopping.abort();
      await running;
    },
  };
}
