/**
 * A stand-in worker for the process-compute tests: it reports itself idle in the registry
 * and waits until it is told to stop (SIGTERM), as `icaas worker` does between images.
 * Misbehaviours, chosen by flag: `--never-report` (it never says it is up) and
 * `--hang-on-exit` (on SIGTERM it says it stopped, then keeps running).
 */
import { ProcessCompute } from '../../src/compute/process.js';

const registryPath = process.argv[2]!;
const id = process.argv[process.argv.indexOf('--instance-id') + 1]!;
const neverReport = process.argv.includes('--never-report');
const hangOnExit = process.argv.includes('--hang-on-exit');
const compute = new ProcessCompute({ registryPath, maxInstances: 1000 });
if (!neverReport) await compute.report(id, { state: 'idle', imageId: null, processed: 0 });
const keepAlive = setInterval(() => {}, 60_000);
process.once('SIGTERM', async () => {
  await compute.report(id, { state: 'stopped', imageId: null });
  if (hangOnExit) return;
  clearInterval(keepAlive);
  await compute.close();
  process.exit(0);
});
