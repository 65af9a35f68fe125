/**
 * Seeded pseudo-random numbers, so that one seed gives one result. Each purpose (arrivals,
 * start-up times, service times) draws from its own stream: two policies compared on the
 * same seed then see the same images with the same service times and the same start-up
 * time for their k-th launch, whatever else differs between their runs.
 */
export type Random = () => number;

/** mulberry32: small, fast, and good enough for simulation draws. Returns [0, 1). */
export function mulberry32(seed: number): Random {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type Stream = 'arrivals' | 'startup' | 'service';
const STREAM_SALT: Record<Stream, number> = { arrivals: 0x9e3779b9, startup: 0x85ebca6b, service: 0xc2b2ae35 };

export function stream(seed: number, purpose: Stream): Random {
  // Mix the salt in so that nearby seeds and the three streams do not overlap.
  let h = (seed ^ STREAM_SALT[purpose]) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b) >>> 0;
  return mulberry32((h ^ (h >>> 16)) >>> 0);
}

/** A standard normal draw (Box-Muller). */
export function standardNormal(random: Random): number {
  const u = 1 - random(); // (0, 1]: log(0) would be -Infinity
  const v = random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** An exponential draw with the given mean. */
export function exponential(random: Random, mean: number): number {
  return -Math.log(1 - random()) * mean;
}
