/**
 * The one moving average of measured times (a worker's time per image, the controller's
 * service and start-up times, the simulator's model of both): recent enough to follow a
 * change of load within a few samples, smooth enough that one outlier does not swing it.
 */
const NEWEST_WEIGHT = 0.2;

export function movingAverage(current: number | undefined, sample: number): number {
  return current === undefined ? sample : current + NEWEST_WEIGHT * (sample - current);
}
