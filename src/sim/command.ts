/**
 * `icaas simulate`: flags in, settings resolved (explicit flags over a replayed run's
 * settings over the preset), one simulated run per policy, a table or JSON out, and an
 * SVG chart on request.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { canonicalPolicyName, DEFAULT_POLICY, type PolicyName } from '../controller/policy.js';
import { empirical, parseDistribution, type Distribution } from './distributions.js';
import { simulate, type SimSettings } from './engine.js';
import { SimInputError } from './errors.js';
import { parseBounded, parseWhole } from './numbers.js';
import { preset, PRESET_NAMES, type PresetName } from './presets.js';
import { loadReplay, type ReplayData } from './replay.js';
import { json, table, type RunReport } from './report.js';
import { chart } from './svg.js';
import { parseTrace, traceImages, type Trace } from './traces.js';

const VALUE_FLAGS = ['trace', 'replay', 'preset', 'startup', 'service', 'max', 'capacity', 'start-cost', 'policy', 'compare', 'idle-wait', 'launch-interval', 'seed', 'svg'] as const;
type ValueFlag = (typeof VALUE_FLAGS)[number];

export interface SimulateArgs {
  values: Partial<Record<ValueFlag, string>>;
  json: boolean;
}

export function parseSimulateArgs(argv: readonly string[]): SimulateArgs {
  const options = Object.fromEntries([...VALUE_FLAGS.map((flag) => [flag, { type: 'string' as const }]), ['json', { type: 'boolean' as const }]]);
  let tokens: ReturnType<typeof parseArgs>['tokens'];
  try {
    ({ tokens } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: true, tokens: true }));
  } catch (error) {
    throw new SimInputError(parseErrorMessage(error as Error & { code?: string }, argv));
  }
  const values: SimulateArgs['values'] = {};
  let asJson = false;
  for (const token of tokens ?? []) {
    if (token.kind === 'positional') throw new SimInputError(`unexpected argument "${token.value}"`);
    if (token.kind !== 'option') continue;
    if (token.name === 'json') {
      asJson = true;
      continue;
    }
    const flag = token.name as ValueFlag;
    if (values[flag] !== undefined) throw new SimInputError(`--${flag} given twice`);
    values[flag] = token.value;
  }
  if (values.trace === undefined && values.replay === undefined) throw new SimInputError('expected --trace SPEC or --replay FOLDER');
  if (values.trace !== undefined && values.replay !== undefined) throw new SimInputError('--trace and --replay exclude each other: a replay takes its arrivals from the log');
  if (values.policy !== undefined && values.compare !== undefined) throw new SimInputError('--policy and --compare exclude each other');
  return { values, json: asJson };
}

/** parseArgs's errors, in the words of the rest of the command's. */
function parseErrorMessage(error: Error & { code?: string }, argv: readonly string[]): string {
  const spelled = /'(-[^' ]+)/.exec(error.message)?.[1] ?? '';
  const named = spelled.replace(/^-+/, '');
  switch (error.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${spelled}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return named === 'json' ? '--json takes no value' : `--${named} needs a value`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument "${argv.find((arg) => !arg.startsWith('-')) ?? ''}"`;
    default:
      return error.message;
  }
}

export interface Simulation {
  settings: Omit<SimSettings, 'policy'> & { preset: PresetName };
  policies: PolicyName[];
  reports: RunReport[];
  replay?: ReplayData;
}

/** Resolves the settings and runs every policy asked for. */
export async function runSimulation(args: SimulateArgs): Promise<Simulation> {
  const { values } = args;
  const replay = values.replay !== undefined ? await loadReplay(values.replay) : undefined;
  const presetName = values.preset !== undefined ? presetNamed(values.preset) : replay?.run.compute === 'ec2' ? 'ec2' : 'local';
  const defaults = preset(presetName);
  const seed = values.seed !== undefined ? parseWhole(values.seed, '--seed', 0, 2 ** 32 - 1) : 1;
  const max = values.max !== undefined ? parseWhole(values.max, '--max', 1, 1000) : (fromLog(replay?.run.maxInstances, 'maxInstances', 1, 1000) ?? defaults.max);
  const capacity = values.capacity !== undefined ? parseWhole(values.capacity, '--capacity', 1, 1000) : (fromLog(replay?.run.capacity, 'capacity', 1, 1000) ?? defaults.capacity ?? max);
  const idleWaitSeconds = values['idle-wait'] !== undefined ? parseBounded(values['idle-wait'], '--idle-wait', 0, 3600) : (fromLog(replay?.run.idleWaitSeconds, 'idleWaitSeconds', 0, 3600) ?? 5);
  const settings: Simulation['settings'] = {
    preset: presetName,
    trace: trace(values.trace, replay, seed),
    max,
    capacity,
    startup: distribution(values.startup, '--startup', replay?.startupSamples, 'start-ups', defaults.startup),
    service: distribution(values.service, '--service', replay?.serviceSamples, 'service times', defaults.service),
    startCostMs: values['start-cost'] !== undefined ? parseBounded(values['start-cost'], '--start-cost', 0, 600_000) : defaults.startCostMs,
    startupPriorMs: defaults.startupPriorMs,
    idleWaitMs: idleWaitSeconds * 1000,
    launchIntervalMs: values['launch-interval'] !== undefined ? parseWhole(values['launch-interval'], '--launch-interval', 50, 60_000) : 500,
    seed,
  };
  const policies = policyList(values, replay);
  const reports = policies.map((policy) => ({
    run: simulate({ ...settings, policy }),
    ...(replay ? { realCompletionMs: replay.realCompletionMs } : {}),
  }));
  return { settings, policies, reports, ...(replay ? { replay } : {}) };
}

export async function simulateCommand(argv: readonly string[], out: (text: string) => void = (text) => process.stdout.write(text)): Promise<number> {
  const args = parseSimulateArgs(argv);
  const simulation = await runSimulation(args);
  const svgFile = args.values.svg;
  if (svgFile !== undefined) {
    const title = `${simulation.settings.trace.spec}, preset ${simulation.settings.preset}, max ${simulation.settings.max}, capacity ${simulation.settings.capacity}`;
    try {
      writeFileSync(svgFile, chart(simulation.reports.map((report) => report.run), title));
    } catch (error) {
      throw new SimInputError(`--svg: cannot write ${svgFile}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
  }
  if (args.json) out(`${json(jsonSettings(simulation), simulation.reports)}\n`);
  else out(`${table({ lines: headerLines(simulation, svgFile) }, simulation.reports)}\n`);
  return 0;
}

function presetNamed(name: string): PresetName {
  if (!(PRESET_NAMES as readonly string[]).includes(name)) throw new SimInputError(`--preset: expected one of ${PRESET_NAMES.join(', ')}, got ${JSON.stringify(name)}`);
  return name as PresetName;
}

function trace(spec: string | undefined, replay: ReplayData | undefined, seed: number): Trace {
  if (replay) return replay.trace;
  return parseTrace(spec!, seed);
}

function distribution(spec: string | undefined, flag: string, samples: number[] | undefined, what: string, fallback: Distribution): Distribution {
  if (spec !== undefined) return parseDistribution(spec, flag);
  if (samples && samples.length > 0) return empirical(samples, `empirical (${samples.length} ${what} from the log)`);
  return fallback;
}

/** A setting from the replayed log, checked like the flag it stands for. */
function fromLog(value: number | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!(value >= min && value <= max)) throw new SimInputError(`--replay: the log's run event has ${name} ${value}, not between ${min} and ${max}; give the flag instead`);
  return value;
}

function policyList(values: SimulateArgs['values'], replay: ReplayData | undefined): PolicyName[] {
  const canonical = (name: string, source: string) => {
    try {
      return canonicalPolicyName(name.trim());
    } catch (error) {
      throw new SimInputError(`${source}: ${(error as Error).message}`);
    }
  };
  if (values.compare !== undefined) {
    const names = values.compare.split(',').map((name) => canonical(name, '--compare'));
    if (new Set(names).size !== names.length) throw new SimInputError(`--compare: a policy is named twice in ${JSON.stringify(values.compare)}`);
    return names;
  }
  if (values.policy !== undefined) return [canonical(values.policy, '--policy')];
  if (replay?.run.policy !== undefined) return [canonical(replay.run.policy, "--replay: the log's run event")];
  return [DEFAULT_POLICY];
}

function headerLines(simulation: Simulation, svgFile: string | undefined): string[] {
  const { settings, replay } = simulation;
  const { trace: t } = settings;
  const shape = t.kind === 'closed' ? `${t.clients} synchronous clients, ${t.total} requests of one image` : `${traceImages(t)} images`;
  const lines = [
    `trace ${t.spec}: ${shape}`,
    `preset ${settings.preset}: max ${settings.max}, capacity ${settings.capacity}, start cost ${settings.startCostMs} ms`,
    `start-up (ms) ${settings.startup.spec}, service (ms) ${settings.service.spec}`,
    `idle wait ${settings.idleWaitMs / 1000} s, launch tick ${settings.launchIntervalMs} ms, seed ${settings.seed}`,
  ];
  if (replay && replay.skipped > 0) lines.push(`(${replay.skipped} lines of the event log did not parse and were skipped)`);
  if (svgFile !== undefined) lines.push(`chart: ${svgFile}`);
  return lines;
}

function jsonSettings(simulation: Simulation): Record<string, unknown> {
  const { settings, replay } = simulation;
  return {
    preset: settings.preset,
    trace: settings.trace.spec,
    images: traceImages(settings.trace),
    max: settings.max,
    capacity: settings.capacity,
    startup: settings.startup.spec,
    service: settings.service.spec,
    startCostMs: settings.startCostMs,
    idleWaitSeconds: settings.idleWaitMs / 1000,
    launchIntervalMs: settings.launchIntervalMs,
    seed: settings.seed,
    ...(replay ? { skippedLogLines: replay.skipped } : {}),
  };
}
