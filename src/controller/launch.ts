import type { Compute, DeadlineSweep } from '../compute/port.js';
import type { Queue } from '../queue/port.js';
import { decideLaunch, type LaunchObservation } from './policy.js';

export interface LaunchTick extends LaunchObservation {
  started: number;
  /** Instances the deadline sweep ended, or failed to end, this tick; absent when none. */
  deadlines?: DeadlineSweep;
}

/** One launch-controller tick: observe the queue and the instances, apply the policy. */
export async function launchTick(launchQueue: Queue, compute: Compute): Promise<LaunchTick> {
  // First, so that slots freed by instances that overran a deadline can be used this tick.
  const deadlines = await compute.enforceDeadlines();
  const [counts, instances] = await Promise.all([launchQueue.counts(), compute.list()]);
  const observation: LaunchObservation = { visible: counts.visible, starting: 0, idle: 0, busy: 0, max: compute.maxInstances };
  for (const instance of instances) {
    if (instance.state !== 'stopped') observation[instance.state]++;
  }
  const wanted = decideLaunch(observation);
  const started = wanted > 0 ? (await compute.start(wanted)).length : 0;
  const swept = deadlines.terminated.length + deadlines.failed.length > 0;
  return { ...observation, started, ...(swept ? { deadlines } : {}) };
}
