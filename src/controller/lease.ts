/**
 * The launch lease: one small object in the object store (`leases/launch.json` in the
 * output bucket) that says which process may start instances, until when. It makes the
 * maximum hold across launch controllers on EC2, where there is no shared transaction:
 * only the holder launches, and only while the lease has comfortably more time left than a
 * launch takes.
 *
 * Every change is a conditional write, so two processes can never both believe they hold
 * it: acquire by create-if-absent; renew, take over an expired lease, or release, by
 * replace-if-unchanged on the ETag last read. Expiry is judged on each process's own clock,
 * with an allowance for skew between machines.
 *
 * The lease also carries the launches of the last minute. EC2's DescribeInstances may
 * miss an instance for a few seconds after it was launched; a process that takes the lease
 * over counts those launches until EC2 shows them, exactly as the process that made them
 * would have.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { PreconditionFailedError, type ObjectStore } from '../storage/port.js';

export const LAUNCH_LEASE_KEY = 'leases/launch.json';

export interface LeaseLaunch {
  id: string;
  /** Epoch milliseconds, on the launching process's clock. */
  at: number;
}

interface LeaseBody {
  holder: string;
  /** Epoch milliseconds on the holder's clock; 0 once released. */
  expiresAt: number;
  launches: LeaseLaunch[];
}

export interface LaunchLeaseOptions {
  store: ObjectStore;
  bucket: string;
  key?: string;
  /** Who holds it, for people reading the object; default host, pid and a random suffix. */
  holder?: string;
  /** How long one acquire or renewal holds. Default 30 s. */
  durationMs?: number;
  /** How far apart two machines' clocks may be. Default 5 s. */
  clockSkewMs?: number;
  /** How long launches are remembered in the lease. Default 60 s (EC2's lag is seconds). */
  rememberLaunchesMs?: number;
}

/** The lease as this process holds it. */
export interface LeaseHold {
  /** Local time until which no other process can take the lease over. */
  validUntil: number;
  /** Launches recorded in the lease within rememberLaunchesMs, by any holder. */
  launches: LeaseLaunch[];
}

export class LaunchLease {
  readonly holder: string;
  readonly durationMs: number;
  private readonly key: string;
  private readonly clockSkewMs: number;
  private readonly rememberLaunchesMs: number;
  /** The version of the object this process wrote last while holding it. */
  private held: { etag: string; body: LeaseBody } | null = null;

  constructor(private readonly options: LaunchLeaseOptions) {
    this.key = options.key ?? LAUNCH_LEASE_KEY;
    this.holder = options.holder ?? `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
    this.durationMs = options.durationMs ?? 30_000;
    this.clockSkewMs = options.clockSkewMs ?? 5_000;
    this.rememberLaunchesMs = options.rememberLaunchesMs ?? 60_000;
    if (!(this.durationMs > 0)) throw new RangeError(`lease duration must be positive, got ${this.durationMs}`);
  }

  /**
   * Acquires the lease, renews it, or takes over one that expired; null while another
   * process holds it (or wins the race for it).
   */
  async acquire(): Promise<LeaseHold | null> {
    const now = Date.now();
    const current = await this.options.store.get(this.options.bucket, this.key);
    if (!current) return this.write({ holder: this.holder, expiresAt: now + this.durationMs, launches: [] }, { ifNoneMatch: '*' });
    const body = parseLease(current.body);
    const ours = body?.holder === this.holder && this.held?.etag === current.etag;
    // Unreadable content cannot be anyone's valid lease; it is replaced like an expired one.
    const free = !body || body.expiresAt === 0 || now > body.expiresAt + this.clockSkewMs;
    if (!ours && !free) {
      this.held = null;
      return null;
    }
    const launches = this.recent(body?.launches ?? [], now);
    return this.write({ holder: this.holder, expiresAt: now + this.durationMs, launches }, { ifMatch: current.etag });
  }

  /** Adds launches to the lease, renewing it. False when the lease was lost meanwhile. */
  async recordLaunches(launches: LeaseLaunch[]): Promise<boolean> {
    if (!this.held || launches.length === 0) return this.held !== null;
    const now = Date.now();
    const body = { holder: this.holder, expiresAt: now + this.durationMs, launches: this.recent([...this.held.body.launches, ...launches], now) };
    return (await this.write(body, { ifMatch: this.held.etag })) !== null;
  }

  /** Lets another process take over at once; the recent launches stay for it to count. */
  async release(): Promise<void> {
    if (!this.held) return;
    const { etag, body } = this.held;
    this.held = null;
    try {
      await this.options.store.put(this.options.bucket, this.key, serialize({ ...body, expiresAt: 0 }), { contentType: 'application/json', ifMatch: etag });
    } catch (error) {
      // Taken over already: nothing of ours to release.
      if (!(error instanceof PreconditionFailedError)) throw error;
    }
  }

  private async write(body: LeaseBody, condition: { ifNoneMatch: '*' } | { ifMatch: string }): Promise<LeaseHold | null> {
    try {
      const { etag } = await this.options.store.put(this.options.bucket, this.key, serialize(body), { contentType: 'application/json', ...condition });
      this.held = { etag, body };
      return { validUntil: body.expiresAt, launches: body.launches };
    } catch (error) {
      if (!(error instanceof PreconditionFailedError)) throw error;
      // Another process wrote first.
      this.held = null;
      return null;
    }
  }

  private recent(launches: LeaseLaunch[], now: number): LeaseLaunch[] {
    return launches.filter((launch) => now - launch.at < this.rememberLaunchesMs);
  }
}

function serialize(body: LeaseBody): Buffer {
  return Buffer.from(JSON.stringify(body));
}

function parseLease(bytes: Buffer): LeaseBody | null {
  try {
    const value = JSON.parse(bytes.toString('utf8')) as Partial<LeaseBody>;
    if (typeof value.holder !== 'string' || typeof value.expiresAt !== 'number' || !Array.isArray(value.launches)) return null;
    const launches = value.launches.filter((launch): launch is LeaseLaunch => typeof launch?.id === 'string' && typeof launch.at === 'number');
    return { holder: value.holder, expiresAt: value.expiresAt, launches };
  } catch {
    return null;
  }
}
