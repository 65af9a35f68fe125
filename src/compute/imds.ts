/**
 * The EC2 instance metadata service (IMDSv2), for a worker to learn which instance it is
 * running on. (A worker never terminates its instance through the EC2 API, and its role
 * may not: it ends by powering the machine off, which the launch turns into a terminate.)
 *
 * IMDSv2 only: every read needs a session token obtained with a PUT, which SSRF-style
 * requests cannot forge; the launch template and RunInstances require it
 * (HttpTokens=required), so IMDSv1 is not even available on workers.
 */
import { retry } from '../backoff.js';

export interface ImdsOptions {
  /** Default: AWS_EC2_METADATA_SERVICE_ENDPOINT, else http://169.254.169.254. */
  endpoint?: string;
  /** Per request. Default 1000 ms: the service answers in well under that when it is there. */
  timeoutMs?: number;
  /** Attempts per request, the first included; the service can be slow just after boot. Default 3. */
  attempts?: number;
}

const DEFAULT_ENDPOINT = 'http://169.254.169.254';
const TOKEN_TTL_SECONDS = 300;
const INSTANCE_ID = /^i-[0-9a-f]{8,32}$/;

export class ImdsError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImdsError';
  }
}

function endpointOf(options: ImdsOptions): string {
  const endpoint = options.endpoint || process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT || DEFAULT_ENDPOINT;
  return endpoint.replace(/\/+$/, '');
}

/** An answer that will not change on retry: a refusal, or nothing there. */
class ImdsRefusal extends ImdsError {}

async function request(url: string, init: RequestInit, options: ImdsOptions, what: string): Promise<string> {
  const timeoutMs = options.timeoutMs ?? 1000;
  try {
    return await retry(
      async () => {
        const response = await fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
        const text = await response.text();
        if (response.ok) return text.trim();
        // 401 and 403 will not change on retry: a bad token, or IMDS turned off for this instance.
        if (response.status === 401 || response.status === 403) {
          throw new ImdsRefusal(`the instance metadata service refused to ${what} (HTTP ${response.status}); is IMDS enabled for this instance?`);
        }
        if (response.status === 404) throw new ImdsRefusal(`the instance metadata service has no ${what} (HTTP 404 for ${url})`);
        throw new ImdsError(`the instance metadata service answered HTTP ${response.status} to ${what}`);
      },
      // The service can be slow just after boot.
      { attempts: options.attempts ?? 3, initialMs: 200, maxMs: 2_000, retryable: (error) => !(error instanceof ImdsRefusal) },
    );
  } catch (error) {
    if (error instanceof ImdsRefusal) throw error;
    const detail = error instanceof Error ? error.message : String(error);
    throw new ImdsError(
      `could not ${what} from the instance metadata service at ${new URL(url).origin} (${detail}); ` +
        'this works only on an EC2 instance with IMDS enabled, and in a container on one only when the metadata hop limit is at least 2',
      { cause: error },
    );
  }
}

/** A session token for the metadata reads that follow. */
export async function imdsToken(options: ImdsOptions = {}): Promise<string> {
  return request(`${endpointOf(options)}/latest/api/token`, { method: 'PUT', headers: { 'X-aws-ec2-metadata-token-ttl-seconds': String(TOKEN_TTL_SECONDS) } }, options, 'get a session token');
}

/** Reads one metadata path (e.g. `instance-id`, `placement/region`). */
export async function imdsGet(path: string, options: ImdsOptions = {}, token?: string): Promise<string> {
  const session = token ?? (await imdsToken(options));
  return request(`${endpointOf(options)}/latest/meta-data/${path}`, { method: 'GET', headers: { 'X-aws-ec2-metadata-token': session } }, options, `read ${path}`);
}

/** The id of the EC2 instance this process runs on. */
export async function instanceIdFromImds(options: ImdsOptions = {}): Promise<string> {
  const id = await imdsGet('instance-id', options);
  if (!INSTANCE_ID.test(id)) throw new ImdsError(`the instance metadata service returned ${JSON.stringify(id.slice(0, 40))}, which is not an instance id`);
  return id;
}
