/**
 * The fake EC2's real instances (runUserData): user data runs as a process group whose life
 * drives the instance's states, with a metadata service (IMDSv2) of its own. The end-to-end
 * EC2 tests rely on each of these behaviours, so each is checked here on small scripts.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { EC2Client, RunInstancesCommand, TerminateInstancesCommand, type RunInstancesCommandInput } from '@aws-sdk/client-ec2';
import { encodeUserData } from '../../src/compute/ec2.js';
import { cliPath, waitFor } from '../helpers.js';
import { FakeEc2, type FakeState } from './fake-ec2.js';

const REGION = 'eu-west-3';

describe('fake EC2 running user data', { concurrency: false }, () => {
  const fakes: FakeEc2[] = [];
  const clients: EC2Client[] = [];
  after(async () => {
    for (const client of clients) client.destroy();
    for (const fake of fakes) await fake.close();
  });

  async function start(env: Record<string, string> = {}) {
    const fake = await new FakeEc2({ shuttingDownMs: 20, runUserData: { cliPath, env, region: REGION, roleCredentials: { accessKeyId: 'test', secretAccessKey: 'test' } } }).listen();
    fakes.push(fake);
    const client = new EC2Client({ endpoint: fake.endpoint, region: REGION, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } });
    clients.push(client);
    const run = async (script: string, extra: Partial<RunInstancesCommandInput> = { InstanceInitiatedShutdownBehavior: 'terminate' }) => {
      const response = await client.send(new RunInstancesCommand({ MinCount: 1, MaxCount: 1, ImageId: 'ami-0123456789abcdef0', UserData: encodeUserData(script), ...extra }));
      return response.Instances![0]!.InstanceId!;
    };
    const states = (id: string) => {
      const seen: FakeState[] = [];
      const previous = fake.onTransition;
      fake.onTransition = (instance, from) => {
        previous?.(instance, from);
        if (instance.id === id) seen.push(instance.state);
      };
      return seen;
    };
    return { fake, client, run, states };
  }

  it('runs the user data with an IMDSv2 of its own; shutdown ends it, pending to running to terminated', async () => {
    const { fake, run } = await start({ GREETING: 'hello' });
    const id = await run([
      '#!/bin/bash',
      'set -eu',
      'token=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" http://169.254.169.254/latest/api/token)',
      'echo "id=$(curl -sf -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)"',
      'echo "region=$(curl -sf -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/placement/region)"',
      'echo "unauthorised=$(curl -s -o /dev/null -w "%{http_code}" http://169.254.169.254/latest/meta-data/instance-id)"',
      'echo "greeting=$GREETING credentials=${AWS_ACCESS_KEY_ID:-none} via $(command -v icaas)"',
      'shutdown -h now',
      'echo "still running after shutdown"',
    ].join('\n'));
    const instance = fake.instances.get(id)!;
    assert.ok(instance.state === 'pending' || instance.state === 'running');
    await waitFor('the instance to terminate', () => fake.stateOf(id) === 'terminated', { timeoutMs: 10_000 });
    const host = fake.host(id)!;
    const output = await host.consoleOutput();
    assert.match(output, new RegExp(`^id=${id}$`, 'm'));
    assert.match(output, new RegExp(`^region=${REGION}$`, 'm'));
    assert.match(output, /^unauthorised=401$/m);
    // Only what the test gave: nothing of this machine's environment leaks in.
    assert.match(output, new RegExp(`^greeting=hello credentials=none via ${host.dir}/bin/icaas$`, 'm'));
    assert.doesNotMatch(output, /still running/);
    assert.deepEqual(instance.machine?.exit, { code: null, signal: 'SIGKILL', poweredOff: true });
    assert.deepEqual(host.imds.served, ['instance-id', 'placement/region']);
    assert.equal(host.imds.refused, 1);
  });

  it('keeps a machine whose user data ended without shutdown running, as EC2 does, until it is terminated', async () => {
    const { fake, client, run } = await start();
    const id = await run('#!/bin/bash\necho done\n');
    await waitFor('the user data to end', () => fake.instances.get(id)!.machine?.exited, { timeoutMs: 10_000 });
    assert.equal(fake.stateOf(id), 'running');
    await client.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
    await waitFor('the instance to terminate', () => fake.stateOf(id) === 'terminated', { timeoutMs: 5000 });
    assert.equal(fake.instances.get(id)!.machine?.exit?.poweredOff, false);
  });

  it('TerminateInstances kills the whole process group; shutting-down lasts until it is gone', async () => {
    const { fake, client, run, states } = await start();
    const id = await run('#!/bin/bash\nsleep 300 &\necho "child=$!"\nwait\n');
    const seen = states(id);
    const host = await waitFor('the instance to run', () => (fake.stateOf(id) === 'running' ? fake.host(id) : undefined), { timeoutMs: 10_000 });
    const child = Number(await waitFor('the background child', async () => /^child=(\d+)$/m.exec(await host.consoleOutput())?.[1]));
    assert.doesNotThrow(() => process.kill(child, 0), 'the child runs');
    await client.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
    await waitFor('the instance to terminate', () => fake.stateOf(id) === 'terminated', { timeoutMs: 5000 });
    assert.deepEqual(seen.slice(-2), ['shutting-down', 'terminated']);
    assert.equal(fake.instances.get(id)!.machine?.exit?.signal, 'SIGKILL');
    await waitFor('the background child to be gone', () => {
      try {
        process.kill(child, 0);
        return false;
      } catch {
        return true;
      }
    }, { timeoutMs: 5000 });
  });

  it('without InstanceInitiatedShutdownBehavior=terminate, shutdown stops the instance instead', async () => {
    const { fake, run } = await start();
    const id = await run('#!/bin/bash\nshutdown -h now\n', {});
    await waitFor('the instance to stop', () => fake.stateOf(id) === 'stopped', { timeoutMs: 10_000 });
  });

  it('close() kills every machine and removes its folder', async () => {
    const { fake, run } = await start();
    const id = await run('#!/bin/bash\nsleep 300\n');
    const host = await waitFor('the instance to run', () => (fake.stateOf(id) === 'running' ? fake.host(id) : undefined), { timeoutMs: 10_000 });
    await fake.close();
    assert.equal(host.exit?.signal, 'SIGKILL');
    assert.equal(existsSync(host.dir), false);
  });
});
