/**
 * The worker's receive loop when the launch queue fails (the real SQS client against a
 * loopback endpoint whose queues are missing): it retries with growing waits, logs the
 * fault once, recovers when the queue appears, and gives up when the fault lasts.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadClassifier } from '../../src/classifier/index.js';
import type { Classifier } from '../../src/classifier/port.js';
import { ProcessCompute } from '../../src/compute/process.js';
import { QueueError } from '../../src/queue/port.js';
import { SqsQueueProvider } from '../../src/queue/sqs.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { runWorker, type WorkerOptions } from '../../src/worker/worker.js';
import { makeTempDir, waitFor } from '../helpers.js';
import { startSqsEndpoint, type SqsEndpoint } from '../queue/sqs-endpoint.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';
import type { Logger } from '../../src/log.js';

describe('worker receive loop against a failing queue', async () => {
  const temp = await makeTempDir();
  let classifier: Classifier;
  let sqs: SqsEndpoint;
  let provider: SqsQueueProvider;
  let compute: ProcessCompute;
  before(async () => {
    classifier = (await loadClassifier({ allowDownload: false })).classifier;
    sqs = await startSqsEndpoint('missing');
    process.env.AWS_ACCESS_KEY_ID = 'AKIDRECEIVETEST';
    process.env.AWS_SECRET_ACCESS_KEY = 'receive-test-secret';
    provider = new SqsQueueProvider({ prefix: 'w-', endpoint: sqs.url, region: 'eu-west-1' });
    compute = new ProcessCompute({ registryPath: path.join(temp.dir, 'instances.db'), maxInstances: 5 });
  });
  after(async () => {
    await classifier?.close();
    await provider?.close();
    await compute?.close();
    await sqs?.close();
    await temp.cleanup();
  });

  const options = (log: Logger, receiveFailureLimitMs: number): WorkerOptions => ({
    instanceId: 'i-receive',
    store: new FsObjectStore(path.join(temp.dir, 'buckets')),
    inputBucket: 'in-bucket',
    outputBucket: 'out-bucket',
    queues: { launch: provider.queue('launch'), monitor: provider.queue('monitor'), output: provider.queue('output') },
    compute,
    classifier,
    idleWaitSeconds: 0,
    receiveFailureLimitMs,
    log,
  });

  it('retries with growing waits, logs the fault once, and gives up with it when it lasts', async () => {
    sqs.mode = 'missing';
    sqs.requests.length = 0;
    const { log, entries } = capturingLogger();
    const started = Date.now();
    await assert.rejects(runWorker(options(log, 3000)), (error: unknown) => error instanceof QueueError && error.code === 'queue-missing');
    assert.ok(Date.now() - started >= 3000, 'it kept trying for the whole limit');
    // 0.25 s doubling: a handful of attempts in 3 s, where retrying at once would make thousands.
    assert.ok(sqs.requests.length >= 3 && sqs.requests.length <= 12, `${sqs.requests.length} attempts`);
    assert.deepEqual(entries.filter((entry) => JSON.stringify(entry).includes('does not exist')).length, 1, showLog(entries));
    assert.equal(logged(entries, { msg: 'loop failing', loop: 'launch queue' }).length, 1, showLog(entries));
  });

  it('recovers when the queue appears, and says so', async () => {
    sqs.mode = 'missing';
    sqs.requests.length = 0;
    const { log, entries } = capturingLogger();
    const running = runWorker(options(log, 30_000));
    await waitFor('two failed attempts', () => sqs.requests.length >= 2);
    sqs.mode = 'empty';
    const summary = await running;
    assert.deepEqual(summary, { processed: 0, reason: 'idle' });
    const recovered = logged(entries, { msg: 'loop working again', loop: 'launch queue', level: 'info' });
    assert.ok(recovered.length === 1 && Number(recovered[0]!.failures) >= 2 && Number(recovered[0]!.failingSeconds) >= 1, showLog(entries));
  });
});
