import { describe, it, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ProcessCompute } from '../../src/compute/process.js';
import { makeTempDir, waitFor } from '../helpers.js';

const sleeper = path.join(path.dirname(fileURLToPath(import.meta.url)), 'sleeper-process.js');

describe('process compute adapter', async () => {
  const temp = await makeTempDir();
  let compute: ProcessCompute;
  let registryPath: string;
  let run = 0;
  const open = (max: number) =>
    new ProcessCompute({ registryPath, maxInstances: max, workerCommand: { script: sleeper, args: [registryPath] }, logDir: path.join(temp.dir, 'logs') });

  beforeEach(() => {
    registryPath = path.join(temp.dir, `instances-${++run}.db`);
    compute = open(3);
  });
  afterEach(async () => {
    for (const instance of await compute.list()) await compute.terminate(instance.id);
    await compute.close();
  });
  after(() => temp.cleanup());

  const active = async (c = compute) => (await c.list()).filter((instance) => instance.state !== 'stopped');

  it('starts real processes that go from starting to idle', async () => {
    const ids = await compute.start(2);
    assert.equal(ids.length, 2);
    const listed = await compute.list();
    assert.deepEqual(listed.map((instance) => instance.id).sort(), [...ids].sort());
    await waitFor('both instances to report idle', async () => (await compute.list()).every((instance) => instance.state === 'idle'));
  });

  it('never passes the maximum, counting those still starting', async () => {
    assert.equal((await compute.start(5)).length, 3);
    assert.equal((await compute.start(1)).length, 0);
    assert.equal((await active()).length, 3);
  });

  it('holds the maximum across adapters sharing the registry (two controllers)', async () => {
    const other = open(3);
    try {
      const started = await Promise.all([compute.start(3), other.start(3), compute.start(2)]);
      assert.equal(started.flat().length, 3);
      assert.equal((await active(other)).length, 3);
    } finally {
      await other.close();
    }
  });

  it('terminates an instance at once, and lists it as stopped', async () => {
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    await compute.terminate(id!);
    assert.equal((await compute.list()).find((instance) => instance.id === id)?.state, 'stopped');
    assert.equal((await active()).length, 0);
    // Room is free again.
    assert.equal((await compute.start(3)).length, 3);
  });

  it('notices an instance that died on its own', async () => {
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(registryPath, { readonly: true });
    const { pid } = db.prepare('SELECT pid FROM instances WHERE id = ?').get(id) as { pid: number };
    db.close();
    process.kill(pid, 'SIGKILL');
    await waitFor('the dead instance to be listed as stopped', async () => (await compute.list()).find((instance) => instance.id === id)?.state === 'stopped');
  });

  it('asks every instance to stop, and they report themselves stopped', async () => {
    await compute.start(3);
    await waitFor('three idle instances', async () => (await compute.list()).filter((instance) => instance.state === 'idle').length === 3);
    const outcome = await compute.stopAll(10_000);
    assert.deepEqual(outcome, { total: 3, killed: 0 });
    assert.equal((await active()).length, 0);
  });

  it('records what a worker reports, and a stopped instance stays stopped', async () => {
    const [id] = await compute.start(1);
    await waitFor('idle', async () => (await compute.list())[0]?.state === 'idle');
    await compute.report(id!, { state: 'busy', imageId: 'img-1', processed: 4 });
    assert.deepEqual(
      (await compute.list()).map(({ state, imageId, processed }) => ({ state, imageId, processed })),
      [{ state: 'busy', imageId: 'img-1', processed: 4 }],
    );
    await compute.terminate(id!);
    await compute.report(id!, { state: 'idle' });
    assert.equal((await compute.list())[0]?.state, 'stopped');
  });

  it('rejects a request for a negative or fractional count', async () => {
    await assert.rejects(compute.start(-1), /whole number/);
    await assert.rejects(compute.start(1.5), /whole number/);
  });
});
