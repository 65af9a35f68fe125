/**
 * Arrival traces. Open traces are a list of arrival times fixed in advance; the closed one
 * (`sync`) is a load generator that keeps C synchronous requests of one image each in
 * flight: each client sends its next request the moment its previous answer arrives, so
 * arrivals depend on how fast the service answers.
 *
 *   burst:N              N images at t = 0 (one upload of N files)
 *   poisson:RATE:SECONDS Poisson arrivals at RATE images/s for SECONDS
 *   sync:C[:TOTAL]       C concurrent synchronous requests, TOTAL in all (default C: one each)
 *   csv:FILE             one arrival time in seconds per line, optional header
 */
import { readFileSync } from 'node:fs';
import { SimInputError } from './errors.js';
import { parseBounded, parseNumberLines, parseWhole } from './numbers.js';
import { exponential, stream } from './random.js';

/** More images than this is a typo or a run that would take minutes of CPU. */
export const MAX_IMAGES = 1_000_000;
const MAX_RATE = 10_000;
const MAX_TRACE_SECONDS = 7 * 86_400;

export type Trace =
  | { spec: string; kind: 'open'; /** Arrival times in ms, sorted. */ times: number[] }
  | { spec: string; kind: 'closed'; clients: number; total: number };

export function traceImages(trace: Trace): number {
  return trace.kind === 'open' ? trace.times.length : trace.total;
}

/** Poisson draws come from the seed's arrival stream, so a seed fixes the trace too. */
export function parseTrace(spec: string, seed: number): Trace {
  const [kind, ...args] = spec.split(':');
  const arity = (counts: number[], form: string) => {
    if (!counts.includes(args.length)) throw new SimInputError(`--trace: expected ${form}, got ${JSON.stringify(spec)}`);
  };
  switch (kind) {
    case 'burst': {
      arity([1], 'burst:N');
      const count = parseWhole(args[0]!, '--trace burst N', 1, MAX_IMAGES);
      return { spec, kind: 'open', times: new Array<number>(count).fill(0) };
    }
    case 'poisson': {
      arity([2], 'poisson:RATE:SECONDS');
      const rate = parseBounded(args[0]!, '--trace poisson RATE', Number.MIN_VALUE, MAX_RATE);
      const seconds = parseBounded(args[1]!, '--trace poisson SECONDS', Number.MIN_VALUE, MAX_TRACE_SECONDS);
      if (rate * seconds > MAX_IMAGES) throw new SimInputError(`--trace ${spec}: about ${Math.round(rate * seconds)} images expected, more than the ${MAX_IMAGES} a trace may hold`);
      return { spec, kind: 'open', times: poissonTimes(rate, seconds, seed) };
    }
    case 'sync': {
      arity([1, 2], 'sync:CLIENTS[:TOTAL]');
      const clients = parseWhole(args[0]!, '--trace sync CLIENTS', 1, MAX_IMAGES);
      const total = args[1] === undefined ? clients : parseWhole(args[1], '--trace sync TOTAL', clients, MAX_IMAGES);
      return { spec, kind: 'closed', clients, total };
    }
    case 'csv': {
      const file = args.join(':');
      if (file === '') throw new SimInputError('--trace: expected csv:FILE');
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (error) {
        throw new SimInputError(`--trace: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
      }
      const seconds = parseNumberLines(text, file, 'arrival times', MAX_TRACE_SECONDS, MAX_IMAGES);
      return { spec, kind: 'open', times: seconds.map((s) => s * 1000).sort((a, b) => a - b) };
    }
    default:
      throw new SimInputError(`--trace: unknown trace ${JSON.stringify(spec)}; use burst:N, poisson:RATE:SECONDS, sync:CLIENTS[:TOTAL] or csv:FILE`);
  }
}

/** Arrival times (ms) relative to the first: what --replay takes from an event log. */
export function traceFromTimes(times: readonly number[], spec: string): Trace {
  if (times.length === 0) throw new SimInputError(`${spec}: no arrivals`);
  if (times.length > MAX_IMAGES) throw new SimInputError(`${spec}: more than ${MAX_IMAGES} arrivals`);
  const sorted = [...times].sort((a, b) => a - b);
  return { spec, kind: 'open', times: sorted.map((t) => t - sorted[0]!) };
}

function poissonTimes(rate: number, seconds: number, seed: number): number[] {
  const random = stream(seed, 'arrivals');
  const meanGapMs = 1000 / rate;
  const endMs = seconds * 1000;
  const times: number[] = [];
  for (let t = exponential(random, meanGapMs); t < endMs && times.length < MAX_IMAGES; t += exponential(random, meanGapMs)) times.push(t);
  return times;
}
