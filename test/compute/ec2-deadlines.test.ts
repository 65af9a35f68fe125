/**
 * The EC2 adapter's deadlines and terminate retries, driven through the real SDK client
 * against a stateful fake EC2 endpoint on loopback, with heartbeats in a real file store.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { Ec2Compute, heartbeatKey, type Ec2ComputeOptions } from '../../src/compute/ec2.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import type { ObjectStore } from '../../src/storage/port.js';
import { makeTempDir, waitFor } from '../helpers.js';
import { FakeEc2, type FakeEc2Options } from './fake-ec2.js';

// The SDK signs every request; the fake does not check signatures.
process.env.AWS_ACCESS_KEY_ID ??= 'AKIAFAKEFAKEFAKE';
process.env.AWS_SECRET_ACCESS_KEY ??= 'fake-secret';

const BUCKET = 'icaas-output';

describe('Ec2Compute deadlines against a fake EC2 endpoint', async () => {
  const temp = await makeTempDir();
  let store: FsObjectStore;
  const fakes: FakeEc2[] = [];
  const computes: Ec2Compute[] = [];

  before(async () => {
    store = new FsObjectStore(path.join(temp.dir, 'buckets'));
    await store.ensureBucket(BUCKET);
  });
  afterEach(async () => {
    await Promise.all(computes.splice(0).map((compute) => compute.close()));
    await Promise.all(fakes.splice(0).map((fake) => fake.close()));
  });
  after(async () => {
    await store.close();
    await temp.cleanup();
  });

  const fakeEc2 = async (options: FakeEc2Options = {}) => {
    const fake = await new FakeEc2({ pendingMs: 20, shuttingDownMs: 20, ...options }).listen();
    fakes.push(fake);
    return fake;
  };
  const open = (fake: FakeEc2, options: Partial<Ec2ComputeOptions> & { heartbeatStore?: ObjectStore } = {}) => {
    const { heartbeatStore = store, ...rest } = options;
    const compute = new Ec2Compute({
      endpoint: fake.endpoint,
      region: 'us-east-1',
      maxInstances: 2,
      deployment: 'prod',
      launchTemplate: 'prod-worker',
      userData: '#!/bin/bash\n',
      heartbeats: { store: heartbeatStore, bucket: BUCKET },
      ...rest,
    });
    computes.push(compute);
    return compute;
  };
  const sweepUntil = async (compute: Ec2Compute, what: string) =>
    waitFor(what, async () => {
      const sweep = await compute.enforceDeadlines();
      return sweep.terminated.length + sweep.failed.length > 0 ? sweep : null;
    });
  const stateIn = (fake: FakeEc2, id: string) => fake.stateOf(id);

  it('lists a running instance as starting until its worker reports, then as the worker says', async () => {
    const fake = await fakeEc2();
    const compute = open(fake);
    const [id] = await compute.start(1);
    await waitFor('the instance to run', () => stateIn(fake, id!) === 'running');
    assert.equal((await compute.list())[0]?.state, 'starting', 'booted, but its worker has not reported');
    await compute.report(id!, { state: 'busy', imageId: 'img-1', processed: 2 });
    await waitFor('the busy heartbeat to be read', async () => (await compute.list())[0]?.state === 'busy');
    const [listed] = await compute.list();
    assert.deepEqual({ state: listed!.state, imageId: listed!.imageId, processed: listed!.processed }, { state: 'busy', imageId: 'img-1', processed: 2 });
  });

  it('terminates an instance that booted but whose worker never reported within the start timeout', async () => {
    const fake = await fakeEc2();
    const compute = open(fake, { startTimeoutMs: 500 });
    const [silent, working] = await compute.start(2);
    await compute.report(working!, { state: 'idle', processed: 0 });
    await waitFor('both instances to run', () => stateIn(fake, silent!) === 'running' && stateIn(fake, working!) === 'running');
    assert.deepEqual(await compute.enforceDeadlines(), { terminated: [], failed: [] }, 'nothing is due before the timeout');
    const sweep = await sweepUntil(compute, 'the start timeout to end the silent instance');
    assert.deepEqual(sweep.terminated.map(({ id, reason }) => ({ id, reason })), [{ id: silent, reason: 'start-timeout' }]);
    assert.match(stateIn(fake, silent!)!, /shutting-down|terminated/);
    assert.equal(stateIn(fake, working!), 'running', 'the instance whose worker reported is left alone');
  });

  it('terminates an instance stuck pending past the start timeout', async () => {
    const fake = await fakeEc2({ pendingMs: 600_000 });
    const compute = open(fake, { startTimeoutMs: 300 });
    const [id] = await compute.start(1);
    const sweep = await sweepUntil(compute, 'the start timeout to end the pending instance');
    assert.deepEqual(sweep.terminated.map(({ id, reason }) => ({ id, reason })), [{ id, reason: 'start-timeout' }]);
  });

  it('terminates instances whose heartbeat is idle, busy or stopped for longer than its timeout', async () => {
    const fake = await fakeEc2();
    const compute = open(fake, { maxInstances: 3, idleTimeoutMs: 300, busyTimeoutMs: 300, exitTimeoutMs: 300 });
    const [idle, busy, exited] = await compute.start(3);
    await compute.report(idle!, { state: 'idle', processed: 0 });
    await compute.report(busy!, { state: 'busy', imageId: 'img-1', processed: 0 });
    await compute.report(exited!, { state: 'stopped', processed: 3 });
    await waitFor('the three instances to run', () => [idle, busy, exited].every((id) => stateIn(fake, id!) === 'running'));
    const reasons = new Map<string, string>();
    await waitFor('all three to be terminated', async () => {
      for (const { id, reason } of (await compute.enforceDeadlines()).terminated) reasons.set(id, reason);
      return reasons.size === 3;
    });
    assert.deepEqual(Object.fromEntries(reasons), { [idle!]: 'idle-timeout', [busy!]: 'busy-timeout', [exited!]: 'exit-timeout' });
  });

  it('keeps an instance whose terminate failed, counting it, and retries until EC2 confirms', async () => {
    const fake = await fakeEc2();
    const compute = open(fake, { maxInstances: 1 });
    const [id] = await compute.start(1);
    await waitFor('the instance to run', () => stateIn(fake, id!) === 'running');
    fake.failTerminate(3);
    await assert.rejects(compute.terminate(id!), /could not terminate instance .*OperationNotPermitted|may not be terminated/);
    assert.equal(stateIn(fake, id!), 'running');
    assert.deepEqual(await compute.start(1), [], 'it still counts against the maximum');
    assert.notEqual((await compute.list())[0]?.state, 'stopped');

    const first = await compute.enforceDeadlines();
    assert.deepEqual(first.failed.map(({ id, reason }) => ({ id, reason })), [{ id, reason: 'terminate-retry' }], 'the next sweep retries it');
    assert.deepEqual(first.terminated, []);
    await compute.enforceDeadlines();
    const done = await compute.enforceDeadlines();
    assert.deepEqual(done.terminated.map(({ id, reason }) => ({ id, reason })), [{ id, reason: 'terminate-retry' }]);
    assert.match(stateIn(fake, id!)!, /shutting-down|terminated/);
    assert.equal(fake.calls.filter((call) => call.action === 'TerminateInstances').length, 4);
    assert.deepEqual(await compute.enforceDeadlines(), { terminated: [], failed: [] }, 'confirmed: not tried again');
    assert.equal((await compute.start(1)).length, 1, 'its slot is free once EC2 shows it shutting down');
  });

  it('retries a failed terminate from another caller (the monitor) on the sweep', async () => {
    const fake = await fakeEc2();
    const compute = open(fake);
    const [id] = await compute.start(1);
    await compute.report(id!, { state: 'busy', imageId: 'img-1', processed: 0 });
    fake.failTerminate(1);
    await assert.rejects(compute.terminate(id!));
    const sweep = await compute.enforceDeadlines();
    assert.deepEqual(sweep.terminated.map(({ id, reason }) => ({ id, reason })), [{ id, reason: 'terminate-retry' }]);
  });

  it('does not read a heartbeat it cannot fetch as a worker that never started', async () => {
    const fake = await fakeEc2();
    const failing: ObjectStore = Object.create(store, {
      get: { value: async () => Promise.reject(new Error('store unavailable')) },
    }) as ObjectStore;
    const compute = open(fake, { startTimeoutMs: 50, heartbeatStore: failing });
    const [id] = await compute.start(1);
    await waitFor('the instance to run', () => stateIn(fake, id!) === 'running');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(await compute.enforceDeadlines(), { terminated: [], failed: [] });
    assert.equal((await compute.list())[0]?.state, 'idle');
  });

  it('deletes the heartbeats of instances that ended', async () => {
    const fake = await fakeEc2();
    const compute = open(fake);
    const [id] = await compute.start(1);
    await compute.report(id!, { state: 'idle', processed: 0 });
    assert.ok(await store.head(BUCKET, heartbeatKey(id!)));
    fake.shutdown(id!);
    await waitFor('the heartbeat to be deleted', async () => {
      await compute.enforceDeadlines();
      return (await store.head(BUCKET, heartbeatKey(id!))) === null;
    });
  });
});
