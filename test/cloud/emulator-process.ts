/**
 * The SQS and S3 emulator in a process of its own:
 *
 *   node emulator-process.js serve
 *
 * It prints {"endpoint":"http://127.0.0.1:<port>"} once it listens, and stops when its
 * stdin closes (so it never outlives the test that started it) or on SIGTERM.
 */
import { startEmulator } from './emulator.js';

// Only with the argument: a test runner that picks up every file under test/ must not
// start an emulator that waits for a stdin nobody closes.
if (process.argv[2] === 'serve') {
  const emulator = await startEmulator();
  const stop = (): void => {
    emulator.stop().then(() => process.exit(0), () => process.exit(1));
  };
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
  process.once('SIGTERM', stop);
  process.stdout.write(`${JSON.stringify({ endpoint: emulator.endpoint })}\n`);
}
