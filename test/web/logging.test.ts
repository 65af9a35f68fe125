/**
 * The server's requests in the log: one debug line each, with the path but never the query
 * (it can hold an API key), and nothing at info level, so long-lived event streams and
 * frequent status polls do not flood an operator's log.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import path from 'node:path';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { openRuntime } from '../../src/runtime.js';
import { ResultsIndex } from '../../src/web/results.js';
import { createWebServer } from '../../src/web/server.js';
import { makeTempDir, projectRoot, waitFor } from '../helpers.js';

async function logsOf(level: 'info' | 'debug', requests: (url: string) => Promise<void>): Promise<Record<string, unknown>[]> {
  const temp = await makeTempDir();
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const { config } = loadConfig({ argv: ['--data', temp.dir, '--api-keys', 'secret-key-0123456789'], env: {} });
  const runtime = await openRuntime(config);
  const index = new ResultsIndex(runtime.store, config.inputBucket, config.outputBucket);
  const server = await createWebServer({ runtime, index, uiDir: path.join(projectRoot, 'dist', 'ui'), logger: createLogger({ level, destination, format: 'json' }) });
  try {
    const address = await server.app.listen({ host: '127.0.0.1', port: 0 });
    await requests(address);
    return lines;
  } finally {
    server.hub.closeAll();
    await server.app.close();
    await runtime.close();
    await temp.cleanup();
  }
}

const readEvents = async (url: string) => {
  const controller = new AbortController();
  const response = await fetch(`${url}/api/events?key=secret-key-0123456789`, { signal: controller.signal });
  assert.equal(response.status, 200);
  controller.abort();
};

describe('request logging', () => {
  it('writes one debug line per request, with its path and status but not its query', async () => {
    const lines = await logsOf('debug', async (url) => {
      assert.equal((await fetch(`${url}/api/status?key=secret-key-0123456789`)).status, 401);
      assert.equal((await fetch(`${url}/api/status`, { headers: { authorization: 'Bearer secret-key-0123456789' } })).status, 200);
      await readEvents(url);
      assert.equal((await fetch(`${url}/healthz`)).status, 200);
    });
    await waitFor('the lines', () => lines.length >= 3);
    const requests = lines.filter((line) => line.msg === 'request');
    assert.deepEqual(requests.map((line) => [line.level, line.component, line.method, line.path, line.status]), [
      ['debug', 'web', 'GET', '/api/status', 401],
      ['debug', 'web', 'GET', '/api/status', 200],
    ]);
    for (const line of lines) assert.ok(!JSON.stringify(line).includes('secret-key'), `a key in the log: ${JSON.stringify(line)}`);
  });

  it('writes nothing for ordinary requests at info level', async () => {
    const lines = await logsOf('info', async (url) => {
      for (let i = 0; i < 5; i++) assert.equal((await fetch(`${url}/api/status`, { headers: { 'x-api-key': 'secret-key-0123456789' } })).status, 200);
      await readEvents(url);
      assert.equal((await fetch(`${url}/nope`)).status, 401);
    });
    // Fastify's own start-up line is all.
    assert.deepEqual(lines.filter((line) => !/^Server listening at /.test(String(line.msg))), []);
  });
});
