/**
 * One validated configuration, from (lowest to highest precedence) defaults, a JSON
 * config file, environment variables and command-line flags. Every option is declared
 * once below; help text, environment names and validation all come from that table.
 */
import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';

type Kind = 'string' | 'integer' | 'number' | 'boolean' | 'list' | 'duration';

interface OptionSpec {
  flag: string;
  env: string;
  kind: Kind;
  default: unknown;
  help: string;
  min?: number;
  max?: number;
  choices?: readonly string[];
}

const options = {
  host: { flag: 'host', env: 'HOST', kind: 'string', default: 'localhost', help: 'address the web tier binds to' },
  port: { flag: 'port', env: 'PORT', kind: 'integer', default: 3000, min: 0, max: 65535, help: 'port the web tier listens on (0 picks a free one)' },
  data: { flag: 'data', env: 'ICAAS_DATA', kind: 'string', default: './data', help: 'folder for the embedded buckets, queues and instance registry' },
  maxInstances: { flag: 'max-instances', env: 'ICAAS_MAX_INSTANCES', kind: 'integer', default: 20, min: 1, max: 1000, help: 'most worker instances at once, counting those starting' },
  policy: { flag: 'policy', env: 'ICAAS_POLICY', kind: 'string', default: 'drain-time', choices: ['drain-time', 'queue-match', 'default'], help: 'scaling policy: drain-time starts an instance only when it shortens the expected drain; queue-match starts one per waiting image' },
  capacity: { flag: 'capacity', env: 'ICAAS_CAPACITY', kind: 'integer', default: 0, min: 0, max: 1000, help: 'instances that can usefully run at once (0: the cores for local workers, --max-instances for EC2)' },
  model: { flag: 'model', env: 'ICAAS_MODEL', kind: 'string', default: '', help: 'path to the ONNX model (default: cache, then ../shared/models, then download)' },
  labels: { flag: 'labels', env: 'ICAAS_LABELS', kind: 'string', default: '', help: 'path to the labels JSON (default: next to the model)' },
  idleWaitSeconds: { flag: 'idle-wait', env: 'ICAAS_IDLE_WAIT', kind: 'number', default: 5, min: 0, max: 20, help: 'seconds a worker long-polls for work before it stops itself' },
  deadlineSeconds: { flag: 'deadline', env: 'ICAAS_DEADLINE', kind: 'number', default: 30, min: 1, max: 43200, help: 'seconds an instance may hold one image before it counts as hung' },
  maxAttempts: { flag: 'max-attempts', env: 'ICAAS_MAX_ATTEMPTS', kind: 'integer', default: 3, min: 1, max: 100, help: 'attempts per image before it ends as an error' },
  startFailures: { flag: 'start-failures', env: 'ICAAS_START_FAILURES', kind: 'integer', default: 3, min: 1, max: 1000, help: 'worker instances in a row that stop without taking an image before new starts are held back' },
  startFailureTimeoutSeconds: { flag: 'start-failure-timeout', env: 'ICAAS_START_FAILURE_TIMEOUT', kind: 'number', default: 120, min: 1, max: 86400, help: 'seconds workers may keep failing at start before waiting images end as errors' },
  startTimeoutSeconds: { flag: 'start-timeout', env: 'ICAAS_START_TIMEOUT', kind: 'number', default: 60, min: 1, max: 3600, help: 'seconds a local worker may take from its start to its first report before it is terminated (EC2: --ec2-start-timeout)' },
  instanceGraceSeconds: { flag: 'instance-grace', env: 'ICAAS_INSTANCE_GRACE', kind: 'number', default: 30, min: 1, max: 3600, help: 'seconds an instance may overrun the idle wait, the deadline or its own exit before it is terminated' },
  launchIntervalMs: { flag: 'launch-interval', env: 'ICAAS_LAUNCH_INTERVAL_MS', kind: 'integer', default: 500, min: 50, max: 60000, help: 'milliseconds between launch-controller ticks' },
  monitorCheckSeconds: { flag: 'monitor-check', env: 'ICAAS_MONITOR_CHECK', kind: 'number', default: 2, min: 0.1, max: 900, help: 'seconds between the monitor\'s checks of one image' },
  maxFileBytes: { flag: 'max-file-bytes', env: 'ICAAS_MAX_FILE_BYTES', kind: 'integer', default: 20 * 1024 * 1024, min: 1, help: 'largest accepted image file, in bytes' },
  maxPixels: { flag: 'max-pixels', env: 'ICAAS_MAX_PIXELS', kind: 'integer', default: 50_000_000, min: 1, help: 'largest accepted image, in pixels (width x height)' },
  maxFiles: { flag: 'max-files', env: 'ICAAS_MAX_FILES', kind: 'integer', default: 1000, min: 1, help: 'most files in one upload request' },
  syncTimeoutSeconds: { flag: 'sync-timeout', env: 'ICAAS_SYNC_TIMEOUT', kind: 'number', default: 300, min: 1, help: 'seconds POST / waits for a result before answering 504' },
  store: { flag: 'store', env: 'ICAAS_STORE', kind: 'string', default: 'fs', choices: ['fs', 's3'], help: 'object store: fs (files under --data) or s3' },
  queue: { flag: 'queue', env: 'ICAAS_QUEUE', kind: 'string', default: 'sqlite', choices: ['sqlite', 'sqs'], help: 'queues: sqlite (one file under --data) or sqs' },
  compute: { flag: 'compute', env: 'ICAAS_COMPUTE', kind: 'string', default: 'process', choices: ['process', 'ec2'], help: 'worker instances: process (local OS processes) or ec2' },
  inputBucket: { flag: 'input-bucket', env: 'ICAAS_INPUT_BUCKET', kind: 'string', default: 'icaas-input', help: 'bucket for uploaded images' },
  outputBucket: { flag: 'output-bucket', env: 'ICAAS_OUTPUT_BUCKET', kind: 'string', default: 'icaas-output', help: 'bucket for results' },
  queuePrefix: { flag: 'queue-prefix', env: 'ICAAS_QUEUE_PREFIX', kind: 'string', default: 'icaas-', help: 'prefix of the launch, monitor and output queue names' },
  deployment: { flag: 'deployment', env: 'ICAAS_DEPLOYMENT', kind: 'string', default: 'icaas', help: 'deployment name, used to tag cloud resources' },
  region: { flag: 'region', env: 'AWS_REGION', kind: 'string', default: '', help: 'AWS region (distributed adapters)' },
  s3Endpoint: { flag: 's3-endpoint', env: 'ICAAS_S3_ENDPOINT', kind: 'string', default: '', help: 'endpoint of an S3-compatible store' },
  sqsEndpoint: { flag: 'sqs-endpoint', env: 'ICAAS_SQS_ENDPOINT', kind: 'string', default: '', help: 'endpoint of an SQS-compatible queue service' },
  s3ForcePathStyle: { flag: 's3-path-style', env: 'ICAAS_S3_PATH_STYLE', kind: 'boolean', default: false, help: 'use path-style S3 addressing (most S3-compatible stores need it)' },
  ec2LaunchTemplate: { flag: 'ec2-launch-template', env: 'ICAAS_EC2_LAUNCH_TEMPLATE', kind: 'string', default: '', help: 'EC2 launch template name or id for workers' },
  ec2ImageId: { flag: 'ec2-image-id', env: 'ICAAS_EC2_IMAGE_ID', kind: 'string', default: '', help: 'AMI id for workers (when no launch template)' },
  ec2InstanceType: { flag: 'ec2-instance-type', env: 'ICAAS_EC2_INSTANCE_TYPE', kind: 'string', default: 't3.small', help: 'EC2 instance type for workers' },
  ec2SubnetId: { flag: 'ec2-subnet', env: 'ICAAS_EC2_SUBNET', kind: 'string', default: '', help: 'subnet for workers' },
  ec2SecurityGroupIds: { flag: 'ec2-security-groups', env: 'ICAAS_EC2_SECURITY_GROUPS', kind: 'list', default: [], help: 'comma-separated security group ids for workers' },
  ec2StartTimeoutSeconds: { flag: 'ec2-start-timeout', env: 'ICAAS_EC2_START_TIMEOUT', kind: 'number', default: 600, min: 30, max: 7200, help: 'seconds an EC2 worker may take from its launch to its first heartbeat before it is terminated' },
  ec2Endpoint: { flag: 'ec2-endpoint', env: 'ICAAS_EC2_ENDPOINT', kind: 'string', default: '', help: 'endpoint of an EC2-compatible service (leave unset for AWS)' },
  ec2InstanceProfile: { flag: 'ec2-instance-profile', env: 'ICAAS_EC2_INSTANCE_PROFILE', kind: 'string', default: '', help: 'IAM instance profile name for workers' },
  apiKeys: { flag: 'api-keys', env: 'ICAAS_API_KEYS', kind: 'list', default: [], help: 'comma-separated API keys; when set, the API requires one' },
  maxQueued: { flag: 'max-queued', env: 'ICAAS_MAX_QUEUED', kind: 'integer', default: 100_000, min: 1, help: 'launch-queue depth at which uploads get 429 with Retry-After' },
  maxEventClients: { flag: 'max-event-clients', env: 'ICAAS_MAX_EVENT_CLIENTS', kind: 'integer', default: 1000, min: 1, help: 'most live-event (SSE) clients at once; more get 429 with Retry-After' },
  uploadsPerMinute: { flag: 'rate-limit-uploads', env: 'ICAAS_RATE_LIMIT_UPLOADS', kind: 'integer', default: 120, min: 0, help: 'upload requests per client (API key, or address without keys) per minute; more get 429 with Retry-After (0: no limit)' },
  syncPerMinute: { flag: 'rate-limit-sync', env: 'ICAAS_RATE_LIMIT_SYNC', kind: 'integer', default: 1200, min: 0, help: 'synchronous requests (POST /) per client per minute; more get 429 with Retry-After (0: no limit)' },
  trustProxy: { flag: 'trust-proxy', env: 'ICAAS_TRUST_PROXY', kind: 'string', default: '', help: 'proxies whose X-Forwarded-For names the client: a hop count, or addresses and ranges such as loopback or 10.0.0.0/8 (empty: none, the socket\'s address is the client)' },
  maxLoadedImages: { flag: 'max-loaded-images', env: 'ICAAS_MAX_LOADED_IMAGES', kind: 'integer', default: 50_000, min: 1, help: 'images the web tier keeps in memory before it drops the least recently used finished batches' },
  retentionSeconds: { flag: 'retention', env: 'ICAAS_RETENTION', kind: 'duration', default: 0, help: 'delete batches with no upload or result for this long, e.g. 7d, 12h, 30m (0: keep forever)' },
} as const satisfies Record<string, OptionSpec>;

type Options = typeof options;
type ValueOf<S extends OptionSpec> = S['kind'] extends 'integer' | 'number' | 'duration' ? number
  : S['kind'] extends 'boolean' ? boolean
  : S['kind'] extends 'list' ? string[]
  : string;

export type Config = { -readonly [K in keyof Options]: ValueOf<Options[K]> } & {
  /** The config file that was read, if any. */
  configFile: string | null;
};

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

function coerce(key: string, spec: OptionSpec, raw: unknown, source: string): unknown {
  const where = `${source} (${key})`;
  switch (spec.kind) {
    case 'string': {
      if (typeof raw !== 'string') throw new ConfigError(`${where}: expected text, got ${JSON.stringify(raw)}`);
      if (spec.choices && !spec.choices.includes(raw)) {
        throw new ConfigError(`${where}: must be one of ${spec.choices.join(', ')}, got ${JSON.stringify(raw)}`);
      }
      return raw;
    }
    case 'integer':
    case 'number': {
      const value = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
      if (!Number.isFinite(value) || (spec.kind === 'integer' && !Number.isInteger(value))) {
        throw new ConfigError(`${where}: expected ${spec.kind === 'integer' ? 'a whole number' : 'a number'}, got ${JSON.stringify(raw)}`);
      }
      if (spec.min !== undefined && value < spec.min) throw new ConfigError(`${where}: must be at least ${spec.min}, got ${value}`);
      if (spec.max !== undefined && value > spec.max) throw new ConfigError(`${where}: must be at most ${spec.max}, got ${value}`);
      return value;
    }
    case 'boolean': {
      if (typeof raw === 'boolean') return raw;
      if (typeof raw === 'string' && /^(1|true|yes|on)$/i.test(raw)) return true;
      if (typeof raw === 'string' && /^(0|false|no|off|)$/i.test(raw)) return false;
      throw new ConfigError(`${where}: expected true or false, got ${JSON.stringify(raw)}`);
    }
    case 'duration': {
      // Seconds; a number alone is seconds, and s, m, h, d name the unit.
      const match = typeof raw === 'number' ? [String(raw), String(raw), 's'] : typeof raw === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$/.exec(raw) : null;
      if (!match) throw new ConfigError(`${where}: expected a duration such as 30s, 15m, 12h or 7d, got ${JSON.stringify(raw)}`);
      const seconds = Number(match[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86_400 }[match[2] as '' | 's' | 'm' | 'h' | 'd'];
      if (!Number.isFinite(seconds) || seconds < 0) throw new ConfigError(`${where}: expected a duration such as 30s, 15m, 12h or 7d, got ${JSON.stringify(raw)}`);
      return seconds;
    }
    case 'list': {
      if (Array.isArray(raw) && raw.every((item) => typeof item === 'string')) return raw;
      if (typeof raw === 'string') return raw.split(',').map((item) => item.trim()).filter(Boolean);
      throw new ConfigError(`${where}: expected a comma-separated list, got ${JSON.stringify(raw)}`);
    }
  }
}

export interface LoadConfigInput {
  /** Command-line arguments after the subcommand, e.g. ['--port', '3100']. */
  argv?: readonly string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface LoadedConfig {
  config: Config;
  /** Arguments that are not options (e.g. files for `icaas classify`). */
  positionals: string[];
  /** Flags that belong to the subcommand rather than the configuration. */
  extraFlags: Record<string, string | boolean>;
}

const specs = options as Record<string, OptionSpec>;
const byFlag = new Map(Object.entries(specs).map(([key, spec]) => [spec.flag, key]));

/**
 * Parses `--name value`, `--name=value` and bare `--flag` (boolean). Flags the table does
 * not know are returned in extraFlags when listed in `commandFlags`, and rejected otherwise.
 */
export function loadConfig(input: LoadConfigInput = {}, commandFlags: readonly string[] = []): LoadedConfig {
  const env = input.env ?? process.env;
  const cwd = input.cwd ?? process.cwd();
  const argv = [...(input.argv ?? [])];
  const fromFlags: Record<string, unknown> = {};
  const extraFlags: Record<string, string | boolean> = {};
  const positionals: string[] = [];
  let configPath: string | undefined = env.ICAAS_CONFIG || undefined;

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
    const inline = eq === -1 ? undefined : arg.slice(eq + 1);
    const key = byFlag.get(name);
    const isBoolean = key ? specs[key]!.kind === 'boolean' : false;
    const takeValue = (): string => {
      if (inline !== undefined) return inline;
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new ConfigError(`--${name} needs a value`);
      i++;
      return next;
    };
    if (name === 'config') {
      configPath = takeValue();
    } else if (key) {
      fromFlags[key] = isBoolean ? (inline ?? true) : takeValue();
    } else if (commandFlags.includes(name)) {
      const next = argv[i + 1];
      extraFlags[name] = inline ?? (next !== undefined && !next.startsWith('--') ? (i++, next) : true);
    } else {
      throw new ConfigError(`unknown option --${name}`);
    }
  }

  let fromFile: Record<string, unknown> = {};
  let configFile: string | null = null;
  const candidate = configPath ? path.resolve(cwd, configPath) : path.resolve(cwd, 'icaas.config.json');
  if (configPath && !existsSync(candidate)) throw new ConfigError(`config file ${candidate} does not exist`);
  if (existsSync(candidate)) {
    let text: string;
    try {
      text = readFileSync(candidate, 'utf8');
    } catch (error) {
      throw new ConfigError(`config file ${candidate} cannot be read: ${(error as Error).message}`);
    }
    try {
      fromFile = JSON.parse(text) as Record<string, unknown>;
    } catch (error) {
      throw new ConfigError(`config file ${candidate} is not valid JSON: ${(error as Error).message}`);
    }
    if (typeof fromFile !== 'object' || fromFile === null || Array.isArray(fromFile)) {
      throw new ConfigError(`config file ${candidate} must hold a JSON object`);
    }
    for (const key of Object.keys(fromFile)) {
      if (!(key in specs)) throw new ConfigError(`config file ${candidate}: unknown option "${key}"; known: ${Object.keys(specs).join(', ')}`);
    }
    configFile = candidate;
  }

  const config: Record<string, unknown> = { configFile };
  for (const [key, spec] of Object.entries(specs)) {
    let value: unknown = spec.default;
    if (key in fromFile) value = coerce(key, spec, fromFile[key], `config file ${candidate}`);
    const envValue = env[spec.env];
    if (envValue !== undefined && envValue !== '') value = coerce(key, spec, envValue, `environment variable ${spec.env}`);
    if (key in fromFlags) value = coerce(key, spec, fromFlags[key], `--${spec.flag}`);
    config[key] = value;
  }
  const result = config as Config;
  result.data = path.resolve(cwd, result.data);
  if (result.compute === 'ec2' && (result.store !== 's3' || result.queue !== 'sqs')) {
    // Instances on other machines cannot reach this machine's files or SQLite queue.
    throw new ConfigError(`--compute ec2 needs --store s3 and --queue sqs (got store ${result.store}, queue ${result.queue}): workers on EC2 cannot reach local files`);
  }
  return { config: result, positionals, extraFlags };
}

/** The options table as help text, with each option's flag, variable and default. */
export function optionsHelp(only?: readonly (keyof Options)[]): string {
  const keys = (only ?? Object.keys(specs)) as string[];
  const rows = keys.map((key) => {
    const spec = specs[key]!;
    const flag = `--${spec.flag}${spec.kind === 'boolean' ? '' : ' <value>'}`;
    const fallback = Array.isArray(spec.default) ? spec.default.join(',') : String(spec.default);
    return { flag, line: `${spec.help} [env ${spec.env}${fallback !== '' ? `, default ${fallback}` : ''}]` };
  });
  const width = Math.max(...rows.map((row) => row.flag.length)) + 2;
  return [...rows.map((row) => `  ${row.flag.padEnd(width)}${row.line}`), `  ${'--config <file>'.padEnd(width)}JSON file with any of these options by name [env ICAAS_CONFIG, default ./icaas.config.json if present]`].join('\n');
}

/** Environment that reproduces this configuration in a child process (e.g. a worker). */
export function configToEnv(config: Config): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, spec] of Object.entries(specs)) {
    const value = (config as unknown as Record<string, unknown>)[key];
    env[spec.env] = Array.isArray(value) ? value.join(',') : String(value);
  }
  return env;
}
