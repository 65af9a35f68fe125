/**
 * One validated configuration, from (lowest to highest precedence) defaults, a JSON
 * config file, environment variables and command-line flags. Every option is declared
 * once in the table below; the zod schema, the command-line parser (node:util parseArgs),
 * the help text and the environment given to workers are all built from it.
 */
import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';

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
  metricsPort: { flag: 'metrics-port', env: 'ICAAS_METRICS_PORT', kind: 'integer', default: 0, min: 0, max: 65535, help: 'port of a listener that serves only /metrics, on --host (0: none); for icaas controller, whose process has no web tier' },
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
  trustProxy: { flag: 'trust-proxy', env: 'ICAAS_TRUST_PROXY', kind: 'string', default: '', help: 'proxies whose X-Forwarded-For names the client: addresses and ranges such as 10.0.0.0/8, or loopback, linklocal, uniquelocal (empty: none, the socket\'s address is the client)' },
  maxLoadedImages: { flag: 'max-loaded-images', env: 'ICAAS_MAX_LOADED_IMAGES', kind: 'integer', default: 50_000, min: 1, help: 'images the web tier keeps in memory before it drops the least recently used finished batches' },
  logLevel: { flag: 'log-level', env: 'ICAAS_LOG_LEVEL', kind: 'string', default: 'info', choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], help: 'least severe log lines written: error, warn, info, debug (each image\'s steps), ...' },
  retentionSeconds: { flag: 'retention', env: 'ICAAS_RETENTION', kind: 'duration', default: 0, help: 'delete batches with no upload or result for this long, e.g. 7d, 12h, 30m (0: keep forever)' },
} as const satisfies Record<string, OptionSpec>;

type Options = typeof options;
type ValueOf<S extends OptionSpec> = S['kind'] extends 'integer' | 'number' | 'duration' ? number
  : S['kind'] extends 'boolean' ? boolean
  : S['kind'] extends 'list' ? string[]
  : string;

type OptionValues = { -readonly [K in keyof Options]: ValueOf<Options[K]> };

export type Config = OptionValues & {
  /** The config file that was read, if any. */
  configFile: string | null;
};

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const specs = options as Record<string, OptionSpec>;

/** What each option's metadata in the schema holds, for help and the environment. */
export type OptionMeta = {
  flag: string;
  env: string;
  kind: Kind;
  description: string;
  default: unknown;
  min?: number;
  max?: number;
  choices?: readonly string[];
};

// Environment variables and flags are text; a config file may hold either text or JSON
// values. Each converter turns text it understands into the option's type and leaves
// anything else for the schema to refuse with the option's own words.
const DECIMAL = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?$/i;
const DURATION = /^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$/;
const UNIT_SECONDS = { '': 1, s: 1, m: 60, h: 3600, d: 86_400 } as const;

function numberFromText(raw: unknown): unknown {
  return typeof raw === 'string' && DECIMAL.test(raw.trim()) ? Number(raw.trim()) : raw;
}

function booleanFromText(raw: unknown): unknown {
  if (typeof raw !== 'string') return raw;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off|)$/i.test(raw)) return false;
  return raw;
}

function listFromText(raw: unknown): unknown {
  return typeof raw === 'string' ? raw.split(',').map((item) => item.trim()).filter(Boolean) : raw;
}

/** Seconds; a number alone is seconds, and s, m, h, d name the unit. */
function durationFromText(raw: unknown): unknown {
  if (typeof raw !== 'string') return raw;
  const match = DURATION.exec(raw);
  return match ? Number(match[1]) * UNIT_SECONDS[match[2] as keyof typeof UNIT_SECONDS] : raw;
}

function bounded(schema: z.ZodNumber, spec: OptionSpec): z.ZodNumber {
  let result = schema;
  if (spec.min !== undefined) result = result.min(spec.min);
  if (spec.max !== undefined) result = result.max(spec.max);
  return result;
}

function valueSchema(spec: OptionSpec): z.ZodType {
  switch (spec.kind) {
    case 'string':
      if (spec.choices) return z.enum(spec.choices as [string, ...string[]]);
      // An option with a default needs a value; '' would silently mean "the current folder" or "any host".
      return spec.default === '' ? z.string() : z.string().min(1);
    case 'integer':
      return z.preprocess(numberFromText, bounded(z.number().int(), spec));
    case 'number':
      return z.preprocess(numberFromText, bounded(z.number(), spec));
    case 'boolean':
      return z.preprocess(booleanFromText, z.boolean());
    case 'list':
      return z.preprocess(listFromText, z.array(z.string()));
    case 'duration':
      return z.preprocess(durationFromText, bounded(z.number().min(0), spec));
  }
}

function metaOf(spec: OptionSpec): OptionMeta {
  return {
    flag: spec.flag, env: spec.env, kind: spec.kind, description: spec.help, default: spec.default,
    ...(spec.min !== undefined ? { min: spec.min } : {}),
    ...(spec.max !== undefined ? { max: spec.max } : {}),
    ...(spec.choices ? { choices: spec.choices } : {}),
  };
}

/** Each option's value schema, without its default: what one source (file, variable, flag) may say. */
const fields: Record<string, z.ZodType> = Object.fromEntries(
  Object.entries(specs).map(([key, spec]) => [key, valueSchema(spec)]),
);

/**
 * The whole configuration: every option with its default, and the rules that tie options
 * together. Each field's metadata (`.meta()`) carries its flag, variable and description.
 */
export const configSchema = z
  .object(Object.fromEntries(Object.entries(specs).map(([key, spec]) => [key, fields[key]!.default(spec.default).meta(metaOf(spec))])))
  .superRefine((config, context) => {
    if (config.compute === 'ec2' && (config.store !== 's3' || config.queue !== 'sqs')) {
      // Instances on other machines cannot reach this machine's files or SQLite queue.
      context.addIssue({
        code: 'custom',
        path: ['compute'],
        message: `--compute ec2 needs --store s3 and --queue sqs (got store ${String(config.store)}, queue ${String(config.queue)}): workers on EC2 cannot reach local files`,
      });
    }
  }) as unknown as z.ZodType<OptionValues, Record<string, unknown>> & { shape: Record<string, z.ZodType> };

/** Every option's metadata, in the order of the table, read back from the schema. */
export function optionMetas(): [key: string, meta: OptionMeta][] {
  return Object.entries(configSchema.shape).map(([key, field]) => [key, field.meta() as unknown as OptionMeta]);
}

/** One issue in the words of the option it is about, with the value that was given. */
function explain(issue: z.core.$ZodIssue, spec: OptionSpec, raw: unknown): string {
  const got = JSON.stringify(raw);
  switch (issue.code) {
    case 'too_small':
      return issue.origin === 'string' ? 'needs a value, got ""' : `must be at least ${String(issue.minimum)}, got ${String(issue.input ?? raw)}`;
    case 'too_big':
      return `must be at most ${String(issue.maximum)}, got ${String(issue.input ?? raw)}`;
    case 'invalid_value':
      return `must be one of ${issue.values.map(String).join(', ')}, got ${got}`;
    default:
      return `expected ${EXPECTED[spec.kind]}, got ${got}`;
  }
}

const EXPECTED: Record<Kind, string> = {
  string: 'text',
  integer: 'a whole number',
  number: 'a number',
  boolean: 'true or false',
  list: 'a comma-separated list',
  duration: 'a duration such as 30s, 15m, 12h or 7d',
};

function checked(key: string, raw: unknown, where: string): unknown {
  const spec = specs[key]!;
  const result = fields[key]!.safeParse(raw, { reportInput: true });
  if (result.success) return result.data;
  // A duration that is a number but too small, say, is better told as a duration.
  const issue = result.error.issues[0]!;
  const message = spec.kind === 'duration' && issue.code === 'too_small' ? `expected ${EXPECTED.duration}, got ${JSON.stringify(raw)}` : explain(issue, spec, raw);
  throw new ConfigError(`${where} (${key}): ${message}`);
}

/** Edit distance, for "did you mean". */
function distance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** The known name closest to `wrong`, when it is close enough to be a slip. */
export function closest(wrong: string, known: Iterable<string>): string | undefined {
  const normal = (name: string) => name.toLowerCase().replace(/^[-\u2010-\u2015\u2212]+/, '').replace(/[-_]/g, '');
  const target = normal(wrong);
  let best: { name: string; cost: number } | undefined;
  for (const name of known) {
    const cost = distance(target, normal(name));
    if (cost <= Math.max(1, Math.floor(target.length / 4)) && (!best || cost < best.cost)) best = { name, cost };
  }
  return best?.name;
}

const didYouMean = (name: string | undefined): string => (name ? `; did you mean ${name}?` : '');

/** A flag a command takes besides the configuration, e.g. `icaas worker --instance-id`. */
export interface CommandFlag {
  type: 'string' | 'boolean';
  help: string;
}

export type CommandFlags = Readonly<Record<string, CommandFlag>>;

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

const CONFIG_FLAG = 'config';
/** Dashes that word processors and chat tools put where a user typed "--". */
const TYPOGRAPHIC_DASH = /^[\u2010-\u2015\u2212\uFE58\uFE63\uFF0D]/;

interface ParsedArgs {
  values: Record<string, string | boolean>;
  positionals: string[];
}

/**
 * Strict parseArgs over the table's flags, `--config` and the command's own flags, with
 * its errors reworded as ConfigErrors that name the flag and what to do.
 */
function parseCommandLine(argv: readonly string[], commandFlags: CommandFlags): ParsedArgs {
  const types: Record<string, 'string' | 'boolean'> = { [CONFIG_FLAG]: 'string' };
  for (const spec of Object.values(specs)) types[spec.flag] = spec.kind === 'boolean' ? 'boolean' : 'string';
  for (const [name, flag] of Object.entries(commandFlags)) types[name] = flag.type;
  const args = joinNegativeValues(argv, types);
  let parsed: ReturnType<typeof parseArgs<{ options: Record<string, { type: 'string' | 'boolean' }>; strict: true; allowPositionals: true; tokens: true }>>;
  try {
    parsed = parseArgs({ args, options: Object.fromEntries(Object.entries(types).map(([name, type]) => [name, { type }])), strict: true, allowPositionals: true, tokens: true });
  } catch (error) {
    throw reworded(error, Object.keys(types));
  }
  const seen = new Map<string, string>();
  let terminated = false;
  for (const token of parsed.tokens) {
    if (token.kind === 'option-terminator') terminated = true;
    if (token.kind === 'positional' && !terminated && TYPOGRAPHIC_DASH.test(token.value)) {
      const meant = `--${token.value.replace(/^[^A-Za-z0-9]+/, '')}`;
      throw new ConfigError(`"${token.value}" starts with a typographic dash, not "--"; type it as ${meant}`);
    }
    if (token.kind !== 'option') continue;
    const earlier = seen.get(token.name);
    // Which of two values was meant cannot be told; the last one silently winning hides a mistake.
    if (earlier !== undefined) throw new ConfigError(`--${token.name} is given twice (${earlier} and ${token.rawName}${token.value !== undefined ? ` ${token.value}` : ''}); give it once`);
    seen.set(token.name, `${token.rawName}${token.value !== undefined ? ` ${token.value}` : ''}`);
  }
  return { values: parsed.values as Record<string, string | boolean>, positionals: parsed.positionals };
}

/**
 * `--max-instances -1`: parseArgs takes "-1" for an option and calls the value missing;
 * no option starts with a digit, so it is a value, and the schema can say what is wrong with it.
 */
function joinNegativeValues(argv: readonly string[], types: Record<string, 'string' | 'boolean'>): string[] {
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') return [...args, ...argv.slice(i)];
    const next = argv[i + 1];
    if (arg.startsWith('--') && !arg.includes('=') && types[arg.slice(2)] === 'string' && next !== undefined && /^-[\d.]/.test(next)) {
      args.push(`${arg}=${next}`);
      i++;
    } else {
      args.push(arg);
    }
  }
  return args;
}

function reworded(error: unknown, known: string[]): unknown {
  const code = (error as { code?: string }).code;
  const message = (error as Error).message ?? '';
  const name = /'(-[^' ]*)/.exec(message)?.[1] ?? '';
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    return new ConfigError(`unknown option ${name}${didYouMean(closest(name, known.map((flag) => `--${flag}`)))}`);
  }
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    if (/does not take an argument/.test(message)) return new ConfigError(`${name} takes no value (leave it out to keep it off)`);
    return new ConfigError(`${name} needs a value${/ambiguous/.test(message) ? ` (for one that starts with "-", write ${name}=VALUE)` : ''}`);
  }
  return error;
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`config file ${file} cannot be read: ${(error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`config file ${file} is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ConfigError(`config file ${file} must hold a JSON object`);
  for (const key of Object.keys(parsed)) {
    if (!Object.hasOwn(specs, key)) {
      const byFlag = Object.entries(specs).find(([, spec]) => spec.flag === key)?.[0];
      throw new ConfigError(`config file ${file}: unknown option "${key}"${didYouMean(byFlag ?? closest(key, Object.keys(specs)))}`);
    }
  }
  return parsed as Record<string, unknown>;
}

/**
 * Parses the command line strictly: the table's flags (`--name value`, `--name=value`,
 * bare `--flag` for booleans), `--config`, and `commandFlags`, the command's own flags,
 * which are returned in extraFlags. Anything else is a ConfigError.
 */
export function loadConfig(input: LoadConfigInput = {}, commandFlags: CommandFlags = {}): LoadedConfig {
  const env = input.env ?? process.env;
  const cwd = input.cwd ?? process.cwd();
  const { values, positionals } = parseCommandLine(input.argv ?? [], commandFlags);
  const configPath = (values[CONFIG_FLAG] as string | undefined) ?? (env.ICAAS_CONFIG || undefined);
  if (configPath === '') throw new ConfigError('--config needs a file name');

  const candidate = path.resolve(cwd, configPath ?? 'icaas.config.json');
  if (configPath && !existsSync(candidate)) throw new ConfigError(`config file ${candidate} does not exist`);
  const configFile = existsSync(candidate) ? candidate : null;
  const fromFile = configFile ? readConfigFile(configFile) : {};

  const merged: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(specs)) {
    if (key in fromFile) merged[key] = checked(key, fromFile[key], `config file ${candidate}`);
    const envValue = env[spec.env];
    if (envValue !== undefined && envValue !== '') merged[key] = checked(key, envValue, `environment variable ${spec.env}`);
    if (spec.flag in values) merged[key] = checked(key, values[spec.flag], `--${spec.flag}`);
  }
  const result = configSchema.safeParse(merged);
  if (!result.success) throw new ConfigError(result.error.issues.map((issue) => issue.message).join('; '));
  const config: Config = { ...result.data, configFile };
  config.data = path.resolve(cwd, config.data);

  const extraFlags: Record<string, string | boolean> = {};
  for (const name of Object.keys(commandFlags)) if (values[name] !== undefined) extraFlags[name] = values[name];
  return { config, positionals, extraFlags };
}

function placeholder(meta: OptionMeta): string {
  switch (meta.kind) {
    case 'boolean': return '';
    case 'integer': return ' <n>';
    case 'number': return ' <number>';
    case 'duration': return ' <duration>';
    case 'list': return ' <a,b,...>';
    case 'string': return meta.choices ? ` <${meta.choices.join('|')}>` : ' <text>';
  }
}

function shownDefault(value: unknown): string {
  return Array.isArray(value) ? value.join(',') : String(value);
}

function helpRows(rows: { flag: string; line: string }[]): string[] {
  const width = Math.min(32, Math.max(...rows.map((row) => row.flag.length)) + 2);
  return rows.map((row) => (row.flag.length + 2 > width ? `  ${row.flag}\n  ${''.padEnd(width)}${row.line}` : `  ${row.flag.padEnd(width)}${row.line}`));
}

/**
 * The options as help text, generated from the schema: each option's flag, description,
 * environment variable, default and range.
 */
export function optionsHelp(only?: readonly (keyof Options)[]): string {
  const metas = optionMetas().filter(([key]) => !only || (only as readonly string[]).includes(key));
  const rows = metas.map(([key, meta]) => {
    const range = meta.min !== undefined || meta.max !== undefined ? `, ${meta.min ?? ''}..${meta.max ?? ''}` : '';
    const fallback = shownDefault(meta.default);
    return { flag: `--${meta.flag}${placeholder(meta)}`, line: `${meta.description} [env ${meta.env}, file ${key}${fallback !== '' ? `, default ${fallback}` : ''}${range}]` };
  });
  rows.push({ flag: '--config <file>', line: 'JSON object with any of these options by their file keys [env ICAAS_CONFIG, default ./icaas.config.json if present]' });
  return helpRows(rows).join('\n');
}

/** A command's own flags as help text. */
export function commandFlagsHelp(flags: CommandFlags): string {
  return helpRows(Object.entries(flags).map(([name, flag]) => ({ flag: `--${name}${flag.type === 'string' ? ' <value>' : ''}`, line: flag.help }))).join('\n');
}

/** Environment that reproduces this configuration in a child process (e.g. a worker). */
export function configToEnv(config: Config): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, meta] of optionMetas()) {
    const value = (config as unknown as Record<string, unknown>)[key];
    env[meta.env] = Array.isArray(value) ? value.join(',') : String(value);
  }
  return env;
}
