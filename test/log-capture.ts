/** Reading the service's logs in tests: by their fields, not by their wording. */
import { Writable } from 'node:stream';
import { createLogger, type Logger, type LogLevel } from '../src/log.js';

/** One line of the log as written: pino's fields and the line's own. */
export interface LogEntry {
  level: string;
  time: string;
  msg: string;
  component?: string;
  [field: string]: unknown;
}

/** A real JSON logger whose lines are kept, parsed, in `entries`. */
export function capturingLogger(level: LogLevel = 'debug'): { log: Logger; entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      entries.push(...parseLogLines(chunk.toString('utf8')));
      done();
    },
  });
  return { log: createLogger({ level, destination, format: 'json' }), entries };
}

/** The JSON lines of a process's output; other lines (a crash's stack, Node's warnings) are skipped. */
export function parseLogLines(text: string): LogEntry[] {
  const entries: LogEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      entries.push(JSON.parse(line) as LogEntry);
    } catch {
      // A line still being written.
    }
  }
  return entries;
}

/** The entries with every given field equal, for readable assertions. */
export function logged(entries: readonly LogEntry[], fields: Partial<LogEntry>): LogEntry[] {
  return entries.filter((entry) => Object.entries(fields).every(([key, value]) => entry[key] === value));
}

/** The entries, one a line, for assertion messages. */
export function showLog(entries: readonly LogEntry[]): string {
  return entries.map((entry) => JSON.stringify(entry)).join('\n');
}

/** The address a service printed when it started listening. */
export function listeningUrl(output: string): string | undefined {
  const entry = parseLogLines(output).find((line) => line.msg === 'listening' && typeof line.url === 'string');
  return entry?.url as string | undefined;
}
