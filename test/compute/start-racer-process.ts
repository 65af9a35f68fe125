/**
 * One launch controller in its own process, for the test of two controllers sharing a
 * process-compute registry: it asks for the maximum again and again, and terminates one of
 * the running instances now and then so that slots free up and the race goes on.
 */
import { ProcessCompute } from '../../src/compute/process.js';

const [registryPath, sleeper, max, rounds] = process.argv.slice(2) as [string, string, string, string];
const compute = new ProcessCompute({ registryPath, maxInstances: Number(max), workerCommand: { script: sleeper, args: [registryPath] } });
let started = 0;
for (let round = 0; round < Number(rounds); round++) {
  started += (await compute.start(Number(max))).length;
  const active = (await compute.list()).filter((instance) => instance.state !== 'stopped');
  const victim = active[Math.floor(Math.random() * active.length)];
  if (victim) await compute.terminate(victim.id).catch(() => {});
}
await compute.close();
process.stdout.write(`${started}\n`);
