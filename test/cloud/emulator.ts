/**
 * An SQS and S3 protocol emulator (fauxqs) on loopback, for tests that need the real AWS
 * SDK clients to speak the real wire protocols without an AWS account.
 *
 * fauxqs's own startFauxqs() listens on every interface; tests must never be reachable
 * from (or reach) the network, so the emulator is built with buildApp() and bound to
 * 127.0.0.1 here. Its queue URLs name `sqs.<region>.localhost` unless its SQS store has no
 * host set, in which case they take the Host header of the request: the loopback endpoint
 * the clients were given. The SDK sends each queue request to the queue URL, so the store
 * is made here without a host; it is not exported under the package's public entry point,
 * so it is loaded from the file next to it.
 *
 * fauxqs moves messages whose visibility timeout or delay has passed only when a receive
 * touches the queue, so GetQueueAttributes and ChangeMessageVisibility would see a lapsed
 * message as still in flight (or still delayed) for as long as nobody receives. SQS's
 * state follows the clock, so every request here first brings all queues up to date.
 *
 * fauxqs lists objects in locale order ("B" after "a") and pages by comparing UTF-16 code
 * units; S3 lists in UTF-8 binary order and pages in that same order. The bucket listing
 * here is replaced by one in binary order (see byteOrderListing).
 *
 * fauxqs 1.9.2 has no bucket configuration: it takes PUT /<bucket>?tagging for a
 * CreateBucket and GET /<bucket>?tagging for a listing, so provisioning could neither tag a
 * bucket nor recognise it as its own afterwards. Tagging, default encryption and the public
 * access block are kept here per bucket, as S3 keeps them (see bucketConfiguration).
 *
 * The emulator checks no signatures, but the SDK will not sign without credentials, so
 * clients get the dummy ones below rather than whatever the environment holds: a test
 * must never sign with a real key.
 */
import { spawn } from 'node:child_process';
import { isIP } from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { buildApp } from 'fauxqs';

export const EMULATOR_REGION = 'us-east-1';
export const EMULATOR_CREDENTIALS = Object.freeze({ accessKeyId: 'test', secretAccessKey: 'test' });

export interface Emulator {
  /** http://127.0.0.1:<port>; both SQS and S3 (path-style) are served here. */
  endpoint: string;
  region: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  stop(): Promise<void>;
}

/** One SQS request as it arrived on the wire. */
export interface SqsWireRequest {
  /** The operation, e.g. "ReceiveMessage". */
  operation: string;
  /** The request's JSON body. */
  input: Record<string, unknown>;
}

export interface InProcessEmulator extends Emulator {
  /** Every SQS request so far, in arrival order; tests may clear it. */
  sqsRequests: SqsWireRequest[];
}

/** Throws unless the URL's host is a loopback address, so no test talks to a real service. */
export function assertLoopback(endpoint: string): void {
  const { hostname } = new URL(endpoint);
  const host = hostname.replace(/^\[|\]$/g, '');
  const loopback = (isIP(host) === 4 && host.startsWith('127.')) || host === '::1';
  if (!loopback) throw new Error(`the emulator endpoint ${endpoint} is not a loopback address`);
}

type Stores = NonNullable<NonNullable<Parameters<typeof buildApp>[0]>['stores']>;

async function storesWithoutQueueHost(): Promise<Stores> {
  const distDir = path.dirname(fileURLToPath(import.meta.resolve('fauxqs')));
  const load = (file: string) => import(pathToFileURL(path.join(distDir, file)).href);
  const [{ SqsStore }, { SnsStore }, { S3Store }] = await Promise.all([load('sqs/sqsStore.js'), load('sns/snsStore.js'), load('s3/s3Store.js')]);
  const sqsStore = new SqsStore() as Stores['sqsStore'];
  sqsStore.host = '';
  const s3Store = new S3Store() as FauxS3Store;
  s3Store.listObjects = byteOrderListing(s3Store);
  return { sqsStore, snsStore: new SnsStore(), s3Store: s3Store as unknown as Stores['s3Store'] };
}

interface FauxS3Object {
  key: string;
}

interface FauxS3Store {
  buckets: Map<string, Map<string, FauxS3Object>>;
  listObjects(bucket: string, options?: { prefix?: string; delimiter?: string; maxKeys?: number; startAfter?: string; marker?: string }): {
    objects: FauxS3Object[];
    commonPrefixes: string[];
    isTruncated: boolean;
  };
}

const byBytes = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** fauxqs's listing with every comparison in UTF-8 binary order, as S3 sorts keys. */
function byteOrderListing(store: FauxS3Store): FauxS3Store['listObjects'] {
  const original = store.listObjects.bind(store);
  return (bucket, options = {}) => {
    const objectsMap = store.buckets.get(bucket);
    // The original raises the emulator's NoSuchBucket error.
    if (!objectsMap) return original(bucket, options);
    const prefix = options.prefix ?? '';
    const { delimiter } = options;
    const maxKeys = options.maxKeys ?? 1000;
    const startAfter = options.startAfter ?? options.marker ?? '';
    const after = (key: string): boolean => !startAfter || byBytes(key, startAfter) > 0;
    const candidates = [...objectsMap.values()].filter((object) => object.key.startsWith(prefix)).sort((a, b) => byBytes(a.key, b.key));
    const objects: FauxS3Object[] = [];
    const commonPrefixes = new Set<string>();
    let isTruncated = false;
    for (const object of candidates) {
      if (!after(object.key)) continue;
      const rest = object.key.slice(prefix.length);
      const cut = delimiter ? rest.indexOf(delimiter) : -1;
      const commonPrefix = cut >= 0 ? prefix + rest.slice(0, cut + delimiter!.length) : undefined;
      if (commonPrefix !== undefined && (commonPrefixes.has(commonPrefix) || !after(commonPrefix))) continue;
      if (objects.length + commonPrefixes.size >= maxKeys) {
        isTruncated = true;
        break;
      }
      if (commonPrefix !== undefined) commonPrefixes.add(commonPrefix);
      else objects.push(object);
    }
    return { objects, commonPrefixes: [...commonPrefixes].sort(byBytes), isTruncated };
  };
}

/** The bucket subresources provisioning sets and reads, with S3's error for one never set. */
const BUCKET_CONFIGURATIONS: Record<string, { missing: string; status: number }> = {
  tagging: { missing: 'NoSuchTagSet', status: 404 },
  encryption: { missing: 'ServerSideEncryptionConfigurationNotFoundError', status: 404 },
  publicAccessBlock: { missing: 'NoSuchPublicAccessBlockConfiguration', status: 404 },
};

/**
 * Answers PUT, GET and DELETE of a bucket's tagging, encryption and public access block.
 * S3 stores and returns the document it was given, so the XML body is kept verbatim.
 */
function bucketConfiguration(s3Store: FauxS3Store): {
  preHandler: (request: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply | undefined>;
  onResponse: (request: FastifyRequest) => Promise<void>;
} {
  const kept = new Map<string, Map<string, Buffer>>();
  const xmlError = (reply: FastifyReply, status: number, code: string) =>
    reply.status(status).header('content-type', 'application/xml').send(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code}</Message></Error>`);
  const target = (request: FastifyRequest) => {
    const url = new URL(request.url, 'http://emulator');
    const bucket = /^\/([^/]+)\/?$/.exec(url.pathname)?.[1];
    const name = Object.keys(BUCKET_CONFIGURATIONS).find((candidate) => url.searchParams.has(candidate));
    return { bucket, name };
  };
  // A deleted bucket takes its configuration with it: a new bucket of that name starts bare.
  const onResponse = async (request: FastifyRequest) => {
    const { bucket, name } = target(request);
    if (request.method === 'DELETE' && bucket && !name && !s3Store.buckets.has(bucket)) kept.delete(bucket);
  };
  const preHandler = async (request: FastifyRequest, reply: FastifyReply) => {
    const { bucket, name } = target(request);
    if (!bucket || !name) return undefined;
    if (!s3Store.buckets.has(bucket)) return xmlError(reply, 404, 'NoSuchBucket');
    const configurations = kept.get(bucket) ?? new Map<string, Buffer>();
    kept.set(bucket, configurations);
    switch (request.method) {
      case 'PUT':
        configurations.set(name, Buffer.isBuffer(request.body) ? request.body : Buffer.from(String(request.body ?? '')));
        return reply.status(200).send();
      case 'DELETE':
        configurations.delete(name);
        return reply.status(204).send();
      case 'GET': {
        const body = configurations.get(name);
        if (!body) return xmlError(reply, BUCKET_CONFIGURATIONS[name]!.status, BUCKET_CONFIGURATIONS[name]!.missing);
        return reply.status(200).header('content-type', 'application/xml').send(body);
      }
      default:
        return xmlError(reply, 405, 'MethodNotAllowed');
    }
  };
  return { preHandler, onResponse };
}

interface TimedSqsStore {
  processAllTimers(): void;
}

/** Starts the emulator in this process on a loopback port (default: a free one). */
export async function startEmulator(options: { port?: number } = {}): Promise<InProcessEmulator> {
  const stores = await storesWithoutQueueHost();
  const app = buildApp({ logger: false, defaultRegion: EMULATOR_REGION, stores });
  const sqsStore = stores.sqsStore as unknown as TimedSqsStore;
  app.addHook('onRequest', async () => {
    sqsStore.processAllTimers();
  });
  const configuration = bucketConfiguration(stores.s3Store as unknown as FauxS3Store);
  app.addHook('preHandler', configuration.preHandler);
  app.addHook('onResponse', configuration.onResponse);
  const sqsRequests: SqsWireRequest[] = [];
  app.addHook('preHandler', async (request) => {
    const target = request.headers['x-amz-target'];
    if (typeof target === 'string' && target.startsWith('AmazonSQS.')) {
      sqsRequests.push({ operation: target.slice('AmazonSQS.'.length), input: (request.body ?? {}) as Record<string, unknown> });
    }
  });
  const address = await app.listen({ port: options.port ?? 0, host: '127.0.0.1' });
  const endpoint = new URL(address).origin;
  assertLoopback(endpoint);
  return { endpoint, region: EMULATOR_REGION, credentials: { ...EMULATOR_CREDENTIALS }, sqsRequests, stop: () => app.close() };
}

const processScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'emulator-process.js');

/**
 * Starts the emulator as a child process (see emulator-process.ts), for tests whose
 * service processes must share one emulator that outlives any of them. stop() ends it.
 */
export async function startEmulatorProcess(): Promise<Emulator & { pid: number }> {
  const child = spawn(process.execPath, [processScript, 'serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const lines = createInterface({ input: child.stdout! });
  try {
    const endpoint = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the emulator process did not report its endpoint within 30 s')), 30_000);
      child.once('exit', (code) => reject(new Error(`the emulator process exited (code ${code}) before reporting its endpoint`)));
      lines.once('line', (line) => {
        clearTimeout(timer);
        try {
          resolve((JSON.parse(line) as { endpoint: string }).endpoint);
        } catch {
          reject(new Error(`the emulator process printed ${JSON.stringify(line)} instead of its endpoint`));
        }
      });
    });
    assertLoopback(endpoint);
    return {
      endpoint,
      region: EMULATOR_REGION,
      credentials: { ...EMULATOR_CREDENTIALS },
      pid: child.pid!,
      async stop() {
        lines.close();
        // Closing stdin asks it to stop; the kill covers a process that no longer listens.
        child.stdin?.end();
        const killer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        if (child.exitCode === null && child.signalCode === null) await exited;
        clearTimeout(killer);
      },
    };
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
}
