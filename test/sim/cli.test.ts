/** `icaas simulate` through the built command line: a comparison table, and status 2 for a bad flag. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cliPath } from '../helpers.js';

function icaas(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const run = spawnSync(process.execPath, [cliPath, ...args], { encoding: 'utf8', timeout: 30_000, env: { PATH: process.env.PATH ?? '' } });
  return { code: run.status, stdout: run.stdout, stderr: run.stderr };
}

describe('icaas simulate', () => {
  it('prints a comparison table and exits 0', () => {
    const run = icaas(['simulate', '--trace', 'burst:10', '--compare', 'queue-match,default']);
    assert.equal(run.code, 0, run.stderr);
    const lines = run.stdout.split('\n');
    assert.match(lines.find((line) => line.includes('queue-match'))!, /^\s+queue-match\s+drain-time$/);
    for (const label of ['completion (s)', 'latency p50 (s)', 'latency p95 (s)', 'latency max (s)', 'peak instances', 'instance-seconds', 'images']) {
      assert.match(run.stdout, new RegExp(`^${label.replace(/[()]/g, '\\$&')}\\s+\\S+\\s+\\S+$`, 'm'), `a ${label} row with two values`);
    }
    assert.match(run.stdout, /^images\s+10\s+10$/m);
  });

  it('answers a bad flag with one line, the help hint and status 2', () => {
    for (const args of [['--trace', 'burst:10', '--policy', 'fastest'], ['--trace', 'burst:NaN'], ['--trace', 'burst:10', '--speed', '2']]) {
      const run = icaas(['simulate', ...args]);
      assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
      const lines = run.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 2, run.stderr);
      assert.match(lines[0]!, /^icaas simulate: /);
      assert.equal(lines[1], 'run icaas simulate --help for its options');
      assert.equal(run.stdout, '');
    }
  });
});
