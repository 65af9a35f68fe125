/**
 * Queue port with SQS semantics. Adapters: one SQLite file shared by all processes
 * (embedded default) and Amazon SQS (distributed).
 */
export interface ReceivedMessage {
  /** Stable id of the message across receives. */
  id: string;
  body: string;
  /** Valid only until the message is received again; needed to delete or extend it. */
  receiptHandle: string;
  /** How many times the message has been received, this time included. */
  receiveCount: number;
  /** Epoch milliseconds when the message was first sent. */
  sentAt: number;
}

export interface QueueCounts {
  visible: number;
  inFlight: number;
  delayed: number;
}

export interface SendOptions {
  /** Seconds before the message becomes visible (SQS allows 0-900). */
  delaySeconds?: number;
  /**
   * False: the sender does not need the send to survive a power cut by itself, because
   * losing it is recovered by what the sender committed before it. A queue that flushes
   * each send to disk (SQLite) may then skip the flush; a power cut undoes only the last
   * commits of the queue file, never one without those after it. Default true. Queues that
   * are durable anyway (SQS) ignore it.
   */
  flush?: boolean;
}

/** What a batch's messages share; a batch has no delay. */
export type BatchSendOptions = Pick<SendOptions, 'flush'>;

export interface ReceiveOptions {
  /** 1-10, as in SQS. Default 1. */
  maxMessages?: number;
  /** Long-poll wait in seconds (0-20). Returns as soon as a message is there. Default 0. */
  waitSeconds?: number;
  /** Seconds the received messages stay hidden from other receivers. Default: the queue's. */
  visibilityTimeoutSeconds?: number;
  /** Aborts a long poll early; resolves with what was received so far (nothing). */
  signal?: AbortSignal;
}

export interface Queue {
  readonly name: string;
  send(body: string, options?: SendOptions): Promise<string>;
  /**
   * Sends many messages at once, cheaper than one send each (one transaction; SQS batches
   * of 10). Not atomic: when it throws, some of the messages may have been sent.
   */
  sendBatch(bodies: string[], options?: BatchSendOptions): Promise<string[]>;
  receive(options?: ReceiveOptions): Promise<ReceivedMessage[]>;
  /** Deleting with a stale handle (the message was received again since) is a no-op, as in SQS. */
  delete(receiptHandle: string): Promise<void>;
  /** Deletes many at once (one transaction; SQS batches of 10); stale handles are no-ops, as with delete. */
  deleteBatch(receiptHandles: string[]): Promise<void>;
  /** Throws QueueError('not-in-flight') when the handle is stale or the message is gone. */
  changeVisibility(receiptHandle: string, visibilityTimeoutSeconds: number): Promise<void>;
  /** Approximate counts, as SQS reports them. */
  counts(): Promise<QueueCounts>;
}

export interface QueueProvider {
  /** Opens (creating when needed) the named queue. */
  queue(name: string): Queue;
  close(): Promise<void>;
}

export type QueueErrorCode = 'not-in-flight' | 'invalid-argument' | 'queue-missing' | 'access-denied' | 'throttled' | 'unavailable';

export class QueueError extends Error {
  constructor(readonly code: QueueErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QueueError';
  }
}

export const SQS_LIMITS = {
  maxMessages: 10,
  maxWaitSeconds: 20,
  maxDelaySeconds: 900,
  maxVisibilityTimeoutSeconds: 43_200,
  maxBodyBytes: 262_144,
} as const;

/** Shared argument checks, so every adapter rejects the same requests the same way. */
export function checkSendOptions(body: string, options: SendOptions | undefined): number {
  if (Buffer.byteLength(body) > SQS_LIMITS.maxBodyBytes) {
    throw new QueueError('invalid-argument', `message body is larger than ${SQS_LIMITS.maxBodyBytes} bytes`);
  }
  const delay = options?.delaySeconds ?? 0;
  if (!Number.isInteger(delay) || delay < 0 || delay > SQS_LIMITS.maxDelaySeconds) {
    throw new QueueError('invalid-argument', `delaySeconds must be an integer from 0 to ${SQS_LIMITS.maxDelaySeconds}, got ${delay}`);
  }
  return delay;
}

export function checkReceiveOptions(options: ReceiveOptions | undefined): { maxMessages: number; waitSeconds: number } {
  const maxMessages = options?.maxMessages ?? 1;
  const waitSeconds = options?.waitSeconds ?? 0;
  if (!Number.isInteger(maxMessages) || maxMessages < 1 || maxMessages > SQS_LIMITS.maxMessages) {
    throw new QueueError('invalid-argument', `maxMessages must be an integer from 1 to ${SQS_LIMITS.maxMessages}, got ${maxMessages}`);
  }
  if (!(waitSeconds >= 0 && waitSeconds <= SQS_LIMITS.maxWaitSeconds)) {
    throw new QueueError('invalid-argument', `waitSeconds must be from 0 to ${SQS_LIMITS.maxWaitSeconds}, got ${waitSeconds}`);
  }
  if (options?.visibilityTimeoutSeconds !== undefined) checkVisibilityTimeout(options.visibilityTimeoutSeconds);
  return { maxMessages, waitSeconds };
}

export function checkVisibilityTimeout(seconds: number): void {
  if (!(seconds >= 0 && seconds <= SQS_LIMITS.maxVisibilityTimeoutSeconds)) {
    throw new QueueError('invalid-argument', `visibility timeout must be from 0 to ${SQS_LIMITS.maxVisibilityTimeoutSeconds} seconds, got ${seconds}`);
  }
}
