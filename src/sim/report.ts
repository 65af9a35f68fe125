/** The results as a table of policies side by side, or as JSON. */
import type { SimRun } from './engine.js';

export interface RunReport {
  run: SimRun;
  /** With --replay: the logged run's completion time to compare against. */
  realCompletionMs?: number;
}

export interface ReportHeader {
  /** One line per setting, already worded. */
  lines: string[];
}

type Row = [label: string, value: (report: RunReport) => string];

const ROWS: Row[] = [
  ['completion (s)', ({ run }) => seconds(run.completionMs)],
  ['latency p50 (s)', ({ run }) => seconds(run.latency.p50)],
  ['latency p95 (s)', ({ run }) => seconds(run.latency.p95)],
  ['latency max (s)', ({ run }) => seconds(run.latency.max)],
  ['peak instances', ({ run }) => String(run.peakInstances)],
  ['instances started', ({ run }) => String(run.launches)],
  ['instance-seconds', ({ run }) => run.instanceSeconds.toFixed(1)],
  ['images', ({ run }) => String(run.images)],
];

const REPLAY_ROWS: Row[] = [
  ['real completion (s)', (report) => seconds(report.realCompletionMs ?? 0)],
  ['difference', (report) => percent(relativeDifference(report))],
];

export function table(header: ReportHeader, reports: RunReport[]): string {
  const rows = reports.some((report) => report.realCompletionMs !== undefined) ? [...ROWS, ...REPLAY_ROWS] : ROWS;
  const labelWidth = Math.max(...rows.map(([label]) => label.length));
  const cells = reports.map((report) => rows.map(([, value]) => value(report)));
  const widths = reports.map((report, i) => Math.max(report.run.policy.length, ...cells[i]!.map((cell) => cell.length)));
  const line = (label: string, values: string[]) => [label.padEnd(labelWidth), ...values.map((value, i) => value.padStart(widths[i]!))].join('  ').trimEnd();
  return [...header.lines, '', line('', reports.map((report) => report.run.policy)), ...rows.map(([label], r) => line(label, cells.map((column) => column[r]!)))].join('\n');
}

export function json(settings: Record<string, unknown>, reports: RunReport[]): string {
  const runs = reports.map(({ run, realCompletionMs }) => ({
    policy: run.policy,
    images: run.images,
    completionMs: Math.round(run.completionMs),
    latencyMs: { p50: Math.round(run.latency.p50), p95: Math.round(run.latency.p95), max: Math.round(run.latency.max) },
    peakInstances: run.peakInstances,
    instancesStarted: run.launches,
    instanceSeconds: Math.round(run.instanceSeconds * 10) / 10,
    ...(realCompletionMs !== undefined ? { realCompletionMs: Math.round(realCompletionMs), difference: Math.round(relativeDifference({ run, realCompletionMs }) * 1000) / 1000 } : {}),
  }));
  return JSON.stringify({ settings, runs }, null, 2);
}

/** (simulated - real) / real: positive when the simulation is slower than the real run. */
export function relativeDifference(report: RunReport): number {
  const real = report.realCompletionMs ?? 0;
  return real > 0 ? (report.run.completionMs - real) / real : report.run.completionMs === real ? 0 : Infinity;
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(1);
}

function percent(fraction: number): string {
  return Number.isFinite(fraction) ? `${fraction >= 0 ? '+' : ''}${(fraction * 100).toFixed(1)} %` : 'n/a';
}
