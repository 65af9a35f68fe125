/**
 * Reads the Prometheus text exposition format, strictly enough that a malformed line, a
 * sample of a family without HELP or TYPE, or a label set seen twice fails the test.
 */
import assert from 'node:assert/strict';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  help: Map<string, string>;
  types: Map<string, string>;
  /** The one sample with this name whose labels include `labels`; 0 when there is none. */
  value(name: string, labels?: Record<string, string>): number;
  /** Every sample with this name. */
  all(name: string): Sample[];
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y;

export function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const help = new Map<string, string>();
  const types = new Map<string, string>();
  const seen = new Set<string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      (meta[1] === 'HELP' ? help : types).set(meta[2]!, meta[3]!);
      continue;
    }
    assert.ok(!line.startsWith('#'), `unexpected comment line: ${line}`);
    const match = SAMPLE.exec(line);
    assert.ok(match, `malformed sample line: ${line}`);
    const labels: Record<string, string> = {};
    const body = match[2] ?? '';
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < body.length) {
      const label = LABEL.exec(body);
      assert.ok(label, `malformed labels in: ${line}`);
      labels[label[1]!] = label[2]!.replace(/\\(.)/g, (_all, c: string) => (c === 'n' ? '\n' : c));
    }
    // As Prometheus reads them (Go's ParseFloat): NaN in any case, as prom-client writes "Nan".
    const value = match[3] === '+Inf' ? Infinity : match[3] === '-Inf' ? -Infinity : /^nan$/i.test(match[3]!) ? NaN : Number(match[3]);
    assert.ok(!Number.isNaN(value) || /^nan$/i.test(match[3]!), `malformed value in: ${line}`);
    const key = `${match[1]}${JSON.stringify(Object.entries(labels).sort())}`;
    assert.ok(!seen.has(key), `sample repeated: ${line}`);
    seen.add(key);
    samples.push({ name: match[1]!, labels, value });
  }
  for (const sample of samples) {
    const family = familyOf(sample.name, types);
    assert.ok(types.has(family), `no TYPE for ${sample.name}`);
    assert.ok((help.get(family) ?? '').length > 0, `no HELP for ${sample.name}`);
  }
  const all = (name: string) => samples.filter((sample) => sample.name === name);
  return {
    samples,
    help,
    types,
    all,
    value(name, wanted = {}) {
      const matching = all(name).filter((sample) => Object.entries(wanted).every(([key, value]) => sample.labels[key] === value));
      assert.ok(matching.length <= 1, `${matching.length} samples of ${name} match ${JSON.stringify(wanted)}`);
      return matching[0]?.value ?? 0;
    },
  };
}

function familyOf(name: string, types: Map<string, string>): string {
  if (types.has(name)) return name;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix) && types.get(name.slice(0, -suffix.length)) === 'histogram') return name.slice(0, -suffix.length);
  }
  return name;
}

export async function scrape(url: string, init?: RequestInit): Promise<Exposition> {
  const response = await fetch(url, init);
  assert.equal(response.status, 200, `GET ${url}: ${response.status}`);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return parseExposition(await response.text());
}
