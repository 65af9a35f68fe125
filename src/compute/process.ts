/**
 * Compute adapter for one machine: each instance is an OS process running `icaas worker`.
 * The registry of instances is a SQLite file, so every process (web tier, controllers,
 * workers, a restarted `icaas start`) sees the same instances, and the maximum holds
 * across them because starting is decided inside one write transaction.
 *
 * Every instance ends by its deadlines (enforceDeadlines): a worker that never reports, one
 * idle past the idle wait, one holding an image or exiting for too long is killed. A kill
 * that does not take (the process belongs to another user, say) is recorded and retried
 * on every sweep; the instance keeps its slot until its process is gone, because a slot
 * freed while the process still runs would let one more than the maximum start.
 */
import Database from '../sqlite-driver.js';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, openSync, closeSync, readFileSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { clock as defaultClock, type Clock } from '../clock.js';
import { describeDeadline, WORKER_PROCESS_ENV, type Compute, type DeadlineReason, type DeadlineSweep, type InstanceDeadlines, type InstanceInfo, type InstanceReport, type InstanceState } from './port.js';
import { sleep } from '../backoff.js';

export interface ProcessComputeOptions extends InstanceDeadlines {
  /** SQLite file holding the instance registry. */
  registryPath: string;
  maxInstances: number;
  /** Instances that can usefully run at once; the available cores when absent. */
  capacity?: number;
  /** Node script and arguments that run one worker; `--instance-id <id>` is appended. */
  workerCommand?: { script: string; args: string[] };
  /** Environment for the workers (the parent's environment is not inherited beyond PATH and HOME). */
  workerEnv?: Record<string, string>;
  /** Folder for one log file per worker; none when absent. */
  logDir?: string;
  /** How long a stopped instance stays in list() so users see it leave. */
  keepStoppedMs?: number;
  /** How long the registry keeps a stopped instance's row at all. Default one hour. */
  retainStoppedMs?: number;
  /** Wall and monotonic time; tests inject one to step the wall clock. */
  clock?: Clock;
}

/**
 * 'exiting': the worker said it stopped but its process has not gone yet. Listed as
 * stopped, yet it keeps its slot until the process is gone.
 */
type RowState = InstanceState | 'exiting';

interface Row {
  id: string;
  pid: number | null;
  state: RowState;
  started_at: number;
  updated_at: number;
  image_id: string | null;
  processed: number;
  /** When a terminate was first asked for; set until the process is confirmed gone. */
  terminating_since: number | null;
  /** When the worker first reported: its start-up ended. */
  ready_at: number | null;
  /** The worker's moving average of its time per image. */
  service_ms: number | null;
}

const LOG_FILES_KEPT = 200;
// A JSON error line carries its stack: the tail must hold a whole one.
const LOG_TAIL_BYTES = 32_768;
const LOG_TAIL_LINES = 3;

/**
 * A local worker takes about 0.6 s of CPU to load Node, the model and ONNX Runtime; on a
 * machine whose cores are busy classifying, that much classification is lost per start.
 */
const LOCAL_START_COST_MS = 600;
const LOCAL_STARTUP_PRIOR_MS = 2_000;

export class ProcessCompute implements Compute {
  readonly maxInstances: number;
  /** Workers are CPU-bound and share this machine's cores. */
  readonly capacity: number;
  readonly startupPriorMs = LOCAL_STARTUP_PRIOR_MS;
  readonly startCostMs = LOCAL_START_COST_MS;
  private readonly db: Database.Database;
  /**
   * Prepared once per SQL text: a worker reports once per image, and preparing the
   * statement each time cost as much CPU as running it.
   */
  private readonly statements = new Map<string, Database.Statement>();
  private readonly clock: Clock;
  /**
   * When this process first saw each instance in its current state, on the monotonic clock:
   * the registry's times are wall-clock (shared by every process), and a deadline measured
   * by them alone would end a healthy instance early after a forward step of the clock.
   */
  private readonly firstSeen = new Map<string, { mark: string; at: number }>();
  private readonly options: Required<Pick<ProcessComputeOptions, 'keepStoppedMs' | 'retainStoppedMs' | 'startTimeoutMs'>> & ProcessComputeOptions;

  constructor(options: ProcessComputeOptions) {
    this.options = { keepStoppedMs: 60_000, retainStoppedMs: 3_600_000, startTimeoutMs: 60_000, ...options };
    this.clock = options.clock ?? defaultClock;
    this.maxInstances = options.maxInstances;
    this.capacity = Math.min(options.maxInstances, options.capacity ?? availableParallelism());
    mkdirSync(path.dirname(options.registryPath), { recursive: true });
    this.db = new Database(options.registryPath);
    this.db.pragma('journal_mode = WAL');
    // No disk flush per commit: every worker writes here once per image, and a flush each
    // time blocked it for milliseconds. A power cut that undoes the last reports also ends
    // every instance they describe; reapDead finds their processes gone either way.
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`CREATE TABLE IF NOT EXISTS instances (
      id TEXT PRIMARY KEY,
      pid INTEGER,
      state TEXT NOT NULL,
      started_at INTEGER NOT NULL,
      updated_at INTEGER NOT NULL,
      image_id TEXT,
      processed INTEGER NOT NULL DEFAULT 0,
      terminating_since INTEGER
    )`);
    // A registry written before terminates were tracked lacks the column.
    const columns = this.db.prepare(`PRAGMA table_info(instances)`).all() as { name: string }[];
    // A registry written by an older version lacks the newer columns.
    for (const [column, type] of [['terminating_since', 'INTEGER'], ['ready_at', 'INTEGER'], ['service_ms', 'REAL']] as const) {
      if (!columns.some((existing) => existing.name === column)) this.db.exec(`ALTER TABLE instances ADD COLUMN ${column} ${type}`);
    }
    if (options.logDir) mkdirSync(options.logDir, { recursive: true });
  }

  private statement(sql: string): Database.Statement {
    let prepared = this.statements.get(sql);
    if (!prepared) {
      prepared = this.db.prepare(sql);
      this.statements.set(sql, prepared);
    }
    return prepared;
  }

  async start(n: number): Promise<string[]> {
    if (!Number.isInteger(n) || n < 0) throw new Error(`cannot start ${n} instances: need a whole number`);
    if (n === 0) return [];
    if (!this.options.workerCommand) throw new Error('this compute adapter was opened without a worker command, so it cannot start instances');
    const now = this.clock.now();
    const reserve = this.db.transaction((count: number) => {
      this.reapDead();
      const active = (this.statement(`SELECT COUNT(*) AS c FROM instances WHERE state != 'stopped'`).get() as { c: number }).c;
      const allowed = Math.max(0, Math.min(count, this.maxInstances - active));
      const ids: string[] = [];
      const insert = this.statement(`INSERT INTO instances (id, pid, state, started_at, updated_at) VALUES (?, NULL, 'starting', ?, ?)`);
      for (let i = 0; i < allowed; i++) {
        const id = `i-${randomBytes(6).toString('hex')}`;
        insert.run(id, now, now);
        ids.push(id);
      }
      return ids;
    });
    const ids = reserve.immediate(n);
    for (const id of ids) this.spawnWorker(id);
    if (ids.length > 0) this.pruneLogs();
    return ids;
  }

  private spawnWorker(id: string): void {
    const { script, args } = this.options.workerCommand!;
    let logFd: number | 'ignore' = 'ignore';
    if (this.options.logDir) logFd = openSync(path.join(this.options.logDir, `${id}.log`), 'a');
    try {
      const child = spawn(process.execPath, [script, ...args, '--instance-id', id], {
        // Detached: a Ctrl-C in the terminal of `icaas start` must not kill workers
        // mid-image; the parent stops them itself, and they stop on their own when idle.
        detached: true,
        stdio: ['ignore', logFd, logFd],
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...WORKER_PROCESS_ENV, ...this.options.workerEnv, ICAAS_INSTANCE_ID: id },
      });
      child.unref();
      if (child.pid === undefined) throw new Error('spawn returned no pid');
      const recorded = this.statement(`UPDATE instances SET pid = ?, updated_at = ? WHERE id = ? AND state != 'stopped' RETURNING terminating_since`).get(child.pid, this.clock.now(), id) as { terminating_since: number | null } | undefined;
      // Given up on meanwhile (no slot any more), or asked to stop before it existed: it must
      // not run. In the second case it keeps its slot until a sweep sees it gone.
      if (!recorded || recorded.terminating_since !== null) killGroup(child.pid);
      child.on('error', () => this.markStopped(id));
    } catch (error) {
      this.markStopped(id);
      throw new Error(`could not start worker ${id}: ${(error as Error).message}`, { cause: error });
    } finally {
      if (typeof logFd === 'number') closeSync(logFd);
    }
  }

  async list(): Promise<InstanceInfo[]> {
    this.db.transaction(() => this.reapDead()).immediate();
    const rows = this
      .statement(`SELECT * FROM instances WHERE state != 'stopped' OR updated_at > ? ORDER BY started_at, id`)
      .all(this.clock.now() - this.options.keepStoppedMs) as Row[];
    return rows.map((row) => ({
      id: row.id,
      state: row.state === 'exiting' ? 'stopped' : row.state,
      startedAt: row.started_at,
      ...(row.image_id ? { imageId: row.image_id } : {}),
      processed: row.processed,
      ...(row.ready_at !== null ? { readyAt: row.ready_at } : {}),
      ...(row.service_ms !== null ? { serviceMs: row.service_ms } : {}),
    }));
  }

  /**
   * Kills the worker's process group. Throws when the process survives; the terminate is
   * then recorded, the instance keeps its slot, and enforceDeadlines tries again.
   */
  async terminate(id: string): Promise<void> {
    const row = this.statement(`SELECT * FROM instances WHERE id = ?`).get(id) as Row | undefined;
    if (!row) throw new Error(`no instance ${id}`);
    if (row.state === 'stopped') return;
    this.statement(`UPDATE instances SET terminating_since = COALESCE(terminating_since, ?) WHERE id = ?`).run(this.clock.now(), id);
    if (row.pid === null) {
      // Reserved, and its process is being spawned elsewhere, or the spawner died. Freeing
      // the slot before the process exists could let one more than the maximum run.
      if (this.clock.now() - row.started_at < this.options.startTimeoutMs) {
        throw new Error(`could not terminate ${id} yet: its process is still being started; it is killed as soon as it exists and keeps its slot until then`);
      }
      this.markStopped(id);
      return;
    }
    if (isOurProcess(row.pid, id)) {
      // Kill the whole process group: the worker is its leader (detached) and a hung native
      // decoder thread must not survive it.
      const refusal = killGroup(row.pid);
      const deadline = this.clock.monotonic() + (refusal ? 0 : 5000);
      while (isOurProcess(row.pid, id) && this.clock.monotonic() < deadline) await sleep(10);
      if (isOurProcess(row.pid, id)) {
        throw new Error(`could not terminate ${id} (pid ${row.pid}): ${refusal ? `the kill was refused (${refusal})` : 'still running 5 s after SIGKILL'}; it keeps its slot and is tried again on the next sweep`);
      }
    }
    this.markStopped(id);
  }

  async enforceDeadlines(): Promise<DeadlineSweep> {
    const now = this.clock.now();
    this.db.transaction(() => this.reapDead()).immediate();
    const sweep: DeadlineSweep = { terminated: [], failed: [] };
    const rows = this.statement(`SELECT * FROM instances WHERE state != 'stopped' ORDER BY started_at, id`).all() as Row[];
    const active = new Set(rows.map((row) => row.id));
    for (const id of this.firstSeen.keys()) if (!active.has(id)) this.firstSeen.delete(id);
    for (const row of rows) {
      const reason = this.overdue(row, now);
      if (!reason) continue;
      try {
        await this.terminate(row.id);
        sweep.terminated.push({ id: row.id, reason, detail: describeDeadline(reason, this.options) });
      } catch (error) {
        sweep.failed.push({ id: row.id, reason, detail: describeDeadline(reason, this.options), error: (error as Error).message });
      }
    }
    this.statement(`DELETE FROM instances WHERE state = 'stopped' AND updated_at < ?`).run(now - this.options.retainStoppedMs);
    return sweep;
  }

  /** Which deadline the instance has overrun, if any. */
  private overdue(row: Row, now: number): DeadlineReason | null {
    const { startTimeoutMs, idleTimeoutMs, busyTimeoutMs, exitTimeoutMs } = this.options;
    if (row.terminating_since !== null) return 'terminate-retry';
    const since = this.age(row, row.state === 'starting' ? row.started_at : row.updated_at, now);
    if (row.state === 'starting' && since > startTimeoutMs) return 'start-timeout';
    if (row.state === 'idle' && idleTimeoutMs !== undefined && since > idleTimeoutMs) return 'idle-timeout';
    if (row.state === 'busy' && busyTimeoutMs !== undefined && since > busyTimeoutMs) return 'busy-timeout';
    if (row.state === 'exiting' && exitTimeoutMs !== undefined && since > exitTimeoutMs) return 'exit-timeout';
    return null;
  }

  /**
   * How long the instance has been in its state: by the registry's wall-clock stamp, but
   * never more than this process has seen on its monotonic clock. A forward step then ends
   * nothing early; a backward one, or a controller that just started, only delays a deadline.
   */
  private age(row: Row, stampedAt: number, now: number): number {
    const mark = `${row.state}:${stampedAt}`;
    let seen = this.firstSeen.get(row.id);
    if (!seen || seen.mark !== mark) {
      seen = { mark, at: this.clock.monotonic() };
      this.firstSeen.set(row.id, seen);
    }
    return Math.min(now - stampedAt, this.clock.monotonic() - seen.at);
  }

  async report(id: string, report: InstanceReport): Promise<void> {
    const sets = ['state = @state', 'updated_at = @now', 'ready_at = COALESCE(ready_at, @now)'];
    // Stopped for good only once the process is gone (reapDead): it may yet hang on its way out.
    const state: RowState = report.state === 'stopped' ? 'exiting' : report.state;
    if (report.imageId !== undefined) sets.push('image_id = @imageId');
    if (report.processed !== undefined) sets.push('processed = @processed');
    if (report.serviceMs !== undefined) sets.push('service_ms = @serviceMs');
    // A stopped instance stays stopped: a late report from a terminated worker must not revive it.
    this
      .statement(`UPDATE instances SET ${sets.join(', ')} WHERE id = @id AND state != 'stopped'`)
      .run({ id, state, now: this.clock.now(), imageId: report.imageId ?? null, processed: report.processed ?? 0, serviceMs: report.serviceMs ?? null });
  }

  /**
   * The last lines of the worker's log that say why it stopped: its warnings and errors
   * (the log is JSON lines), and what it printed otherwise (a crash before its logger
   * existed), without stack frames and help hints, which say little to a user.
   */
  async startFailure(id: string): Promise<string | undefined> {
    if (!this.options.logDir || !/^i-[0-9a-f]+$/.test(id)) return undefined;
    let text: string;
    let truncated = false;
    try {
      const file = await open(path.join(this.options.logDir, `${id}.log`), 'r');
      try {
        const { size } = await file.stat();
        const length = Math.min(size, LOG_TAIL_BYTES);
        truncated = length < size;
        const { buffer, bytesRead } = await file.read(Buffer.alloc(length), 0, length, size - length);
        text = buffer.subarray(0, bytesRead).toString('utf8');
      } finally {
        await file.close();
      }
    } catch {
      return undefined;
    }
    const all = text.split('\n');
    // A tail that begins mid-file begins mid-line: that piece of a line is left out.
    if (truncated) all.shift();
    const lines = withoutNodeWarnings(all.map((line) => line.trimEnd())).flatMap(whyFromLogLine);
    return lines.length > 0 ? lines.slice(-LOG_TAIL_LINES).join('\n') : undefined;
  }

  /**
   * Asks every running worker to finish the image it holds and exit (SIGTERM), then kills
   * those still running after the grace period.
   */
  async stopAll(graceMs: number): Promise<{ total: number; killed: number }> {
    const running = [...this.activeIds()];
    for (const id of running) this.signal(id, 'SIGTERM');
    const deadline = this.clock.monotonic() + graceMs;
    let left = running;
    while (left.length > 0 && this.clock.monotonic() < deadline) {
      await sleep(100);
      const active = this.activeIds();
      left = left.filter((id) => active.has(id));
    }
    // A kill that is refused stays recorded; the next controller's sweep tries again.
    for (const id of left) await this.terminate(id).catch(() => {});
    return { total: running.length, killed: left.length };
  }

  /** Instances whose process may still run: those listed as stopped but still exiting included. */
  private activeIds(): Set<string> {
    this.db.transaction(() => this.reapDead()).immediate();
    const rows = this.statement(`SELECT id FROM instances WHERE state != 'stopped'`).all() as { id: string }[];
    return new Set(rows.map((row) => row.id));
  }

  private signal(id: string, signal: NodeJS.Signals): void {
    const row = this.statement(`SELECT pid FROM instances WHERE id = ?`).get(id) as { pid: number | null } | undefined;
    if (row?.pid && isOurProcess(row.pid, id)) {
      try {
        process.kill(row.pid, signal);
      } catch {
        // Gone already.
      }
    }
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }

  private markStopped(id: string): void {
    this.statement(`UPDATE instances SET state = 'stopped', image_id = NULL, updated_at = ? WHERE id = ? AND state != 'stopped'`).run(this.clock.now(), id);
  }

  /** Marks instances whose process is gone (crashed, killed, exited) as stopped. */
  private reapDead(): void {
    const now = this.clock.now();
    const rows = this.statement(`SELECT id, pid, started_at FROM instances WHERE state != 'stopped'`).all() as Pick<Row, 'id' | 'pid' | 'started_at'>[];
    for (const row of rows) {
      const alive = row.pid === null ? now - row.started_at < this.options.startTimeoutMs : isOurProcess(row.pid, row.id);
      if (!alive) this.markStopped(row.id);
    }
  }

  private pruneLogs(): void {
    const dir = this.options.logDir;
    if (!dir) return;
    try {
      const files = readdirSync(dir).filter((name) => name.endsWith('.log'));
      if (files.length <= LOG_FILES_KEPT) return;
      const byAge = files.map((name) => ({ name, mtime: statSync(path.join(dir, name)).mtimeMs })).sort((a, b) => a.mtime - b.mtime);
      for (const file of byAge.slice(0, files.length - LOG_FILES_KEPT)) unlinkSync(path.join(dir, file.name));
    } catch {
      // Log pruning is housekeeping; a race with another process pruning is harmless.
    }
  }
}

/**
 * Drops Node's process warnings (a deprecation, a library's notice about the Node version),
 * which every worker may print at start and which would otherwise pass for the reason a
 * worker stopped. A warning runs from its "(node:<pid>) ..." line to Node's hint about
 * --trace-warnings when one follows (the hint comes with the first warning only); a
 * warning without it is taken to be its first line.
 */
export function withoutNodeWarnings(lines: string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (!NODE_WARNING.test(lines[i]!)) {
      kept.push(lines[i]!);
      continue;
    }
    const hint = lines.findIndex((line, j) => j > i && TRACE_WARNINGS_HINT.test(line));
    if (hint !== -1 && !lines.slice(i + 1, hint).some((line) => NODE_WARNING.test(line))) i = hint;
  }
  return kept;
}

const NODE_WARNING = /^\(node:\d+\) /;
const TRACE_WARNINGS_HINT = /^\(Use `node --trace-/;

/** Plain lines worth showing a user: not blank, not stack frames, not the help hint. */
function saysWhy(line: string): boolean {
  return !/^\s*\}?$/.test(line) && !/^\s+at /.test(line) && !/^run icaas .*--help/.test(line);
}

const WHY_LEVELS = new Set(['warn', 'error', 'fatal']);

/**
 * What one line of a worker's log tells a user about why it stopped: a warning or an
 * error line's message with its error's, nothing for the rest of the JSON lines (the
 * worker's routine), and a plain line as it is when it says something.
 */
export function whyFromLogLine(line: string): string[] {
  if (line.startsWith('{')) {
    let entry: { level?: unknown; msg?: unknown; err?: { message?: unknown } };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      // Cut short (a worker killed mid-write) or not ours: read as text.
      return saysWhy(line) ? [line] : [];
    }
    if (typeof entry.level !== 'string' || !WHY_LEVELS.has(entry.level)) return [];
    const error = typeof entry.err?.message === 'string' ? entry.err.message : '';
    const message = typeof entry.msg === 'string' ? entry.msg : '';
    const why = message && error ? `${message}: ${error}` : message || error;
    return why ? [why] : [];
  }
  return saysWhy(line) ? [line] : [];
}

/**
 * SIGKILL to the process group led by pid, else to pid alone. Returns why the kill was
 * refused (e.g. EPERM: the process belongs to another user), or null when it was sent or
 * the process is already gone.
 */
function killGroup(pid: number): string | null {
  try {
    process.kill(-pid, 'SIGKILL');
    return null;
  } catch {
    try {
      process.kill(pid, 'SIGKILL');
      return null;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      return code === 'ESRCH' ? null : (code ?? (error as Error).message);
    }
  }
}

/**
 * True when pid is alive and is the worker with this instance id. Checking the command
 * line guards against a recycled pid being mistaken for (or killed as) our worker.
 */
function isOurProcess(pid: number, id: string): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    // A zombie (exited, not yet reaped) has an empty command line.
    return cmdline.includes(id);
  } catch {
    // No /proc (not Linux): the signal check is all we have.
    return process.platform !== 'linux';
  }
}
