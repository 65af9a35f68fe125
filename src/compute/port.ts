/**
 * Compute port: the worker instances of the application tier. Adapters: OS processes
 * running `icaas worker` (embedded default) and EC2 instances (distributed).
 */
export type InstanceState = 'starting' | 'idle' | 'busy' | 'stopped';

export interface InstanceInfo {
  id: string;
  state: InstanceState;
  /** Epoch milliseconds. */
  startedAt: number;
  /** The image the instance holds, where known. */
  imageId?: string;
  /** Images it has finished, where known. */
  processed?: number;
  /** When its worker first reported (start-up over), epoch ms, where the adapter records it. */
  readyAt?: number;
  /** The worker's moving average of its time per image, in ms, where known. */
  serviceMs?: number;
}

/** What a worker says about itself, where the adapter can record it. */
export interface InstanceReport {
  state: Exclude<InstanceState, 'starting'>;
  imageId?: string | null;
  processed?: number;
  /** Moving average of the worker's wall time per image, in ms: the launch policy's service time. */
  serviceMs?: number;
}

export interface Compute {
  /** The most instances that may exist at once, counting those still starting. */
  readonly maxInstances: number;
  /** How many instances can usefully run at once (CPU-bound work: the cores they share); the maximum when absent. */
  readonly capacity?: number;
  /** What the launch policy assumes an instance takes to start, in ms, until it has measured one. */
  readonly startupPriorMs?: number;
  /** Capacity one start takes from the running instances, in instance-ms (see ScalingObservation). */
  readonly startCostMs?: number;
  /**
   * Starts up to n instances, fewer when that would pass the maximum; returns the ids of
   * those started. Safe against concurrent callers: the maximum holds across them.
   */
  start(n: number): Promise<string[]>;
  /** Instances that are not known to be stopped (recently stopped ones may be listed as stopped). */
  list(): Promise<InstanceInfo[]>;
  /** Stops the instance at once, whatever it is doing. Terminating a stopped one is a no-op. */
  terminate(id: string): Promise<void>;
  /** Records what an instance says about itself (the adapter decides where). */
  report(id: string, report: InstanceReport): Promise<void>;
  /**
   * Why a stopped instance stopped, in its own words where the adapter keeps them (the
   * last lines of its log), or where to look; undefined when there is nothing to say.
   */
  startFailure?(id: string): Promise<string | undefined>;
  /**
   * Brings every instance that overran a deadline to an end: started but never reported,
   * idle past the idle wait, holding an image or exiting for too long, or a terminate that
   * failed earlier (retried until the platform confirms the instance gone; until then it
   * still counts against the maximum). Also forgets instances stopped long ago. The
   * launch controller calls it every tick; concurrent callers are safe.
   */
  enforceDeadlines(): Promise<DeadlineSweep>;
  close(): Promise<void>;
}

/** Why an instance was (or is being) terminated by enforceDeadlines. */
export type DeadlineReason = 'start-timeout' | 'idle-timeout' | 'busy-timeout' | 'exit-timeout' | 'terminate-retry';

export interface DeadlineSweep {
  /** Instances terminated by this sweep. */
  terminated: { id: string; reason: DeadlineReason; detail: string }[];
  /** Instances whose terminate failed; they still count and the next sweep tries again. */
  failed: { id: string; reason: DeadlineReason; detail: string; error: string }[];
}

/** Deadlines every adapter enforces; each one is off when absent. */
export interface InstanceDeadlines {
  /** From start to the worker's first report. */
  startTimeoutMs?: number;
  /** Reported idle (the worker long-polls for work) for longer than this. */
  idleTimeoutMs?: number;
  /** Reported busy with one image for longer than this (the monitor normally ends it first). */
  busyTimeoutMs?: number;
  /** Reported stopped (the worker exited) while the instance still runs. */
  exitTimeoutMs?: number;
}

/** The reason in words, for logs. */
export function describeDeadline(reason: DeadlineReason, deadlines: InstanceDeadlines): string {
  const seconds = (ms: number | undefined) => `${Math.round((ms ?? 0) / 1000)} s`;
  switch (reason) {
    case 'start-timeout':
      return `its worker did not report within ${seconds(deadlines.startTimeoutMs)} of the start`;
    case 'idle-timeout':
      return `idle for more than ${seconds(deadlines.idleTimeoutMs)} without stopping itself`;
    case 'busy-timeout':
      return `held one image for more than ${seconds(deadlines.busyTimeoutMs)}`;
    case 'exit-timeout':
      return `still running ${seconds(deadlines.exitTimeoutMs)} after its worker exited`;
    case 'terminate-retry':
      return 'an earlier terminate did not take effect';
  }
}

/**
 * Environment every worker process gets, on any compute adapter, to keep its memory low.
 * Peak resident memory over 300 images (bench/worker.ts): about 175 MB without any of it on
 * Node.js 20; with all three 125 MB on Node.js 20, 134 MB on 22, 139 MB on 24 and 140 MB on
 * 26.
 * - glibc gives each thread that allocates (ONNX Runtime's and libvips's) its own malloc
 *   arena, up to 8 per core, each keeping freed memory; a worker classifies one image at a
 *   time, so two arenas serve it as well. Other C libraries ignore the variable.
 * - V8's young generation grows to 16 MB semi-spaces under allocation pressure; a worker
 *   allocates little on the JS heap (pixels live in native buffers), so 1 MB costs a few
 *   more minor collections and no measurable time.
 * - The heap limit: on Node.js 24 and 26, with the default (about 4 GB, from the machine's
 *   memory), the buffers of images already classified that reached the old generation pile
 *   up before a full collection frees them (heaptrack: 23 MB of file reads still held at
 *   the peak), and a worker peaked at 161-165 MB. Limits from 48 to 512 MB measured alike,
 *   2 GB and more did not help; Node.js 20 and 22 are unchanged by it. A worker's JS heap
 *   holds about 10 MB, so 256 MB leaves room, and a worker that leaked would end and have
 *   its image retried instead of pushing the machine into swap.
 */
export const WORKER_PROCESS_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2', NODE_OPTIONS: '--max-semi-space-size=1 --max-old-space-size=256' };

export function isActive(instance: InstanceInfo): boolean {
  return instance.state !== 'stopped';
}
