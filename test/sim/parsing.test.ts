/** Traces, distributions and flags: hostile spellings get one clear error each. */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseSimulateArgs } from '../../src/sim/command.js';
import { parseDistribution } from '../../src/sim/distributions.js';
import { SimInputError } from '../../src/sim/errors.js';
import { stream } from '../../src/sim/random.js';
import { parseTrace, traceImages } from '../../src/sim/traces.js';
import { makeTempDir } from '../helpers.js';

function rejects(run: () => unknown, says: RegExp): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof SimInputError, `a SimInputError, got ${String(error)}`);
    assert.match(error.message, says);
    return true;
  });
}

describe('traces', async () => {
  const temp = await makeTempDir('icaas-sim-');
  after(() => temp.cleanup());
  const file = async (name: string, text: string) => {
    const full = path.join(temp.dir, name);
    await writeFile(full, text);
    return full;
  };

  it('reads burst, poisson and sync traces', () => {
    assert.deepEqual(parseTrace('burst:3', 1), { spec: 'burst:3', kind: 'open', times: [0, 0, 0] });
    const poisson = parseTrace('poisson:10:60', 1);
    assert.equal(poisson.kind, 'open');
    assert.ok(traceImages(poisson) > 450 && traceImages(poisson) < 750, `about 600 arrivals, got ${traceImages(poisson)}`);
    assert.deepEqual(parseTrace('poisson:10:60', 1), poisson, 'the seed fixes the trace');
    assert.deepEqual(parseTrace('sync:100', 1), { spec: 'sync:100', kind: 'closed', clients: 100, total: 100 });
    assert.deepEqual(parseTrace('sync:10:50', 1), { spec: 'sync:10:50', kind: 'closed', clients: 10, total: 50 });
  });

  it('rejects hostile traces', () => {
    rejects(() => parseTrace('burst:-1', 1), /burst N: must be between 1 and 1000000, got -1/);
    rejects(() => parseTrace('burst:NaN', 1), /expected a number, got "NaN"/);
    rejects(() => parseTrace('burst:Infinity', 1), /expected a number/);
    rejects(() => parseTrace('burst:0x10', 1), /expected a number/);
    rejects(() => parseTrace('burst:', 1), /expected a number, got ""/);
    rejects(() => parseTrace('burst:2.5', 1), /whole number/);
    rejects(() => parseTrace('burst:1e12', 1), /between 1 and 1000000/);
    rejects(() => parseTrace('burst:1:2', 1), /expected burst:N/);
    rejects(() => parseTrace('poisson:-1:10', 1), /RATE: must be between/);
    rejects(() => parseTrace('poisson:1000:100000', 1), /about 100000000 images expected, more than the 1000000/);
    rejects(() => parseTrace('poisson:5', 1), /expected poisson:RATE:SECONDS/);
    rejects(() => parseTrace('sync:0', 1), /CLIENTS: must be between 1/);
    rejects(() => parseTrace('sync:10:5', 1), /TOTAL: must be between 10/);
    rejects(() => parseTrace('wave:3', 1), /unknown trace "wave:3"/);
    rejects(() => parseTrace('', 1), /unknown trace ""/);
  });

  it('reads a CSV of arrival times in seconds, with a header, blank lines and CRLF', async () => {
    const trace = parseTrace(`csv:${await file('ok.csv', 'arrival_s\r\n2.5\r\n\r\n0\r\n1\r\n')}`, 1);
    assert.deepEqual(trace.kind === 'open' && trace.times, [0, 1000, 2500]);
  });

  it('rejects an empty CSV, a header alone, a bad line (by number), a negative time and a missing file', async () => {
    rejects(() => parseTrace(`csv:${path.join(temp.dir, 'none.csv')}`, 1), /cannot read .*none\.csv: ENOENT/);
    const empty = await file('empty.csv', '');
    rejects(() => parseTrace(`csv:${empty}`, 1), /no arrival times in it/);
    const header = await file('header.csv', 'seconds\n\n');
    rejects(() => parseTrace(`csv:${header}`, 1), /no arrival times in it/);
    const bad = await file('bad.csv', 'seconds\n1\nsoon\n3\n');
    rejects(() => parseTrace(`csv:${bad}`, 1), /bad\.csv line 3: expected a number, got "soon"/);
    const negative = await file('negative.csv', '1\n-2\n');
    rejects(() => parseTrace(`csv:${negative}`, 1), /negative\.csv line 2: must be between 0/);
    const nan = await file('nan.csv', '1\nNaN\n');
    rejects(() => parseTrace(`csv:${nan}`, 1), /nan\.csv line 2/);
    rejects(() => parseTrace('csv:', 1), /expected csv:FILE/);
  });
});

describe('distributions', async () => {
  const temp = await makeTempDir('icaas-sim-');
  after(() => temp.cleanup());

  it('draws within their bounds: uniform in range, normal truncated at 0, lognormal with its mean', () => {
    const random = stream(3, 'service');
    const uniform = parseDistribution('uniform:10:20', 'x');
    const normal = parseDistribution('normal:1:100', 'x');
    const lognormal = parseDistribution('lognormal:100:50', 'x');
    let sum = 0;
    const draws = 20_000;
    for (let i = 0; i < draws; i++) {
      const u = uniform.sample(random);
      assert.ok(u >= 10 && u <= 20);
      assert.ok(normal.sample(random) >= 0);
      sum += lognormal.sample(random);
    }
    assert.ok(Math.abs(sum / draws - 100) < 3, `lognormal mean ${sum / draws}`);
    assert.equal(parseDistribution('const:42', 'x').sample(random), 42);
  });

  it('reads empirical samples from a file', async () => {
    const file = path.join(temp.dir, 'samples.txt');
    await writeFile(file, 'ms\n5\n5\n');
    const distribution = parseDistribution(`empirical:${file}`, 'x');
    assert.equal(distribution.sample(stream(1, 'service')), 5);
    assert.equal(distribution.mean, 5);
  });

  it('rejects hostile distributions', async () => {
    rejects(() => parseDistribution('const:-1', '--service'), /--service const value: must be between 0 and 86400000, got -1/);
    rejects(() => parseDistribution('const:NaN', '--service'), /expected a number, got "NaN"/);
    rejects(() => parseDistribution('const:1e12', '--service'), /must be between 0 and 86400000/);
    rejects(() => parseDistribution('uniform:5:1', '--service'), /uniform max 1 is below its min 5/);
    rejects(() => parseDistribution('normal:10', '--service'), /expected normal:MEAN:SD/);
    rejects(() => parseDistribution('normal:10:-1', '--service'), /sd: must be between 0/);
    rejects(() => parseDistribution('lognormal:0:1', '--service'), /lognormal mean must be above 0/);
    rejects(() => parseDistribution('gauss:1:2', '--service'), /unknown distribution "gauss:1:2"/);
    rejects(() => parseDistribution('empirical:', '--startup'), /expected empirical:FILE/);
    rejects(() => parseDistribution(`empirical:${path.join(temp.dir, 'missing')}`, '--startup'), /cannot read .*missing: ENOENT/);
    const empty = path.join(temp.dir, 'empty.txt');
    await writeFile(empty, '\n\n');
    rejects(() => parseDistribution(`empirical:${empty}`, '--startup'), /no samples in it/);
  });
});

describe('simulate flags', () => {
  it('rejects unknown, valueless, repeated and conflicting flags', () => {
    rejects(() => parseSimulateArgs(['--trace', 'burst:1', '--maximum', '3']), /unknown option --maximum/);
    rejects(() => parseSimulateArgs(['--trace']), /--trace needs a value/);
    rejects(() => parseSimulateArgs(['--trace', 'burst:1', '--max', '--json']), /--max needs a value/);
    rejects(() => parseSimulateArgs(['--trace', 'burst:1', '--trace', 'burst:2']), /--trace given twice/);
    rejects(() => parseSimulateArgs([]), /expected --trace SPEC or --replay FOLDER/);
    rejects(() => parseSimulateArgs(['--trace', 'burst:1', '--replay', 'data']), /exclude each other/);
    rejects(() => parseSimulateArgs(['--trace', 'burst:1', '--policy', 'queue-match', '--compare', 'queue-match,default']), /--policy and --compare exclude each other/);
    rejects(() => parseSimulateArgs(['--trace', 'burst:1', 'extra']), /unexpected argument "extra"/);
    rejects(() => parseSimulateArgs(['--trace', 'burst:1', '--json=yes']), /--json takes no value/);
    assert.deepEqual(parseSimulateArgs(['--trace=burst:1', '--json']), { values: { trace: 'burst:1' }, json: true });
  });
});
