/** What a chaos run does, and its defaults (those of `npm run chaos`). */
import type { EmulatedDeployment } from '../cloud/deployment.js';

export interface ChaosOptions {
  images: number;
  clients: number;
  /** Seconds over which the clients spread their uploads. */
  durationSeconds: number;
  maxInstances: number;
  /** Milliseconds between worker kills; 0 for none. */
  killEveryMs: number;
  /**
   * Kill only workers that hold an image. Killing one still starting counts towards the
   * start-failure hold-back (a crash loop looks the same), which, when workers start slowly,
   * can hold back starts longer than the run allows; this keeps the run about the queues.
   */
  killBusyOnly: boolean;
  restartWeb: boolean;
  restartControllers: boolean;
  /** Most files per upload request (each request takes 1 to this many). */
  filesPerRequest: number;
  /** Seconds to wait, after the uploads, for every image to finish. */
  timeoutSeconds: number;
  /** Keep the data folder (buckets, queues, registry, worker logs) for a look afterwards. */
  keep: boolean;
  /** Controller processes running at once against the one data folder. */
  controllers: number;
  /** Milliseconds by which every process's wall clock is stepped mid-run (negative: back); 0 for none. */
  clockStepMs: number;
  /** The service's --max-attempts. */
  maxAttempts: number;
  /**
   * The service's --policy. queue-match by default: it drives the tier to its maximum,
   * which is what the check that the maximum holds under kills and restarts needs.
   */
  policy: string;
  /**
   * Run in the distributed shape on this deployment (S3 and SQS on the protocol emulator,
   * local workers) instead of on files and SQLite.
   */
  cloud?: EmulatedDeployment;
  log: (line: string) => void;
}

export const DEFAULT_CHAOS: ChaosOptions = {
  images: 500,
  clients: 50,
  durationSeconds: 60,
  maxInstances: 20,
  policy: 'queue-match',
  killEveryMs: 1000,
  killBusyOnly: false,
  restartWeb: true,
  restartControllers: true,
  filesPerRequest: 4,
  timeoutSeconds: 300,
  keep: false,
  controllers: 1,
  clockStepMs: 0,
  maxAttempts: 3,
  log: () => {},
};

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
