import { describe, it, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, readdir } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import Database from '../../src/sqlite-driver.js';
import { offsetClock } from '../../src/clock.js';
import { ProcessCompute, withoutNodeWarnings, type ProcessComputeOptions } from '../../src/compute/process.js';
import { launchTick } from '../../src/controller/launch.js';
import { SqliteQueueProvider } from '../../src/queue/sqlite.js';
import { makeTempDir, waitFor } from '../helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const sleeper = path.join(here, 'sleeper-process.js');
const terminator = path.join(here, 'terminator-process.js');
const runFile = promisify(execFile);

function pidOf(registryPath: string, id: string): number {
  const db = new Database(registryPath, { readonly: true });
  try {
    return (db.prepare('SELECT pid FROM instances WHERE id = ?').get(id) as { pid: number }).pid;
  } finally {
    db.close();
  }
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie (exited, not yet reaped) counts as gone.
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8') !== '';
  } catch {
    return false;
  }
}

/** Live processes (zombies excluded) whose command line passes the test. */
function countProcesses(test: (cmdline: string) => boolean): number {
  let count = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline !== '' && test(cmdline)) count++;
    } catch {
      // Exited while we looked.
    }
  }
  return count;
}

function registryRows(registryPath: string): number {
  const db = new Database(registryPath, { readonly: true });
  try {
    return (db.prepare('SELECT COUNT(*) AS c FROM instances').get() as { c: number }).c;
  } finally {
    db.close();
  }
}

describe('process compute adapter', async () => {
  const temp = await makeTempDir();
  let compute: ProcessCompute;
  let registryPath: string;
  let run = 0;
  const open = (max: number) =>
    new ProcessCompute({ registryPath, maxInstances: max, workerCommand: { script: sleeper, args: [registryPath] }, logDir: path.join(temp.dir, 'logs') });

  beforeEach(() => {
    registryPath = path.join(temp.dir, `instances-${++run}.db`);
    compute = open(3);
  });
  afterEach(async () => {
    for (const instance of await compute.list()) await compute.terminate(instance.id);
    await compute.close();
  });
  after(() => temp.cleanup());

  const active = async (c = compute) => (await c.list()).filter((instance) => instance.state !== 'stopped');

  it('starts real processes that go from starting to idle', async () => {
    const ids = await compute.start(2);
    assert.equal(ids.length, 2);
    const listed = await compute.list();
    assert.deepEqual(listed.map((instance) => instance.id).sort(), [...ids].sort());
    await waitFor('both instances to report idle', async () => (await compute.list()).every((instance) => instance.state === 'idle'));
  });

  it('never passes the maximum, counting those still starting', async () => {
    assert.equal((await compute.start(5)).length, 3);
    assert.equal((await compute.start(1)).length, 0);
    assert.equal((await active()).length, 3);
  });

  it('holds the maximum across adapters sharing the registry (two controllers)', async () => {
    const other = open(3);
    try {
      const started = await Promise.all([compute.start(3), other.start(3), compute.start(2)]);
      assert.equal(started.flat().length, 3);
      assert.equal((await active(other)).length, 3);
    } finally {
      await other.close();
    }
  });

  it('holds the maximum between controllers in separate processes racing on one registry', async () => {
    const racer = path.join(here, 'start-racer-process.js');
    const liveWorkers = () => countProcesses((cmdline) => cmdline.includes(sleeper) && cmdline.includes(registryPath) && cmdline.includes('--instance-id'));
    let most = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        most = Math.max(most, liveWorkers());
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    try {
      const outputs = await Promise.all([1, 2].map(() => runFile(process.execPath, [racer, registryPath, sleeper, '3', '12'])));
      const started = outputs.reduce((sum, { stdout }) => sum + Number(stdout), 0);
      assert.ok(started > 6, `the controllers started instances again and again (${started})`);
    } finally {
      sampling = false;
      await sampler;
    }
    assert.ok(most <= 3, `at most 3 worker processes at once, saw ${most}`);
    assert.ok((await active()).length <= 3);
  });

  it('terminates an instance at once, and lists it as stopped', async () => {
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    await compute.terminate(id!);
    assert.equal((await compute.list()).find((instance) => instance.id === id)?.state, 'stopped');
    assert.equal((await active()).length, 0);
    // Room is free again.
    assert.equal((await compute.start(3)).length, 3);
  });

  it('notices an instance that died on its own', async () => {
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    const db = new Database(registryPath, { readonly: true });
    const { pid } = db.prepare('SELECT pid FROM instances WHERE id = ?').get(id) as { pid: number };
    db.close();
    process.kill(pid, 'SIGKILL');
    await waitFor('the dead instance to be listed as stopped', async () => (await compute.list()).find((instance) => instance.id === id)?.state === 'stopped');
  });

  it('asks every instance to stop, and they report themselves stopped', async () => {
    await compute.start(3);
    await waitFor('three idle instances', async () => (await compute.list()).filter((instance) => instance.state === 'idle').length === 3);
    const outcome = await compute.stopAll(10_000);
    assert.deepEqual(outcome, { total: 3, killed: 0 });
    assert.equal((await active()).length, 0);
  });

  it('records what a worker reports, and a stopped instance stays stopped', async () => {
    const [id] = await compute.start(1);
    await waitFor('idle', async () => (await compute.list())[0]?.state === 'idle');
    await compute.report(id!, { state: 'busy', imageId: 'img-1', processed: 4 });
    assert.deepEqual(
      (await compute.list()).map(({ state, imageId, processed }) => ({ state, imageId, processed })),
      [{ state: 'busy', imageId: 'img-1', processed: 4 }],
    );
    await compute.terminate(id!);
    await compute.report(id!, { state: 'idle' });
    assert.equal((await compute.list())[0]?.state, 'stopped');
  });

  it('rejects a request for a negative or fractional count', async () => {
    await assert.rejects(compute.start(-1), /whole number/);
    await assert.rejects(compute.start(1.5), /whole number/);
  });
});

describe('process compute deadlines', async () => {
  const temp = await makeTempDir();
  const opened: ProcessCompute[] = [];
  let registryPath: string;
  let run = 0;
  const open = (options: Partial<ProcessComputeOptions> & { workerArgs?: string[] } = {}) => {
    const { workerArgs = [], ...rest } = options;
    const compute = new ProcessCompute({
      registryPath,
      maxInstances: 1,
      workerCommand: { script: sleeper, args: [registryPath, ...workerArgs] },
      logDir: path.join(temp.dir, 'logs'),
      ...rest,
    });
    opened.push(compute);
    return compute;
  };

  beforeEach(() => {
    registryPath = path.join(temp.dir, `deadlines-${++run}.db`);
  });
  afterEach(async () => {
    for (const compute of opened.splice(0)) {
      for (const instance of await compute.list()) await compute.terminate(instance.id).catch(() => {});
      await compute.close();
    }
  });
  after(() => temp.cleanup());

  it('terminates a worker that never reports within the start timeout, and frees its slot', async () => {
    const compute = open({ startTimeoutMs: 400, workerArgs: ['--never-report'] });
    const [id] = await compute.start(1);
    await waitFor('the worker process', () => pidOf(registryPath, id!));
    const pid = pidOf(registryPath, id!);
    assert.deepEqual(await compute.enforceDeadlines(), { terminated: [], failed: [] }, 'nothing is due before the timeout');
    const sweep = await waitFor('the start timeout to end it', async () => {
      const result = await compute.enforceDeadlines();
      return result.terminated.length > 0 ? result : null;
    });
    assert.deepEqual(sweep.terminated.map(({ id, reason }) => ({ id, reason })), [{ id, reason: 'start-timeout' }]);
    assert.match(sweep.terminated[0]!.detail, /its worker did not report within/);
    assert.equal(isRunning(pid), false, 'its process is gone');
    assert.equal((await compute.list())[0]?.state, 'stopped');
    assert.equal((await compute.start(1)).length, 1, 'its slot is free again');
  });

  it('terminates a worker idle for longer than the idle timeout', async () => {
    const compute = open({ idleTimeoutMs: 300 });
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    const pid = pidOf(registryPath, id!);
    const sweep = await waitFor('the idle timeout to end it', async () => {
      const result = await compute.enforceDeadlines();
      return result.terminated.length > 0 ? result : null;
    });
    assert.deepEqual(sweep.terminated.map(({ id, reason }) => ({ id, reason })), [{ id, reason: 'idle-timeout' }]);
    assert.equal(isRunning(pid), false);
  });

  it('terminates a worker that holds one image for longer than the busy timeout', async () => {
    const compute = open({ busyTimeoutMs: 300 });
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    await compute.report(id!, { state: 'busy', imageId: 'img-1', processed: 0 });
    assert.deepEqual(await compute.enforceDeadlines(), { terminated: [], failed: [] });
    const sweep = await waitFor('the busy timeout to end it', async () => {
      const result = await compute.enforceDeadlines();
      return result.terminated.length > 0 ? result : null;
    });
    assert.deepEqual(sweep.terminated.map(({ reason }) => reason), ['busy-timeout']);
  });

  it('keeps the slot of a worker that said it stopped but did not exit, and kills it after the exit timeout', async () => {
    const compute = open({ exitTimeoutMs: 300, workerArgs: ['--hang-on-exit'] });
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    const pid = pidOf(registryPath, id!);
    process.kill(pid, 'SIGTERM');
    await waitFor('the worker to say it stopped', async () => (await compute.list())[0]?.state === 'stopped');
    assert.equal(isRunning(pid), true, 'the process still runs');
    assert.deepEqual(await compute.start(1), [], 'a process that still runs keeps its slot');
    const sweep = await waitFor('the exit timeout to end it', async () => {
      const result = await compute.enforceDeadlines();
      return result.terminated.length > 0 ? result : null;
    });
    assert.deepEqual(sweep.terminated.map(({ reason }) => reason), ['exit-timeout']);
    assert.equal(isRunning(pid), false);
    assert.equal((await compute.start(1)).length, 1);
  });

  it('records a terminate whose kill is refused, keeps counting the instance, and retries until it is gone', async (t) => {
    if (process.getuid?.() !== 0) {
      t.skip('needs root: the refused kill comes from terminating as another user (nobody)');
      return;
    }
    const compute = open();
    const [id] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    const pid = pidOf(registryPath, id!);
    // The worker runs as root; a controller running as nobody may not signal it.
    await chmod(temp.dir, 0o777);
    for (const name of await readdir(temp.dir)) if (name.startsWith(path.basename(registryPath))) await chmod(path.join(temp.dir, name), 0o666);
    const { stdout } = await runFile(process.execPath, [terminator, registryPath, id!], { uid: 65534, gid: 65534 });
    const outcome = JSON.parse(stdout) as { terminateError: string | null; sweep: { terminated: unknown[]; failed: { id: string; reason: string; error: string }[] }; state: string };
    assert.match(outcome.terminateError ?? '', /could not terminate .*the kill was refused \(EPERM\)/);
    assert.deepEqual(outcome.sweep.terminated, []);
    assert.deepEqual(outcome.sweep.failed.map(({ id, reason }) => ({ id, reason })), [{ id, reason: 'terminate-retry' }], 'the sweep retried it');
    assert.equal(outcome.state, 'idle', 'it is not listed as stopped while it runs');
    assert.equal(isRunning(pid), true);
    assert.deepEqual(await compute.start(1), [], 'it still counts against the maximum');

    const sweep = await compute.enforceDeadlines();
    assert.deepEqual(sweep.terminated.map(({ id, reason }) => ({ id, reason })), [{ id, reason: 'terminate-retry' }], 'a sweep that may kill it finishes the terminate');
    assert.equal(isRunning(pid), false);
    assert.equal((await compute.list())[0]?.state, 'stopped');
  });

  it('keeps the slot of an instance whose process another controller is still spawning', async () => {
    const compute = open({ startTimeoutMs: 500 });
    // What the registry holds between another process's reservation and its spawn.
    const db = new Database(registryPath);
    const now = Date.now();
    db.prepare(`INSERT INTO instances (id, pid, state, started_at, updated_at) VALUES ('i-spawning', NULL, 'starting', ?, ?)`).run(now, now);
    db.close();
    await assert.rejects(compute.terminate('i-spawning'), /still being started/);
    assert.deepEqual(await compute.start(1), [], 'the slot is not freed before the process exists');
    // A reservation whose spawner died frees its slot after the start timeout.
    await waitFor('the abandoned reservation to be given up', async () => {
      await compute.terminate('i-spawning').catch(() => {});
      return (await compute.list()).find((instance) => instance.id === 'i-spawning')?.state === 'stopped';
    });
    assert.equal((await compute.start(1)).length, 1);
  });

  it('forgets instances stopped longer than the retention', async () => {
    const compute = open({ retainStoppedMs: 200, maxInstances: 3 });
    const ids = await compute.start(2);
    await waitFor('two idle instances', async () => (await compute.list()).filter((instance) => instance.state === 'idle').length === 2);
    await compute.terminate(ids[0]!);
    await compute.enforceDeadlines();
    assert.equal(registryRows(registryPath), 2, 'a freshly stopped instance is kept');
    await waitFor('the stopped row to be pruned', async () => {
      await compute.enforceDeadlines();
      return registryRows(registryPath) === 1;
    });
    assert.deepEqual((await compute.list()).map((instance) => instance.id), [ids[1]]);
  });

  it('is enforced by every launch-controller tick, which then starts a replacement in the freed slot', async () => {
    const compute = open({ startTimeoutMs: 400, workerArgs: ['--never-report'] });
    const queues = new SqliteQueueProvider(path.join(temp.dir, `queues-${run}.db`));
    try {
      const launch = queues.queue('launch');
      await launch.send('image');
      const first = await launchTick(launch, compute);
      assert.equal(first.started, 1);
      const [stuck] = await compute.list();
      const tick = await waitFor('a tick that ends the stuck instance', async () => {
        const result = await launchTick(launch, compute);
        return result.deadlines ? result : null;
      });
      assert.deepEqual(tick.deadlines!.terminated.map(({ id, reason }) => ({ id, reason })), [{ id: stuck!.id, reason: 'start-timeout' }]);
      assert.equal(tick.started, 1, 'the same tick starts a replacement');
    } finally {
      await queues.close();
    }
  });

  it('ends no instance early when the wall clock steps forward', async () => {
    let offsetMs = 0;
    const compute = open({ clock: offsetClock(() => offsetMs), startTimeoutMs: 60_000, idleTimeoutMs: 60_000, busyTimeoutMs: 60_000 });
    const [busy] = await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    await compute.report(busy!, { state: 'busy', imageId: 'img-1', processed: 0 });
    assert.deepEqual(await compute.enforceDeadlines(), { terminated: [], failed: [] });
    offsetMs = 120_000;
    assert.deepEqual(await compute.enforceDeadlines(), { terminated: [], failed: [] }, 'two minutes of wall clock in a moment are not two minutes busy');
    assert.equal((await compute.list())[0]?.state, 'busy');
  });

  it('leaves alone instances within every deadline', async () => {
    const compute = open({ startTimeoutMs: 60_000, idleTimeoutMs: 60_000, busyTimeoutMs: 60_000, exitTimeoutMs: 60_000 });
    await compute.start(1);
    await waitFor('the instance to be idle', async () => (await compute.list())[0]?.state === 'idle');
    assert.deepEqual(await compute.enforceDeadlines(), { terminated: [], failed: [] });
    assert.equal((await compute.list())[0]?.state, 'idle');
  });
});

describe('why a worker stopped, from its log', () => {
  const sdkWarning = [
    '(node:4242) Warning: NodeVersionSupportWarning: The AWS SDK for JavaScript (v3)',
    'versions published after the first week of January 2027',
    'will require node >=22. You are running node v20.20.2.',
    '',
    'More information can be found at: https://a.co/c895JFp',
    '(Use `node --trace-warnings ...` to show where the warning was created)',
  ];

  it('leaves out Node process warnings, whole, and keeps the error after them', () => {
    assert.deepEqual(withoutNodeWarnings([...sdkWarning, 'icaas: the model file is missing']), ['icaas: the model file is missing']);
    // A later warning comes without the hint: only its own line goes.
    assert.deepEqual(withoutNodeWarnings(['(node:4242) [DEP0040] DeprecationWarning: punycode', 'icaas: boom']), ['icaas: boom']);
    assert.deepEqual(withoutNodeWarnings(['icaas: boom', '(node:1) Warning: x', 'icaas: again']), ['icaas: boom', 'icaas: again']);
  });

  it('says nothing rather than quote a warning, for a worker killed while it started', async () => {
    const temp = await makeTempDir();
    try {
      const logDir = path.join(temp.dir, 'logs');
      const compute = new ProcessCompute({ registryPath: path.join(temp.dir, 'instances.db'), maxInstances: 1, workerCommand: { script: sleeper, args: [] }, logDir });
      try {
        const { mkdir, writeFile } = await import('node:fs/promises');
        await mkdir(logDir, { recursive: true });
        await writeFile(path.join(logDir, 'i-0000000000aa.log'), `${sdkWarning.join('\n')}\n`);
        assert.equal(await compute.startFailure('i-0000000000aa'), undefined);
        await writeFile(path.join(logDir, 'i-0000000000bb.log'), `${sdkWarning.join('\n')}\nicaas worker: cannot reach the queue\n`);
        assert.equal(await compute.startFailure('i-0000000000bb'), 'icaas worker: cannot reach the queue');
        // A worker's own JSON lines: its routine says nothing, its error line says why.
        const json = (fields: Record<string, unknown>) => JSON.stringify({ time: '2026-01-01T00:00:00.000Z', component: 'worker', instanceId: 'i-0000000000cc', ...fields });
        await writeFile(path.join(logDir, 'i-0000000000cc.log'), [
          ...sdkWarning,
          json({ level: 'info', msg: 'worker ready' }),
          json({ level: 'fatal', msg: 'worker failed', err: { type: 'QueueError', message: 'cannot reach the queue', stack: 'QueueError: cannot reach the queue\n    at receive (queue.js:1:1)' } }),
          '',
        ].join('\n'));
        assert.equal(await compute.startFailure('i-0000000000cc'), 'worker failed: cannot reach the queue');
        await writeFile(path.join(logDir, 'i-0000000000dd.log'), `${json({ level: 'info', msg: 'worker ready' })}\n${json({ level: 'debug', msg: 'image classified' })}\n`);
        assert.equal(await compute.startFailure('i-0000000000dd'), undefined, 'routine lines are no reason');
        // A long log: the tail begins mid-line, and that piece is not taken for a reason.
        await writeFile(path.join(logDir, 'i-0000000000ee.log'), `${json({ level: 'error', msg: 'old trouble' })}\n${Array.from({ length: 400 }, () => json({ level: 'info', msg: 'worker ready', padding: 'x'.repeat(100) })).join('\n')}\n`);
        assert.equal(await compute.startFailure('i-0000000000ee'), undefined);
      } finally {
        await compute.close();
      }
    } finally {
      await temp.cleanup();
    }
  });
});
