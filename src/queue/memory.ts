/**
 * Queue adapter held in this process's memory, for tests that run every part in one process
 * and want SQS semantics without a file: visibility timeouts, receive counts, delays, receipt
 * handles that go stale on the next receive, long polls and approximate counts. It passes the
 * same contract suite as the SQLite and SQS adapters. Nothing survives the process and no
 * other process can see it, so the service never runs on it (workers are processes of their own).
 *
 * Visibility is decided on the monotonic clock: nothing here outlives the process, so a step
 * of the wall clock cannot hide or release a message. The wall clock only stamps sentAt.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { systemClock, type Clock } from '../clock.js';
import {
  QueueError,
  checkReceiveOptions,
  checkSendOptions,
  checkVisibilityTimeout,
  type Queue,
  type QueueCounts,
  type QueueProvider,
  type ReceiveOptions,
  type ReceivedMessage,
  type SendOptions,
} from './port.js';

export interface MemoryQueueProviderOptions {
  /** Visibility timeout of receives that name none. Default 30 s, as in SQS. */
  visibilityTimeoutSeconds?: number;
  /** Seconds a message is kept after it was sent, received or not. Default 14 days, as SQS's maximum. */
  messageRetentionSeconds?: number;
  clock?: Clock;
}

/** As SQS and the SQLite adapter: 1-80 characters from letters, digits, hyphen and underscore. */
const QUEUE_NAME = /^[A-Za-z0-9_-]{1,80}$/;
const DEFAULT_RETENTION_SECONDS = 14 * 24 * 3600;

interface StoredMessage {
  id: string;
  body: string;
  /** Order of sending, the tie-break between messages visible at the same moment. */
  seq: number;
  sentAt: number;
  /** Monotonic time at which it was sent, for the retention. */
  sentAtMonotonic: number;
  /** Monotonic time from which it can be received. */
  visibleAt: number;
  /** The handle of its latest receive; undefined while it was never received. */
  receipt: string | undefined;
  receiveCount: number;
}

/** The messages of one queue name, shared by every Queue object opened on it. */
class MessageList {
  readonly messages = new Map<string, StoredMessage>();
  readonly byReceipt = new Map<string, StoredMessage>();
  /** Long polls waiting for a send; each is woken once. */
  readonly waiters = new Set<() => void>();
}

export class MemoryQueueProvider implements QueueProvider {
  private readonly lists = new Map<string, MessageList>();
  private readonly defaultVisibilityMs: number;
  private readonly retentionMs: number;
  private readonly closing = new AbortController();
  private seq = 0;
  /** @internal */
  readonly clock: Clock;

  constructor(options: MemoryQueueProviderOptions = {}) {
    const visibility = options.visibilityTimeoutSeconds ?? 30;
    checkVisibilityTimeout(visibility);
    this.defaultVisibilityMs = secondsToMs(visibility);
    const retention = options.messageRetentionSeconds ?? DEFAULT_RETENTION_SECONDS;
    if (!(retention > 0)) throw new QueueError('invalid-argument', `message retention must be a positive number of seconds, got ${retention}`);
    this.retentionMs = secondsToMs(retention);
    this.clock = options.clock ?? systemClock;
  }

  queue(name: string, options: { visibilityTimeoutSeconds?: number } = {}): Queue {
    this.ensureOpen();
    if (typeof name !== 'string' || !QUEUE_NAME.test(name)) {
      throw new QueueError('invalid-argument', `queue name must be 1-80 characters from A-Z, a-z, 0-9, "-" and "_", got ${JSON.stringify(name)}`);
    }
    let visibilityMs = this.defaultVisibilityMs;
    if (options.visibilityTimeoutSeconds !== undefined) {
      checkVisibilityTimeout(options.visibilityTimeoutSeconds);
      visibilityMs = secondsToMs(options.visibilityTimeoutSeconds);
    }
    let list = this.lists.get(name);
    if (!list) {
      list = new MessageList();
      this.lists.set(name, list);
    }
    return new MemoryQueue(this, name, list, visibilityMs);
  }

  async close(): Promise<void> {
    this.closing.abort();
  }

  /** @internal */
  get closingSignal(): AbortSignal {
    return this.closing.signal;
  }

  /** @internal */
  ensureOpen(): void {
    if (this.closing.signal.aborted) throw new QueueError('unavailable', 'the in-memory queues have been closed');
  }

  /** @internal */
  nextSeq(): number {
    return ++this.seq;
  }

  /** @internal Drops messages older than the retention from one queue. */
  expireOld(list: MessageList): void {
    const cutoff = this.clock.monotonic() - this.retentionMs;
    for (const message of list.messages.values()) {
      if (message.sentAtMonotonic >= cutoff) continue;
      list.messages.delete(message.id);
      if (message.receipt !== undefined) list.byReceipt.delete(message.receipt);
    }
  }
}

class MemoryQueue implements Queue {
  constructor(
    private readonly provider: MemoryQueueProvider,
    readonly name: string,
    private readonly list: MessageList,
    private readonly visibilityMs: number,
  ) {}

  async send(body: string, options?: SendOptions): Promise<string> {
    checkBody(body);
    const delaySeconds = checkSendOptions(body, options);
    this.provider.ensureOpen();
    return this.insert(body, delaySeconds);
  }

  async sendBatch(bodies: string[]): Promise<string[]> {
    for (const body of bodies) {
      checkBody(body);
      checkSendOptions(body, undefined);
    }
    if (bodies.length === 0) return [];
    this.provider.ensureOpen();
    return bodies.map((body) => this.insert(body, 0));
  }

  async receive(options?: ReceiveOptions): Promise<ReceivedMessage[]> {
    const { maxMessages, waitSeconds } = checkReceiveOptions(options);
    const visibilityMs = options?.visibilityTimeoutSeconds === undefined ? this.visibilityMs : secondsToMs(options.visibilityTimeoutSeconds);
    const signal = options?.signal;
    this.provider.ensureOpen();
    const clock = this.provider.clock;
    const deadline = clock.monotonic() + waitSeconds * 1000;
    for (;;) {
      if (signal?.aborted || this.provider.closingSignal.aborted) return [];
      const messages = this.claim(maxMessages, visibilityMs);
      if (messages.length > 0) return messages;
      const now = clock.monotonic();
      if (now >= deadline) return [];
      // Until the wait ends, a send, or the moment a hidden message becomes visible again.
      const wakeAt = Math.min(deadline, this.nextVisibleAt() ?? Infinity);
      await this.waitForSend(Math.max(0, wakeAt - now), signal);
    }
  }

  async delete(receiptHandle: string): Promise<void> {
    checkReceiptHandle(receiptHandle);
    this.provider.ensureOpen();
    this.remove(receiptHandle);
  }

  async deleteBatch(receiptHandles: string[]): Promise<void> {
    for (const handle of receiptHandles) checkReceiptHandle(handle);
    this.provider.ensureOpen();
    for (const handle of receiptHandles) this.remove(handle);
  }

  async changeVisibility(receiptHandle: string, visibilityTimeoutSeconds: number): Promise<void> {
    checkReceiptHandle(receiptHandle);
    checkVisibilityTimeout(visibilityTimeoutSeconds);
    this.provider.ensureOpen();
    const now = this.provider.clock.monotonic();
    const message = this.list.byReceipt.get(receiptHandle);
    // Only while hidden by that receive: once its timeout has lapsed it is no longer in flight.
    if (!message || message.visibleAt <= now) {
      throw new QueueError('not-in-flight', `no message in flight on queue ${this.name} has this receipt handle: it was deleted, received again, or its visibility timeout ended`);
    }
    message.visibleAt = now + secondsToMs(visibilityTimeoutSeconds);
    if (visibilityTimeoutSeconds === 0) this.wakeWaiters();
  }

  async counts(): Promise<QueueCounts> {
    this.provider.ensureOpen();
    const now = this.provider.clock.monotonic();
    const counts: QueueCounts = { visible: 0, inFlight: 0, delayed: 0 };
    for (const message of this.list.messages.values()) {
      if (message.visibleAt <= now) counts.visible++;
      else if (message.receipt !== undefined) counts.inFlight++;
      else counts.delayed++;
    }
    return counts;
  }

  private insert(body: string, delaySeconds: number): string {
    this.provider.expireOld(this.list);
    const id = randomUUID();
    const now = this.provider.clock.monotonic();
    this.list.messages.set(id, {
      id,
      body,
      seq: this.provider.nextSeq(),
      sentAt: Math.floor(this.provider.clock.now()),
      sentAtMonotonic: now,
      visibleAt: now + delaySeconds * 1000,
      receipt: undefined,
      receiveCount: 0,
    });
    this.wakeWaiters();
    return id;
  }

  /** The oldest visible messages, hidden for `visibilityMs` under a fresh receipt handle each. */
  private claim(maxMessages: number, visibilityMs: number): ReceivedMessage[] {
    this.provider.expireOld(this.list);
    const now = this.provider.clock.monotonic();
    const visible = [...this.list.messages.values()]
      .filter((message) => message.visibleAt <= now)
      .sort((a, b) => a.visibleAt - b.visibleAt || a.seq - b.seq)
      .slice(0, maxMessages);
    return visible.map((message) => {
      if (message.receipt !== undefined) this.list.byReceipt.delete(message.receipt);
      const receiptHandle = randomBytes(24).toString('base64url');
      message.receipt = receiptHandle;
      message.visibleAt = now + visibilityMs;
      message.receiveCount++;
      this.list.byReceipt.set(receiptHandle, message);
      return { id: message.id, body: message.body, receiptHandle, receiveCount: message.receiveCount, sentAt: message.sentAt };
    });
  }

  /** A stale handle (the message was received again since, or is gone) reaches nothing. */
  private remove(receiptHandle: string): void {
    const message = this.list.byReceipt.get(receiptHandle);
    if (!message) return;
    this.list.byReceipt.delete(receiptHandle);
    this.list.messages.delete(message.id);
  }

  private nextVisibleAt(): number | undefined {
    let next: number | undefined;
    for (const message of this.list.messages.values()) {
      if (next === undefined || message.visibleAt < next) next = message.visibleAt;
    }
    return next;
  }

  private wakeWaiters(): void {
    const waiters = [...this.list.waiters];
    this.list.waiters.clear();
    for (const wake of waiters) wake();
  }

  /** Resolves after `ms`, on the next send, or when the signal or the provider's closing aborts. */
  private waitForSend(ms: number, signal: AbortSignal | undefined): Promise<void> {
    return new Promise((resolve) => {
      const signals = [signal, this.provider.closingSignal].filter((s): s is AbortSignal => s !== undefined);
      const done = (): void => {
        clearTimeout(timer);
        this.list.waiters.delete(done);
        for (const s of signals) s.removeEventListener('abort', done);
        resolve();
      };
      // At least a millisecond: a timer of 0 could fire before the message's time is reached.
      const timer = setTimeout(done, Math.max(1, Math.ceil(ms)));
      this.list.waiters.add(done);
      for (const s of signals) {
        if (s.aborted) return done();
        s.addEventListener('abort', done, { once: true });
      }
    });
  }
}

function checkBody(body: string): void {
  if (typeof body !== 'string') throw new QueueError('invalid-argument', `message body must be a string, got ${typeof body}`);
}

function checkReceiptHandle(receiptHandle: string): void {
  if (typeof receiptHandle !== 'string' || receiptHandle.length === 0) {
    throw new QueueError('invalid-argument', 'receipt handle must be a non-empty string');
  }
}

function secondsToMs(seconds: number): number {
  return Math.round(seconds * 1000);
}
