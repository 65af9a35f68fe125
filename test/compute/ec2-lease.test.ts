/**
 * The maximum across launch controllers on EC2: two launch loops, each with its own
 * Ec2Compute, SDK client and store instance (as two processes would have), race for a large
 * backlog against one stateful fake EC2 endpoint whose DescribeInstances lags behind
 * RunInstances, as EC2's does. The fake samples its instances on every RunInstances.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, afterEach, describe, it } from 'node:test';
import { Ec2Compute } from '../../src/compute/ec2.js';
import { LaunchLease } from '../../src/controller/lease.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { makeTempDir } from '../helpers.js';
import { FakeEc2 } from './fake-ec2.js';

process.env.AWS_ACCESS_KEY_ID ??= 'AKIAFAKEFAKEFAKE';
process.env.AWS_SECRET_ACCESS_KEY ??= 'fake-secret';

const BUCKET = 'icaas-output';
const MAX = 4;

describe('launch controllers racing on EC2', async () => {
  const temp = await makeTempDir();
  const closing: (() => Promise<void>)[] = [];
  let run = 0;
  afterEach(async () => {
    for (const close of closing.splice(0).reverse()) await close();
  });
  after(() => temp.cleanup());

  /**
   * Runs two controllers until `launches` RunInstances calls were made; each controller
   * starts over (a new process: new adapter, new lease holder, the old one released)
   * after every third launch of its own, so the lease changes hands again and again.
   */
  async function race(options: { withLease: boolean; launches: number }): Promise<{ maxActive: number; runs: number; byController: number[] }> {
    const root = path.join(temp.dir, `race-${++run}`);
    const setup = new FsObjectStore(root);
    await setup.ensureBucket(BUCKET);
    closing.push(() => setup.close());
    // Instances stay pending briefly, then run for a while and shut themselves down, as
    // workers that finish do; new ones are missing from DescribeInstances for 150 ms.
    const fake = await new FakeEc2({ pendingMs: 30, lifetimeMs: 250, shuttingDownMs: 10, describeLagMs: 150, latencyMs: 1 }).listen();
    closing.push(() => fake.close());
    let maxActive = 0;
    let runs = 0;
    fake.onRunInstances = () => {
      runs++;
      const counts = fake.countByState();
      maxActive = Math.max(maxActive, counts.pending + counts.running + counts.stopping);
    };

    const open = () => {
      const store = new FsObjectStore(root);
      const compute = new Ec2Compute({
        endpoint: fake.endpoint,
        region: 'us-east-1',
        maxInstances: MAX,
        deployment: 'prod',
        launchTemplate: 'prod-worker',
        userData: '#!/bin/bash\n',
        ...(options.withLease ? { lease: new LaunchLease({ store, bucket: BUCKET, durationMs: 2000, clockSkewMs: 0 }) } : {}),
      });
      return { compute, close: async () => (await compute.close(), await store.close()) };
    };
    const byController = [0, 0];
    const controller = async (index: number) => {
      let current = open();
      let sinceRestart = 0;
      try {
        while (runs < options.launches) {
          // A large backlog: every tick wants as many as the maximum allows.
          const started = await current.compute.start(MAX);
          if (started.length > 0) {
            byController[index]!++;
            if (++sinceRestart === 3) {
              await current.close();
              current = open();
              sinceRestart = 0;
            }
          }
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 10));
        }
      } finally {
        await current.close();
      }
    };
    await Promise.all([controller(0), controller(1)]);
    return { maxActive, runs, byController };
  }

  it('never has more instances than the maximum, with the launch lease', async () => {
    const outcome = await race({ withLease: true, launches: 40 });
    assert.ok(outcome.maxActive <= MAX, `at most ${MAX} pending or running at any RunInstances, saw ${outcome.maxActive}`);
    assert.ok(outcome.byController.every((count) => count > 0), `both controllers launched in turn: ${outcome.byController.join(', ')}`);
  });

  it('passes the maximum without the lease (the race is real and the sampling sees it)', async () => {
    const outcome = await race({ withLease: false, launches: 20 });
    assert.ok(outcome.maxActive > MAX, `expected more than ${MAX}, saw ${outcome.maxActive}`);
  });
});
