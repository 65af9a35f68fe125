/**
 * Defaults for the two compute adapters; every one can be overridden by its flag.
 *
 * local: measured on the 2-core development machine (AMD EPYC, 2026-11-30) with
 * `icaas start` and the 100 shared images, drain-time policy, idle wait 5 s:
 *  - start-up (instances.db, ready_at - started_at) 1374 and 1404 ms with nothing else
 *    starting; 20 started at once (queue-match) took 6.8 to 8.6 s each; the
 *    processor-sharing model gives 6.8 s from the 600 ms of CPU a start costs;
 *  - service: workers logged 80 ms mean (SD 33 ms) per image for fetch and classify, and
 *    two workers finished the 100 images 4.7 s after they were ready: 94 ms per image per
 *    worker, counting the queue and store round trips the log line leaves out.
 * ec2: a new instance takes about 40 s to boot and start its worker; one worker per
 * instance with its own core, so capacity is the maximum and a start costs the running
 * ones nothing; the time per image is the local one-core time.
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
      return { max: 20, capacity: 2, startup: parseDistribution('normal:1400:50', 'local start-up'), service: parseDistribution('lognormal:94:33', 'local service'), startCostMs: 600, startupPriorMs: 2_000 };
    case 'ec2':
      return { max: 20, capacity: undefined, startup: parseDistribution('normal:40000:5000', 'ec2 start-up'), service: parseDistribution('lognormal:94:33', 'ec2 service'), startCostMs: 0, startupPriorMs: 40_000 };
  }
}
