/** One launch-controller tick on a real SQLite queue and real processes. */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ProcessCompute } from '../../src/compute/process.js';
import { launchTick } from '../../src/controller/launch.js';
import { drainTimePolicy, queueMatchPolicy } from '../../src/controller/policy.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { makeTempDir, waitFor } from '../helpers.js';

const sleeper = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'compute', 'sleeper-process.js');

describe('launch controller tick', async () => {
  const temp = await makeTempDir();
  const registryPath = path.join(temp.dir, 'instances.db');
  const provider = new SqliteQueueProvider(path.join(temp.dir, 'queues.db'));
  const compute = new ProcessCompute({ registryPath, maxInstances: 3, capacity: 2, workerCommand: { script: sleeper, args: [registryPath] } });
  const launch = provider.queue('launch');
  after(async () => {
    for (const instance of await compute.list()) await compute.terminate(instance.id);
    await compute.close();
    await provider.close();
    await temp.cleanup();
  });

  it('starts nothing for an empty queue', async () => {
    const tick = await launchTick(launch, compute);
    assert.deepEqual({ ...tick.observation, started: tick.started }, {
      backlog: 0, inFlight: 0, starting: 0, idle: 0, busy: 0, startingAgesMs: [], max: 3, capacity: 2,
      serviceMs: tick.observation.serviceMs, startupMs: tick.observation.startupMs, startCostMs: compute.startCostMs, started: 0,
    });
    assert.deepEqual(tick.measured, { service: false, startup: false });
    assert.equal(tick.decision.reason, 'nothing waiting');
  });

  it('drain-time starts no more instances than can usefully run, and learns their start-up', async () => {
    for (let i = 0; i < 40; i++) await launch.send(`m${i}`);
    const first = await launchTick(launch, compute, { policy: drainTimePolicy });
    assert.equal(first.observation.backlog, 40);
    assert.equal(first.started, 2, first.decision.reason);
    await waitFor('two idle instances', async () => (await compute.list()).filter((instance) => instance.state === 'idle').length === 2);
    const second = await launchTick(launch, compute, { policy: drainTimePolicy });
    assert.equal(second.started, 0, second.decision.reason);
    assert.match(second.decision.reason, /capacity/);
  });

  it('queue-match starts instances for waiting messages up to the maximum, then none while they are free', async () => {
    const first = await launchTick(launch, compute, { policy: queueMatchPolicy });
    assert.equal(first.observation.backlog, 40);
    assert.equal(first.started, 1);
    await waitFor('three idle instances', async () => (await compute.list()).filter((instance) => instance.state === 'idle').length === 3);
    const second = await launchTick(launch, compute, { policy: queueMatchPolicy });
    assert.deepEqual({ idle: second.observation.idle, started: second.started }, { idle: 3, started: 0 });
  });
});
