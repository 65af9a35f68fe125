import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import Database, { driverPackage } from '../src/sqlite-driver.js';
import { projectRoot } from './helpers.js';

const runFile = promisify(execFile);

describe('sqlite driver', () => {
  it('loads better-sqlite3 13 only where Node-API 10 is available, and 12 elsewhere', () => {
    assert.equal(driverPackage('10', '13.2.0'), 'better-sqlite3');
    assert.equal(driverPackage('11', '13.2.0'), 'better-sqlite3');
    assert.equal(driverPackage('9', '13.2.0'), 'better-sqlite3-v12');
    assert.equal(driverPackage(undefined, '13.2.0'), 'better-sqlite3-v12');
    // An installation from before the split has 12 under the main name: it runs everywhere it was built.
    assert.equal(driverPackage('9', '12.11.1'), 'better-sqlite3');
    assert.equal(driverPackage('10', '12.11.1'), 'better-sqlite3');
  });

  it('opens a database on this Node.js', () => {
    const db = new Database(':memory:');
    try {
      assert.deepEqual(db.prepare('SELECT 1 + ? AS sum').get(1), { sum: 2 });
    } finally {
      db.close();
    }
  });

  it('survives the garbage collector freeing databases and statements', async () => {
    // better-sqlite3 12 on Node.js 24 aborts the process here (SIGABRT in RemoveEnvironmentCleanupHook).
    const script = path.join(projectRoot, 'dist', 'test', 'sqlite-churn-process.js');
    const { stdout } = await runFile(process.execPath, ['--expose-gc', script], { timeout: 120_000 });
    assert.deepEqual(JSON.parse(stdout), { opened: 20_000 });
  });
});
