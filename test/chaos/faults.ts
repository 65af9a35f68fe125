/**
 * The faults a chaos run injects: worker instances killed at random, the web tier and the
 * controllers each killed (SIGKILL) and started again mid-run, and every process's wall
 * clock stepped through the clock file (see src/clock.ts).
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { killGroup, registryInstances, runsInstance, type ServicePart } from './processes.js';
import { sleep, type ChaosOptions } from './options.js';

export interface Killed {
  workers: number;
  web: number;
  controllers: number;
}

/** Kills a random live worker (only a busy one with `busyOnly`) every `everyMs`, until `stopped()`. */
export async function killWorkersAtRandom(registryPath: string, everyMs: number, busyOnly: boolean, killed: Killed, stopped: () => boolean): Promise<void> {
  while (!stopped()) {
    await sleep(everyMs);
    const candidates = registryInstances(registryPath).filter((instance) => instance.pid !== null && (!busyOnly || instance.state === 'busy'));
    const victim = candidates[Math.floor(Math.random() * candidates.length)];
    if (!victim || !runsInstance(victim.pid!, victim.id)) continue;
    if (killGroup(victim.pid!)) killed.workers++;
  }
}

/** Kills a part (SIGKILL), leaves it down a moment so work piles up meanwhile, and starts it again. */
async function killAndRestart(part: ServicePart, log: (line: string) => void, why: string, onKilled: () => void): Promise<void> {
  log(`killing ${part.name === 'web' ? 'the web tier' : 'the controllers'} (SIGKILL) ${why}`);
  await part.kill('SIGKILL');
  onKilled();
  await sleep(1500);
  await part.start();
  log(`${part.name === 'web' ? 'web tier' : 'controllers'} restarted`);
}

export interface RestartPlan {
  web: ServicePart;
  /** The controller that is killed; any others keep running throughout. */
  controller: ServicePart;
  options: ChaosOptions;
  killed: Killed;
  /** Resolves once the run has reached this share of the upload phase and images are being classified. */
  busyAt(share: number, duringUpload: boolean): Promise<void>;
  acceptedCount(): number;
}

/**
 * The restarts, at about two fifths (web tier) and three fifths (controllers) of the upload
 * phase, each once images are being classified, so that results land while the part is down.
 */
export async function restartWebAndControllers(plan: RestartPlan): Promise<void> {
  const { options, killed } = plan;
  if (options.restartWeb) {
    await plan.busyAt(0.4, true);
    await killAndRestart(plan.web, options.log, `with ${plan.acceptedCount()} images accepted`, () => killed.web++);
  }
  if (options.restartControllers) {
    await plan.busyAt(0.6, false);
    await killAndRestart(plan.controller, options.log, `with ${plan.acceptedCount()} images accepted`, () => killed.controllers++);
  }
}

/**
 * The clock file every process reads its wall-clock offset from (src/clock.ts), or none when
 * the run does not step the clock. Starts at no offset.
 */
export async function prepareClockFile(dataDir: string, options: ChaosOptions): Promise<Record<string, string>> {
  if (options.clockStepMs === 0) return {};
  const file = path.join(dataDir, 'clock-offset');
  await writeFile(file, '0');
  return { ICAAS_TEST_CLOCK_FILE: file };
}

/** Steps every process's wall clock once, midway through the uploads; resolves with when (seconds from `started`). */
export async function stepClockMidRun(env: Record<string, string>, options: ChaosOptions, started: number): Promise<number | null> {
  const file = env.ICAAS_TEST_CLOCK_FILE;
  if (!file) return null;
  await sleep(options.durationSeconds * 1000 * 0.5);
  await writeFile(file, String(options.clockStepMs));
  options.log(`stepped every process's wall clock by ${options.clockStepMs / 1000}s`);
  return (performance.now() - started) / 1000;
}
