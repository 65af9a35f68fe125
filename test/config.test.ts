import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, configSchema, configToEnv, loadConfig, optionMetas, optionsHelp } from '../src/config.js';
import { makeTempDir, projectRoot } from './helpers.js';

describe('configuration', async () => {
  const temp = await makeTempDir();
  after(() => temp.cleanup());

  it('has the documented defaults', () => {
    const { config } = loadConfig({ argv: [], env: {}, cwd: temp.dir });
    assert.equal(config.port, 3000);
    assert.equal(config.maxInstances, 20);
    assert.equal(config.maxAttempts, 3);
    assert.equal(config.data, path.join(temp.dir, 'data'));
    assert.equal(config.store, 'fs');
    assert.equal(config.queue, 'sqlite');
    assert.equal(config.compute, 'process');
    assert.equal(config.configFile, null);
  });

  it('takes flags over environment over file over defaults', async () => {
    const file = path.join(temp.dir, 'custom.json');
    await writeFile(file, JSON.stringify({ port: 4000, maxInstances: 7, deadlineSeconds: 12 }));
    const { config } = loadConfig({ argv: ['--config', file, '--port', '3100', '--data=/tmp/x'], env: { PORT: '3500', ICAAS_MAX_INSTANCES: '5' }, cwd: temp.dir });
    assert.equal(config.port, 3100);
    assert.equal(config.maxInstances, 5);
    assert.equal(config.deadlineSeconds, 12);
    assert.equal(config.data, '/tmp/x');
    assert.equal(config.configFile, file);
  });

  it('reads icaas.config.json from the working folder when present', async () => {
    const dir = path.join(temp.dir, 'withfile');
    await import('node:fs/promises').then((fs) => fs.mkdir(dir));
    await writeFile(path.join(dir, 'icaas.config.json'), JSON.stringify({ idleWaitSeconds: 2 }));
    assert.equal(loadConfig({ argv: [], env: {}, cwd: dir }).config.idleWaitSeconds, 2);
  });

  it('says what is wrong with a bad value, naming where it came from', () => {
    assert.throws(() => loadConfig({ argv: ['--port', 'abc'], env: {}, cwd: temp.dir }), (error: Error) => error instanceof ConfigError && /--port/.test(error.message) && /whole number/.test(error.message));
    assert.throws(() => loadConfig({ argv: [], env: { ICAAS_MAX_INSTANCES: '0' }, cwd: temp.dir }), /ICAAS_MAX_INSTANCES.*at least 1/);
    assert.throws(() => loadConfig({ argv: ['--store', 'ftp'], env: {}, cwd: temp.dir }), /one of fs, s3/);
    assert.throws(() => loadConfig({ argv: ['--bogus'], env: {}, cwd: temp.dir }), /unknown option --bogus/);
    assert.throws(() => loadConfig({ argv: ['--port'], env: {}, cwd: temp.dir }), /--port needs a value/);
    assert.throws(() => loadConfig({ argv: ['--config', '/nonexistent.json'], env: {}, cwd: temp.dir }), /does not exist/);
  });

  it('refuses EC2 workers with local buckets or queues, which they could not reach', () => {
    assert.throws(() => loadConfig({ argv: ['--compute', 'ec2'], env: {}, cwd: temp.dir }), /--compute ec2 needs --store s3 and --queue sqs/);
    assert.equal(loadConfig({ argv: ['--compute', 'ec2', '--store', 's3', '--queue', 'sqs'], env: {}, cwd: temp.dir }).config.compute, 'ec2');
    // The other way round is fine: S3 with local processes.
    assert.equal(loadConfig({ argv: ['--store', 's3'], env: {}, cwd: temp.dir }).config.store, 's3');
  });

  it('holds back failing workers after 3 in a row and ends waiting images after 120 s by default', () => {
    const { config } = loadConfig({ argv: [], env: {}, cwd: temp.dir });
    assert.equal(config.startFailures, 3);
    assert.equal(config.startFailureTimeoutSeconds, 120);
    const set = loadConfig({ argv: ['--start-failure-timeout', '30'], env: { ICAAS_START_FAILURES: '5' }, cwd: temp.dir }).config;
    assert.deepEqual([set.startFailures, set.startFailureTimeoutSeconds], [5, 30]);
    assert.throws(() => loadConfig({ argv: ['--start-failures', '0'], env: {}, cwd: temp.dir }), /at least 1/);
  });

  it('says a config file cannot be read rather than calling it invalid JSON', async () => {
    const folder = path.join(temp.dir, 'a-folder.json');
    await import('node:fs/promises').then((fs) => fs.mkdir(folder));
    assert.throws(() => loadConfig({ argv: ['--config', folder], env: {}, cwd: temp.dir }), (error: Error) => error instanceof ConfigError && /cannot be read/.test(error.message) && !/JSON/.test(error.message));
  });

  it('rejects unknown keys in the config file', async () => {
    const file = path.join(temp.dir, 'typo.json');
    await writeFile(file, JSON.stringify({ maxInstance: 3 }));
    assert.throws(() => loadConfig({ argv: ['--config', file], env: {}, cwd: temp.dir }), /unknown option "maxInstance"/);
  });

  it('keeps positionals and command flags apart from options', () => {
    const { positionals, extraFlags } = loadConfig({ argv: ['a.jpg', '--url', 'http://x', 'dir', '--json'], env: {}, cwd: temp.dir }, { url: { type: 'string', help: '' }, json: { type: 'boolean', help: '' } });
    assert.deepEqual(positionals, ['a.jpg', 'dir']);
    assert.deepEqual(extraFlags, { url: 'http://x', json: true });
  });

  it('round-trips through the environment given to workers', () => {
    const { config } = loadConfig({ argv: ['--max-instances', '4', '--api-keys', 'a,b', '--s3-path-style'], env: {}, cwd: temp.dir });
    const again = loadConfig({ argv: [], env: configToEnv(config), cwd: temp.dir }).config;
    assert.deepEqual(again, config);
  });

  it('lists every option with its environment variable in the help', () => {
    const help = optionsHelp();
    for (const name of ['--port', 'PORT', '--data', 'ICAAS_DATA', '--max-instances', 'ICAAS_MAX_INSTANCES', '--deadline', '--idle-wait']) {
      assert.ok(help.includes(name), `help mentions ${name}`);
    }
  });

  it('lists every option of the schema in the help, with its variable, default and description', () => {
    const help = optionsHelp();
    const metas = optionMetas();
    assert.equal(metas.length, Object.keys(configSchema.shape).length);
    for (const [key, meta] of metas) {
      const line = help.split('\n').findIndex((text) => text.trimStart().startsWith(`--${meta.flag} `) || text.trim() === `--${meta.flag}`);
      assert.ok(line !== -1, `help has a line for --${meta.flag} (${key})`);
      const entry = help.split('\n').slice(line, line + 2).join(' ');
      assert.ok(entry.includes(`env ${meta.env}`), `help names ${meta.env} for --${meta.flag}`);
      assert.ok(entry.includes(`file ${key}`), `help gives the file key of --${meta.flag}`);
      assert.ok(entry.includes(meta.description), `help describes --${meta.flag}`);
      const fallback = Array.isArray(meta.default) ? meta.default.join(',') : String(meta.default);
      if (fallback !== '') assert.ok(entry.includes(`default ${fallback}`), `help gives the default of --${meta.flag}`);
    }
  });

  it("has a row in the README's option table for every option, and none for an option that does not exist", async () => {
    const readme = await readFile(path.join(projectRoot, 'README.md'), 'utf8');
    const start = readme.indexOf('| flag | environment | default | meaning |');
    assert.notEqual(start, -1, 'README has the option table');
    const rows = readme.slice(start).split('\n\n')[0]!.split('\n').slice(2);
    const documented = new Map(rows.map((row) => {
      const [flag, env] = row.split('|').slice(1, 3).map((cell) => cell.trim().replace(/`/g, ''));
      return [flag!, env!];
    }));
    const metas = new Map(optionMetas().map(([, meta]) => [`--${meta.flag}`, meta.env]));
    metas.set('--config', 'ICAAS_CONFIG');
    for (const [flag, env] of metas) assert.equal(documented.get(flag), env, `README row for ${flag} with ${env}`);
    for (const flag of documented.keys()) assert.ok(metas.has(flag), `README documents ${flag}, which is no option`);
  });

  describe('hostile spellings', () => {
    const load = (argv: string[], env: NodeJS.ProcessEnv = {}) => loadConfig({ argv, env, cwd: temp.dir }, { 'dry-run': { type: 'boolean', help: '' }, url: { type: 'string', help: '' } });
    const refuses = (argv: string[], pattern: RegExp, env: NodeJS.ProcessEnv = {}) =>
      assert.throws(() => load(argv, env), (error: unknown) => {
        assert.ok(error instanceof ConfigError, `a ConfigError for ${JSON.stringify(argv)}: ${String(error)}`);
        assert.match(error.message, pattern);
        return true;
      });

    it('names out-of-range and mistyped values, wherever they come from', async () => {
      refuses(['--port', '70000'], /^--port \(port\): must be at most 65535, got 70000$/);
      refuses(['--port', 'abc'], /^--port \(port\): expected a whole number, got "abc"$/);
      refuses(['--port', '80.5'], /whole number, got "80.5"/);
      refuses(['--port', '0x50'], /whole number, got "0x50"/);
      refuses(['--max-instances', '-1'], /^--max-instances \(maxInstances\): must be at least 1, got -1$/);
      refuses(['--max-instances=-1'], /must be at least 1, got -1/);
      refuses(['--deadline', 'Infinity'], /expected a number, got "Infinity"/);
      refuses([], /^environment variable PORT \(port\): expected a whole number, got "abc"$/, { PORT: 'abc' });
      refuses([], /^environment variable ICAAS_S3_PATH_STYLE \(s3ForcePathStyle\): expected true or false, got "maybe"$/, { ICAAS_S3_PATH_STYLE: 'maybe' });
      const file = path.join(temp.dir, 'typed.json');
      await writeFile(file, JSON.stringify({ port: 'eighty' }));
      refuses(['--config', file], new RegExp(`^config file ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(port\\): expected a whole number, got "eighty"$`));
      await writeFile(file, JSON.stringify({ apiKeys: [1, 2] }));
      refuses(['--config', file], /typed\.json \(apiKeys\): expected a comma-separated list, got \[1,2\]/);
    });

    it('says which option was meant when one is misspelt, on the command line and in the file', async () => {
      refuses(['--max-instance', '3'], /^unknown option --max-instance; did you mean --max-instances\?$/);
      refuses(['--PORT', '80'], /^unknown option --PORT; did you mean --port\?$/);
      refuses(['---port', '80'], /^unknown option ---port; did you mean --port\?$/);
      refuses(['--dryrun'], /did you mean --dry-run\?/);
      refuses(['--frobnicate'], /^unknown option --frobnicate$/);
      refuses(['-p', '80'], /^unknown option -p$/);
      const file = path.join(temp.dir, 'flag-names.json');
      await writeFile(file, JSON.stringify({ 'max-instances': 3 }));
      refuses(['--config', file], /unknown option "max-instances"; did you mean maxInstances\?/);
    });

    it('refuses a missing or empty value instead of taking the next flag or the current folder', () => {
      refuses(['--port'], /^--port needs a value$/);
      refuses(['--port', '--data', 'x'], /^--port needs a value \(for one that starts with "-", write --port=VALUE\)$/);
      refuses(['--port='], /^--port \(port\): expected a whole number, got ""$/);
      refuses(['--port=', '80'], /expected a whole number, got ""/);
      refuses(['--data='], /^--data \(data\): needs a value, got ""$/);
      refuses(['--url'], /^--url needs a value$/);
      refuses(['--config='], /--config needs a file name/);
      // An option whose unset value is empty may be given empty.
      assert.equal(load(['--model=']).config.model, '');
    });

    it('refuses a value on a switch, a flag given twice and typographic dashes', () => {
      refuses(['--s3-path-style=false'], /^--s3-path-style takes no value/);
      refuses(['--dry-run=yes'], /^--dry-run takes no value/);
      refuses(['--port', '80', '--port', '81'], /^--port is given twice \(--port 80 and --port 81\); give it once$/);
      refuses(['--port=80', '--port', '80'], /--port is given twice/);
      refuses(['\u2014port', '80'], /typographic dash.*type it as --port$/);
      refuses(['\u2013\u2013port', '80'], /type it as --port$/);
    });

    it('takes everything after -- as arguments, and a negative number as a value', () => {
      const { positionals, config } = load(['--port', '81', '--', '--port', '\u2014x', '-1']);
      assert.equal(config.port, 81);
      assert.deepEqual(positionals, ['--port', '\u2014x', '-1']);
      const { extraFlags } = load(['--url', '-1']);
      assert.deepEqual(extraFlags, { url: '-1' });
    });
  });
});
