import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { projectRoot } from './helpers.js';

const runFile = promisify(execFile);
const script = path.join(projectRoot, 'scripts', 'run-tests.mjs');

async function list(...args: string[]): Promise<string[]> {
  const { stdout } = await runFile(process.execPath, [script, '--list', ...args]);
  return stdout.split('\n').filter(Boolean);
}

async function failure(...args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    await runFile(process.execPath, [script, '--list', ...args]);
  } catch (error) {
    const { code, stderr } = error as { code: number; stderr: string };
    return { code, stderr };
  }
  throw new Error(`run-tests ${args.join(' ')} succeeded`);
}

// Each case only starts the script and reads its answer: they run side by side.
describe('test tiers', { concurrency: true }, () => {
  it('the unit tier leaves out disk-backed adapters, processes, the browser and the emulator', async () => {
    const files = await list('--tier', 'unit');
    for (const expected of ['config.test.js', 'queue/memory.test.js', 'storage/memory.test.js', 'controller/policy.test.js', 'sim/engine.test.js', 'run-tests.test.js']) {
      assert.ok(files.includes(expected), `${expected} in ${files.join(', ')}`);
    }
    const outside = files.filter((file) => /^(e2e|worker|cloud|aws|web)\/|^queue\/(sqs|sqlite|multiprocess)|^storage\/(s3|fs)|^ui\/(?!logic)|^cli\.test/.test(file));
    assert.deepEqual(outside, []);
  });

  it('every test file is in exactly one tier', async () => {
    const { stdout } = await runFile(process.execPath, [script, '--tiers']);
    const rows = stdout.split('\n').filter(Boolean).map((line) => line.split('\t') as [string, string]);
    assert.ok(rows.length > 40, `only ${rows.length} test files listed`);
    const misplaced = rows.filter(([, tiers]) => tiers.split(',').filter(Boolean).length !== 1);
    assert.deepEqual(misplaced, [], 'files in no tier or in several');
    const inTier = (tier: string) => rows.filter(([, tiers]) => tiers === tier).map(([file]) => file);
    for (const [tier, expected] of [['integration', 'queue/sqlite.test.js'], ['integration', 'web/api.test.js'], ['e2e', 'e2e/chaos.test.js'], ['e2e', 'ui/behaviour.test.js'], ['cloud', 'e2e/cloud.test.js']] as const) {
      assert.ok(inTier(tier).includes(expected), `${expected} in the ${tier} tier`);
    }
  });

  it('the cloud tier is what runs on the emulator, and shares no file with the unit tier', async () => {
    const cloud = await list('--tier=cloud');
    for (const expected of ['cloud/emulator.test.js', 'queue/sqs-emulated.test.js', 'storage/s3-emulated.test.js', 'aws/provision.test.js']) {
      assert.ok(cloud.includes(expected), `${expected} in ${cloud.join(', ')}`);
    }
    const unit = new Set(await list('--tier', 'unit'));
    assert.deepEqual(cloud.filter((file) => unit.has(file)), []);
  });

  it('adds tiers and path prefixes together', async () => {
    const files = await list('--tier', 'cloud', 'config');
    assert.ok(files.includes('config.test.js'));
    assert.ok(files.includes('cloud/emulator.test.js'));
  });

  it('refuses an unknown tier, a missing tier name and an unknown option', async () => {
    const [units, missing, empty, inherited, misspelt] = await Promise.all([
      failure('--tier', 'units'), failure('--tier'), failure('--tier='), failure('--tier', 'constructor'), failure('--teir', 'unit'),
    ]);
    assert.deepEqual(units, { code: 2, stderr: 'run-tests: unknown tier "units"; the tiers are unit, integration, cloud, e2e\n' });
    assert.match(missing.stderr, /--tier needs a name: unit, integration, cloud, e2e/);
    assert.match(empty.stderr, /--tier needs a name/);
    assert.match(inherited.stderr, /unknown tier "constructor"/);
    assert.match(misspelt.stderr, /unknown option --teir/);
  });
});
