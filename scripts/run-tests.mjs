// Runs the compiled test files (dist/test/**/*.test.js) with Node's test runner. Node 20
// has no glob support for --test and treats every .js file under a "test" folder as a
// test, which would also run the support scripts that tests start as child processes.
//
//   node scripts/run-tests.mjs                       every test file
//   node scripts/run-tests.mjs web/ storage/         the files under these paths of test/
//   node scripts/run-tests.mjs --tier unit [...]     the files of a named tier (see TIERS)
//   node scripts/run-tests.mjs --list [...]          print the files instead of running them
//   node scripts/run-tests.mjs --tiers [...]         print each file with the tiers it is in
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Named sets of test files, as path prefixes relative to test/. Every test file is in exactly
// one tier (test/run-tests.test.ts checks it). A prefix that matches no file yet is allowed: a
// tier names where its kind of test lives.
const TIERS = {
  // Fast and in process: pure logic, policies, the simulator, parsing, configuration and the
  // in-memory adapters on the shared contract suites. No disk-backed adapter, no process of
  // the service, no worker. Its files run concurrently.
  unit: [
    'backoff', 'clock', 'config', 'log.test', 'random-token', 'run-tests', 'sse',
    'classifier/model', 'classifier/native', 'classifier/onnx', 'classifier/postprocess', 'classifier/preprocess',
    'compute/ec2.test', 'compute/imds', 'controller/measurements', 'controller/policy',
    'queue/memory', 'sim/engine', 'sim/parsing', 'sim/replay', 'sim/svg', 'storage/memory', 'ui/logic',
  ],
  // The real embedded adapters (SQLite across processes, files), the built command line, real
  // worker and controller processes, the web tier in process, and the classifier on the
  // shared images.
  integration: [
    'cli.test', 'cli-logs', 'sim/cli', 'sqlite-driver',
    'classifier/accuracy', 'compute/ec2-deadlines', 'compute/ec2-lease', 'compute/fake-ec2-host', 'compute/process',
    'controller/launch', 'controller/lease', 'controller/loop', 'controller/metrics', 'controller/monitor',
    'queue/multiprocess', 'queue/sqlite', 'storage/fs', 'web/', 'worker/',
  ],
  // Everything that runs against the S3/SQS/EC2 emulator on loopback.
  cloud: ['cloud/', 'queue/sqs', 'storage/s3', 'aws/', 'e2e/cloud', 'e2e/ec2'],
  // The whole service as separate processes, and the page in Chromium.
  e2e: ['e2e/chaos', 'e2e/faults', 'e2e/pipeline', 'e2e/queue-kill', 'ui/behaviour', 'ui/page', 'ui/problems', 'ui/scaling'],
};
// Tiers whose files are independent and short enough to run side by side.
const CONCURRENT_TIERS = new Set(['unit']);

function usageError(message) {
  console.error(`run-tests: ${message}`);
  process.exit(2);
}

function checkTier(name) {
  if (name === undefined || name === '') usageError(`--tier needs a name: ${Object.keys(TIERS).join(', ')}`);
  if (!Object.hasOwn(TIERS, name)) usageError(`unknown tier ${JSON.stringify(name)}; the tiers are ${Object.keys(TIERS).join(', ')}`);
  return name;
}

/**
 * The path prefixes to run (the positional ones plus those of each --tier), the tiers named,
 * whether any positional prefix was given, and --list / --tiers.
 */
function parseArguments(args) {
  const prefixes = [];
  const tiers = [];
  let positional = false;
  let list = false;
  let showTiers = false;
  for (let i = 0; i < args.length; i += 1) {
    const arg = args[i];
    if (arg === '--list') list = true;
    else if (arg === '--tiers') showTiers = true;
    else if (arg === '--tier') tiers.push(checkTier(args[++i]));
    else if (arg.startsWith('--tier=')) tiers.push(checkTier(arg.slice('--tier='.length)));
    else if (arg.startsWith('-')) usageError(`unknown option ${arg}; use --tier NAME, --tiers, --list or path prefixes under test/`);
    else {
      prefixes.push(arg);
      positional = true;
    }
  }
  for (const tier of tiers) prefixes.push(...TIERS[tier]);
  return { prefixes, tiers, positional, list, showTiers };
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const testRoot = path.join(root, 'dist', 'test');
const { prefixes: only, tiers, positional, list, showTiers } = parseArguments(process.argv.slice(2));

function find(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return find(full);
    return entry.name.endsWith('.test.js') ? [full] : [];
  });
}

const files = find(testRoot)
  .filter((file) => only.length === 0 || only.some((part) => path.relative(testRoot, file).startsWith(part)))
  .sort();
if (files.length === 0) {
  console.error(`no test files found under ${testRoot}${only.length ? ` matching ${only.join(', ')}` : ''}; run npm run build first`);
  process.exit(1);
}
if (showTiers) {
  // Each file with the tiers it is in (normally exactly one), tab-separated.
  for (const file of files) {
    const relative = path.relative(testRoot, file);
    const named = Object.keys(TIERS).filter((tier) => TIERS[tier].some((prefix) => relative.startsWith(prefix)));
    console.log(`${relative}\t${named.join(',')}`);
  }
  process.exit(0);
}
if (list) {
  for (const file of files) console.log(path.relative(testRoot, file));
  process.exit(0);
}
// Otherwise one file at a time: the end-to-end tests start many processes, and this machine
// class has two cores. Files of the concurrent tiers mostly wait on timers and sockets, so
// two per core keep the cores busy.
const concurrent = !positional && tiers.length > 0 && tiers.every((tier) => CONCURRENT_TIERS.has(tier));
const concurrency = concurrent ? Math.max(2, 2 * availableParallelism()) : 1;
const result = spawnSync(process.execPath, ['--test', `--test-concurrency=${concurrency}`, ...files], { stdio: 'inherit' });
process.exit(result.status ?? 1);
