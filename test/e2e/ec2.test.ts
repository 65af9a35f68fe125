/**
 * The fully distributed shape end to end: `icaas start --compute ec2 --store s3 --queue sqs`
 * through the real AWS SDK clients, with S3 and SQS on the emulator and EC2 on the fake
 * endpoint, whose instances run the service's own user data as local processes (see
 * test/compute/fake-ec2-host.ts). Each worker learns its instance id and its role's
 * credentials from its instance's IMDSv2, reports heartbeats to S3, and ends its instance by
 * powering it off; nothing in its environment comes from the service's.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { provisionEmulated, type EmulatedDeployment } from '../cloud/deployment.js';
import { startEmulator, type InProcessEmulator } from '../cloud/emulator.js';
import { FakeEc2 } from '../compute/fake-ec2.js';
import { LABELS_FILE, MODEL_FILE } from '../../src/classifier/model.js';
import { createOnnxClassifier } from '../../src/classifier/onnx.js';
import { cliPath, sharedModelsDir, waitFor } from '../helpers.js';
import { readShared, sharedImages, startService, uploadForm, waitForBatch, type Service } from './harness.js';

describe('end to end on EC2 (fake), S3 and SQS (emulator)', { concurrency: false }, () => {
  let emulator: InProcessEmulator;
  const cleanups: (() => Promise<unknown>)[] = [];
  before(async () => {
    emulator = await startEmulator();
  });
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
    await emulator?.stop();
  });

  /** A deployment, a fake EC2 whose instances run their user data, and the service on both. */
  async function startDeployment(options: { maxInstances: number; deadlineSeconds: number; instanceEnv?: Record<string, string> }) {
    const deployment: EmulatedDeployment = await provisionEmulated(emulator, { deadlineSeconds: options.deadlineSeconds });
    cleanups.push(() => deployment.teardown());
    const ec2 = await new FakeEc2({
      shuttingDownMs: 50,
      runUserData: {
        cliPath,
        // Stands in for the instance role: the worker gets no keys through its environment.
        roleCredentials: emulator.credentials,
        region: emulator.region,
        ...(options.instanceEnv ? { env: options.instanceEnv } : {}),
      },
    }).listen();
    cleanups.push(() => ec2.close());
    const service = await startService({
      cloud: deployment,
      maxInstances: options.maxInstances,
      idleWaitSeconds: 2,
      deadlineSeconds: options.deadlineSeconds,
      monitorCheckSeconds: 0.5,
      extraArgs: [
        '--compute', 'ec2', '--ec2-endpoint', ec2.endpoint, '--ec2-image-id', 'ami-0123456789abcdef0', '--ec2-start-timeout', '60',
        // Keeps the deadline sweep out of the way: every terminate seen here is the monitor's.
        '--instance-grace', '600',
      ],
    });
    cleanups.push(() => service.cleanup());
    return { deployment, ec2, service };
  }

  /** Every instance's console output, for a failure message. */
  async function consoles(ec2: FakeEc2): Promise<string> {
    const parts = await Promise.all([...ec2.instances.keys()].map(async (id) => `--- ${id} (${ec2.stateOf(id)})\n${(await ec2.host(id)?.consoleOutput()) ?? ''}`));
    return parts.join('\n');
  }

  async function waitForTerminated(ec2: FakeEc2, ids: string[], service: Service): Promise<void> {
    try {
      await waitFor('the instances to end terminated', () => ids.every((id) => ec2.stateOf(id) === 'terminated'), { timeoutMs: 30_000 });
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${await consoles(ec2)}\n--- service\n${service.output()}`);
    }
  }

  async function classifyInProcess(files: { name: string; body: Buffer }[]): Promise<Map<string, string>> {
    const classifier = await createOnnxClassifier({ modelPath: path.join(sharedModelsDir, MODEL_FILE), labelsPath: path.join(sharedModelsDir, LABELS_FILE) });
    try {
      const labels = new Map<string, string>();
      for (const file of files) labels.set(file.name, (await classifier.classify(file.body, 1))[0]!.label);
      return labels;
    } finally {
      await classifier.close();
    }
  }

  const runInstancesCalls = (ec2: FakeEc2) => ec2.calls.filter((call) => call.action === 'RunInstances');
  const terminatedByApi = (ec2: FakeEc2) => new Set(ec2.calls.filter((call) => call.action === 'TerminateInstances').flatMap((call) => [...call.params].filter(([key]) => key.startsWith('InstanceId.')).map(([, id]) => id)));

  it('classifies a batch on EC2 workers that learn their ids from IMDSv2 and terminate themselves when the queue is empty', async () => {
    const { ec2, service } = await startDeployment({ maxInstances: 3, deadlineSeconds: 30 });
    const images = (await sharedImages()).slice(7, 19);
    const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
    // The reference is the classifier itself run here, not the data set's labels: an int8
    // model's close calls (Irish Wolfhound or Scottish Deerhound) differ between CPUs, and
    // any label that differs from this one is the pipeline's fault.
    const expected = await classifyInProcess(files);
    const upload = await uploadForm(service.url, files);
    assert.equal(upload.status, 202, JSON.stringify(upload.body));

    // States other than starting come only from the workers' heartbeats in S3.
    await waitFor('an instance to report itself through its heartbeat', async () => {
      const status = (await (await fetch(`${service.url}/api/status`)).json()) as { instances: { state: string }[] };
      return status.instances.some((instance) => instance.state === 'busy' || instance.state === 'idle');
    }, { timeoutMs: 60_000, intervalMs: 50 });

    let batch;
    try {
      batch = await waitForBatch(service.url, upload.body.batchId, 90_000);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${await consoles(ec2)}\n--- service\n${service.output()}`);
    }
    assert.equal(batch.done, 12, JSON.stringify(batch.images.filter((image) => image.status !== 'done')));
    assert.deepEqual(batch.images.filter((image) => image.result?.label !== expected.get(image.name)).map((image) => `${image.name}: ${image.result?.label}, not ${expected.get(image.name)}`), []);

    const ids = [...ec2.instances.keys()];
    await waitForTerminated(ec2, ids, service);
    assert.ok(runInstancesCalls(ec2).length >= 1);
    for (const call of runInstancesCalls(ec2)) assert.equal(call.params.get('InstanceInitiatedShutdownBehavior'), 'terminate');
    // Every image was classified on one of the launched instances, which named itself by its id from IMDS.
    for (const image of batch.images) assert.ok(ids.includes(image.result?.instanceId ?? ''), `${image.name} ran on ${image.result?.instanceId}, not a launched instance`);
    for (const id of ids) {
      const instance = ec2.instances.get(id)!;
      assert.deepEqual(instance.machine?.exit, { code: null, signal: 'SIGKILL', poweredOff: true }, `${id} powered itself off:\n${await consoles(ec2)}`);
      const served = ec2.host(id)!.imds.served;
      assert.ok(served.includes('instance-id'), `${id}'s IMDS served ${served.join(', ')}`);
      assert.ok(served.includes('iam/security-credentials/icaas-worker'), `${id} took the role's credentials from IMDS`);
    }
    // The service never had to end one.
    assert.deepEqual([...terminatedByApi(ec2)], []);
  });

  it('ends an image that hangs its EC2 worker as an error after 3 attempts, terminating each hung instance, and finishes the rest', async () => {
    const { ec2, service } = await startDeployment({ maxInstances: 3, deadlineSeconds: 3, instanceEnv: { ICAAS_TEST_HANG_ON: 'hang-me' } });
    const images = (await sharedImages()).slice(20, 26);
    const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
    files.push({ name: 'hang-me.jpg', body: await readShared(images[0]!.file) });
    const upload = await uploadForm(service.url, files);
    assert.equal(upload.status, 202);
    let batch;
    try {
      batch = await waitForBatch(service.url, upload.body.batchId, 90_000);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${await consoles(ec2)}\n--- service\n${service.output()}`);
    }
    const hung = batch.images.find((image) => image.name === 'hang-me.jpg')!;
    assert.equal(hung.status, 'error');
    assert.equal(hung.attempts, 3);
    assert.match(hung.result?.error ?? '', /failed after 3 attempts; last: no result within 3s on instance i-[0-9a-f]+/);
    assert.equal(batch.done, 6, JSON.stringify(batch.images.filter((image) => image.status !== 'done')));

    // The monitor ended each hung instance through TerminateInstances; the rest ended themselves.
    const terminated = terminatedByApi(ec2);
    assert.equal(terminated.size, 3, `terminated ${[...terminated].join(', ')}`);
    const lastInstance = /on instance (i-[0-9a-f]+)/.exec(hung.result?.error ?? '')?.[1];
    assert.ok(lastInstance && terminated.has(lastInstance), `the last attempt's instance ${lastInstance} was terminated`);
    // Judged: the instances there were when the batch finished. (The policy may start more
    // for the launch messages the hung workers still held; those end on their own later.)
    const launched = [...ec2.instances.keys()];
    await waitForTerminated(ec2, launched, service);
    for (const id of launched) {
      const exit = ec2.instances.get(id)!.machine?.exit;
      assert.equal(exit?.poweredOff, !terminated.has(id), `${id}: ${JSON.stringify(exit)}`);
    }
    const finishedOn = new Set(batch.images.filter((image) => image.status === 'done').map((image) => image.result!.instanceId!));
    for (const id of finishedOn) assert.ok(ec2.instances.has(id));
  });
});
