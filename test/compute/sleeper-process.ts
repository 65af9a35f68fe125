/**
 * A stand-in worker for the process-compute tests: it reports itself idle in the registry
 * and waits until it is told to stop (SIGTERM), as `icaas worker` does between images.
 */
import { ProcessCompute } from '../../src/compute/process.js';

const registryPath = process.argv[2]!;
const id = process.argv[process.argv.indexOf('--instance-id') + 1]!;
const compute = new ProcessCompute({ registryPath, maxInstances: 1000 });
await compute.report(id, { state: 'idle', imageId: null, processed: 0 });
const keepAlive = setInterval(() => {}, 60_000);
process.once('SIGTERM', async () => {
  clearInterval(keepAlive);
  await compute.report(id, { state: 'stopped', imageId: null });
  await compute.close();
  process.exit(0);
});
