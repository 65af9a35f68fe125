/**
 * Distributions of start-up and service times, in ms, from the command line's spelling:
 * const:X, uniform:A:B, normal:MEAN:SD (negative draws are drawn again: truncated at 0),
 * lognormal:MEAN:SD (the mean and SD of the times themselves), empirical:FILE (one sample
 * per line), or an array of samples (what --replay takes from an event log).
 */
import { readFileSync } from 'node:fs';
import { SimInputError } from './errors.js';
import { parseBounded, parseNumberLines } from './numbers.js';
import { standardNormal, type Random } from './random.js';

/** One day: longer start-ups or images are a typo, and would make simulations crawl. */
export const MAX_DURATION_MS = 86_400_000;
const MAX_SAMPLES = 1_000_000;
const NORMAL_REDRAWS = 100;

export interface Distribution {
  /** How it was given, for reports. */
  spec: string;
  mean: number;
  sample(random: Random): number;
}

export function parseDistribution(spec: string, what: string): Distribution {
  const [kind, ...args] = spec.split(':');
  const number = (text: string | undefined, name: string, min = 0) => parseBounded(text ?? '', `${what} ${kind} ${name}`, min, MAX_DURATION_MS);
  const arity = (count: number, form: string) => {
    if (args.length !== count) throw new SimInputError(`${what}: expected ${form}, got ${JSON.stringify(spec)}`);
  };
  switch (kind) {
    case 'const': {
      arity(1, 'const:MS');
      const value = number(args[0], 'value');
      return { spec, mean: value, sample: () => value };
    }
    case 'uniform': {
      arity(2, 'uniform:MIN:MAX');
      const low = number(args[0], 'min');
      const high = number(args[1], 'max');
      if (high < low) throw new SimInputError(`${what}: uniform max ${high} is below its min ${low}`);
      return { spec, mean: (low + high) / 2, sample: (random) => low + (high - low) * random() };
    }
    case 'normal': {
      arity(2, 'normal:MEAN:SD');
      return normal(spec, number(args[0], 'mean'), number(args[1], 'sd'));
    }
    case 'lognormal': {
      arity(2, 'lognormal:MEAN:SD');
      const mean = number(args[0], 'mean');
      if (mean <= 0) throw new SimInputError(`${what}: lognormal mean must be above 0`);
      return lognormal(spec, mean, number(args[1], 'sd'));
    }
    case 'empirical': {
      if (args.length === 0 || args.join(':') === '') throw new SimInputError(`${what}: expected empirical:FILE`);
      const file = args.join(':');
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (error) {
        throw new SimInputError(`${what}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
      }
      return empirical(parseNumberLines(text, file, 'samples', MAX_DURATION_MS, MAX_SAMPLES), spec);
    }
    default:
      throw new SimInputError(`${what}: unknown distribution ${JSON.stringify(spec)}; use const:MS, uniform:MIN:MAX, normal:MEAN:SD, lognormal:MEAN:SD or empirical:FILE`);
  }
}

/** Draws one of the samples, each equally likely (a bootstrap of what was measured). */
export function empirical(samples: readonly number[], spec = `empirical (${samples.length} samples)`): Distribution {
  if (samples.length === 0) throw new SimInputError(`${spec}: no samples`);
  for (const value of samples) {
    if (!Number.isFinite(value) || value < 0 || value > MAX_DURATION_MS) throw new SimInputError(`${spec}: sample ${value} is not between 0 and ${MAX_DURATION_MS}`);
  }
  const copy = [...samples];
  const mean = copy.reduce((sum, value) => sum + value, 0) / copy.length;
  return { spec, mean, sample: (random) => copy[Math.min(copy.length - 1, Math.floor(random() * copy.length))]! };
}

function normal(spec: string, mean: number, sd: number): Distribution {
  return {
    spec,
    mean,
    sample(random) {
      for (let i = 0; i < NORMAL_REDRAWS; i++) {
        const value = mean + sd * standardNormal(random);
        if (value >= 0) return value;
      }
      // Only a mean far below its SD gets here; 0 keeps the draw finite and legal.
      return 0;
    },
  };
}

function lognormal(spec: string, mean: number, sd: number): Distribution {
  // The parameters of the underlying normal that give the times this mean and SD.
  const sigma2 = Math.log(1 + (sd * sd) / (mean * mean));
  const mu = Math.log(mean) - sigma2 / 2;
  const sigma = Math.sqrt(sigma2);
  return { spec, mean, sample: (random) => Math.min(MAX_DURATION_MS, Math.exp(mu + sigma * standardNormal(random))) };
}
