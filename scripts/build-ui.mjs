// Bundles the browser page: src/ui/main.ts -> dist/ui/app.js, plus the static files.
import { build } from 'esbuild';
import { copyFile, mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const source = path.join(root, 'src', 'ui');
const target = path.join(root, 'dist', 'ui');
await mkdir(target, { recursive: true });
await build({
  entryPoints: [path.join(source, 'main.ts')],
  outfile: path.join(target, 'app.js'),
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  sourcemap: true,
  logLevel: 'warning',
});
for (const file of await readdir(source)) {
  if (/\.(html|css|svg|png|ico)$/.test(file)) await copyFile(path.join(source, file), path.join(target, file));
}
