/**
 * Chaos run: the embedded service as separate processes (`icaas web`, `icaas controller`,
 * worker processes) sharing one data folder, while many clients upload images, a random
 * worker instance is killed (SIGKILL) every second, and the web tier and the controllers
 * are each killed (SIGKILL) and restarted once mid-run. At the end it checks and prints:
 * every accepted image has exactly one final result (API and output bucket), none is
 * lost, no result was shown twice on the live event stream (followed across the web-tier
 * restart with Last-Event-ID), the instance count never exceeded the maximum, and no
 * image ran more attempts than allowed (its result and the retry claims in the output
 * bucket). Variants: `--controllers 2` runs two controller processes at once against the
 * one data folder (the first is the one killed and restarted); `--clock-step=-30` steps
 * the wall clock of every process (web, controllers, workers) back 30 s mid-run, through
 * the clock file that ICAAS_TEST_CLOCK_FILE names (see src/clock.ts).
 *
 *   npm run chaos [-- --images 500 --clients 50 --duration 60 --max-instances 20]
 *   npm run chaos -- --controllers 2
 *   npm run chaos -- --clock-step=-30
 *   node dist/bench/chaos.js --help
 *
 * Exit status 0 when every check holds, 1 otherwise. This file is the command line; the run
 * itself is test/chaos/run.ts, which `test/e2e/chaos.test.ts` runs in a short version
 * inside `npm test`.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { DEFAULT_CHAOS, formatReport, runChaos, type ChaosOptions, type ChaosReport } from '../test/chaos/run.js';
import { provisionEmulated } from '../test/cloud/deployment.js';
import { startEmulatorProcess } from '../test/cloud/emulator.js';

const ARGUMENTS = {
  images: { type: 'string', default: String(DEFAULT_CHAOS.images) },
  clients: { type: 'string', default: String(DEFAULT_CHAOS.clients) },
  duration: { type: 'string', default: String(DEFAULT_CHAOS.durationSeconds) },
  'max-instances': { type: 'string', default: String(DEFAULT_CHAOS.maxInstances) },
  'kill-every': { type: 'string', default: String(DEFAULT_CHAOS.killEveryMs / 1000) },
  'files-per-request': { type: 'string', default: String(DEFAULT_CHAOS.filesPerRequest) },
  timeout: { type: 'string', default: String(DEFAULT_CHAOS.timeoutSeconds) },
  'no-restarts': { type: 'boolean', default: false },
  controllers: { type: 'string', default: String(DEFAULT_CHAOS.controllers) },
  'clock-step': { type: 'string', default: '0' },
  'max-attempts': { type: 'string', default: String(DEFAULT_CHAOS.maxAttempts) },
  policy: { type: 'string', default: DEFAULT_CHAOS.policy },
  keep: { type: 'boolean', default: false },
  cloud: { type: 'boolean', default: false },
  'kill-busy-only': { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

type Arguments = ReturnType<typeof parseArgs<{ options: typeof ARGUMENTS }>>['values'];

const HELP = [
  'npm run chaos -- [options]   (or: node dist/bench/chaos.js [options])',
  '',
  `  --images N             images to upload (default ${DEFAULT_CHAOS.images}; the 100 shared images, repeated)`,
  `  --clients N            concurrent clients (default ${DEFAULT_CHAOS.clients})`,
  `  --duration S           seconds over which the uploads are spread (default ${DEFAULT_CHAOS.durationSeconds})`,
  `  --max-instances N      the service's instance limit (default ${DEFAULT_CHAOS.maxInstances})`,
  `  --kill-every S         seconds between worker kills, 0 for none (default ${DEFAULT_CHAOS.killEveryMs / 1000})`,
  `  --files-per-request N  most files per upload request (default ${DEFAULT_CHAOS.filesPerRequest})`,
  `  --timeout S            seconds to wait for every image after the uploads (default ${DEFAULT_CHAOS.timeoutSeconds})`,
  '  --no-restarts          do not kill and restart the web tier and the controllers',
  `  --controllers N        controller processes at once against the one data folder (default ${DEFAULT_CHAOS.controllers})`,
  '  --clock-step=S         step every process\'s wall clock by S seconds midway through the uploads (e.g. --clock-step=-30; the = is needed for a negative S); 0 for none',
  `  --max-attempts N       the service's attempts per image (default ${DEFAULT_CHAOS.maxAttempts})`,
  `  --policy NAME          the service's scaling policy (default ${DEFAULT_CHAOS.policy}: it drives the tier to its maximum)`,
  '  --keep                 keep the data folder (buckets, queues, registry, worker logs) afterwards',
  '  --kill-busy-only       kill only workers that hold an image (not those still starting)',
  '  --cloud                the distributed shape: S3 and SQS on a protocol emulator on loopback, local workers',
  '',
].join('\n');

function atLeast(name: string, value: string, min: number): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed < min) throw new Error(`--${name} must be a number of at least ${min}, got ${value}`);
  return parsed;
}

function clockStepSeconds(value: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || Math.abs(parsed) > 3600) throw new Error(`--clock-step must be a number of seconds within an hour either way, got ${value}`);
  return parsed;
}

/** The run's options from the command line, all checked before anything starts. */
function chaosOptions(values: Arguments): Omit<ChaosOptions, 'cloud'> {
  const whole = (name: keyof Arguments & string, min: number) => Math.round(atLeast(name, values[name] as string, min));
  return {
    images: whole('images', 1),
    clients: whole('clients', 1),
    durationSeconds: atLeast('duration', values.duration, 1),
    maxInstances: whole('max-instances', 1),
    killEveryMs: atLeast('kill-every', values['kill-every'], 0) * 1000,
    killBusyOnly: values['kill-busy-only'],
    filesPerRequest: whole('files-per-request', 1),
    timeoutSeconds: atLeast('timeout', values.timeout, 1),
    controllers: whole('controllers', 1),
    clockStepMs: clockStepSeconds(values['clock-step']) * 1000,
    maxAttempts: whole('max-attempts', 1),
    policy: values.policy,
    restartWeb: !values['no-restarts'],
    restartControllers: !values['no-restarts'],
    keep: values.keep,
    log: (line) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`),
  };
}

/** Runs on files and SQLite, or with `cloud` on S3 and SQS of an emulator started for the run. */
async function runOnce(options: Omit<ChaosOptions, 'cloud'>, cloud: boolean): Promise<ChaosReport> {
  if (!cloud) return runChaos(options);
  const emulator = await startEmulatorProcess();
  try {
    return await runChaos({ ...options, cloud: await provisionEmulated(emulator, { name: 'chaos' }) });
  } finally {
    await emulator.stop();
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: ARGUMENTS });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const report = await runOnce(chaosOptions(values), values.cloud);
  process.stdout.write(`${formatReport(report)}\n`);
  return report.failures.length === 0 ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then((code) => (process.exitCode = code), (error: unknown) => {
    process.stderr.write(`chaos: ${(error as Error)?.stack ?? String(error)}\n`);
    process.exitCode = 1;
  });
}
