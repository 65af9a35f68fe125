/**
 * Queue adapter for one machine: every queue lives in one SQLite file that all processes
 * (web tier, controllers, workers) open at the same time.
 *
 * Each message row carries the time it next becomes visible. Sending sets it to now plus
 * the delay; receiving claims the oldest visible rows inside one write transaction and
 * moves their time forward by the visibility timeout, with a fresh receipt handle. Because
 * SQLite lets only one write transaction run at a time across all connections to the file,
 * two receivers can never claim the same row while it is hidden. Delete and change of
 * visibility match the receipt handle, so a handle from an earlier receive no longer
 * reaches the message once someone else has received it.
 *
 * Time: every visibility decision uses one queue time, the wall clock clamped so that it
 * never goes back: max(now, the latest queue time any process has written to the file).
 * After the clock is stepped back, queue time stands still until the clock catches up, so
 * a visible message never becomes hidden again, and an in-flight one is neither released
 * early nor hidden longer than its timeout plus the step. A step forward cannot be told
 * from time passing: in-flight messages and delays end early by up to the step, and the
 * file keeps the later time, so if the clock is then stepped back again, time stands still
 * (as above) until it has caught up. Long-poll waits use the monotonic clock instead.
 */
import Database from '../sqlite-driver.js';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { clock as systemClock, type Clock } from '../clock.js';
import {
  QueueError,
  checkReceiveOptions,
  checkSendOptions,
  checkVisibilityTimeout,
  type Queue,
  type BatchSendOptions,
  type QueueCounts,
  type QueueProvider,
  type ReceiveOptions,
  type ReceivedMessage,
  type SendOptions,
} from './port.js';
import { sleep } from '../backoff.js';
import { randomToken } from '../random-token.js';

export interface SqliteQueueProviderOptions {
  /** Visibility timeout of queues opened without one of their own. Default 30 s, as in SQS. */
  visibilityTimeoutSeconds?: number;
  /**
   * How long one statement waits for another connection's write lock before it gives up.
   * Default 5000 ms. The wait blocks this process's event loop, but write transactions
   * here last well under a millisecond, so in practice it is only ever waited on briefly.
   */
  busyTimeoutMs?: number;
  /** The wall and monotonic clock; tests inject one to step it. */
  clock?: Clock;
  /**
   * Seconds a message is kept after it was sent, received or not, as SQS's retention period:
   * a queue nobody consumes (the output queue without a web tier) stops growing there.
   * Default 14 days, SQS's maximum and what the AWS deployment sets up: long enough that
   * work waiting while the service is stopped for a while is not dropped.
   */
  messageRetentionSeconds?: number;
}

export interface SqliteQueueOptions {
  /** Overrides the provider's default visibility timeout for receives on this queue. */
  visibilityTimeoutSeconds?: number;
}

/** As SQS: 1-80 characters from letters, digits, hyphen and underscore. */
const QUEUE_NAME = /^[A-Za-z0-9_-]{1,80}$/;

export function checkQueueName(name: string): void {
  if (typeof name !== 'string' || !QUEUE_NAME.test(name)) {
    throw new QueueError('invalid-argument', `queue name must be 1-80 characters from A-Z, a-z, 0-9, "-" and "_", got ${JSON.stringify(name)}`);
  }
}

const SCHEMA_VERSION = 1;
const DEFAULT_RETENTION_SECONDS = 14 * 24 * 3600;
/** Oldest rows looked at per round of the retention sweep, and rounds per sweep. */
const EXPIRE_BATCH = 1000;
const EXPIRE_ROUNDS = 10;
const POLL_MIN_MS = 25;
const POLL_MAX_MS = 50;

interface ClaimedRow {
  id: string;
  body: string;
  receiveCount: number;
  sentAt: number;
}

interface CountsRow {
  visible: number | null;
  inFlight: number | null;
  delayed: number | null;
}

/** Reads and advances the queue time kept in the file (see "Time" above). */
interface ClockStatements {
  read: Database.Statement<[]>;
  advance: Database.Statement<[number]>;
}

/** Statements prepared once per connection and shared by all its queues. */
interface Statements {
  insert: Database.Statement<[string, string, string, number, number]>;
  anyVisible: Database.Statement<[string, number]>;
  selectVisible: Database.Statement<[string, number, number]>;
  claim: Database.Statement<[string, number, number]>;
  deleteByReceipt: Database.Statement<[string, string]>;
  changeVisibility: Database.Statement<[number, string, string, number]>;
  counts: Database.Statement<{ queue: string; now: number }>;
  expire: Database.Statement<[number, number]>;
  oldest: Database.Statement<[]>;
}

export class SqliteQueueProvider implements QueueProvider {
  readonly filePath: string;
  private readonly db: Database.Database;
  private readonly statements: Statements;
  private readonly clockStatements: ClockStatements;
  /** @internal */
  readonly clock: Clock;
  private readonly defaultVisibilityMs: number;
  private readonly busyTimeoutMs: number;
  /** Wakes long polls that are sleeping between queries when the provider closes. */
  private readonly closing = new AbortController();
  private closed = false;
  private readonly claimTransaction: (queue: string, maxMessages: number, visibilityMs: number) => ReceivedMessage[];
  private readonly atQueueTime: Database.Transaction<(write: (now: number) => unknown) => unknown>;
  private readonly retentionMs: number;
  private lastExpiry = 0;

  static open(filePath: string, options: SqliteQueueProviderOptions = {}): SqliteQueueProvider {
    return new SqliteQueueProvider(filePath, options);
  }

  constructor(filePath: string, options: SqliteQueueProviderOptions = {}) {
    const visibility = options.visibilityTimeoutSeconds ?? 30;
    checkVisibilityTimeout(visibility);
    this.defaultVisibilityMs = secondsToMs(visibility);
    this.busyTimeoutMs = options.busyTimeoutMs ?? 5000;
    this.clock = options.clock ?? systemClock;
    const retention = options.messageRetentionSeconds ?? DEFAULT_RETENTION_SECONDS;
    if (!(retention > 0)) throw new QueueError('invalid-argument', `message retention must be a positive number of seconds, got ${retention}`);
    this.retentionMs = secondsToMs(retention);
    this.filePath = filePath;
    mkdirSync(path.dirname(path.resolve(filePath)), { recursive: true });
    // `timeout` is SQLite's busy timeout: a connection that finds the file locked by
    // another writer retries for this long before failing with SQLITE_BUSY.
    this.db = new Database(filePath, { timeout: this.busyTimeoutMs });
    try {
      // WAL lets readers (counts, the cheap check before each claim) go on while a writer
      // commits, so many idle long-pollers do not get in the way of senders.
      this.db.pragma('journal_mode = WAL');
      // NORMAL by default, FULL for sends (see writeDurably). In WAL mode a commit under
      // NORMAL survives the process being killed, but a power loss or an OS crash can roll
      // back the last commits. For a receive, a delete or a visibility change that only
      // makes a message come back, which at-least-once delivery allows and every consumer
      // here handles; a send rolled back would lose a message (an accepted image that never
      // gets a result), so sends flush, as the object store flushes its writes. Rolling
      // back is always of the last commits of the whole file, so a flushed send also
      // keeps every commit before it. Without this, every write, even an empty poll that
      // only advances the queue clock, waited for the disk while holding the file's one
      // write lock, and all processes queued behind it.
      this.db.pragma('synchronous = NORMAL');
      this.migrate();
      this.statements = this.prepare();
      this.clockStatements = this.prepareClock();
    } catch (error) {
      this.db.close();
      throw toQueueError(error, `could not open the queue file ${filePath}`);
    }
    const claim = this.db.transaction((queue: string, maxMessages: number, visibilityMs: number): ReceivedMessage[] => {
      // The time is taken after the write lock is held, so a wait for the lock can
      // neither hand out a message that became hidden meanwhile nor shorten its timeout.
      const now = this.queueTime(true);
      const rows = this.statements.selectVisible.all(queue, now, maxMessages) as { seq: number }[];
      return rows.map(({ seq }) => {
        const receiptHandle = randomToken(24, 'base64url');
        const row = this.statements.claim.get(receiptHandle, now + visibilityMs, seq) as ClaimedRow;
        return { id: row.id, body: row.body, receiptHandle, receiveCount: row.receiveCount, sentAt: row.sentAt };
      });
    });
    this.atQueueTime = this.db.transaction((write: (now: number) => unknown) => write(this.queueTime(true)));
    // BEGIN IMMEDIATE takes the write lock before the SELECT, so no other connection can
    // claim the same rows between our read and our update.
    this.claimTransaction = (queue, maxMessages, visibilityMs) => claim.immediate(queue, maxMessages, visibilityMs);
  }

  /**
   * Opens the named queue. Queues need no creation step: a queue is the set of rows with
   * its name, so every process that names it sees the same queue.
   */
  queue(name: string, options: SqliteQueueOptions = {}): Queue {
    this.ensureOpen();
    checkQueueName(name);
    let visibilityMs = this.defaultVisibilityMs;
    if (options.visibilityTimeoutSeconds !== undefined) {
      checkVisibilityTimeout(options.visibilityTimeoutSeconds);
      visibilityMs = secondsToMs(options.visibilityTimeoutSeconds);
    }
    return new SqliteQueue(this, name, visibilityMs);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    this.db.close();
  }

  /** @internal */
  get closingSignal(): AbortSignal {
    return this.closing.signal;
  }

  /** @internal */
  get isClosed(): boolean {
    return this.closed;
  }

  /** @internal */
  ensureOpen(): void {
    if (this.closed) throw new QueueError('unavailable', `the queue file ${this.filePath} has been closed; open a new SqliteQueueProvider to use it again`);
  }

  /** @internal Runs one database operation, turning SQLite failures into QueueErrors. */
  run<T>(what: string, operation: (statements: Statements) => T): T {
    this.ensureOpen();
    try {
      return operation(this.statements);
    } catch (error) {
      throw toQueueError(error, `${what} failed on ${this.filePath}`, this.busyTimeoutMs);
    }
  }

  /**
   * @internal Deletes messages older than the retention, every few seconds at most, on the
   * back of sends and receives. Rows are numbered in the order they were sent, so expired
   * ones are the first rows: each round looks at a fixed number of them and stops at the
   * first round that finds fewer than that, however large the table.
   */
  expireOld(): void {
    // How often is measured on the monotonic clock; what is old, on the queue's time.
    const sinceLast = this.clock.monotonic() - this.lastExpiry;
    if (this.lastExpiry !== 0 && sinceLast < Math.min(10_000, this.retentionMs / 2)) return;
    this.lastExpiry = this.clock.monotonic();
    const cutoff = this.queueTime(false) - this.retentionMs;
    try {
      this.run('expire old messages', (statements) => {
        // A read first, so the common case (nothing expired) never takes the write lock.
        const oldest = statements.oldest.get() as { sentAt: number } | undefined;
        if (oldest === undefined || oldest.sentAt >= cutoff) return;
        for (let round = 0; round < EXPIRE_ROUNDS; round++) {
          if (statements.expire.run(EXPIRE_BATCH, cutoff).changes < EXPIRE_BATCH) return;
        }
      });
    } catch {
      // Not the caller's concern (a send or receive must not fail for it): tried again later.
    }
  }

  /** @internal Claims up to `maxMessages` visible messages, or none without taking the write lock. */
  claim(queue: string, maxMessages: number, visibilityMs: number): ReceivedMessage[] {
    this.expireOld();
    return this.run(`receive from ${queue}`, (statements) => {
      // A read first: idle pollers, the common case, then never take the write lock.
      if (statements.anyVisible.get(queue, this.queueTime(false)) === undefined) return [];
      return this.claimTransaction(queue, maxMessages, visibilityMs);
    });
  }

  /**
   * @internal The queue time (see "Time" above). With `advance`, which callers use only
   * inside a write transaction, it is also recorded for every other process.
   */
  queueTime(advance: boolean): number {
    const last = (this.clockStatements.read.get() as { lastMs: number } | undefined)?.lastMs ?? 0;
    const now = Math.max(Math.floor(this.clock.now()), last);
    if (advance && now > last) this.clockStatements.advance.run(now);
    return now;
  }

  /** @internal Runs `write` in one write transaction, with the queue time at its start. */
  /** A write that must survive a power loss once it returns: committed with a flush. */
  writeDurably<T>(what: string, write: (statements: Statements, now: number) => T): T {
    this.ensureOpen();
    this.db.pragma('synchronous = FULL');
    try {
      return this.writeAtQueueTime(what, write);
    } finally {
      if (this.db.open) this.db.pragma('synchronous = NORMAL');
    }
  }

  /** A send: flushed unless the sender said it need not be (SendOptions.flush). */
  writeSend<T>(what: string, flush: boolean, write: (statements: Statements, now: number) => T): T {
    return flush ? this.writeDurably(what, write) : this.writeAtQueueTime(what, write);
  }

  writeAtQueueTime<T>(what: string, write: (statements: Statements, now: number) => T): T {
    return this.run(what, (statements) => this.atQueueTime.immediate((now) => write(statements, now)) as T);
  }

  /** Kept apart from the versioned schema: files of any version gain it on open. */
  private prepareClock(): ClockStatements {
    this.db.exec(`CREATE TABLE IF NOT EXISTS queue_clock (id INTEGER PRIMARY KEY CHECK (id = 1), last_ms INTEGER NOT NULL)`);
    return {
      read: this.db.prepare(`SELECT last_ms AS lastMs FROM queue_clock WHERE id = 1`),
      advance: this.db.prepare(`INSERT INTO queue_clock (id, last_ms) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)`),
    };
  }

  private migrate(): void {
    this.db
      .transaction(() => {
        const version = this.db.pragma('user_version', { simple: true }) as number;
        if (version > SCHEMA_VERSION) {
          throw new Error(`the queue file was written by a newer version (schema ${version}, this one knows ${SCHEMA_VERSION})`);
        }
        if (version === SCHEMA_VERSION) return;
        // seq orders messages by insertion; AUTOINCREMENT keeps it growing even after the
        // newest rows are deleted, so a later send never sorts before an earlier one.
        this.db.exec(`
          CREATE TABLE IF NOT EXISTS messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            queue TEXT NOT NULL,
            body TEXT NOT NULL,
            sent_at INTEGER NOT NULL,
            visible_at INTEGER NOT NULL,
            receipt TEXT UNIQUE,
            receive_count INTEGER NOT NULL DEFAULT 0
          );
          CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at, seq);
        `);
        this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
      })
      .immediate();
  }

  private prepare(): Statements {
    const db = this.db;
    return {
      insert: db.prepare(`INSERT INTO messages (id, queue, body, sent_at, visible_at) VALUES (?, ?, ?, ?, ?)`),
      anyVisible: db.prepare(`SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1`),
      selectVisible: db.prepare(`SELECT seq FROM messages WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?`),
      claim: db.prepare(`
        UPDATE messages SET receipt = ?, visible_at = ?, receive_count = receive_count + 1 WHERE seq = ?
        RETURNING id, body, receive_count AS receiveCount, sent_at AS sentAt`),
      deleteByReceipt: db.prepare(`DELETE FROM messages WHERE queue = ? AND receipt = ?`),
      // Only while hidden by a receive: once the timeout has lapsed the message is no
      // longer in flight, as in SQS, even if nobody has received it again yet.
      changeVisibility: db.prepare(`UPDATE messages SET visible_at = ? WHERE queue = ? AND receipt = ? AND visible_at > ?`),
      // Delayed messages are those never received and not yet visible; a received
      // message that is hidden again is in flight.
      counts: db.prepare(`
        SELECT
          SUM(visible_at <= @now) AS visible,
          SUM(visible_at > @now AND receipt IS NOT NULL) AS inFlight,
          SUM(visible_at > @now AND receipt IS NULL) AS delayed
        FROM messages WHERE queue = @queue`),
      expire: db.prepare(`DELETE FROM messages WHERE seq IN (SELECT seq FROM messages ORDER BY seq LIMIT ?) AND sent_at < ?`),
      oldest: db.prepare(`SELECT sent_at AS sentAt FROM messages ORDER BY seq LIMIT 1`),
    };
  }
}

class SqliteQueue implements Queue {
  constructor(
    private readonly provider: SqliteQueueProvider,
    readonly name: string,
    private readonly visibilityMs: number,
  ) {}

  async send(body: string, options?: SendOptions): Promise<string> {
    if (typeof body !== 'string') throw new QueueError('invalid-argument', `message body must be a string, got ${typeof body}`);
    const delaySeconds = checkSendOptions(body, options);
    const id = randomUUID();
    this.provider.expireOld();
    const insert = (statements: Statements, now: number) => {
      statements.insert.run(id, this.name, body, now, now + delaySeconds * 1000);
    };
    this.provider.writeSend(`send to ${this.name}`, options?.flush !== false, insert);
    return id;
  }

  /** One transaction, so one fsync, for the whole batch: an upload of 900 images costs one. */
  async sendBatch(bodies: string[], options?: BatchSendOptions): Promise<string[]> {
    for (const body of bodies) {
      if (typeof body !== 'string') throw new QueueError('invalid-argument', `message body must be a string, got ${typeof body}`);
      checkSendOptions(body, undefined);
    }
    if (bodies.length === 0) return [];
    const ids = bodies.map(() => randomUUID());
    this.provider.expireOld();
    const insert = (statements: Statements, now: number) => {
      for (const [i, body] of bodies.entries()) statements.insert.run(ids[i]!, this.name, body, now, now);
    };
    this.provider.writeSend(`send ${bodies.length} messages to ${this.name}`, options?.flush !== false, insert);
    return ids;
  }

  async receive(options?: ReceiveOptions): Promise<ReceivedMessage[]> {
    const { maxMessages, waitSeconds } = checkReceiveOptions(options);
    const visibilityMs = options?.visibilityTimeoutSeconds === undefined ? this.visibilityMs : secondsToMs(options.visibilityTimeoutSeconds);
    const signal = options?.signal;
    this.provider.ensureOpen();
    const clock = this.provider.clock;
    const deadline = clock.monotonic() + waitSeconds * 1000;
    for (;;) {
      // Checked before each claim, never after: a message claimed here is always returned,
      // because one dropped on the floor would stay hidden for its whole timeout.
      if (signal?.aborted || this.provider.isClosed) return [];
      try {
        const messages = this.provider.claim(this.name, maxMessages, visibilityMs);
        if (messages.length > 0) return messages;
      } catch (error) {
        // Another process held the write lock for the whole busy timeout: try again on the
        // next poll while the wait lasts, and report it only when the wait is over.
        const busy = error instanceof QueueError && isBusy(error.cause);
        if (!busy || this.provider.isClosed || clock.monotonic() >= deadline) throw error;
      }
      const remaining = deadline - clock.monotonic();
      if (remaining <= 0) return [];
      // Jittered, so processes that started polling together do not keep querying in step.
      const interval = POLL_MIN_MS + Math.random() * (POLL_MAX_MS - POLL_MIN_MS);
      await sleep(Math.min(remaining, interval), signal, this.provider.closingSignal);
    }
  }

  async delete(receiptHandle: string): Promise<void> {
    checkReceiptHandle(receiptHandle);
    this.provider.run(`delete from ${this.name}`, (statements) => statements.deleteByReceipt.run(this.name, receiptHandle));
  }

  /** One transaction, so one disk flush, however many. */
  async deleteBatch(receiptHandles: string[]): Promise<void> {
    for (const handle of receiptHandles) checkReceiptHandle(handle);
    if (receiptHandles.length === 0) return;
    this.provider.writeAtQueueTime(`delete ${receiptHandles.length} messages from ${this.name}`, (statements) => {
      for (const handle of receiptHandles) statements.deleteByReceipt.run(this.name, handle);
    });
  }

  async changeVisibility(receiptHandle: string, visibilityTimeoutSeconds: number): Promise<void> {
    checkReceiptHandle(receiptHandle);
    checkVisibilityTimeout(visibilityTimeoutSeconds);
    const changed = this.provider.writeAtQueueTime(`change visibility on ${this.name}`, (statements, now) => {
      return statements.changeVisibility.run(now + secondsToMs(visibilityTimeoutSeconds), this.name, receiptHandle, now).changes;
    });
    if (changed === 0) {
      throw new QueueError('not-in-flight', `no message in flight on queue ${this.name} has this receipt handle: it was deleted, received again, or its visibility timeout ended`);
    }
  }

  async counts(): Promise<QueueCounts> {
    const row = this.provider.run(`count ${this.name}`, (statements) => statements.counts.get({ queue: this.name, now: this.provider.queueTime(false) }) as CountsRow);
    return { visible: row.visible ?? 0, inFlight: row.inFlight ?? 0, delayed: row.delayed ?? 0 };
  }
}

function checkReceiptHandle(receiptHandle: string): void {
  if (typeof receiptHandle !== 'string' || receiptHandle.length === 0) {
    throw new QueueError('invalid-argument', 'receipt handle must be a non-empty string');
  }
}

function secondsToMs(seconds: number): number {
  return Math.round(seconds * 1000);
}

function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'));
}

function toQueueError(error: unknown, context: string, busyTimeoutMs?: number): unknown {
  if (error instanceof QueueError) return error;
  if (isBusy(error)) {
    const waited = busyTimeoutMs === undefined ? '' : ` for ${busyTimeoutMs} ms`;
    return new QueueError('unavailable', `${context}: the file stayed locked by another connection${waited}`, { cause: error });
  }
  // Other SQLite failures (disk full, I/O error, a damaged file) leave the queue unusable
  // until someone acts; errors of any other kind are bugs and pass through unchanged.
  if (error instanceof Database.SqliteError) return new QueueError('unavailable', `${context}: ${error.message}`, { cause: error });
  return error;
}
