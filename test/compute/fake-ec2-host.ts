/**
 * The machine under a fake EC2 instance (see fake-ec2.ts, option `runUserData`): the
 * instance's user data runs with bash as a local process group, as cloud-init would run
 * it on boot, next to a metadata service (IMDSv2) of the instance's own.
 *
 * The real user-data script runs unchanged. Shims first on its PATH stand in for what the
 * worker image and the machine provide: `icaas` is this checkout's CLI; `shutdown` powers
 * the machine off, which ends every process on it at once; `runuser` runs the command as
 * this user (switching users needs root); `curl` reaches the metadata service at its
 * link-local address. Nothing else of this machine's environment is passed on: no AWS
 * credentials, no region. As on EC2, the SDK in the worker finds the instance role's
 * credentials through the metadata service, and the region comes from the user data.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmod, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface RunUserDataOptions {
  /** The compiled CLI that `icaas` runs. */
  cliPath: string;
  /** Added to every instance's environment, e.g. test switches the user data does not carry. */
  env?: Record<string, string>;
  /** The instance role's credentials, served by the metadata service (never real ones). */
  roleCredentials?: { accessKeyId: string; secretAccessKey: string };
  /** Served as placement/region. */
  region?: string;
}

/** How the user data's process group ended. */
export interface HostExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The user data ran `shutdown`: the machine powered itself off. */
  poweredOff: boolean;
}

const ROLE_NAME = 'icaas-worker';
const MAX_TOKEN_TTL_SECONDS = 21_600;

/**
 * IMDSv2 for one instance: a session token from PUT /latest/api/token (with a TTL
 * header), then reads with that token; any read without a valid token is refused with
 * 401, as on an instance launched with HttpTokens=required.
 */
export class FakeImds {
  endpoint = '';
  /** Metadata paths served, in order (e.g. "instance-id"); refused reads are not listed. */
  readonly served: string[] = [];
  /** Requests refused for a missing, unknown or expired token. */
  refused = 0;
  private readonly tokens = new Map<string, number>();
  private server: Server | undefined;

  constructor(
    readonly instanceId: string,
    private readonly options: Pick<RunUserDataOptions, 'roleCredentials' | 'region'>,
  ) {}

  async listen(): Promise<this> {
    this.server = createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.endpoint = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
    this.server = undefined;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://imds');
    const send = (status: number, body: string) => res.writeHead(status, { 'content-type': 'text/plain' }).end(body);
    if (url.pathname === '/latest/api/token') {
      if (req.method !== 'PUT') return void send(405, 'Method Not Allowed');
      const ttl = Number(req.headers['x-aws-ec2-metadata-token-ttl-seconds']);
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TOKEN_TTL_SECONDS) return void send(400, 'Bad Request');
      const token = randomBytes(24).toString('base64url');
      this.tokens.set(token, Date.now() + ttl * 1000);
      return void send(200, token);
    }
    const token = req.headers['x-aws-ec2-metadata-token'];
    const expires = typeof token === 'string' ? this.tokens.get(token) : undefined;
    if (expires === undefined || expires < Date.now()) {
      this.refused++;
      return void send(401, 'Unauthorized');
    }
    if (req.method !== 'GET' || !url.pathname.startsWith('/latest/meta-data/')) return void send(404, 'Not Found');
    const item = url.pathname.slice('/latest/meta-data/'.length);
    const body = this.metadata(item);
    if (body === undefined) return void send(404, 'Not Found');
    this.served.push(item);
    send(200, body);
  }

  private metadata(item: string): string | undefined {
    const { roleCredentials, region } = this.options;
    if (item === 'instance-id') return this.instanceId;
    if (item === 'placement/region') return region;
    if (!roleCredentials) return undefined;
    if (item === 'iam/security-credentials/') return ROLE_NAME;
    if (item === `iam/security-credentials/${ROLE_NAME}`) {
      return JSON.stringify({
        Code: 'Success',
        LastUpdated: new Date().toISOString(),
        Type: 'AWS-HMAC',
        AccessKeyId: roleCredentials.accessKeyId,
        SecretAccessKey: roleCredentials.secretAccessKey,
        Token: `session-${this.instanceId}`,
        Expiration: new Date(Date.now() + 3_600_000).toISOString(),
      });
    }
    return undefined;
  }
}

/** One instance's machine: a temp folder (its disk), its metadata service and the user data's process group. */
export class InstanceHost {
  exit: HostExit | undefined;
  private child: ChildProcess | undefined;
  private killed = false;
  private readonly exitSeen: Promise<void>;
  private markExited!: () => void;

  private constructor(
    readonly instanceId: string,
    readonly dir: string,
    readonly imds: FakeImds,
  ) {
    this.exitSeen = new Promise((resolve) => (this.markExited = resolve));
  }

  /** Prepares the machine; run() then boots it. */
  static async create(instanceId: string, options: RunUserDataOptions): Promise<InstanceHost> {
    const dir = await mkdtemp(path.join(os.tmpdir(), `icaas-${instanceId}-`));
    const host = new InstanceHost(instanceId, dir, new FakeImds(instanceId, options));
    try {
      await host.imds.listen();
      await host.writeShims(options.cliPath);
    } catch (error) {
      await host.close();
      throw error;
    }
    return host;
  }

  get exited(): boolean {
    return this.exit !== undefined;
  }

  /** What the user data printed, as the instance's console output. */
  consoleOutput(): Promise<string> {
    return readFile(path.join(this.dir, 'console.log'), 'utf8').catch(() => '');
  }

  /**
   * Runs the user data: `onStarted` once its process is up (the instance is running),
   * `onExit` once the process group's leader is gone. A machine killed before it booted
   * exits without starting.
   */
  async run(userData: string, env: Record<string, string>, hooks: { onStarted(): void; onExit(exit: HostExit): void }): Promise<void> {
    const script = path.join(this.dir, 'user-data');
    await writeFile(script, userData, { mode: 0o700 });
    const consoleFile = await open(path.join(this.dir, 'console.log'), 'a');
    if (this.killed) {
      await consoleFile.close();
      return this.ended({ code: null, signal: 'SIGKILL', poweredOff: false }, hooks);
    }
    const child = spawn('bash', [script], {
      cwd: this.dir,
      // A process group of its own, so that a terminate reaches every process on the "machine".
      detached: true,
      stdio: ['ignore', consoleFile.fd, consoleFile.fd],
      env: {
        PATH: `${path.join(this.dir, 'bin')}:/usr/local/bin:/usr/bin:/bin`,
        HOME: this.dir,
        AWS_EC2_METADATA_SERVICE_ENDPOINT: this.imds.endpoint,
        ...env,
      },
    });
    this.child = child;
    child.once('spawn', () => {
      void consoleFile.close();
      hooks.onStarted();
    });
    child.once('error', (error) => {
      void consoleFile.close();
      void writeFile(path.join(this.dir, 'console.log'), `could not run the user data: ${error.message}\n`, { flag: 'a' });
      this.ended({ code: null, signal: null, poweredOff: false }, hooks);
    });
    child.once('exit', (code, signal) => {
      // The shutdown shim leaves a mark before it stops the machine, telling it from a crash.
      void readFile(path.join(this.dir, 'powered-off')).then(
        () => this.ended({ code, signal, poweredOff: true }, hooks),
        () => this.ended({ code, signal, poweredOff: false }, hooks),
      );
    });
  }

  /** Pulls the plug: every process of the instance ends at once. */
  kill(): void {
    this.killed = true;
    const pid = this.child?.pid;
    if (pid === undefined || this.exited) return;
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // The group is gone already.
    }
  }

  /** Kills what still runs, waits (briefly) for it to go, and removes the machine. */
  async close(): Promise<void> {
    this.kill();
    if (this.child && !this.exited) await Promise.race([this.exitSeen, new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
    await this.imds.close();
    await rm(this.dir, { recursive: true, force: true });
  }

  private ended(exit: HostExit, hooks: { onExit(exit: HostExit): void }): void {
    if (this.exit) return;
    this.exit = exit;
    this.markExited();
    hooks.onExit(exit);
  }

  private async writeShims(cliPath: string): Promise<void> {
    const bin = path.join(this.dir, 'bin');
    const q = (value: string) => `'${value.replace(/'/g, `'\\''`)}'`;
    const shims: Record<string, string> = {
      icaas: `exec ${q(process.execPath)} ${q(cliPath)} "$@"`,
      shutdown: `echo "shutdown $*" > ${q(path.join(this.dir, 'powered-off'))}\nkill -KILL 0`,
      // Drops "-u <user> --": only root may switch users.
      runuser: 'while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"',
      curl: `args=()\nfor arg in "$@"; do args+=("\${arg/#http:\\/\\/169.254.169.254/${this.imds.endpoint}}"); done\nexec /usr/bin/curl "\${args[@]}"`,
    };
    await mkdir(bin);
    for (const [name, body] of Object.entries(shims)) {
      const file = path.join(bin, name);
      await writeFile(file, `#!/bin/bash\n${body}\n`);
      await chmod(file, 0o755);
    }
  }
}
