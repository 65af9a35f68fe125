/**
 * The whole service in the distributed shape, `--store s3 --queue sqs` with local worker
 * processes, against the S3 and SQS protocol emulator on loopback: every request goes
 * through the real AWS SDK clients and over the wire. The emulator runs as a process of
 * its own, so it outlives every service process the tests stop, kill and restart.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { formatReport, runChaos } from '../chaos/run.js';
import { S3ObjectStore } from '../../src/storage/s3.js';
import { provisionEmulated, type EmulatedDeployment } from '../cloud/deployment.js';
import { startEmulatorProcess, type Emulator } from '../cloud/emulator.js';
import { waitFor } from '../helpers.js';
import { followEvents, getBatch, killBusyWorker, readShared, sharedImages, startService, uploadForm, waitForBatch, type Service } from './harness.js';
import { parseLogLines } from '../log-capture.js';

describe('end to end on S3 and SQS (protocol emulator)', { concurrency: false }, () => {
  let emulator: Emulator;
  const services: Service[] = [];
  const deployments: EmulatedDeployment[] = [];
  before(async () => {
    emulator = await startEmulatorProcess();
  });
  after(async () => {
    // Newest first: a restarted service shares its data folder with the one before it.
    for (const service of services.reverse()) await service.cleanup();
    for (const deployment of deployments) await deployment.teardown().catch(() => undefined);
    await emulator.stop();
  });

  async function deploy(deadlineSeconds = 30): Promise<EmulatedDeployment> {
    const deployment = await provisionEmulated(emulator, { deadlineSeconds });
    deployments.push(deployment);
    return deployment;
  }

  async function filesOf(from: number, to: number): Promise<{ name: string; body: Buffer }[]> {
    const images = (await sharedImages()).slice(from, to);
    return Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
  }

  it('classifies 40 images, each result shown once, scaling out and back to zero', async () => {
    const cloud = await deploy();
    const service = await startService({ cloud, maxInstances: 20, idleWaitSeconds: 2, extraArgs: ['--capacity', '2'] });
    services.push(service);
    const said = parseLogLines(service.output()).map((line) => line.msg);
    assert.ok(said.some((msg) => /^object store: S3 at http:\/\/127\.0\.0\.1:\d+/.test(msg)), service.output());
    assert.ok(said.some((msg) => /^queues: SQS/.test(msg)), service.output());
    const images = (await sharedImages()).slice(0, 40);
    const upload = await uploadForm(service.url, await filesOf(0, 40));
    assert.equal(upload.status, 202, JSON.stringify(upload.body));
    const events = followEvents(service.url, upload.body.batchId);
    const batch = await waitForBatch(service.url, upload.body.batchId, 120_000);
    assert.equal(batch.errors, 0, JSON.stringify(batch.images.filter((image) => image.status === 'error')));
    const truth = new Map(images.map((image) => [image.file, image.label]));
    const correct = batch.images.filter((image) => image.result?.label === truth.get(image.name)).length;
    assert.ok(correct >= 30, `top-1 ${correct}/40`);
    await waitFor('40 results shown live', () => events.shown() === 40, { timeoutMs: 10_000 });
    events.close();
    assert.ok([...events.finals.values()].every((count) => count === 1), 'a result was shown more than once');

    // The results are in the emulated output bucket, read back through S3 itself.
    const store = new S3ObjectStore({ region: emulator.region, endpoint: emulator.endpoint, forcePathStyle: true, credentials: emulator.credentials });
    try {
      let results = 0;
      for await (const object of store.list(cloud.settings.outputBucket, 'results/')) if (object.key.endsWith('.json')) results++;
      assert.equal(results, 40);
    } finally {
      await store.close();
    }
    await waitFor('the tier to scale back to zero', async () => (await service.activeInstances()) === 0, { timeoutMs: 30_000 });
    assert.ok(service.peak() >= 1 && service.peak() <= 2, `peak ${service.peak()}`);
    // A worker that could not reach the emulator would have been counted as a start failure.
    assert.doesNotMatch(service.output(), /start failure|could not start/i);
  });

  it('finishes every image when an instance is killed while it holds one', async () => {
    const cloud = await deploy(20);
    const service = await startService({ cloud, maxInstances: 3, idleWaitSeconds: 2, deadlineSeconds: 20, env: { ICAAS_TEST_DELAY_MS: '400' } });
    services.push(service);
    const upload = await uploadForm(service.url, await filesOf(40, 50));
    assert.equal(upload.status, 202);
    const victim = await killBusyWorker(service, upload.body.batchId);
    const batch = await waitForBatch(service.url, upload.body.batchId, 120_000);
    assert.equal(batch.done, 10, JSON.stringify(batch.images.filter((image) => image.status !== 'done')));
    assert.equal(batch.images.find((image) => image.id === victim.imageId)!.attempts, 2, 'the image the killed instance held was retried once');
  });

  it('ends an image that hangs its worker as an error after 3 attempts, and finishes the rest', async () => {
    const cloud = await deploy(3);
    const service = await startService({ cloud, maxInstances: 4, idleWaitSeconds: 2, deadlineSeconds: 3, env: { ICAAS_TEST_HANG_ON: 'hang-me' } });
    services.push(service);
    const files = await filesOf(50, 55);
    files.push({ name: 'hang-me.jpg', body: files[0]!.body });
    const upload = await uploadForm(service.url, files);
    assert.equal(upload.status, 202);
    const batch = await waitForBatch(service.url, upload.body.batchId, 120_000);
    const hung = batch.images.find((image) => image.name === 'hang-me.jpg')!;
    assert.equal(hung.status, 'error');
    assert.equal(hung.attempts, 3);
    assert.match(hung.result?.error ?? '', /after 3 attempts/);
    assert.equal(batch.done, 5);
  });

  it('loses nothing when the service is killed mid-batch and started again', async () => {
    const cloud = await deploy();
    // Slow images, so the kill lands with work queued and in flight.
    const first = await startService({ cloud, maxInstances: 2, idleWaitSeconds: 5, env: { ICAAS_TEST_DELAY_MS: '1500' } });
    services.push(first);
    const upload = await uploadForm(first.url, await filesOf(60, 68));
    assert.equal(upload.status, 202);
    const batchId = upload.body.batchId as string;
    await waitFor('an image to finish', async () => (await getBatch(first.url, batchId)).done >= 1, { timeoutMs: 60_000, intervalMs: 100 });
    // The web tier and the controllers die at once, without a chance to tidy up; the
    // workers they started are killed too (cleanup), so the images they held come back.
    await first.cleanup();
    const second = await startService({ cloud, dataDir: first.dataDir, maxInstances: 2, idleWaitSeconds: 2 });
    services.push(second);
    const batch = await waitForBatch(second.url, batchId, 120_000);
    assert.equal(batch.total, 8);
    assert.equal(batch.done, 8, JSON.stringify(batch.images.filter((image) => image.status !== 'done')));
    assert.ok(batch.images.every((image) => image.attempts >= 1 && image.attempts <= 3));
  });

  it('keeps every invariant in a short chaos run: busy workers, the web tier and the controllers killed', async (t) => {
    const cloud = await deploy();
    const report = await runChaos({
      cloud,
      images: 40,
      clients: 8,
      durationSeconds: 12,
      maxInstances: 6,
      killEveryMs: 2000,
      // Workers start more slowly on the AWS SDK; one killed while starting counts towards
      // the start-failure hold-back, which the embedded chaos run already covers.
      killBusyOnly: true,
      timeoutSeconds: 90,
    });
    for (const line of formatReport(report).split('\n')) t.diagnostic(line);
    assert.deepEqual(report.failures, [], formatReport(report));
    assert.equal(report.final, 40);
    assert.equal(report.killed.web, 1);
    assert.equal(report.killed.controllers, 1);
    assert.ok(report.instances.peakRegistry <= 6 && report.instances.peakProcesses <= 6);
    assert.equal(report.attempts.overLimit, 0);
  });
});
