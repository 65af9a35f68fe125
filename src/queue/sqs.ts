/**
 * Queue adapter on Amazon SQS: the distributed sibling of the SQLite queue.
 *
 * The port was modelled on SQS, so most operations map one to one. The differences this
 * adapter bridges:
 * - SQS visibility timeouts are whole seconds; fractional values are rounded up, so a
 *   message is never visible again earlier than the caller asked.
 * - WaitTimeSeconds is always sent, even when 0: a queue created with a default receive
 *   wait (as `icaas aws provision` does) would otherwise make every receive a long poll.
 * - SQS reports errors by service-specific names; they become QueueErrors with a code the
 *   rest of the service can act on and a message that names the queue and what to do.
 * - Throttling and transient errors (5xx, timeouts, dropped connections) are retried by the
 *   SDK's standard retry mode. The two throttles SQS reports under names the SDK does not
 *   know as throttles (KmsThrottled, OverLimit) are retried here with the same kind of
 *   backoff, because a worker or controller that fails on a throttle costs far more than
 *   a wait. Credentials, permissions and missing queues are not retried per request: the
 *   loops that call the queue back off on them (see ../controller/loop.ts).
 */
import {
  ChangeMessageVisibilityCommand,
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ReceiveMessageCommand,
  SendMessageBatchCommand,
  SendMessageCommand,
  SQSClient,
  type QueueAttributeName,
  type ReceiveMessageCommandOutput,
  type SQSClientConfig,
} from '@aws-sdk/client-sqs';
import {
  QueueError,
  SQS_LIMITS,
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
import { AWS_MAX_ATTEMPTS, awsRetry, retry } from '../backoff.js';

export interface SqsRetryOptions {
  /**
   * Attempts in all for a request, the first included: the SDK's maxAttempts for a client
   * this provider makes, and the limit for the throttles retried here. Default 3.
   */
  attempts?: number;
  /** Ceiling of the first wait for the throttles retried here; doubled for each later one. Default 200 ms. */
  baseDelayMs?: number;
}

export interface SqsQueueProviderOptions {
  region?: string;
  /** Prepended to every queue name: queue('launch') is the SQS queue `${prefix}launch`. */
  prefix: string;
  /** A ready client (shared or mocked); the provider then leaves destroying it to the caller. */
  client?: SQSClient;
  /** For SQS-compatible services (e.g. ElasticMQ); leave unset for AWS. */
  endpoint?: string;
  /**
   * Visibility timeout given to queues this provider creates (see createMissing). Queues
   * created by `icaas aws provision` carry their own; receives may override either.
   */
  visibilityTimeoutSeconds?: number;
  /**
   * Create a queue that does not exist yet instead of failing with 'queue-missing'.
   * Off by default: in a deployment the queues come from `icaas aws provision` with their
   * attributes and permissions, and a typo in the prefix should fail loudly rather than
   * quietly create a second set of queues nobody reads.
   */
  createMissing?: boolean;
  retry?: SqsRetryOptions;
}

/** SQS: 1-80 characters from letters, digits, hyphen and underscore (prefix included). */
const QUEUE_NAME = /^[A-Za-z0-9_-]{1,80}$/;

const THROTTLING = new Set(['ThrottlingException', 'Throttling', 'RequestThrottled', 'OverLimit', 'TooManyRequestsException', 'KmsThrottled']);
/** Throttles that the SDK's retry strategy does not recognise (it retries the others itself). */
const THROTTLING_UNKNOWN_TO_SDK = new Set(['OverLimit', 'KmsThrottled']);
const QUEUE_MISSING = new Set(['QueueDoesNotExist', 'AWS.SimpleQueueService.NonExistentQueue', 'NonExistentQueue']);
const ACCESS_DENIED = new Set(['AccessDenied', 'AccessDeniedException', 'KmsAccessDenied', 'InvalidSecurity']);
const BAD_CREDENTIALS = new Set(['UnrecognizedClientException', 'InvalidClientTokenId', 'SignatureDoesNotMatch', 'ExpiredToken', 'ExpiredTokenException', 'MissingAuthenticationToken']);
const STALE_HANDLE = new Set(['ReceiptHandleIsInvalid', 'MessageNotInflight', 'AWS.SimpleQueueService.MessageNotInflight']);

export class SqsQueueProvider implements QueueProvider {
  readonly prefix: string;
  private readonly client: SQSClient;
  private readonly ownsClient: boolean;
  private readonly createMissing: boolean;
  private readonly visibilityTimeoutSeconds: number | undefined;
  private readonly retry: Required<SqsRetryOptions>;
  private readonly queues = new Map<string, SqsQueue>();
  /** QueueUrl lookups by full queue name; a pending promise is shared by concurrent callers. */
  private readonly urls = new Map<string, Promise<string>>();

  constructor(options: SqsQueueProviderOptions) {
    this.prefix = options.prefix;
    this.createMissing = options.createMissing ?? false;
    if (options.visibilityTimeoutSeconds !== undefined) checkVisibilityTimeout(options.visibilityTimeoutSeconds);
    this.visibilityTimeoutSeconds = options.visibilityTimeoutSeconds;
    this.retry = { attempts: options.retry?.attempts ?? AWS_MAX_ATTEMPTS, baseDelayMs: options.retry?.baseDelayMs ?? 200 };
    if (options.client) {
      this.client = options.client;
      this.ownsClient = false;
    } else {
      const config: SQSClientConfig = { ...awsRetry(this.retry.attempts) };
      const region = options.region || process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION;
      if (region) config.region = region;
      if (options.endpoint) config.endpoint = options.endpoint;
      this.client = new SQSClient(config);
      this.ownsClient = true;
    }
  }

  queue(name: string): Queue {
    let queue = this.queues.get(name);
    if (!queue) {
      const fullName = `${this.prefix}${name}`;
      if (!QUEUE_NAME.test(name) || !QUEUE_NAME.test(fullName)) {
        throw new QueueError('invalid-argument', `SQS queue name must be 1-80 characters from A-Z, a-z, 0-9, "-" and "_" (prefix included), got ${JSON.stringify(fullName)}`);
      }
      queue = new SqsQueue(this, name, fullName);
      this.queues.set(name, queue);
    }
    return queue;
  }

  /**
   * Creates the SQS queue `${prefix}${name}` when it does not exist and returns its URL.
   * CreateQueue is idempotent for a queue with the same attributes; one that exists with
   * other attributes is used as it is.
   */
  async ensureQueue(name: string, attributes: Partial<Record<QueueAttributeName, string>> = {}): Promise<string> {
    const fullName = `${this.prefix}${name}`;
    const url = await this.createQueue(fullName, attributes);
    this.urls.set(fullName, Promise.resolve(url));
    return url;
  }

  /** The URL of the queue `${prefix}${name}`, looked up once and then cached. */
  queueUrl(name: string): Promise<string> {
    return this.urlOf(`${this.prefix}${name}`);
  }

  async close(): Promise<void> {
    if (this.ownsClient) this.client.destroy();
  }

  /** @internal */
  urlOf(fullName: string): Promise<string> {
    let url = this.urls.get(fullName);
    if (!url) {
      url = this.lookUp(fullName);
      this.urls.set(fullName, url);
      // A failed lookup is not cached: the queue may be created (provisioned) later.
      url.catch(() => {
        if (this.urls.get(fullName) === url) this.urls.delete(fullName);
      });
    }
    return url;
  }

  /** @internal Forgets a URL that turned out to be stale (the queue was deleted). */
  forgetUrl(fullName: string): void {
    this.urls.delete(fullName);
  }

  private async lookUp(fullName: string): Promise<string> {
    try {
      const response = await this.send(fullName, 'look up', (client, options) => client.send(new GetQueueUrlCommand({ QueueName: fullName }), options));
      if (!response.QueueUrl) throw new QueueError('unavailable', `SQS returned no URL for queue ${fullName}`);
      return response.QueueUrl;
    } catch (error) {
      if (this.createMissing && error instanceof QueueError && error.code === 'queue-missing') {
        return this.createQueue(fullName, {});
      }
      throw error;
    }
  }

  private async createQueue(fullName: string, attributes: Partial<Record<QueueAttributeName, string>>): Promise<string> {
    const merged: Partial<Record<QueueAttributeName, string>> = {
      ...(this.visibilityTimeoutSeconds !== undefined ? { VisibilityTimeout: String(Math.ceil(this.visibilityTimeoutSeconds)) } : {}),
      ...attributes,
    };
    try {
      const command = new CreateQueueCommand({ QueueName: fullName, ...(Object.keys(merged).length > 0 ? { Attributes: merged } : {}) });
      const response = await this.send(fullName, 'create', (client, options) => client.send(command, options));
      if (!response.QueueUrl) throw new QueueError('unavailable', `SQS returned no URL for the new queue ${fullName}`);
      return response.QueueUrl;
    } catch (error) {
      // send() has wrapped the SDK's error; its name is on the cause.
      const sdkError = error instanceof QueueError ? error.cause : error;
      // The queue exists with other attributes (or was created concurrently with them).
      if (hasCode(sdkError, ['QueueNameExists', 'QueueAlreadyExists', 'AWS.SimpleQueueService.QueueNameExists'])) {
        return this.lookUp(fullName);
      }
      if (hasCode(sdkError, ['QueueDeletedRecently', 'AWS.SimpleQueueService.QueueDeletedRecently'])) {
        throw new QueueError('unavailable', `cannot create SQS queue ${fullName} yet: a queue of that name was deleted less than 60 seconds ago`, { cause: error });
      }
      throw error;
    }
  }

  /**
   * @internal Sends one request (the SDK retries throttling and transient errors, this the
   * throttles it does not know), and turns SDK errors into QueueErrors that name the queue.
   */
  async send<T>(fullName: string, what: string, run: SqsCall<T>, signal?: AbortSignal): Promise<T> {
    let attempts = 0;
    try {
      return await retry(
        () => {
          attempts++;
          return run(this.client, signal ? { abortSignal: signal } : {});
        },
        {
          attempts: this.retry.attempts,
          initialMs: this.retry.baseDelayMs,
          maxMs: this.retry.baseDelayMs * 2 ** this.retry.attempts,
          retryable: (error) => hasCode(error, THROTTLING_UNKNOWN_TO_SDK),
          ...(signal ? { signal } : {}),
        },
      );
    } catch (error) {
      if (error instanceof QueueError) throw error;
      throw toQueueError(error, fullName, what, Math.max(attempts, sdkAttempts(error)));
    }
  }
}

/** SQS takes at most 10 entries per SendMessageBatch. */
const SQS_BATCH_ENTRIES = 10;
/** Batch requests in flight at once for one sendBatch. */
const BATCHES_AT_ONCE = 4;

class SqsQueue implements Queue {
  constructor(
    private readonly provider: SqsQueueProvider,
    readonly name: string,
    readonly sqsName: string,
  ) {}

  async send(body: string, options?: SendOptions): Promise<string> {
    if (typeof body !== 'string') throw new QueueError('invalid-argument', `message body must be a string, got ${typeof body}`);
    const delaySeconds = checkSendOptions(body, options);
    const response = await this.request('send to', (QueueUrl, client, options) =>
      client.send(new SendMessageCommand({ QueueUrl, MessageBody: body, DelaySeconds: delaySeconds }), options),
    );
    if (!response.MessageId) throw new QueueError('unavailable', `SQS accepted a message on queue ${this.sqsName} but returned no message id`);
    return response.MessageId;
  }

  /** SendMessageBatch, 10 entries and at most SQS_LIMITS.maxBodyBytes per request, a few requests at once. */
  async sendBatch(bodies: string[]): Promise<string[]> {
    for (const body of bodies) {
      if (typeof body !== 'string') throw new QueueError('invalid-argument', `message body must be a string, got ${typeof body}`);
      checkSendOptions(body, undefined);
    }
    const chunks: { start: number; bodies: string[] }[] = [];
    let current: { start: number; bodies: string[]; bytes: number } | undefined;
    for (const [i, body] of bodies.entries()) {
      const bytes = Buffer.byteLength(body);
      if (!current || current.bodies.length === SQS_BATCH_ENTRIES || current.bytes + bytes > SQS_LIMITS.maxBodyBytes) {
        current = { start: i, bodies: [], bytes: 0 };
        chunks.push(current);
      }
      current.bodies.push(body);
      current.bytes += bytes;
    }
    const ids: string[] = new Array(bodies.length);
    for (let next = 0; next < chunks.length; next += BATCHES_AT_ONCE) {
      await Promise.all(chunks.slice(next, next + BATCHES_AT_ONCE).map(async (chunk) => {
        const response = await this.request('send to', (QueueUrl, client, options) =>
          client.send(new SendMessageBatchCommand({ QueueUrl, Entries: chunk.bodies.map((body, i) => ({ Id: String(i), MessageBody: body })) }), options),
        );
        const failed = response.Failed?.[0];
        if (failed) throw new QueueError(failed.SenderFault ? 'invalid-argument' : 'unavailable', `SQS refused ${response.Failed!.length} of ${chunk.bodies.length} messages sent to queue ${this.sqsName}: ${failed.Code ?? 'no code'} ${failed.Message ?? ''}`.trim());
        for (const entry of response.Successful ?? []) ids[chunk.start + Number(entry.Id)] = entry.MessageId!;
        if ((response.Successful ?? []).length !== chunk.bodies.length) throw new QueueError('unavailable', `SQS accepted a batch on queue ${this.sqsName} but did not confirm every message`);
      }));
    }
    return ids;
  }

  async receive(options?: ReceiveOptions): Promise<ReceivedMessage[]> {
    const { maxMessages, waitSeconds } = checkReceiveOptions(options);
    const signal = options?.signal;
    if (signal?.aborted) return [];
    const visibility = options?.visibilityTimeoutSeconds;
    const request = this.request(
      'receive from',
      (QueueUrl, client, options) =>
        client.send(new ReceiveMessageCommand({
          QueueUrl,
          MaxNumberOfMessages: maxMessages,
          // Whole seconds only; rounding up keeps a short wait from becoming no wait.
          WaitTimeSeconds: Math.ceil(waitSeconds),
          ...(visibility !== undefined ? { VisibilityTimeout: Math.ceil(visibility) } : {}),
          MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp'],
        }), options),
      signal,
    );
    let response: ReceiveMessageCommandOutput;
    try {
      // The SDK aborts the HTTP request on the signal; the race also covers clients that
      // ignore it. Messages SQS handed out to an aborted poll reappear after their
      // visibility timeout, so none is lost.
      response = signal ? await raceAbort(request, signal) : await request;
    } catch (error) {
      if (signal?.aborted) return [];
      throw error;
    }
    return (response.Messages ?? []).map((message) => this.toReceived(message));
  }

  async delete(receiptHandle: string): Promise<void> {
    checkReceiptHandle(receiptHandle);
    try {
      await this.request('delete from', (QueueUrl, client, options) => client.send(new DeleteMessageCommand({ QueueUrl, ReceiptHandle: receiptHandle }), options));
    } catch (error) {
      // As the port promises (and SQS mostly does itself): a stale handle is a no-op.
      if (error instanceof QueueError && error.code === 'not-in-flight') return;
      throw error;
    }
  }

  /** DeleteMessageBatch, 10 per request, a few requests at once; a stale handle is a no-op. */
  async deleteBatch(receiptHandles: string[]): Promise<void> {
    for (const handle of receiptHandles) checkReceiptHandle(handle);
    const chunks: string[][] = [];
    for (let i = 0; i < receiptHandles.length; i += SQS_BATCH_ENTRIES) chunks.push(receiptHandles.slice(i, i + SQS_BATCH_ENTRIES));
    for (let next = 0; next < chunks.length; next += BATCHES_AT_ONCE) {
      await Promise.all(chunks.slice(next, next + BATCHES_AT_ONCE).map(async (chunk) => {
        const response = await this.request('delete from', (QueueUrl, client, options) =>
          client.send(new DeleteMessageBatchCommand({ QueueUrl, Entries: chunk.map((handle, i) => ({ Id: String(i), ReceiptHandle: handle })) }), options),
        );
        const failed = (response.Failed ?? []).filter((entry) => !STALE_HANDLE.has(entry.Code ?? '') && !/receipt ?handle/i.test(entry.Message ?? ''));
        if (failed.length > 0) throw new QueueError(failed[0]!.SenderFault ? 'invalid-argument' : 'unavailable', `SQS could not delete ${failed.length} of ${chunk.length} messages from queue ${this.sqsName}: ${failed[0]!.Code ?? 'no code'} ${failed[0]!.Message ?? ''}`.trim());
      }));
    }
  }

  async changeVisibility(receiptHandle: string, visibilityTimeoutSeconds: number): Promise<void> {
    checkReceiptHandle(receiptHandle);
    checkVisibilityTimeout(visibilityTimeoutSeconds);
    await this.request('change visibility on', (QueueUrl, client, options) =>
      client.send(new ChangeMessageVisibilityCommand({ QueueUrl, ReceiptHandle: receiptHandle, VisibilityTimeout: Math.ceil(visibilityTimeoutSeconds) }), options),
    );
  }

  async counts(): Promise<QueueCounts> {
    const response = await this.request('count', (QueueUrl, client, options) =>
      client.send(
        new GetQueueAttributesCommand({
          QueueUrl,
          AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesDelayed'],
        }),
        options,
      ),
    );
    const attributes = response.Attributes ?? {};
    return {
      visible: count(attributes.ApproximateNumberOfMessages),
      inFlight: count(attributes.ApproximateNumberOfMessagesNotVisible),
      delayed: count(attributes.ApproximateNumberOfMessagesDelayed),
    };
  }

  private async request<T>(what: string, call: (queueUrl: string, client: SQSClient, options: SendCallOptions) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const url = await this.provider.urlOf(this.sqsName);
    try {
      return await this.provider.send(this.sqsName, what, (client, options) => call(url, client, options), signal);
    } catch (error) {
      // The queue was deleted (or deleted and re-created with a new URL) since the lookup.
      if (error instanceof QueueError && error.code === 'queue-missing') this.provider.forgetUrl(this.sqsName);
      throw error;
    }
  }

  private toReceived(message: SqsMessage): ReceivedMessage {
    if (!message.MessageId || message.ReceiptHandle === undefined) {
      throw new QueueError('unavailable', `SQS returned a message without an id or receipt handle on queue ${this.sqsName}`);
    }
    const receiveCount = Number(message.Attributes?.ApproximateReceiveCount);
    const sentAt = Number(message.Attributes?.SentTimestamp);
    return {
      id: message.MessageId,
      body: message.Body ?? '',
      receiptHandle: message.ReceiptHandle,
      receiveCount: Number.isInteger(receiveCount) && receiveCount > 0 ? receiveCount : 1,
      sentAt: Number.isFinite(sentAt) ? sentAt : Date.now(),
    };
  }
}

interface SendCallOptions {
  abortSignal?: AbortSignal;
}

type SqsCall<T> = (client: SQSClient, options: SendCallOptions) => Promise<T>;

interface SqsMessage {
  MessageId?: string;
  ReceiptHandle?: string;
  Body?: string;
  Attributes?: Partial<Record<string, string>>;
}

function checkReceiptHandle(receiptHandle: string): void {
  if (typeof receiptHandle !== 'string' || receiptHandle.length === 0) {
    throw new QueueError('invalid-argument', 'receipt handle must be a non-empty string');
  }
}

function count(value: string | undefined): number {
  const n = Number(value);
  return Number.isFinite(n) && n >= 0 ? n : 0;
}

const LEGACY_PREFIX = 'AWS.SimpleQueueService.';

/**
 * The error's name and, for SQS's query-compatible errors, its legacy code. Legacy codes
 * carry the "AWS.SimpleQueueService." prefix for some errors and not others, and
 * SQS-compatible services put it on more of them (InvalidMessageContents, for one), so each
 * code also counts without it.
 */
function codesOf(error: unknown): string[] {
  if (typeof error !== 'object' || error === null) return [];
  const { name, Code, code } = error as { name?: unknown; Code?: unknown; code?: unknown };
  const codes = [name, Code, code].filter((value): value is string => typeof value === 'string');
  return [...codes, ...codes.filter((value) => value.startsWith(LEGACY_PREFIX)).map((value) => value.slice(LEGACY_PREFIX.length))];
}

function hasCode(error: unknown, codes: Iterable<string>): boolean {
  const set = codes instanceof Set ? codes : new Set(codes);
  return codesOf(error).some((code) => set.has(code));
}

/** How many attempts the SDK made for the request that ended in this error. */
function sdkAttempts(error: unknown): number {
  const attempts = (error as { $metadata?: { attempts?: number } } | null)?.$metadata?.attempts;
  return typeof attempts === 'number' && attempts > 0 ? attempts : 1;
}

function isThrottled(error: unknown): boolean {
  if (hasCode(error, THROTTLING)) return true;
  const status = (error as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
  return status === 429;
}

/**
 * Whether SQS says the receipt handle no longer reaches an in-flight message. An expired
 * handle comes back as a generic InvalidParameterValue naming the ReceiptHandle parameter.
 */
function isStaleHandle(error: unknown): boolean {
  if (hasCode(error, STALE_HANDLE)) return true;
  return hasCode(error, ['InvalidParameterValue']) && /receipt ?handle/i.test((error as Error).message ?? '');
}

export function toQueueError(error: unknown, queueName: string, what: string, attempts = 1): QueueError {
  const detail = error instanceof Error ? error.message : String(error);
  const codes = codesOf(error);
  if (hasCode(error, QUEUE_MISSING)) {
    return new QueueError('queue-missing', `SQS queue ${queueName} does not exist (or these credentials may not see it); run \`icaas aws provision\` to create the queues, and check the region and --queue-prefix`, { cause: error });
  }
  if (hasCode(error, ACCESS_DENIED)) {
    return new QueueError('access-denied', `no permission to ${what} SQS queue ${queueName}: ${detail}`, { cause: error });
  }
  if (hasCode(error, BAD_CREDENTIALS) || codes.includes('CredentialsProviderError')) {
    return new QueueError('access-denied', `AWS rejected the credentials used to ${what} SQS queue ${queueName}: ${detail} (run \`aws configure\` or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)`, { cause: error });
  }
  if (isStaleHandle(error)) {
    return new QueueError('not-in-flight', `no message in flight on SQS queue ${queueName} has this receipt handle: it was deleted, received again, or its visibility timeout ended`, { cause: error });
  }
  if (isThrottled(error)) {
    return new QueueError('throttled', `SQS kept throttling requests to ${what} queue ${queueName} (${attempts} attempts): ${detail}`, { cause: error });
  }
  if (hasCode(error, ['InvalidParameterValue', 'InvalidAttributeValue', 'InvalidMessageContents', 'MissingParameter', 'ValidationError'])) {
    return new QueueError('invalid-argument', `SQS refused the request to ${what} queue ${queueName}: ${detail}`, { cause: error });
  }
  return new QueueError('unavailable', `could not ${what} SQS queue ${queueName}: ${detail}`, { cause: error });
}

function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason ?? new Error('aborted'));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
