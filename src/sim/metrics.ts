/** What one simulated run comes to: the numbers the table, the JSON and the tests use. */
import type { Cluster, SimImage } from './cluster.js';

export interface RunSummary {
  images: number;
  /** First arrival to last finish, ms. */
  completionMs: number;
  /** Arrival to finish per image, ms. */
  latency: { p50: number; p95: number; max: number };
  /** Most instances that existed at once (not stopped), counting those starting. */
  peakInstances: number;
  launches: number;
  /** Sum over instances of launch to stop: what the tier costs. */
  instanceSeconds: number;
}

export function summarize(images: SimImage[], cluster: Cluster, timeline: { starting: number; idle: number; busy: number }[], now: number): RunSummary {
  const latencies = images.map((image) => image.finishedAt! - image.arrivedAt).sort((a, b) => a - b);
  let firstArrival = Infinity;
  let lastFinish = -Infinity;
  for (const image of images) {
    firstArrival = Math.min(firstArrival, image.arrivedAt);
    lastFinish = Math.max(lastFinish, image.finishedAt!);
  }
  return {
    images: images.length,
    completionMs: lastFinish - firstArrival,
    latency: { p50: percentile(latencies, 0.5), p95: percentile(latencies, 0.95), max: latencies[latencies.length - 1] ?? 0 },
    // Instances are only started by ticks, and a tick's sample is taken right after its
    // starts, so the peak is among the samples.
    peakInstances: timeline.reduce((peak, sample) => Math.max(peak, sample.starting + sample.idle + sample.busy), 0),
    launches: cluster.launches,
    instanceSeconds: cluster.instanceMs(now) / 1000,
  };
}

/** Nearest rank: the smallest value with at least `fraction` of the values at or below it. */
export function percentile(sorted: readonly number[], fraction: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))]!;
}
