/**
 * The launch decision, as a pure function of what the controller observes, so it can be
 * unit-tested and simulated without queues or processes.
 */
export interface LaunchObservation {
  /** Messages waiting in the launch queue (visible now). */
  visible: number;
  starting: number;
  idle: number;
  busy: number;
  max: number;
}

/**
 * How many instances to start: enough that every waiting message meets a free instance
 * (idle, or starting and so about to be idle), never passing the maximum, which counts
 * every instance that is not stopped.
 */
export function decideLaunch({ visible, starting, idle, busy, max }: LaunchObservation): number {
  for (const [name, value] of Object.entries({ visible, starting, idle, busy, max })) {
    if (!Number.isInteger(value) || value < 0) throw new RangeError(`${name} must be a whole number >= 0, got ${value}`);
  }
  const unmet = visible - starting - idle;
  const room = max - (starting + idle + busy);
  return Math.max(0, Math.min(unmet, room));
}
