/**
 * The distributed shape on this machine, with no AWS account:
 *
 *   npm run cloud:local [-- --emulator-port 4566 --port 3000 <icaas start options>]
 *
 * Starts the S3 and SQS protocol emulator (fauxqs) on loopback, provisions the buckets and
 * queues on it with `icaas aws provision`'s own code (which, the emulator having no
 * CloudFormation, makes the stack template's buckets and queues directly), then runs `icaas start --store s3
 * --queue sqs` against it with local worker processes. Every request the service makes
 * goes through the AWS SDK and over the wire, as it would to AWS. The emulator keeps
 * everything in memory: stopping this command (Ctrl-C) ends the service, then the emulator,
 * and what was uploaded is gone.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { cliScript, projectRoot } from '../src/runtime.js';
import { deploymentArgs, emulatedSettings, emulatorEnv, withClients } from '../test/cloud/deployment.js';
import { startEmulator } from '../test/cloud/emulator.js';
import { provision } from '../src/aws/index.js';

const DEFAULT_EMULATOR_PORT = 4566;

function log(line: string): void {
  process.stdout.write(`${new Date().toISOString().slice(11, 19)} cloud:local: ${line}\n`);
}

/** `--emulator-port N` is this command's own; everything else goes to `icaas start`. */
function parseArgs(argv: string[]): { emulatorPort: number; startArgs: string[] } {
  const startArgs: string[] = [];
  let emulatorPort = DEFAULT_EMULATOR_PORT;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const inline = /^--emulator-port=(.*)$/.exec(arg);
    if (arg === '--emulator-port' || inline) {
      const value = inline ? inline[1]! : argv[++i];
      const port = Number(value);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--emulator-port must be a port number (0 picks a free one), got ${JSON.stringify(value ?? '')}`);
      emulatorPort = port;
      continue;
    }
    startArgs.push(arg);
  }
  return { emulatorPort, startArgs };
}

async function main(): Promise<number> {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write([
      'npm run cloud:local [-- [--emulator-port N] [icaas start options]]',
      '',
      'Runs the distributed shape (S3 + SQS, local workers) against a protocol emulator on 127.0.0.1.',
      `  --emulator-port N   the emulator's port (default ${DEFAULT_EMULATOR_PORT}; 0 picks a free one)`,
      '  any other option goes to icaas start (see icaas start --help), e.g. --port 3000',
      '',
    ].join('\n'));
    return 0;
  }
  const { emulatorPort, startArgs } = parseArgs(process.argv.slice(2));
  const emulator = await startEmulator({ port: emulatorPort }).catch((error: Error & { code?: string }) => {
    if (error.code === 'EADDRINUSE') throw new Error(`port ${emulatorPort} is taken (another emulator or cloud:local running?); pass --emulator-port <free port>, or 0 for any`);
    throw error;
  });
  log(`S3 and SQS emulator at ${emulator.endpoint} (in memory: gone when this stops)`);
  const settings = emulatedSettings(emulator, 'icaas');
  await withClients(emulator, (clients) => provision({ ...settings, clients, log: (line) => log(`provision: ${line}`) }));
  const args = [
    cliScript, 'start',
    ...deploymentArgs(emulator, settings),
    // Apart from the embedded default's data, which would otherwise share the process
    // registry; a --data of the user's replaces it (icaas start refuses an option given twice).
    ...(startArgs.some((arg) => arg === '--data' || arg.startsWith('--data=')) ? [] : ['--data', path.join(projectRoot, 'data', 'cloud-local')]),
    ...startArgs,
  ];
  log(`starting: icaas ${args.slice(1).join(' ')}`);
  const service = spawn(process.execPath, args, { stdio: 'inherit', env: { ...process.env, ...emulatorEnv(emulator) } });
  const forward = (signal: NodeJS.Signals) => () => {
    if (service.exitCode === null && service.signalCode === null) service.kill(signal);
  };
  process.on('SIGINT', forward('SIGINT'));
  process.on('SIGTERM', forward('SIGTERM'));
  const code = await new Promise<number>((resolve) => service.once('exit', (exitCode, signal) => resolve(exitCode ?? (signal ? 1 : 0))));
  await emulator.stop();
  log('service and emulator stopped');
  return code;
}

main().then((code) => (process.exitCode = code), (error: unknown) => {
  process.stderr.write(`cloud:local: ${(error as Error)?.message ?? String(error)}\n`);
  process.exitCode = 1;
});
