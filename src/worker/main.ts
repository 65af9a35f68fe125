/** `icaas worker`: one instance, in its own process, until the queue is empty. */
import path from 'node:path';
import sharp from 'sharp';
import { ConfigError, type Config } from '../config.js';
import { loadClassifier } from '../classifier/index.js';
import { openRuntime, projectRoot } from '../runtime.js';
import { noticeDelaySeconds } from '../messages.js';
import { runWorker } from './worker.js';

export async function workerMain(config: Config, instanceIdFlag: string | undefined, log: (line: string) => void): Promise<number> {
  const instanceId = instanceIdFlag ?? (process.env.ICAAS_INSTANCE_ID || (await ownInstanceId(config)));
  if (!INSTANCE_ID.test(instanceId)) throw new ConfigError(`--instance-id must be 1-100 letters, digits, ".", "_" or "-", got ${JSON.stringify(instanceId)}`);
  const runtime = await openRuntime(config);
  const stopping = new AbortController();
  const onSignal = () => {
    log('asked to stop: finishing the image in hand');
    stopping.abort();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  try {
    const { classifier, modelPath } = await loadClassifier({
      ...(config.model ? { model: config.model } : {}),
      ...(config.labels ? { labels: config.labels } : {}),
      cacheDir: path.join(projectRoot, '.cache', 'models'),
      maxPixels: config.maxPixels,
      log,
    });
    // libvips keeps recent operations for reuse; a worker decodes each image once, so the
    // cache would only hold memory (some 10 MB of peak resident memory, measured).
    sharp.cache(false);
    log(`instance ${instanceId} ready with ${path.basename(modelPath)}`);
    const faults = {
      ...(process.env.ICAAS_TEST_HANG_ON ? { hangOn: process.env.ICAAS_TEST_HANG_ON } : {}),
      ...(process.env.ICAAS_TEST_CRASH_ON ? { crashOn: process.env.ICAAS_TEST_CRASH_ON } : {}),
      ...(process.env.ICAAS_TEST_DELAY_MS ? { delayMs: Number(process.env.ICAAS_TEST_DELAY_MS) } : {}),
    };
    const summary = await runWorker({
      instanceId,
      store: runtime.store,
      inputBucket: config.inputBucket,
      outputBucket: config.outputBucket,
      queues: runtime.queues,
      compute: runtime.compute,
      classifier,
      idleWaitSeconds: config.idleWaitSeconds,
      noticeDelaySeconds: noticeDelaySeconds(config),
      log,
      signal: stopping.signal,
      faults,
    });
    log(`instance ${instanceId} stopping (${summary.reason}) after ${summary.processed} images`);
    await classifier.close();
    return 0;
  } finally {
    await runtime.compute.report(instanceId, { state: 'stopped', imageId: null }).catch(() => {});
    await runtime.close();
  }
}

const INSTANCE_ID = /^[A-Za-z0-9._-]{1,100}$/;

async function ownInstanceId(config: Config): Promise<string> {
  if (config.compute === 'ec2') {
    const { instanceIdFromImds } = await import('../compute/imds.js');
    return instanceIdFromImds();
  }
  throw new ConfigError('needs --instance-id (the launch controller passes it when it starts a worker)');
}
