import { SimInputError } from './errors.js';

/** Plain decimal numbers only: Number() would also take "", " ", "0x10" and "Infinity". */
const DECIMAL = /^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i;

export function parseDecimal(text: string, what: string): number {
  const trimmed = text.trim();
  const value = DECIMAL.test(trimmed) ? Number(trimmed) : NaN;
  if (!Number.isFinite(value)) throw new SimInputError(`${what}: expected a number, got ${JSON.stringify(text)}`);
  return value;
}

export function parseBounded(text: string, what: string, min: number, max: number): number {
  const value = parseDecimal(text, what);
  if (value < min || value > max) throw new SimInputError(`${what}: must be between ${min} and ${max}, got ${text}`);
  return value;
}

export function parseWhole(text: string, what: string, min: number, max: number): number {
  const value = parseBounded(text, what, min, max);
  if (!Number.isInteger(value)) throw new SimInputError(`${what}: expected a whole number, got ${text}`);
  return value;
}

/**
 * Lines of a one-number-per-line file: blank lines are skipped, and a first line that is
 * not a number is taken as a header. Any other bad line is an error naming its number.
 */
export function parseNumberLines(text: string, source: string, what: string, max: number, limit: number): number[] {
  const values: number[] = [];
  const lines = text.split(/\r?\n/);
  const first = lines.findIndex((line) => line.trim() !== '');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    if (i === first && !DECIMAL.test(line)) continue;
    let value: number;
    try {
      value = parseBounded(line, `${source} line ${i + 1}`, 0, max);
    } catch (error) {
      throw new SimInputError(`${(error as Error).message} (${what})`);
    }
    if (values.length >= limit) throw new SimInputError(`${source}: more than ${limit} ${what}`);
    values.push(value);
  }
  if (values.length === 0) throw new SimInputError(`${source}: no ${what} in it`);
  return values;
}

