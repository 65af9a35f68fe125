/**
 * Calibration against a real run: the arrivals, start-up times and service times of a data
 * folder's event log, and the settings its launch controller ran with.
 */
import { access } from 'node:fs/promises';
import path from 'node:path';
import { EVENT_LOG_FILE, readEventLog, type RunEvent } from '../event-log.js';
import { SimInputError } from './errors.js';
import { traceFromTimes, type Trace } from './traces.js';

export interface ReplayData {
  trace: Trace;
  /** ready - launch per instance, ms; empty when the log has none. */
  startupSamples: number[];
  /** Per finished image: the reported service time, else finish - start of the same image. */
  serviceSamples: number[];
  /** First arrival to last image-finish, ms. */
  realCompletionMs: number;
  /** The launch controller's settings, from its last `run` event. */
  run: { policy?: string; maxInstances?: number; capacity?: number; idleWaitSeconds?: number; compute?: string };
  /** Lines of the log that did not parse. */
  skipped: number;
}

export async function loadReplay(folder: string): Promise<ReplayData> {
  const file = path.join(folder, EVENT_LOG_FILE);
  try {
    await access(file);
  } catch {
    throw new SimInputError(`--replay: no event log in ${folder} (${file} does not exist); it is written by a service run with that data folder`);
  }
  const { events, skipped } = await readEventLog(file);
  const arrivals = events.filter((event) => event.type === 'arrival').map((event) => event.at);
  if (arrivals.length === 0) throw new SimInputError(`--replay: ${file} has no arrivals: no image was uploaded during the run, or no web tier wrote to this log`);
  const finishes = events.filter((event): event is Extract<RunEvent, { type: 'image-finish' }> => event.type === 'image-finish');
  if (finishes.length === 0) throw new SimInputError(`--replay: ${file} has no finished images to compare with`);
  const firstArrival = arrivals.reduce((first, at) => Math.min(first, at), Infinity);
  const lastFinish = finishes.reduce((last, event) => Math.max(last, event.at), -Infinity);
  return {
    trace: traceFromTimes(arrivals, `replay of ${folder}`),
    startupSamples: startupTimes(events),
    serviceSamples: serviceTimes(events),
    realCompletionMs: lastFinish - firstArrival,
    run: controllerSettings(events),
    skipped,
  };
}

function startupTimes(events: RunEvent[]): number[] {
  const launched = new Map<string, number>();
  const samples: number[] = [];
  for (const event of events) {
    if (event.type === 'launch') launched.set(event.instanceId, event.at);
    if (event.type === 'ready') {
      const at = launched.get(event.instanceId);
      if (at !== undefined && event.at >= at) samples.push(event.at - at);
      launched.delete(event.instanceId);
    }
  }
  return samples;
}

function serviceTimes(events: RunEvent[]): number[] {
  // Events are sorted by time: the last start seen before a finish is the attempt that finished.
  const started = new Map<string, { at: number; instanceId: string }>();
  const samples: number[] = [];
  for (const event of events) {
    if (event.type === 'image-start') started.set(event.imageId, { at: event.at, instanceId: event.instanceId });
    if (event.type !== 'image-finish') continue;
    if (event.serviceMs !== undefined) {
      samples.push(event.serviceMs);
      continue;
    }
    const start = started.get(event.imageId);
    if (start && (event.instanceId === undefined || event.instanceId === start.instanceId) && event.at >= start.at) samples.push(event.at - start.at);
  }
  return samples;
}

function controllerSettings(events: RunEvent[]): ReplayData['run'] {
  const runs = events.filter((event): event is Extract<RunEvent, { type: 'run' }> => event.type === 'run' && (event.policy !== undefined || event.maxInstances !== undefined));
  const last = runs[runs.length - 1];
  if (!last) return {};
  const { policy, maxInstances, capacity, idleWaitSeconds, compute } = last;
  return {
    ...(policy !== undefined ? { policy } : {}),
    ...(maxInstances !== undefined ? { maxInstances } : {}),
    ...(capacity !== undefined ? { capacity } : {}),
    ...(idleWaitSeconds !== undefined ? { idleWaitSeconds } : {}),
    ...(compute !== undefined ? { compute } : {}),
  };
}
