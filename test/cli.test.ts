/**
 * The command line's answer to mistakes: one line saying what is wrong, the help hint,
 * exit status 2, and no stack trace. Real invocations of the built CLI.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { cliPath, makeTempDir } from './helpers.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function icaas(args: string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliPath, ...args], { cwd, env: { PATH: process.env.PATH ?? '', HOME: cwd, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('command-line mistakes', async () => {
  const temp = await makeTempDir();
  after(() => temp.cleanup());

  const cases: { name: string; args: string[]; command: string; says: RegExp; env?: Record<string, string> }[] = [
    { name: 'a worker without --instance-id', args: ['worker', '--data', 'data'], command: 'worker', says: /needs --instance-id/ },
    { name: 'an --instance-id without a value', args: ['worker', '--instance-id'], command: 'worker', says: /--instance-id needs a value/ },
    { name: 'an unknown flag', args: ['start', '--max-instance', '3'], command: 'start', says: /unknown option --max-instance; did you mean --max-instances\?/ },
    { name: 'a port out of range', args: ['web', '--port', '70000'], command: 'web', says: /--port \(port\): must be at most 65535, got 70000/ },
    { name: 'a negative maximum', args: ['start', '--max-instances', '-1'], command: 'start', says: /--max-instances \(maxInstances\): must be at least 1, got -1/ },
    { name: 'a bad environment variable', args: ['start'], env: { PORT: 'abc' }, command: 'start', says: /environment variable PORT \(port\): expected a whole number, got "abc"/ },
    { name: 'a flag given twice', args: ['start', '--port', '1', '--port', '2'], command: 'start', says: /--port is given twice/ },
    { name: 'a typographic dash', args: ['web', '\u2014port', '80'], command: 'web', says: /typographic dash.*--port/ },
    { name: 'a value on a switch', args: ['classify', 'a.jpg', '--json=1'], command: 'classify', says: /--json takes no value/ },
    { name: 'a bad number', args: ['web', '--port', 'eighty'], command: 'web', says: /--port \(port\): expected a whole number, got "eighty"/ },
    { name: 'a bad choice', args: ['controller', '--queue', 'kafka'], command: 'controller', says: /must be one of sqlite, sqs, got "kafka"/ },
    { name: 'an unreadable config file', args: ['start', '--config', 'folder.json'], command: 'start', says: /config file .*folder\.json cannot be read/ },
    { name: 'a stray argument', args: ['controller', 'now'], command: 'controller', says: /unexpected argument "now"/ },
    { name: 'a missing aws subcommand', args: ['aws'], command: 'aws', says: /expected "provision" or "teardown"/ },
  ];

  for (const { name, args, command, says, env } of cases) {
    it(`answers ${name} with one line, the help hint and status 2`, async () => {
      await mkdir(path.join(temp.dir, 'folder.json'), { recursive: true });
      const run = await icaas(args, temp.dir, env);
      assert.equal(run.code, 2, `exit status for ${args.join(' ')}: ${run.stderr}`);
      const lines = run.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 2, `two lines on stderr:\n${run.stderr}`);
      assert.match(lines[0]!, new RegExp(`^icaas ${command}: `));
      assert.match(lines[0]!, says);
      assert.equal(lines[1], `run icaas ${command} --help for its options`);
      assert.doesNotMatch(run.stderr, /^\s+at /m, 'no stack trace');
      assert.equal(run.stdout, '');
    });
  }

  it('answers an unknown command with the hint to the command list', async () => {
    const run = await icaas(['strat'], temp.dir);
    assert.equal(run.code, 2);
    assert.equal(run.stderr, 'icaas: unknown command "strat"\nrun icaas --help for the commands\n');
  });

  it('lists the command\'s own flags and every option in `--help`, even with a bad setting in the environment', async () => {
    const run = await icaas(['worker', '--help'], temp.dir, { PORT: 'abc' });
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^icaas worker /);
    assert.match(run.stdout, /--instance-id <value> /);
    for (const option of ['--port <n>', 'env ICAAS_MAX_INSTANCES, file maxInstances, default 20, 1..1000', '--ec2-security-groups', '--config <file>']) {
      assert.ok(run.stdout.includes(option), `help shows ${option}`);
    }
  });
});
