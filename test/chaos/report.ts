/** What a chaos run reports, and its text form. */
import type { AttemptsReport, BucketOutcome, InstancePeaks, StreamOutcome } from './checks.js';
import type { Killed } from './faults.js';
import type { ChaosOptions } from './options.js';
import type { UploadCounts } from './uploader.js';

export type { AttemptsReport } from './checks.js';

export interface ChaosReport {
  options: Omit<ChaosOptions, 'log'>;
  seconds: number;
  uploads: UploadCounts;
  accepted: number;
  final: number;
  ok: number;
  errors: number;
  lost: number;
  duplicateIds: number;
  bucket: BucketOutcome;
  stream: StreamOutcome;
  /** Images stored by requests the client never got an answer to (not accepted), and whether they all finished. */
  unacknowledged: { images: number; unfinished: number; orphans: number };
  instances: InstancePeaks;
  /** Attempts per image, from the results and the retry claims in the output bucket. */
  attempts: AttemptsReport;
  /** When the wall clock was stepped, in seconds from the start; null when it was not. */
  clockSteppedAt: number | null;
  killed: Killed;
  failures: string[];
  /** The images behind the failures, for a look at what went wrong. */
  details: string[];
  dataDir?: string;
}

export function formatReport(report: ChaosReport): string {
  const { options: o, uploads: u, stream: s, instances: i, bucket: b, killed: k } = report;
  return [
    `chaos: ${o.images} images by ${o.clients} clients over ${o.durationSeconds}s, at most ${o.maxInstances} instances`,
    `faults: ${k.workers} worker instances killed (one every ${o.killEveryMs / 1000}s), web tier killed and restarted ${k.web}x, controllers ${k.controllers}x; ${o.controllers} controller process${o.controllers === 1 ? '' : 'es'} at once`,
    ...(report.clockSteppedAt !== null ? [`clock: every process's wall clock stepped by ${o.clockStepMs / 1000}s at ${report.clockSteppedAt.toFixed(1)}s`] : []),
    `uploads: ${u.accepted} requests accepted; ${u.retried} retried (${u.refusedConnection} connection refused, ${u.reset} cut off, ${u.shuttingDown} 503, ${u.busy} 429, ${u.serverErrors} 5xx)`,
    `accepted images: ${report.accepted}; with one final result: ${report.final} (${report.ok} ok, ${report.errors} error); lost: ${report.lost}; listed twice: ${report.duplicateIds}`,
    `output bucket: ${b.results} result objects, ${b.missing} missing, ${b.disagree} disagreeing with the API`,
    `live stream: ${s.shown} of ${report.accepted} results shown (${s.onStream} as events, ${s.afterReset} by a reload on connecting or after a reset), ${s.shownTwice} shown twice, ${s.notShown} never shown; ${s.resets} resets, ${s.reconnects} reconnects`,
    `unacknowledged uploads: ${report.unacknowledged.images} images accepted without an answer reaching the client (${report.unacknowledged.unfinished} unfinished), ${report.unacknowledged.orphans} stored before the upload was cut off (never queued)`,
    `instances: peak ${i.peakStatus} in /api/status, ${i.peakRegistry} in the registry, ${i.peakProcesses} worker processes; maximum ${i.max}`,
    `attempts: at most ${report.attempts.maxSeen} per image (limit ${report.attempts.limit}); ${report.attempts.retries} retries claimed; ${report.attempts.overLimit} images over the limit`,
    `took ${report.seconds.toFixed(1)}s`,
    ...(report.dataDir ? [`data kept in ${report.dataDir}`] : []),
    report.failures.length === 0 ? 'PASS: every check holds' : `FAIL:\n${[...report.failures, ...report.details].map((line) => `  - ${line}`).join('\n')}`,
  ].join('\n');
}
