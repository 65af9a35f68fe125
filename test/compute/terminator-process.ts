/**
 * Terminates one instance of a process-compute registry from a separate process, which
 * the tests run as another user so that the kill is refused. Prints what terminate and a
 * deadline sweep answered, as one JSON line.
 */
import { ProcessCompute } from '../../src/compute/process.js';

const [registryPath, id] = process.argv.slice(2) as [string, string];
const compute = new ProcessCompute({ registryPath, maxInstances: 1 });
let terminateError: string | null = null;
try {
  await compute.terminate(id);
} catch (error) {
  terminateError = (error as Error).message;
}
const sweep = await compute.enforceDeadlines();
const listed = (await compute.list()).find((instance) => instance.id === id);
await compute.close();
process.stdout.write(`${JSON.stringify({ terminateError, sweep, state: listed?.state ?? null })}\n`);
