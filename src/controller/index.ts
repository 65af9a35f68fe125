/** The controllers as one long-running service: the launch loop and the monitor loop. */
import type { Runtime } from '../runtime.js';
import { launchTick } from './launch.js';
import { every, type Loop } from './loop.js';
import { monitorTick } from './monitor.js';

export interface Controllers {
  stop(): Promise<void>;
}

export function startControllers(runtime: Runtime, log: (line: string) => void): Controllers {
  const { config } = runtime;
  let lastLaunchLine = '';
  const terminateFailures = new Map<string, string>();
  const launch = every(config.launchIntervalMs, async () => {
    const tick = await launchTick(runtime.queues.launch, runtime.compute);
    for (const { id, detail } of tick.deadlines?.terminated ?? []) {
      log(`launch: terminated ${id}: ${detail}`);
      terminateFailures.delete(id);
    }
    // A terminate that keeps failing is retried every tick but reported once per distinct error.
    for (const { id, detail, error } of tick.deadlines?.failed ?? []) {
      if (terminateFailures.get(id) !== error) log(`launch: could not terminate ${id} (${detail}); retrying every tick: ${error}`);
      terminateFailures.set(id, error);
    }
    if (tick.started > 0) {
      const line = `launch: ${tick.visible} waiting, ${tick.starting} starting, ${tick.idle} idle, ${tick.busy} busy; started ${tick.started} (max ${tick.max})`;
      if (line !== lastLaunchLine) log(line);
      lastLaunchLine = line;
    }
  }, (error) => log(`launch controller: ${(error as Error).message}`));

  const monitorOptions = {
    store: runtime.store,
    outputBucket: config.outputBucket,
    queues: runtime.queues,
    compute: runtime.compute,
    deadlineSeconds: config.deadlineSeconds,
    checkSeconds: config.monitorCheckSeconds,
    maxAttempts: config.maxAttempts,
    log: (line: string) => log(`monitor: ${line}`),
  };
  // The monitor long-polls, so its loop needs no pause between ticks.
  const monitor = every(0, async (signal) => {
    await monitorTick(monitorOptions, 1, signal);
  }, (error) => log(`monitor controller: ${(error as Error).message}`));

  const loops: Loop[] = [launch, monitor];
  return {
    async stop() {
      await Promise.all(loops.map((loop) => loop.stop()));
    },
  };
}
