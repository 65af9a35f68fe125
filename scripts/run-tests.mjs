// Runs the compiled test files (dist/test/**/*.test.js) with Node's test runner. Node 20
// has no glob support for --test and treats every .js file under a "test" folder as a
// test, which would also run the support scripts that tests start as child processes.
//
//   node scripts/run-tests.mjs                       every test file
//   node scripts/run-tests.mjs web/ storage/         the files under these paths of test/
//   node scripts/run-tests.mjs --tier unit [...]     the files of a named tier (see TIERS)
//   node scripts/run-tests.mjs --list [...]          print the files instead of running them
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Named sets of test files, as path prefixes relative to test/. A prefix that matches no file
// yet is allowed: a tier names where its kind of test lives.
const TIERS = {
  // Fast: the adapters, controllers, policies, simulator, parsing and the web tier in
  // process; no running service and no classifying workers (only short-lived stand-ins).
  unit: [
    'cli.test', 'clock', 'config', 'run-tests', 'sqlite-driver',
    'classifier/', 'compute/', 'controller/', 'queue/sqlite', 'queue/multiprocess',
    'sim/', 'storage/fs', 'ui/logic', 'web/',
  ],
  // Everything that runs against the S3/SQS/EC2 emulator on loopback.
  cloud: ['cloud/', 'queue/sqs', 'storage/s3', 'aws/', 'e2e/cloud', 'e2e/ec2'],
};

function usageError(message) {
  console.error(`run-tests: ${message}`);
  process.exit(2);
}

function tierPrefixes(name) {
  if (name === undefined || name === '') usageError(`--tier needs a name: ${Object.keys(TIERS).join(', ')}`);
  if (!Object.hasOwn(TIERS, name)) usageError(`unknown tier ${JSON.stringify(name)}; the tiers are ${Object.keys(TIERS).join(', ')}`);
  return TIERS[name];
}

/** The path prefixes to run (the positional ones plus those of each --tier), and --list. */
function parseArguments(args) {
  const prefixes = [];
  let list = false;
  for (let i = 0; i < args.length; i += 1) {
    const arg = args[i];
    if (arg === '--list') list = true;
    else if (arg === '--tier') prefixes.push(...tierPrefixes(args[++i]));
    else if (arg.startsWith('--tier=')) prefixes.push(...tierPrefixes(arg.slice('--tier='.length)));
    else if (arg.startsWith('-')) usageError(`unknown option ${arg}; use --tier NAME, --list or path prefixes under test/`);
    else prefixes.push(arg);
  }
  return { prefixes, list };
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const testRoot = path.join(root, 'dist', 'test');
const { prefixes: only, list } = parseArguments(process.argv.slice(2));

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
if (list) {
  for (const file of files) console.log(path.relative(testRoot, file));
  process.exit(0);
}
// One file at a time: the end-to-end tests start many processes, and this machine class
// has two cores.
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { stdio: 'inherit' });
process.exit(result.status ?? 1);
