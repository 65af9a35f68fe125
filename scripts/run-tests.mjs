// Runs the compiled test files (dist/test/**/*.test.js) with Node's test runner. Node 20
// has no glob support for --test and treats every .js file under a "test" folder as a
// test, which would also run the support scripts that tests start as child processes.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const testRoot = path.join(root, 'dist', 'test');
const only = process.argv.slice(2);

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
// One file at a time: the end-to-end tests start many processes, and this machine class
// has two cores.
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { stdio: 'inherit' });
process.exit(result.status ?? 1);
