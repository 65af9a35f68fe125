/**
 * The service's one logger: pino, shared by Fastify and our own code. Each part of the
 * service logs through a child that carries its context (`component`, and where they apply
 * `instanceId`, `batchId`, `imageId`), so an operator can filter one image's whole story.
 *
 * Lines are JSON (one object per line) unless the output is a terminal, where they are
 * printed readably. `ICAAS_LOG_FORMAT=json|pretty` overrides the choice, for example to
 * read JSON on a terminal or pretty lines in a pipe.
 */
import { createRequire } from 'node:module';
import type * as Pino from 'pino';
import type { Logger, LevelWithSilent } from 'pino';
import type { PinoPretty as PinoPrettyFactory } from 'pino-pretty';

const requireModule = createRequire(import.meta.url);

/**
 * By require(), not import: pino is CommonJS, and an ESM import of it makes Node scan its
 * source for export names first (43 ms against 24 ms in a fresh process), in every process
 * the service starts. Fastify requires the same module, so it stays one instance.
 */
const { pino } = requireModule('pino') as typeof Pino;

/**
 * pino-pretty is loaded only when a logger prints pretty lines: worker instances and the
 * web tier log JSON to files and pipes, and loading it cost each of them about 0.1 s of
 * CPU at start-up, on the cores the classifier needs.
 */
function prettyStream(options: Parameters<typeof PinoPrettyFactory>[0]): ReturnType<typeof PinoPrettyFactory> {
  const { PinoPretty } = requireModule('pino-pretty') as { PinoPretty: typeof PinoPrettyFactory };
  return PinoPretty(options);
}

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const satisfies readonly LevelWithSilent[];
export type LogLevel = (typeof LOG_LEVELS)[number];
export type LogFormat = 'json' | 'pretty';

export interface LoggerOptions {
  level?: LogLevel;
  /** Where lines go; standard output by default. */
  destination?: NodeJS.WritableStream & { isTTY?: boolean };
  /** json or pretty; by default pretty on a terminal, json otherwise. */
  format?: LogFormat;
  /** Fields on every line, such as `component` or `instanceId`. */
  base?: Record<string, unknown>;
}

export function logFormatFor(destination: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): LogFormat {
  const requested = env.ICAAS_LOG_FORMAT;
  if (requested === 'json' || requested === 'pretty') return requested;
  return destination.isTTY ? 'pretty' : 'json';
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const destination = options.destination ?? process.stdout;
  const format = options.format ?? logFormatFor(destination);
  const settings = {
    level: options.level ?? 'info',
    // pid and hostname on every line are noise for a single machine; instances carry their id.
    base: options.base ?? {},
    timestamp: pino.stdTimeFunctions.isoTime,
    // "level":"warn" reads and filters better than pino's numbers (40).
    formatters: { level: (label: string) => ({ level: label }) },
  };
  if (format === 'pretty') {
    // Synchronous, in this thread: a transport's worker thread would lose the last lines of
    // a process that exits right after logging, such as a worker that stops itself.
    return pino(settings, prettyStream({
      destination,
      sync: true,
      colorize: Boolean(destination.isTTY),
      singleLine: true,
      ignore: 'pid,hostname,component',
      messageFormat: '{if component}{component}: {end}{msg}',
      translateTime: 'SYS:HH:MM:ss.l',
    }));
  }
  return pino(settings, destination);
}

/** A logger that writes nothing: the default where a caller passes none (tests, library use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
