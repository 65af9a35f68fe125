import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, configToEnv, loadConfig, optionsHelp } from '../src/config.js';
import { makeTempDir } from './helpers.js';

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
    const { positionals, extraFlags } = loadConfig({ argv: ['a.jpg', '--url', 'http://x', 'dir', '--json'], env: {}, cwd: temp.dir }, ['url', 'json']);
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
});
