/**
 * Per-client limits on uploads and the synchronous endpoint, in-process on the real
 * embedded adapters over a real socket. Requests carry no files: a limit is decided before
 * the body is read, and an empty upload costs the server nothing to refuse otherwise.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startInProcessWebTier } from './in-process.js';
import { makeTempDir } from '../helpers.js';

const KEYS = ['first-key-0123456789', 'second-key-abcdefghij'];

/** Runs the test against a fresh web tier started with these flags. */
async function withTier(flags: string[], test: (url: string) => Promise<void>): Promise<void> {
  const temp = await makeTempDir();
  const tier = await startInProcessWebTier(temp.dir, flags);
  try {
    await test(tier.url);
  } finally {
    await tier.stop();
    await temp.cleanup();
  }
}

const post = async (url: string, route: string, headers: Record<string, string> = {}) => {
  const response = await fetch(`${url}${route}`, { method: 'POST', body: new FormData(), headers: { accept: 'application/json', ...headers } });
  return { status: response.status, headers: response.headers, body: (await response.json()) as { error: string } };
};

/** The answers to `count` requests, in order. */
const statuses = async (count: number, request: (i: number) => Promise<{ status: number }>): Promise<number[]> => {
  const seen: number[] = [];
  for (let i = 0; i < count; i++) seen.push((await request(i)).status);
  return seen;
};

describe('rate limits', () => {
  it('answers uploads over the limit with 429, Retry-After and a clear message, and limits nothing else', () => withTier(['--rate-limit-uploads', '3', '--rate-limit-sync', '2'], async (url) => {
    // Under the limit the requests go through (and are refused for having no files).
    assert.deepEqual(await statuses(3, () => post(url, '/api/images')), [400, 400, 400]);
    const limited = await post(url, '/api/images');
    assert.equal(limited.status, 429);
    assert.match(limited.body.error, /^too many uploads from this client: at most 3 a minute; retry in \d+s$/);
    const retryAfter = Number(limited.headers.get('retry-after'));
    assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${limited.headers.get('retry-after')}`);
    assert.equal(limited.headers.get('x-content-type-options'), 'nosniff');
    assert.deepEqual(Object.keys(limited.body), ['error']);
    // Adding to a batch is an upload too.
    assert.equal((await post(url, '/api/images?batch=AAAAAAAAAAAAAAAA')).status, 429);

    // Every other route answers as before, however often it is called.
    for (let i = 0; i < 20; i++) {
      assert.equal((await fetch(`${url}/api/status`)).status, 200);
      assert.equal((await fetch(`${url}/healthz`)).status, 200);
      assert.equal((await fetch(`${url}/api/batches/AAAAAAAAAAAAAAAA`)).status, 404);
      assert.equal((await fetch(`${url}/`)).status, 200);
    }
    // The synchronous endpoint has its own count, shared by its two routes.
    assert.deepEqual(await statuses(3, (i) => post(url, i === 1 ? '/classify' : '/')), [400, 400, 429]);
    const sync = await post(url, '/classify');
    assert.equal(sync.status, 429);
    assert.match(sync.body.error, /^too many synchronous requests from this client: at most 2 a minute; retry in \d+s$/);
  }));

  it('does not let a client pick its own address with forwarding headers, unless the proxy in front is trusted', async () => {
    const spoofs: Record<string, string>[] = [
      { 'x-forwarded-for': '203.0.113.1' },
      { 'x-forwarded-for': '203.0.113.2, 198.51.100.7' },
      { 'x-forwarded-for': ' 203.0.113.3 ' },
      { 'X-Forwarded-For': '2001:db8::1' },
      { 'x-forwarded-for': 'unknown' },
      { 'x-forwarded-for': '127.0.0.2' },
      { 'x-real-ip': '203.0.113.4' },
      { forwarded: 'for=203.0.113.5' },
      { 'x-forwarded-for': '203.0.113.6', 'x-forwarded-host': 'elsewhere.example' },
      { 'x-client-ip': '203.0.113.7', 'true-client-ip': '203.0.113.8' },
    ];
    await withTier(['--rate-limit-uploads', '2'], async (url) => {
      assert.deepEqual(await statuses(2, () => post(url, '/api/images')), [400, 400]);
      for (const headers of spoofs) assert.equal((await post(url, '/api/images', headers)).status, 429, JSON.stringify(headers));
    });
    // Behind a trusted proxy, its X-Forwarded-For names the client: each gets its own count.
    await withTier(['--rate-limit-uploads', '2', '--trust-proxy', 'loopback'], async (url) => {
      const from = (address: string) => ({ 'x-forwarded-for': address });
      assert.deepEqual(await statuses(3, () => post(url, '/api/images', from('203.0.113.1'))), [400, 400, 429]);
      assert.deepEqual(await statuses(3, () => post(url, '/api/images', from('203.0.113.2'))), [400, 400, 429]);
      // An IPv6 client holds a whole /64: another address in it is the same client.
      assert.deepEqual(await statuses(2, () => post(url, '/api/images', from('2001:db8::1'))), [400, 400]);
      assert.equal((await post(url, '/api/images', from('2001:db8::ffff'))).status, 429);
    });
  });

  it('counts per API key, and refuses a wrong key before counting it', () => withTier(['--rate-limit-uploads', '2', '--api-keys', KEYS.join(',')], async (url) => {
    const as = (key: string) => ({ authorization: `Bearer ${key}` });
    // Wrong keys are refused as such, and use up nobody's allowance.
    assert.deepEqual(await statuses(5, (i) => post(url, '/api/images', as(`not-a-key-${i}`))), [401, 401, 401, 401, 401]);
    assert.deepEqual(await statuses(3, () => post(url, '/api/images', as(KEYS[0]!))), [400, 400, 429]);
    // The same key by another header is the same client; another key is another client.
    assert.equal((await post(url, '/api/images', { 'x-api-key': KEYS[0]! })).status, 429);
    assert.deepEqual(await statuses(3, () => post(url, '/api/images', as(KEYS[1]!))), [400, 400, 429]);
  }));

  it('can be switched off, and refuses a trust-proxy setting that would trust any client', async () => {
    await withTier(['--rate-limit-uploads', '0'], async (url) => {
      assert.deepEqual(new Set(await statuses(30, () => post(url, '/api/images'))), new Set([400]));
    });
    for (const setting of ['true', '1', '*', '0.0.0.0/-1', 'example.com']) {
      const temp = await makeTempDir();
      try {
        await assert.rejects(startInProcessWebTier(temp.dir, ['--trust-proxy', setting]), /--trust-proxy: .* is not an address/, setting);
      } finally {
        await temp.cleanup();
      }
    }
  });
});
