import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, it } from 'node:test';
import { ImdsError, instanceIdFromImds } from '../../src/compute/imds.js';

interface Seen {
  method: string;
  url: string;
  ttl?: string;
  token?: string;
}

interface FakeImds {
  endpoint: string;
  seen: Seen[];
  close(): Promise<void>;
}

const TOKEN = 'AQAEAFake-token==';

/**
 * A metadata service that behaves as IMDSv2 does: tokens come from PUT /latest/api/token
 * with a TTL header, and every metadata read without a valid token gets 401.
 */
async function fakeImds(options: { instanceId?: string; handler?: (req: IncomingMessage, res: ServerResponse, seen: Seen[]) => boolean } = {}): Promise<FakeImds> {
  const seen: Seen[] = [];
  const server: Server = createServer((req, res) => {
    const entry: Seen = { method: req.method ?? '', url: req.url ?? '' };
    const ttl = req.headers['x-aws-ec2-metadata-token-ttl-seconds'];
    const token = req.headers['x-aws-ec2-metadata-token'];
    if (typeof ttl === 'string') entry.ttl = ttl;
    if (typeof token === 'string') entry.token = token;
    seen.push(entry);
    if (options.handler?.(req, res, seen)) return;
    if (req.method === 'PUT' && req.url === '/latest/api/token') {
      const seconds = Number(ttl);
      if (!(seconds >= 1 && seconds <= 21600)) {
        res.writeHead(400).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' }).end(TOKEN);
      return;
    }
    if (req.method === 'GET' && req.url?.startsWith('/latest/meta-data/')) {
      if (token !== TOKEN) {
        res.writeHead(401).end();
        return;
      }
      if (req.url === '/latest/meta-data/instance-id') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end(options.instanceId ?? 'i-0123456789abcdef0');
        return;
      }
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    seen,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('IMDSv2 client', () => {
  const open: FakeImds[] = [];
  const start = async (options?: Parameters<typeof fakeImds>[0]): Promise<FakeImds> => {
    const imds = await fakeImds(options);
    open.push(imds);
    return imds;
  };
  afterEach(async () => {
    await Promise.all(open.splice(0).map((imds) => imds.close()));
  });

  it('the fake service refuses metadata reads without a token, as IMDSv2 does', async () => {
    const imds = await start();
    const response = await fetch(`${imds.endpoint}/latest/meta-data/instance-id`);
    assert.equal(response.status, 401);
    await response.arrayBuffer();
  });

  it('gets a session token with a TTL, then reads the instance id with it', async () => {
    const imds = await start();
    assert.equal(await instanceIdFromImds({ endpoint: imds.endpoint }), 'i-0123456789abcdef0');
    assert.equal(imds.seen.length, 2);
    assert.equal(imds.seen[0]!.method, 'PUT');
    assert.equal(imds.seen[0]!.url, '/latest/api/token');
    assert.ok(Number(imds.seen[0]!.ttl) > 0, 'the token request carries a TTL');
    assert.deepEqual({ method: imds.seen[1]!.method, url: imds.seen[1]!.url, token: imds.seen[1]!.token }, { method: 'GET', url: '/latest/meta-data/instance-id', token: TOKEN });
  });

  it('takes its endpoint from AWS_EC2_METADATA_SERVICE_ENDPOINT when none is given', async () => {
    const imds = await start({ instanceId: 'i-0aaaabbbbccccdddd' });
    const saved = process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
    process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = `${imds.endpoint}/`;
    try {
      assert.equal(await instanceIdFromImds(), 'i-0aaaabbbbccccdddd');
    } finally {
      if (saved === undefined) delete process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
      else process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = saved;
    }
  });

  it('retries a failing request and then succeeds', async () => {
    let failures = 1;
    const imds = await start({
      handler: (req, res) => {
        if (req.method === 'PUT' && failures > 0) {
          failures--;
          res.writeHead(503).end();
          return true;
        }
        return false;
      },
    });
    assert.equal(await instanceIdFromImds({ endpoint: imds.endpoint }), 'i-0123456789abcdef0');
    assert.equal(imds.seen.filter((entry) => entry.method === 'PUT').length, 2);
  });

  it('fails at once, naming the cause, when the service refuses the token', async () => {
    const imds = await start({
      handler: (req, res) => {
        if (req.method === 'GET') {
          res.writeHead(401).end();
          return true;
        }
        return false;
      },
    });
    await assert.rejects(instanceIdFromImds({ endpoint: imds.endpoint }), (error: unknown) => error instanceof ImdsError && /refused.*HTTP 401/.test(error.message));
    assert.equal(imds.seen.filter((entry) => entry.method === 'GET').length, 1, 'a refusal is not retried');
  });

  it('gives a clear error when no metadata service answers in time', async () => {
    const imds = await start({ handler: () => true /* never answers */ });
    const started = Date.now();
    await assert.rejects(instanceIdFromImds({ endpoint: imds.endpoint, timeoutMs: 50, attempts: 2 }), (error: unknown) => {
      assert.ok(error instanceof ImdsError);
      assert.match(error.message, /instance metadata service at http:\/\/127\.0\.0\.1:\d+/);
      assert.match(error.message, /only on an EC2 instance/);
      return true;
    });
    assert.ok(Date.now() - started < 2000);
  });

  it('gives a clear error when nothing listens at the endpoint', async () => {
    const imds = await fakeImds();
    await imds.close();
    await assert.rejects(instanceIdFromImds({ endpoint: imds.endpoint, timeoutMs: 200, attempts: 1 }), /could not get a session token from the instance metadata service/);
  });

  it('refuses an answer that is not an instance id', async () => {
    const imds = await start({ instanceId: '<html>captive portal</html>' });
    await assert.rejects(instanceIdFromImds({ endpoint: imds.endpoint }), /not an instance id/);
  });
});
