/**
 * The whole service on the embedded default, with real processes: web tier, controllers,
 * worker processes, SQLite queues and file buckets.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { readEventLog, type RunEvent } from '../../src/event-log.js';
import { cliPath, makeTempDir, postFilesInOneRequest, waitFor } from '../helpers.js';
import { scrape } from '../metrics-text.js';
import { followEvents, getBatch, killBusyWorker, readShared, sharedImages, startService, uploadForm, waitForBatch, type Service } from './harness.js';

function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cliPath, ...args], { timeout: 120_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout, stderr });
    });
  });
}

describe('end to end on the embedded default', { concurrency: false }, () => {
  const services: Service[] = [];
  after(async () => {
    // Newest first: a restarted service shares its data folder with the one before it.
    for (const service of services.reverse()) await service.cleanup();
  });

  it('classifies 100 images uploaded in one request, scaling out and back to zero', async (t) => {
    // Capacity named, so the test means the same on a machine with more cores.
    const service = await startService({ maxInstances: 20, idleWaitSeconds: 2, extraArgs: ['--capacity', '2'] });
    services.push(service);
    const images = await sharedImages();
    assert.equal(images.length, 100);
    const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
    const upload = await uploadForm(service.url, files);
    assert.equal(upload.status, 202, JSON.stringify(upload.body));
    assert.equal(upload.body.images.length, 100);
    assert.deepEqual(upload.body.rejected, []);
    const events = followEvents(service.url, upload.body.batchId);

    const batch = await waitForBatch(service.url, upload.body.batchId, 180_000);
    assert.equal(batch.total, 100);
    assert.equal(batch.errors, 0, JSON.stringify(batch.images.filter((image) => image.status === 'error')));
    assert.equal(new Set(batch.images.map((image) => image.id)).size, 100);
    const truth = new Map(images.map((image) => [image.file, image.label]));
    const correct = batch.images.filter((image) => image.result?.label === truth.get(image.name)).length;
    t.diagnostic(`top-1 ${correct}/100, peak instances ${service.peak()}`);
    assert.ok(correct >= 75, `top-1 ${correct}% is below 75%`);

    // Every result is shown, as the page shows it (the stream, after the read at its open), and none twice on the stream.
    await waitFor('100 results shown live', () => events.shown() === 100, { timeoutMs: 10_000 });
    events.close();
    assert.ok([...events.finals.values()].every((count) => count === 1), 'a result was shown more than once');

    await waitFor('the tier to scale back to zero', async () => (await service.activeInstances()) === 0, { timeoutMs: 30_000 });
    assert.ok(service.peak() > 1, `instances never rose above 1 (peak ${service.peak()})`);
    // The default policy starts no more workers than can run at once.
    assert.ok(service.peak() <= 2, `instances peaked at ${service.peak()}, over the capacity of 2`);

    const status = await (await fetch(`${service.url}/api/status`)).json() as { scaling?: { policy: string; capacity: number; max: number; measured: { startup: boolean }; startupMs: number; reason: string } };
    assert.equal(status.scaling?.policy, 'drain-time', JSON.stringify(status.scaling));
    assert.equal(status.scaling.capacity, 2);
    assert.equal(status.scaling.max, 20);
    assert.equal(status.scaling.measured.startup, true, 'start-up is measured from the instances that started');
    assert.ok(status.scaling.startupMs > 0);

    // The run's event log holds what the simulator calibrates against.
    const file = path.join(service.dataDir, 'events.jsonl');
    const ids = new Set<string>(upload.body.images.map((image: { id: string }) => image.id));
    const log = await waitFor('the event log to hold every arrival, finish and stop', async () => {
      const { events: logged } = await readEventLog(file).catch(() => ({ events: [] as RunEvent[] }));
      const finished = new Set(logged.filter((event) => event.type === 'image-finish').map((event) => (event as { imageId: string }).imageId));
      const arrived = logged.filter((event) => event.type === 'arrival' && ids.has(event.imageId)).length;
      const launched = logged.filter((event) => event.type === 'launch').length;
      const stopped = logged.filter((event) => event.type === 'stop').length;
      return arrived === 100 && [...ids].every((id) => finished.has(id)) && launched > 0 && stopped === launched ? logged : undefined;
    }, { timeoutMs: 20_000 });
    const kinds = new Set(log.map((event) => event.type));
    // image-start comes only from progress notes, which workers send for slow images alone.
    for (const kind of ['run', 'arrival', 'launch', 'ready', 'image-finish', 'stop']) assert.ok(kinds.has(kind as RunEvent['type']), `no ${kind} event`);
  });

  it('starts the first instance when an upload is queued, not at the launch controller\'s next tick', async () => {
    // The controller's first tick is at start-up, with nothing waiting; its next is a minute
    // later, after this test's deadline.
    const service = await startService({ extraArgs: ['--launch-interval', '60000'] });
    services.push(service);
    const [image] = await sharedImages();
    const upload = await uploadForm(service.url, [{ name: image!.file, body: await readShared(image!.file) }]);
    assert.equal(upload.status, 202);
    const batch = await waitForBatch(service.url, upload.body.batchId, 30_000);
    assert.equal(batch.images[0]!.status, 'done');
  });

  it('starts a worker while a large upload is still arriving, so it is ready when the images are queued', async () => {
    // Only wake-ups start instances here (the next tick is a minute away). The upload takes
    // about 3 s; with a 2 s idle wait, it counts as incoming once 2 s or less remain.
    const service = await startService({ extraArgs: ['--launch-interval', '60000'], idleWaitSeconds: 2 });
    services.push(service);
    const images = (await sharedImages()).slice(0, 20);
    const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
    const upload = await postFilesInOneRequest(service.url, files, { pauseMs: 150 });
    assert.equal(upload.status, 202);
    await waitForBatch(service.url, upload.body.batchId!, 60_000);
    const { events } = await readEventLog(path.join(service.dataDir, 'events.jsonl'));
    const firstLaunch = Math.min(...events.filter((event) => event.type === 'launch').map((event) => event.at));
    const queued = Math.min(...events.filter((event) => event.type === 'arrival').map((event) => event.at));
    assert.ok(firstLaunch < queued - 500, `the first worker was launched ${firstLaunch - queued} ms after the images were queued`);
  });

  it('holds 100 concurrent synchronous requests, answering each with name:label', async () => {
    const service = await startService({ maxInstances: 20, idleWaitSeconds: 2 });
    services.push(service);
    const images = await sharedImages();
    const answers = await Promise.all(images.map(async (image) => {
      const form = new FormData();
      form.append('image', new Blob([await readShared(image.file)]), image.file);
      const response = await fetch(`${service.url}/`, { method: 'POST', body: form });
      return { status: response.status, text: await response.text(), image };
    }));
    assert.deepEqual(answers.filter((answer) => answer.status !== 200).map((answer) => `${answer.status} ${answer.text}`), []);
    for (const answer of answers) assert.match(answer.text, new RegExp(`^${answer.image.file.replace(/\.JPEG$/, '')}:.+`));
    const correct = answers.filter((answer) => answer.text.endsWith(`:${answer.image.label}`)).length;
    assert.ok(correct >= 75, `top-1 ${correct}%`);
  });

  it('classifies files and folders from the CLI, printing one line per image and failing on a rejected file', async () => {
    const service = await startService({ maxInstances: 2, idleWaitSeconds: 1 });
    services.push(service);
    const temp = await makeTempDir('icaas-cli-');
    try {
      const folder = path.join(temp.dir, 'photos');
      await mkdir(path.join(folder, 'nested'), { recursive: true });
      const images = (await sharedImages()).filter((image) => ['n01530575_brambling.JPEG', 'n01641577_bullfrog.JPEG'].includes(image.file));
      await writeFile(path.join(folder, images[0]!.file), await readShared(images[0]!.file));
      await writeFile(path.join(folder, 'nested', images[1]!.file), await readShared(images[1]!.file));
      await writeFile(path.join(folder, 'notes.txt'), 'skipped: not an image extension');
      const fake = path.join(temp.dir, 'fake.jpg');
      await writeFile(fake, 'text pretending to be a photo');
      const { code, stdout, stderr } = await runCli(['classify', folder, fake, '--url', service.url]);
      const lines = stdout.trim().split('\n').sort();
      assert.equal(lines.length, 3, stdout + stderr);
      assert.match(lines.find((line) => line.includes('brambling.JPEG'))!, /: brambling \(0\.\d{3}\)$/);
      assert.match(lines.find((line) => line.includes('bullfrog.JPEG'))!, /: American bullfrog \(0\.\d{3}\)$/);
      assert.match(lines.find((line) => line.startsWith('fake.jpg'))!, /rejected: not an image/);
      assert.match(stderr, /classified 2\/2/);
      assert.equal(code, 1, 'a rejected file makes the command fail');
      const unreachable = await runCli(['classify', folder, '--url', 'http://127.0.0.1:9']);
      assert.equal(unreachable.code, 1);
      assert.match(unreachable.stderr, /cannot reach the service/);
    } finally {
      await temp.cleanup();
    }
  });

  it('finishes every image when an instance is killed while it holds one', async () => {
    // Each image takes a little longer, so the kill lands while the victim holds one.
    const service = await startService({ maxInstances: 3, idleWaitSeconds: 2, deadlineSeconds: 20, env: { ICAAS_TEST_DELAY_MS: '400' } });
    services.push(service);
    const images = (await sharedImages()).slice(0, 12);
    const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
    const upload = await uploadForm(service.url, files);
    assert.equal(upload.status, 202);
    const victim = await killBusyWorker(service, upload.body.batchId);

    const batch = await waitForBatch(service.url, upload.body.batchId, 120_000);
    assert.equal(batch.total, 12);
    assert.equal(batch.done, 12, JSON.stringify(batch.images.filter((image) => image.status !== 'done')));
    const retried = batch.images.find((image) => image.id === victim.imageId)!;
    assert.equal(retried.status, 'done');
    assert.equal(retried.attempts, 2, 'the image the killed instance held was retried once');
  });

  it('ends an image that hangs its worker as an error after 3 attempts, and finishes the rest', async () => {
    const service = await startService({
      maxInstances: 4,
      idleWaitSeconds: 2,
      deadlineSeconds: 3,
      env: { ICAAS_TEST_HANG_ON: 'hang-me' },
    });
    services.push(service);
    const images = (await sharedImages()).slice(20, 26);
    const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
    files.push({ name: 'hang-me.jpg', body: await readShared(images[0]!.file) });
    const upload = await uploadForm(service.url, files);
    assert.equal(upload.status, 202);
    const batch = await waitForBatch(service.url, upload.body.batchId, 120_000);
    const hung = batch.images.find((image) => image.name === 'hang-me.jpg')!;
    assert.equal(hung.status, 'error');
    assert.equal(hung.attempts, 3);
    assert.match(hung.result?.error ?? '', /after 3 attempts/);
    assert.equal(batch.done, 6);
    assert.equal(batch.errors, 1);
    // One process serves the web tier's and the controllers' metrics: each attempt of the
    // hung image hung one instance, which the monitor terminated. Every attempt after an
    // image's first is a retry (the image a hung worker held before may have lost one).
    const metrics = await scrape(`${service.url}/metrics`);
    assert.equal(metrics.value('icaas_hung_instance_terminations_total'), 3);
    assert.equal(metrics.value('icaas_retries_total'), batch.images.reduce((sum, image) => sum + image.attempts - 1, 0));
    assert.equal(metrics.value('icaas_images_finished_total', { outcome: 'ok' }), 6);
    assert.equal(metrics.value('icaas_images_finished_total', { outcome: 'error' }), 1);
    assert.equal(metrics.value('icaas_upload_to_result_seconds_count', { outcome: 'error' }), 1);
  });

  it('rejects a text file and an empty file with reasons and classifies the rest; results survive a restart', async () => {
    let service = await startService({ maxInstances: 2, idleWaitSeconds: 1 });
    services.push(service);
    const images = (await sharedImages()).slice(40, 43);
    const files = await Promise.all(images.map(async (image) => ({ name: image.file, body: await readShared(image.file) })));
    files.splice(1, 0, { name: 'notes.jpg', body: Buffer.from('this is text, not an image') });
    files.push({ name: 'empty.png', body: Buffer.alloc(0) });
    const upload = await uploadForm(service.url, files);
    assert.equal(upload.status, 202);
    assert.equal(upload.body.images.length, 3);
    assert.deepEqual(upload.body.rejected.map((rejection: { name: string }) => rejection.name), ['notes.jpg', 'empty.png']);
    assert.match(upload.body.rejected[0].reason, /not an image/);
    assert.match(upload.body.rejected[1].reason, /empty/);
    const before = await waitForBatch(service.url, upload.body.batchId, 60_000);
    assert.equal(before.done, 3);
    const metrics = await waitFor('the monitor to have seen every notice and every start-up measured', async () => {
      const now = await scrape(`${service.url}/metrics`);
      const launches = now.value('icaas_instance_launches_total');
      return now.value('icaas_queue_wait_seconds_count') === 3 && launches > 0 && now.value('icaas_instance_startup_seconds_count') === launches ? now : undefined;
    }, { timeoutMs: 20_000, intervalMs: 200 });
    assert.equal(metrics.value('icaas_images_accepted_total'), 3);
    assert.equal(metrics.value('icaas_images_rejected_total', { reason: 'not_an_image' }), 1);
    assert.equal(metrics.value('icaas_images_rejected_total', { reason: 'empty' }), 1);
    assert.equal(metrics.value('icaas_images_finished_total', { outcome: 'ok' }), 3);
    assert.equal(metrics.value('icaas_images_finished_total', { outcome: 'error' }), 0);
    assert.equal(metrics.value('icaas_classification_seconds_count'), 3);
    assert.equal(metrics.value('icaas_upload_to_result_seconds_count', { outcome: 'ok' }), 3);
    assert.equal(metrics.value('icaas_retries_total'), 0);
    assert.deepEqual(before.images.map((image) => image.name), images.map((image) => image.file));

    await service.stop('SIGTERM');
    service = await startService({ dataDir: service.dataDir, maxInstances: 2, idleWaitSeconds: 1 });
    services.push(service);
    const after = await getBatch(service.url, upload.body.batchId);
    assert.deepEqual(after.images.map((image) => [image.id, image.status, image.result?.label]), before.images.map((image) => [image.id, image.status, image.result?.label]));
  });
});
