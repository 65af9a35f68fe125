// Bundles the browser page: src/ui/main.ts -> dist/ui/app.js, plus the static files.
// Asset links in index.html get a content hash, so a new build is never hidden behind the
// browser's cached copy of the old one.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const source = path.join(root, 'src', 'ui');
const target = path.join(root, 'dist', 'ui');
// Start clean: a file removed from src/ui must not linger in what the server serves.
await rm(target, { recursive: true, force: true });
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
  if (/\.(css|svg|png|ico)$/.test(file)) await copyFile(path.join(source, file), path.join(target, file));
}
const version = async (file) => createHash('sha256').update(await readFile(path.join(target, file))).digest('hex').slice(0, 12);
for (const file of await readdir(source)) {
  if (!file.endsWith('.html')) continue;
  let html = await readFile(path.join(source, file), 'utf8');
  for (const asset of ['app.js', 'style.css']) {
    html = html.replaceAll(`/assets/${asset}"`, `/assets/${asset}?v=${await version(asset)}"`);
  }
  await writeFile(path.join(target, file), html);
}
