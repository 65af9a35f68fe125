/**
 * Defaults for the two compute adapters; every one can be overridden by its flag.
 *
 * local: measured on the 2-core development machine (AMD EPYC, 2026-11-30) with
 * `icaas start`, drain-time policy, idle wait 5 s:
 *  - start-up (ready - launch in the event log) 0.7 to 1.4 s with nothing else starting;
 *    20 started at once (queue-match) took 6.8 to 8.6 s each; the processor-sharing
 *    model gives 6.8 s from the 600 ms of CPU a start costs;
 *  - service: two workers finished 900 images (`npm run bench`) about 19 s after they were
 *    ready, sharing the 2 cores with the web tier and the controllers: 42 ms per image
 *    per worker, counting the queue and store calls; one worker alone takes 27 ms.
 * ec2: a new instance takes about 40 s to boot and start its worker; one worker per
 * instance with its own core, so capacity is the maximum and a start costs the running
 * ones nothing; the time per image is one local worker's alone (27 ms, bench/worker.ts).
 */
import { parseDistribution, type Distribution } from './distributions.js';

export const PRESET_NAMES = ['local', 'ec2'] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

export interface Preset {
  max: number;
  /** Cores the instances share; undefined: the maximum (each instance has its own). */
  capacity: number | undefined;
  startup: Distribution;
  service: Distribution;
  /** CPU a start takes from running instances, in ms (the process adapter's startCostMs). */
  startCostMs: number;
  /** What the controller assumes before it has measured a start-up (the adapter's prior). */
  startupPriorMs: number;
}

export function preset(name: PresetName): Preset {
  switch (name) {
    case 'local':
      return { max: 20, capacity: 2, startup: parseDistribution('normal:1000:300', 'local start-up'), service: parseDistribution('lognormal:42:15', 'local service'), startCostMs: 600, startupPriorMs: 2_000 };
    case 'ec2':
      return { max: 20, capacity: undefined, startup: parseDistribution('normal:40000:5000', 'ec2 start-up'), service: parseDistribution('lognormal:27:8', 'ec2 service'), startCostMs: 0, startupPriorMs: 40_000 };
  }
}
