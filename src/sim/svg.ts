/**
 * A standalone SVG chart of a run: one panel per policy, on a shared time axis so panels
 * compare at a glance. Lines: instances in all (starting + idle + busy) and busy ones on
 * the left axis, images waiting in the queue (dashed) on the right axis. Each value holds
 * until the next tick (step lines).
 */
import type { SimRun, TickSample } from './engine.js';

const WIDTH = 820;
const PANEL_HEIGHT = 250;
const MARGIN = { left: 60, right: 70, top: 40, bottom: 45 };
/** More points than pixels only bloat the file: samples are merged per pixel column, keeping peaks. */
const MAX_POINTS = 1600;

const SERIES = [
  { name: 'instances', color: '#1f6feb', dash: '', value: (s: TickSample) => s.starting + s.idle + s.busy, axis: 'left' },
  { name: 'busy', color: '#2da44e', dash: '', value: (s: TickSample) => s.busy, axis: 'left' },
  { name: 'starting', color: '#bf8700', dash: '2 3', value: (s: TickSample) => s.starting, axis: 'left' },
  { name: 'queue depth', color: '#cf222e', dash: '6 4', value: (s: TickSample) => s.waiting, axis: 'right' },
] as const;

export function chart(runs: Pick<SimRun, 'policy' | 'timeline'>[], title: string): string {
  const endMs = Math.max(1, ...runs.map((run) => run.timeline[run.timeline.length - 1]?.at ?? 0));
  const leftMax = niceCeiling(largest(runs, SERIES[0].value));
  const rightMax = niceCeiling(largest(runs, SERIES[3].value));
  const height = runs.length * PANEL_HEIGHT + 30;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="12">`,
    `<title>${escape(title)}</title>`,
    `<rect x="0" y="0" width="${WIDTH}" height="${height}" fill="#ffffff"/>`,
    `<text x="${WIDTH / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${escape(title)}</text>`,
    ...runs.map((run, i) => panel(run, 30 + i * PANEL_HEIGHT, endMs, leftMax, rightMax)),
    '</svg>',
  ];
  return `${parts.join('\n')}\n`;
}

function panel(run: Pick<SimRun, 'policy' | 'timeline'>, top: number, endMs: number, leftMax: number, rightMax: number): string {
  const x0 = MARGIN.left;
  const x1 = WIDTH - MARGIN.right;
  const y0 = top + PANEL_HEIGHT - MARGIN.bottom;
  const y1 = top + MARGIN.top;
  const x = (ms: number) => x0 + ((x1 - x0) * ms) / endMs;
  const y = (value: number, max: number) => y0 - ((y0 - y1) * value) / max;
  const out: string[] = [`<g>`, `<text x="${x0}" y="${top + 22}" font-weight="bold">${escape(run.policy)}</text>`];
  out.push(`<rect x="${x0}" y="${y1}" width="${x1 - x0}" height="${y0 - y1}" fill="none" stroke="#888"/>`);
  for (const value of ticks(leftMax)) out.push(`<line x1="${x0 - 4}" y1="${fmt(y(value, leftMax))}" x2="${x0}" y2="${fmt(y(value, leftMax))}" stroke="#888"/><text x="${x0 - 7}" y="${fmt(y(value, leftMax) + 4)}" text-anchor="end">${value}</text>`);
  for (const value of ticks(rightMax)) out.push(`<line x1="${x1}" y1="${fmt(y(value, rightMax))}" x2="${x1 + 4}" y2="${fmt(y(value, rightMax))}" stroke="#888"/><text x="${x1 + 7}" y="${fmt(y(value, rightMax) + 4)}">${value}</text>`);
  for (const value of ticks(endMs / 1000)) out.push(`<line x1="${fmt(x(value * 1000))}" y1="${y0}" x2="${fmt(x(value * 1000))}" y2="${y0 + 4}" stroke="#888"/><text x="${fmt(x(value * 1000))}" y="${y0 + 17}" text-anchor="middle">${value}</text>`);
  out.push(`<text x="${(x0 + x1) / 2}" y="${y0 + 34}" text-anchor="middle">time (s)</text>`);
  out.push(`<text transform="translate(${x0 - 42} ${(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">instances</text>`);
  out.push(`<text transform="translate(${x1 + 55} ${(y0 + y1) / 2}) rotate(90)" text-anchor="middle">images waiting</text>`);
  const samples = merge(run.timeline);
  SERIES.forEach((series, i) => {
    const max = series.axis === 'left' ? leftMax : rightMax;
    const points: string[] = [];
    let previous: number | undefined;
    for (const sample of samples) {
      const value = series.value(sample);
      if (previous !== undefined) points.push(`${fmt(x(sample.at))},${fmt(y(previous, max))}`);
      points.push(`${fmt(x(sample.at))},${fmt(y(value, max))}`);
      previous = value;
    }
    out.push(`<polyline fill="none" stroke="${series.color}" stroke-width="1.5"${series.dash ? ` stroke-dasharray="${series.dash}"` : ''} points="${points.join(' ')}"/>`);
    const lx = x0 + 120 + i * 120;
    out.push(`<line x1="${lx}" y1="${top + 18}" x2="${lx + 24}" y2="${top + 18}" stroke="${series.color}" stroke-width="2"${series.dash ? ` stroke-dasharray="${series.dash}"` : ''}/><text x="${lx + 29}" y="${top + 22}">${series.name}</text>`);
  });
  out.push('</g>');
  return out.join('\n');
}

/** Keeps at most MAX_POINTS samples, each the largest of the samples it stands for. */
function merge(timeline: TickSample[]): TickSample[] {
  if (timeline.length <= MAX_POINTS) return timeline;
  const size = Math.ceil(timeline.length / MAX_POINTS);
  const merged: TickSample[] = [];
  for (let i = 0; i < timeline.length; i += size) {
    const group = timeline.slice(i, i + size);
    const peak = (key: 'starting' | 'idle' | 'busy' | 'waiting' | 'started') => Math.max(...group.map((sample) => sample[key]));
    merged.push({ at: group[0]!.at, starting: peak('starting'), idle: peak('idle'), busy: peak('busy'), waiting: peak('waiting'), started: peak('started') });
  }
  return merged;
}

function largest(runs: Pick<SimRun, 'timeline'>[], value: (sample: TickSample) => number): number {
  let max = 1;
  for (const run of runs) for (const sample of run.timeline) max = Math.max(max, value(sample));
  return max;
}

/** 1, 2 or 5 times a power of ten, at or above `value`. */
function niceCeiling(value: number): number {
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((step) => step * power).find((candidate) => candidate >= value)!;
}

/** About five round tick values from 0 to max. */
function ticks(max: number): number[] {
  const rough = max / 5;
  const power = 10 ** Math.floor(Math.log10(rough || 1));
  const step = [1, 2, 5, 10].map((s) => s * power).find((s) => s >= rough) ?? power;
  const values: number[] = [];
  for (let value = 0; value <= max + step * 1e-9; value += step) values.push(Number(value.toPrecision(12)));
  return values;
}

function fmt(value: number): string {
  return (Math.round(value * 10) / 10).toString();
}

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}
