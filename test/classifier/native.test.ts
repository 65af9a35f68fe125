import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { ort, sharp } from '../../src/classifier/native.js';
import { projectRoot } from '../../src/runtime.js';

/** CommonJS packages every worker loads at start; see src/classifier/native.ts and src/log.ts. */
const REQUIRED_PACKAGES = ['sharp', 'onnxruntime-node', 'pino'];

async function sourceFiles(dir: string): Promise<string[]> {
  const names = await readdir(dir, { recursive: true });
  return names.filter((name) => name.endsWith('.ts')).map((name) => path.join(dir, name));
}

/** Statements that would load a package through the ESM loader: value imports, re-exports, import(). */
function esmLoads(source: string, name: string): string[] {
  const quoted = `['"]${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}['"]`;
  const patterns = [
    new RegExp(`^\\s*import\\s+(?!type\\s)[^;]*?from\\s*${quoted}`, 'gm'),
    new RegExp(`^\\s*import\\s*${quoted}`, 'gm'),
    new RegExp(`^\\s*export\\s+(?!type\\s)[^;]*?from\\s*${quoted}`, 'gm'),
    new RegExp(`import\\(\\s*${quoted}\\s*\\)`, 'g'),
  ];
  return patterns.flatMap((pattern) => source.match(pattern) ?? []);
}

describe('native packages at start-up', () => {
  it('the scan finds every spelling of an ESM load it guards against', () => {
    const hits = [
      `import sharp from 'sharp';`,
      `import sharp, { type Metadata } from "sharp";`,
      `import {\n  pino,\n  type Logger,\n} from 'pino';`,
      `import * as ort from 'onnxruntime-node';`,
      `import 'sharp';`,
      `export { default } from 'sharp';`,
      `const { default: sharp } = await import('sharp');`,
    ];
    for (const line of hits) {
      const name = REQUIRED_PACKAGES.find((candidate) => line.includes(`'${candidate}'`) || line.includes(`"${candidate}"`))!;
      assert.ok(esmLoads(line, name).length > 0, line);
    }
    for (const line of [`import type SharpFactory from 'sharp';`, `import type * as Pino from 'pino';`, `import type { Metadata } from 'sharp';`, `const x = 'sharp';`, `import sharpish from 'sharpish';`]) {
      assert.deepEqual(REQUIRED_PACKAGES.flatMap((name) => esmLoads(line, name)), [], line);
    }
  });

  it('no source file imports sharp, onnxruntime-node or pino as an ES module (each is loaded by require)', async () => {
    const offenders: string[] = [];
    for (const file of await sourceFiles(path.join(projectRoot, 'src'))) {
      const source = await readFile(file, 'utf8');
      for (const name of REQUIRED_PACKAGES) {
        for (const statement of esmLoads(source, name)) offenders.push(`${path.relative(projectRoot, file)}: ${statement.trim()}`);
      }
    }
    assert.deepEqual(offenders, []);
  });

  it('the worker entry loads their CommonJS builds, and native.ts hands out those very instances', async () => {
    const workerEntry = fileURLToPath(new URL('../../src/worker/main.js', import.meta.url));
    const script = `
      const { createRequire } = await import('node:module');
      await import(process.argv[1]);
      const cache = Object.keys(createRequire(process.argv[1]).cache);
      const has = (tail) => cache.some((file) => file.endsWith(tail));
      console.log(JSON.stringify({
        sharp: has('/node_modules/sharp/dist/index.cjs'),
        ort: has('/node_modules/onnxruntime-node/dist/index.js'),
        pino: has('/node_modules/pino/pino.js'),
      }));`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script, workerEntry]);
    assert.deepEqual(JSON.parse(stdout.trim().split('\n').at(-1)!), { sharp: true, ort: true, pino: true });
    const requireHere = createRequire(import.meta.url);
    assert.equal(sharp, requireHere('sharp'));
    assert.equal(ort, requireHere('onnxruntime-node'));
  });
});
