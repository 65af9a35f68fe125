/** The service's logger: JSON off a terminal, readable on one, levels and context fields. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createLogger, logFormatFor } from '../src/log.js';
import { ConfigError, loadConfig } from '../src/config.js';
import { parseLogLines } from './log-capture.js';

/** A destination that keeps what is written, and says whether it is a terminal. */
function sink(isTTY: boolean): { stream: Writable & { isTTY?: boolean }; text(): string } {
  let text = '';
  const stream = Object.assign(new Writable({
    write(chunk: Buffer, _encoding, done) {
      text += chunk.toString('utf8');
      done();
    },
  }), { isTTY });
  return { stream, text: () => text };
}

describe('logFormatFor', () => {
  it('is pretty on a terminal and JSON otherwise', () => {
    assert.equal(logFormatFor({ isTTY: true }, {}), 'pretty');
    assert.equal(logFormatFor({ isTTY: false }, {}), 'json');
    assert.equal(logFormatFor({}, {}), 'json');
  });

  it('follows ICAAS_LOG_FORMAT either way, and ignores other spellings', () => {
    assert.equal(logFormatFor({ isTTY: true }, { ICAAS_LOG_FORMAT: 'json' }), 'json');
    assert.equal(logFormatFor({ isTTY: false }, { ICAAS_LOG_FORMAT: 'pretty' }), 'pretty');
    for (const hostile of ['JSON', ' json', 'pretty\n', 'text', '']) {
      assert.equal(logFormatFor({ isTTY: true }, { ICAAS_LOG_FORMAT: hostile }), 'pretty', JSON.stringify(hostile));
      assert.equal(logFormatFor({ isTTY: false }, { ICAAS_LOG_FORMAT: hostile }), 'json', JSON.stringify(hostile));
    }
  });
});

describe('createLogger', () => {
  it('writes one JSON object a line with level, time, context fields and msg', () => {
    const out = sink(false);
    const log = createLogger({ destination: out.stream, format: 'json' }).child({ component: 'web' });
    log.info({ batchId: 'b1', imageId: 'i1' }, 'result recorded');
    const [line, ...rest] = parseLogLines(out.text());
    assert.deepEqual(rest, []);
    assert.equal(line?.level, 'info');
    assert.ok(!Number.isNaN(Date.parse(String(line?.time))), `an ISO time: ${line?.time}`);
    assert.deepEqual({ component: line?.component, batchId: line?.batchId, imageId: line?.imageId, msg: line?.msg }, { component: 'web', batchId: 'b1', imageId: 'i1', msg: 'result recorded' });
    assert.equal(line?.pid, undefined, 'no pid or hostname on every line');
  });

  it('prints readable lines on a terminal: component and message, not JSON', () => {
    const out = sink(true);
    createLogger({ destination: out.stream }).child({ component: 'service' }).info({ url: 'http://localhost:3000' }, 'listening');
    const text = out.text().replace(/\u001b\[[0-9;]*m/g, '');
    assert.ok(!text.startsWith('{'), text);
    assert.match(text, /INFO.*service: listening.*http:\/\/localhost:3000/);
  });

  it('loads the pretty printer only for a logger that prints pretty lines', async () => {
    // A fresh process: this test file's own process may have loaded it already.
    const logModule = fileURLToPath(new URL('../src/log.js', import.meta.url));
    const script = `
      const { createRequire } = await import('node:module');
      const { createLogger } = await import(process.argv[1]);
      const loaded = () => Object.keys(createRequire(process.argv[1]).cache).some((file) => file.includes('pino-pretty'));
      createLogger({ format: 'json' }).info('json line');
      const afterJson = loaded();
      createLogger({ format: 'pretty' }).info('pretty line');
      console.log(JSON.stringify({ afterJson, afterPretty: loaded() }));`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script, logModule]);
    const lines = stdout.trim().split('\n');
    assert.match(lines[0]!, /"msg":"json line"/);
    assert.match(lines[1]!, /INFO: pretty line/);
    assert.deepEqual(JSON.parse(lines.at(-1)!), { afterJson: false, afterPretty: true });
  });

  it('leaves out lines below its level', () => {
    const out = sink(false);
    const log = createLogger({ destination: out.stream, format: 'json', level: 'warn' });
    log.info('routine');
    log.debug('chatter');
    log.warn('attention');
    assert.deepEqual(parseLogLines(out.text()).map((line) => line.msg), ['attention']);
  });
});

describe('--log-level', () => {
  it('is info by default, and comes from ICAAS_LOG_LEVEL or the flag', () => {
    assert.equal(loadConfig({ argv: [], env: {} }).config.logLevel, 'info');
    assert.equal(loadConfig({ argv: [], env: { ICAAS_LOG_LEVEL: 'warn' } }).config.logLevel, 'warn');
    assert.equal(loadConfig({ argv: ['--log-level', 'debug'], env: { ICAAS_LOG_LEVEL: 'warn' } }).config.logLevel, 'debug');
  });

  it('refuses a level pino does not know, naming the choices', () => {
    for (const bad of ['loud', 'INFO', 'warning', ' info']) {
      assert.throws(() => loadConfig({ argv: [], env: { ICAAS_LOG_LEVEL: bad } }), (error: unknown) => error instanceof ConfigError && /must be one of fatal, error, warn, info, debug, trace, silent/.test(error.message), JSON.stringify(bad));
    }
  });
});
