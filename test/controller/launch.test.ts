/** One launch-controller tick on a real SQLite queue and real processes. */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ProcessCompute } from '../../src/compute/process.js';
import { launchTick } from '../../src/controller/launch.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { makeTempDir, waitFor } from '../helpers.js';

const sleeper = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'compute', 'sleeper-process.js');

describe('launch controller tick', async () => {
  const temp = await makeTempDir();
  const registryPath = path.join(temp.dir, 'instances.db');
  const provider = new SqliteQueueProvider(path.join(temp.dir, 'queues.db'));
  const compute = new ProcessCompute({ registryPath, maxInstances: 3, workerCommand: { script: sleeper, args: [registryPath] } });
  const launch = provider.queue('launch');
  after(async () => {
    for (const instance of await compute.list()) await compute.terminate(instance.id);
    await compute.close();
    await provider.close();
    await temp.cleanup();
  });

  it('starts nothing for an empty queue', async () => {
    assert.deepEqual(await launchTick(launch, compute), { visible: 0, starting: 0, idle: 0, busy: 0, max: 3, started: 0 });
  });

  it('starts instances for waiting messages up to the maximum, then none while they are free', async () => {
    for (let i = 0; i < 5; i++) await launch.send(`m${i}`);
    const first = await launchTick(launch, compute);
    assert.equal(first.visible, 5);
    assert.equal(first.started, 3);
    await waitFor('three idle instances', async () => (await compute.list()).filter((instance) => instance.state === 'idle').length === 3);
    const second = await launchTick(launch, compute);
    assert.deepEqual({ idle: second.idle, started: second.started }, { idle: 3, started: 0 });
  });
});
