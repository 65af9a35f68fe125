/**
 * icaas command line: start | web | controller | worker | classify | aws | simulate.
 */
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { ConfigError, commandFlagsHelp, loadConfig, optionsHelp, type CommandFlags, type Config } from './config.js';
import { createLogger, type Logger, type LogLevel } from './log.js';
import { openRuntime, projectRoot, type Runtime } from './runtime.js';
import { SIMULATE_HELP, SIMULATE_USAGE } from './sim/help.js';

const VERSION = (JSON.parse(readFileSync(path.join(projectRoot, 'package.json'), 'utf8')) as { version: string }).version;

/** `help`: a command's own options, for commands that do not take the service's configuration. */
const COMMANDS: Record<string, { summary: string; usage: string; flags?: CommandFlags; help?: string }> = {
  start: { summary: 'run everything on this machine: web tier, controllers, workers on demand', usage: 'icaas start [options]' },
  web: { summary: 'run the web tier and output phase only', usage: 'icaas web [options]' },
  controller: { summary: 'run the launch and monitor controllers only', usage: 'icaas controller [options]' },
  worker: {
    summary: 'run one worker instance until the queue is empty',
    usage: 'icaas worker [--instance-id <id>] [options]',
    flags: { 'instance-id': { type: 'string', help: 'this instance\'s id [env ICAAS_INSTANCE_ID; on EC2, default from the instance metadata]' } },
  },
  classify: {
    summary: 'upload images or folders to a running service and print their labels',
    usage: 'icaas classify <files or folders...> [--url <service url>] [--api-key <key>] [--json]',
    flags: {
      url: { type: 'string', help: 'the service to upload to [default http://<--host>:<--port>]' },
      'api-key': { type: 'string', help: 'API key to send [env ICAAS_API_KEY, default the first of --api-keys]' },
      json: { type: 'boolean', help: 'print one JSON object per image instead of a line of text' },
    },
  },
  aws: {
    summary: 'create or remove the AWS resources of a deployment',
    usage: 'icaas aws provision|teardown [--dry-run] [--force] [--skip-ec2] [options]',
    flags: {
      'dry-run': { type: 'boolean', help: 'print the calls that would be made, and make none' },
      force: { type: 'boolean', help: 'teardown: terminate running workers and delete buckets that still hold objects' },
      'skip-ec2': { type: 'boolean', help: 'buckets and queues only, for workers that run as local processes' },
    },
  },
  simulate: { summary: 'simulate the scaling policies on an arrival trace or a logged run: cost and latency', usage: SIMULATE_USAGE, help: SIMULATE_HELP },
};

/** The service's log on standard output: JSON lines, or readable ones on a terminal. */
function serviceLogger(config: Config): Logger {
  return createLogger({ level: config.logLevel as LogLevel });
}

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length)) + 2;
  return [
    `icaas ${VERSION}: elastic image classification`,
    '',
    'Usage: icaas <command> [options]',
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([name, command]) => `  ${name.padEnd(width)}${command.summary}`),
    '',
    'Run `icaas <command> --help` for the options of a command.',
  ].join('\n');
}

function commandHelp(name: string): string {
  const command = COMMANDS[name]!;
  if (command.help) return [command.usage, '', command.summary, '', command.help].join('\n');
  const own = command.flags ? [`Options of ${name}:`, commandFlagsHelp(command.flags), ''] : [];
  return [command.usage, '', command.summary, '', ...own, 'Options (each also as an environment variable or a config-file entry):', optionsHelp()].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === 'help' || name === '--help' || name === '-h') {
    process.stdout.write(`${usage()}\n`);
    return name ? 0 : 2;
  }
  if (name === '--version' || name === '-v') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`icaas: unknown command "${name}"\nrun icaas --help for the commands\n`);
    return 2;
  }
  const options = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
  if (options.includes('--help') || options.includes('-h')) {
    process.stdout.write(`${commandHelp(name)}\n`);
    return 0;
  }
  try {
    return await runCommand(name, command, rest);
  } catch (error) {
    if (!isUsageError(error)) throw error;
    // The user can fix this from the message alone: no stack trace.
    process.stderr.write(`icaas ${name}: ${(error as Error).message}\nrun icaas ${name} --help for its options\n`);
    return 2;
  }
}

/** Errors in what the user asked for or configured, as opposed to faults of the program. */
function isUsageError(error: unknown): boolean {
  const name = (error as Error | undefined)?.name;
  return error instanceof ConfigError || name === 'ModelNotFoundError' || name === 'SimInputError';
}

async function runCommand(name: string, command: (typeof COMMANDS)[string], argv: string[]): Promise<number> {
  if (name === 'simulate') {
    // The simulator models a service; it takes its own flags, not this machine's configuration.
    const { simulateCommand } = await import('./sim/command.js');
    return simulateCommand(argv);
  }
  const { config, positionals, extraFlags } = loadConfig({ argv }, command.flags ?? {});
  if (name !== 'classify' && name !== 'aws' && positionals.length > 0) throw new ConfigError(`unexpected argument "${positionals[0]}"`);
  switch (name) {
    case 'start':
      return runServices(config, { web: true, controllers: true });
    case 'web':
      return runServices(config, { web: true, controllers: false });
    case 'controller':
      return runServices(config, { web: false, controllers: true });
    case 'worker': {
      const { workerMain } = await import('./worker/main.js');
      return workerMain(config, extraFlags['instance-id'] as string | undefined, serviceLogger(config));
    }
    case 'classify': {
      const { classifyCommand } = await import('./client.js');
      const url = typeof extraFlags.url === 'string' ? extraFlags.url : `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${config.port}`;
      const apiKey = typeof extraFlags['api-key'] === 'string' ? extraFlags['api-key'] : (config.apiKeys[0] ?? process.env.ICAAS_API_KEY);
      try {
        return await classifyCommand({ inputs: positionals, url, ...(apiKey ? { apiKey } : {}), json: extraFlags.json === true, maxFiles: config.maxFiles });
      } catch (error) {
        // Failures here are about the service or the network, not bugs: no stack trace.
        process.stderr.write(`\nicaas classify: ${(error as Error).message}\n`);
        return 1;
      }
    }
    case 'aws': {
      const sub = positionals[0];
      if (sub !== 'provision' && sub !== 'teardown') throw new ConfigError(sub === undefined ? 'expected "provision" or "teardown"' : `expected "provision" or "teardown", got "${sub}"`);
      if (positionals.length > 1) throw new ConfigError(`unexpected argument "${positionals[1]}"`);
      const { runAwsCommand } = await import('./aws/index.js');
      // What it does and what to run next are the command's output for the user, not a log.
      const print = (line: string) => process.stdout.write(`${line}\n`);
      return runAwsCommand(sub, { config, dryRun: extraFlags['dry-run'] === true, force: extraFlags.force === true, skipEc2: extraFlags['skip-ec2'] === true }, print);
    }
  }
  return 2;
}

async function runServices(config: Config, parts: { web: boolean; controllers: boolean }): Promise<number> {
  const logger = serviceLogger(config);
  const log = logger.child({ component: 'service' });
  const runtime: Runtime = await openRuntime(config);
  for (const line of runtime.describe()) log.info(line);
  if (config.store === 'fs' || config.queue === 'sqlite' || config.compute === 'process') log.info({ data: config.data }, 'data folder');
  if (parts.controllers && config.compute === 'process') {
    // Workers load the model; finding it here first turns a missing model into one clear
    // error at start instead of a crash loop of workers.
    const { locateModel } = await import('./classifier/model.js');
    const model = await locateModel({
      ...(config.model ? { modelPath: config.model } : {}),
      ...(config.labels ? { labelsPath: config.labels } : {}),
      cacheDir: path.join(projectRoot, '.cache', 'models'),
      log: logger.child({ component: 'classifier' }),
    });
    log.info({ modelPath: model.modelPath, source: model.source }, 'model found');
  }
  // One registry for the process: `icaas start` serves the controllers' metrics with the web tier's.
  const { ServiceMetrics, serveMetrics } = await import('./metrics.js');
  const metrics = new ServiceMetrics();
  // Before anything starts, so a port that is taken stops the process while nothing runs.
  const metricsListener = config.metricsPort > 0 ? await serveMetrics(metrics, { host: config.host, port: config.metricsPort, apiKeys: config.apiKeys }) : undefined;
  if (metricsListener) log.info({ url: metricsListener.url }, 'metrics served');
  else if (!parts.web) log.info('metrics not served; set --metrics-port to serve them');
  let controllers: { imagesQueued(): void; stop(): Promise<void> } | undefined;
  let web: { url: string; index: { hasFinalResult(imageId: string): boolean }; incoming: { expected(): number }; drain(): void; stop(): Promise<void> } | undefined;
  if (parts.controllers) {
    const { startControllers } = await import('./controller/index.js');
    // With the web tier here too, the monitor lets go of an image its output phase has
    // recorded, and the launch controller plans for uploads about to end.
    controllers = startControllers(runtime, logger, metrics, parts.web ? { recorded: (imageId) => web?.index.hasFinalResult(imageId) ?? false, incoming: () => web?.incoming.expected() ?? 0 } : {});
  }
  if (parts.web) {
    const { startWebTier } = await import('./web/index.js');
    web = await startWebTier(runtime, logger, metrics, { onQueued: () => controllers?.imagesQueued(), onIncoming: () => controllers?.imagesQueued() });
    log.info({ url: web.url }, 'listening');
    if (config.apiKeys.length === 0 && !['localhost', '127.0.0.1', '::1'].includes(config.host)) {
      log.warn({ host: config.host }, 'listening on a public address without API keys: anyone who can reach it can upload and read results; set ICAAS_API_KEYS');
    }
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping');
      resolve();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  // Uploads are refused (503) from here, but the server keeps answering until the workers
  // have finished what they hold, so clients see why and their results still arrive live.
  // The controllers stop before the workers so that none is started or retried meanwhile.
  web?.drain();
  await controllers?.stop();
  if (parts.controllers) await stopLocalWorkers(runtime, log);
  await web?.stop();
  await metricsListener?.close();
  await runtime.close();
  log.info('stopped');
  return 0;
}

/** Local workers are asked to finish the image they hold; those that do not are killed. */
async function stopLocalWorkers(runtime: Runtime, log: Logger, graceMs = 20_000): Promise<void> {
  if (runtime.config.compute !== 'process') return;
  const { ProcessCompute } = await import('./compute/process.js');
  if (!(runtime.compute instanceof ProcessCompute)) return;
  const stopped = await runtime.compute.stopAll(graceMs);
  if (stopped.total > 0) log.info({ workers: stopped.total, killed: stopped.killed }, 'workers stopped');
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`icaas: ${(error as Error)?.stack ?? String(error)}\n`);
    process.exitCode = 1;
  },
);
