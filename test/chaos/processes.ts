/**
 * The service's processes in a chaos run: `icaas web` and `icaas controller` as children of
 * this one, and the worker processes the controllers start, found through the instance
 * registry and /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import Database from '../../src/sqlite-driver.js';
import { cliPath } from '../helpers.js';
import { sleep } from './options.js';

/** One part of the service (`icaas web` or `icaas controller`) as a child process that can be killed and started again. */
export class ServicePart {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  output = '';

  constructor(
    readonly name: 'web' | 'controller',
    private readonly args: () => string[],
    private readonly ready: RegExp,
    private readonly env: Record<string, string> = {},
  ) {}

  /** Starts the process and resolves with the match of `ready` in what it prints. */
  async start(timeoutMs = 60_000): Promise<RegExpExecArray> {
    const child = spawn(process.execPath, [cliPath, this.name, ...this.args()], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    const from = this.output.length;
    child.stdout!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = this.ready.exec(this.output.slice(from));
      if (match) return match;
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`icaas ${this.name} exited while starting:\n${this.output.slice(from)}`);
      if (Date.now() > deadline) throw new Error(`icaas ${this.name} did not start within ${timeoutMs} ms:\n${this.output.slice(from)}`);
      await sleep(20);
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill(signal);
    await this.exited;
  }

  lastLines(count: number): string[] {
    return [`last lines of icaas ${this.name}:`, ...this.output.trimEnd().split('\n').slice(-count).map((line) => `  ${line}`)];
  }
}

export interface RegisteredInstance {
  id: string;
  pid: number | null;
  state: string;
}

/** The registry's non-stopped instances with their pids. */
export function registryInstances(registryPath: string): RegisteredInstance[] {
  try {
    const db = new Database(registryPath, { readonly: true, fileMustExist: true });
    try {
      return db.prepare(`SELECT id, pid, state FROM instances WHERE state != 'stopped'`).all() as RegisteredInstance[];
    } finally {
      db.close();
    }
  } catch {
    return [];
  }
}

/** Live worker processes of this data folder, found in /proc (the registry may lag behind). */
export function workerProcesses(dataDir: string): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((entry) => /^\d+$/.test(entry));
  } catch {
    return pids;
  }
  for (const entry of entries) {
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      // A zombie (killed, not yet reaped) has an empty command line: it runs nothing.
      if (!cmdline.includes(`${cliPath}\u0000worker\u0000`)) continue;
      if (!belongsTo(Number(entry), dataDir)) continue;
      pids.push(Number(entry));
    } catch {
      // Gone meanwhile, or not ours to read.
    }
  }
  return pids;
}

/** Whether the process runs with this data folder (its environment names it). */
function belongsTo(pid: number, dataDir: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'utf8').includes(`ICAAS_DATA=${dataDir}\u0000`);
  } catch {
    return false;
  }
}

/** Whether the process's command line names the instance: a recycled pid is never killed by mistake. */
export function runsInstance(pid: number, instanceId: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(instanceId);
  } catch {
    return false;
  }
}

/** SIGKILLs the process group (a worker and anything it started), or the process alone. */
export function killGroup(pid: number): boolean {
  try {
    process.kill(-pid, 'SIGKILL');
    return true;
  } catch {
    try {
      process.kill(pid, 'SIGKILL');
      return true;
    } catch {
      return false;
    }
  }
}

/** Workers are detached from the controllers: finds and kills every one of this data folder, until none is left. */
export async function killAllWorkers(dataDir: string, registryPath: string): Promise<void> {
  for (let round = 0; round < 20; round++) {
    const registered = registryInstances(registryPath).map((instance) => instance.pid).filter((pid): pid is number => pid !== null);
    const live = [...new Set([...workerProcesses(dataDir), ...registered])].filter((pid) => belongsTo(pid, dataDir));
    if (live.length === 0) return;
    for (const pid of live) killGroup(pid);
    await sleep(100);
  }
}
