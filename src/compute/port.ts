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
}

/** What a worker says about itself, where the adapter can record it. */
export interface InstanceReport {
  state: Exclude<InstanceState, 'starting'>;
  imageId?: string | null;
  processed?: number;
}

export interface Compute {
  /** The most instances that may exist at once, counting those still starting. */
  readonly maxInstances: number;
  /**
   * Starts up to n instances, fewer when that would pass the maximum; returns the ids of
   * those started. Safe against concurrent callers: the maximum holds across them.
   */
  start(n: number): Promise<string[]>;
  /** Instances that are not known to be stopped (recently stopped ones may be listed as stopped). */
  list(): Promise<InstanceInfo[]>;
  /** Stops the instance at once, whatever it is doing. Terminating a stopped one is a no-op. */
  terminate(id: string): Promise<void>;
  /** Records what an instance says about itself; a no-op where the platform tells us instead. */
  report(id: string, report: InstanceReport): Promise<void>;
  /**
   * Why a stopped instance stopped, in its own words where the adapter keeps them (the
   * last lines of its log), or where to look; undefined when there is nothing to say.
   */
  startFailure?(id: string): Promise<string | undefined>;
  close(): Promise<void>;
}

export function isActive(instance: InstanceInfo): boolean {
  return instance.state !== 'stopped';
}
