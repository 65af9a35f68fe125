/** The launch lease on the real file store, with one store instance per holder as separate processes would have. */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, afterEach, beforeEach, describe, it } from 'node:test';
import { LAUNCH_LEASE_KEY, LaunchLease, type LaunchLeaseOptions } from '../../src/controller/lease.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { makeTempDir, waitFor } from '../helpers.js';

const BUCKET = 'icaas-output';

describe('launch lease', async () => {
  const temp = await makeTempDir();
  const stores: FsObjectStore[] = [];
  let root: string;
  let run = 0;

  beforeEach(async () => {
    root = path.join(temp.dir, `run-${++run}`);
    const store = new FsObjectStore(root);
    await store.ensureBucket(BUCKET);
    stores.push(store);
  });
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((store) => store.close()));
  });
  after(() => temp.cleanup());

  /** A holder with its own store instance, as a separate controller process would have. */
  const holder = (name: string, options: Partial<LaunchLeaseOptions> = {}) => {
    const store = new FsObjectStore(root);
    stores.push(store);
    return new LaunchLease({ store, bucket: BUCKET, holder: name, clockSkewMs: 0, ...options });
  };
  const stored = async () => JSON.parse((await stores[0]!.get(BUCKET, LAUNCH_LEASE_KEY))!.body.toString()) as { holder: string; expiresAt: number; launches: { id: string }[] };

  it('goes to one holder, who renews it, while the other waits', async () => {
    const a = holder('a');
    const b = holder('b');
    const first = await a.acquire();
    assert.ok(first && first.validUntil > Date.now());
    assert.equal(await b.acquire(), null);
    const renewed = await a.acquire();
    assert.ok(renewed && renewed.validUntil >= first.validUntil);
    assert.equal(await b.acquire(), null);
    assert.equal((await stored()).holder, 'a');
  });

  it('goes to exactly one of many holders racing for a fresh lease', async () => {
    const holders = Array.from({ length: 6 }, (_, i) => holder(`h${i}`));
    const holds = await Promise.all(holders.map((lease) => lease.acquire()));
    assert.equal(holds.filter(Boolean).length, 1);
    assert.equal((await stored()).holder, `h${holds.findIndex(Boolean)}`);
  });

  it('is taken over once it expires, and the old holder then cannot renew it', async () => {
    const a = holder('a', { durationMs: 200 });
    const b = holder('b', { durationMs: 200 });
    assert.ok(await a.acquire());
    assert.equal(await b.acquire(), null);
    await waitFor('b to take the expired lease over', () => b.acquire());
    assert.equal(await a.acquire(), null, 'a sees that b holds it');
    assert.equal(await a.recordLaunches([{ id: 'i-1', at: Date.now() }]), false, 'a cannot write into it');
    assert.equal((await stored()).holder, 'b');
  });

  it('waits out the allowance for clock skew before a takeover', async () => {
    const a = holder('a', { durationMs: 100 });
    const b = holder('b', { durationMs: 100, clockSkewMs: 60_000 });
    assert.ok(await a.acquire());
    await new Promise((resolve) => setTimeout(resolve, 150));
    assert.equal(await b.acquire(), null, 'expired by a\'s clock, but not beyond the skew allowance');
  });

  it('hands the recent launches to the next holder, on release at once', async () => {
    const a = holder('a');
    const b = holder('b');
    assert.ok(await a.acquire());
    assert.equal(await a.recordLaunches([{ id: 'i-01', at: Date.now() }, { id: 'i-02', at: Date.now() }]), true);
    assert.equal(await b.acquire(), null);
    await a.release();
    const taken = await b.acquire();
    assert.deepEqual(taken?.launches.map((launch) => launch.id), ['i-01', 'i-02']);
  });

  it('forgets launches older than it remembers', async () => {
    const a = holder('a', { rememberLaunchesMs: 1000 });
    assert.ok(await a.acquire());
    await a.recordLaunches([{ id: 'i-old', at: Date.now() - 5000 }, { id: 'i-new', at: Date.now() }]);
    assert.deepEqual((await stored()).launches.map((launch) => launch.id), ['i-new']);
  });

  it('replaces a lease object it cannot read instead of waiting forever', async () => {
    await stores[0]!.put(BUCKET, LAUNCH_LEASE_KEY, Buffer.from('not json'));
    assert.ok(await holder('a').acquire());
    assert.equal((await stored()).holder, 'a');
  });
});
