/** `icaas worker`: one instance, in its own process, until the queue is empty. */
import path from 'node:path';
import { ConfigError, type Config } from '../config.js';
import { loadClassifier } from '../classifier/index.js';
import { sharp } from '../classifier/native.js';
import type { Logger } from '../log.js';
import { openRuntime, projectRoot } from '../runtime.js';
import { noticeDelaySeconds } from '../messages.js';
import { runWorker } from './worker.js';

/**
 * Every line carries the instance's id. A failure is logged here, as a line like every
 * other, so the worker's log (a file, for local workers) stays one JSON object a line and
 * its last error line says why the worker stopped.
 */
export async function workerMain(config: Config, instanceIdFlag: string | undefined, logger: Logger): Promise<number> {
  const instanceId = instanceIdFlag ?? (process.env.ICAAS_INSTANCE_ID || (await ownInstanceId(config)));
  if (!INSTANCE_ID.test(instanceId)) throw new ConfigError(`--instance-id must be 1-100 letters, digits, ".", "_" or "-", got ${JSON.stringify(instanceId)}`);
  const instanceLog = logger.child({ instanceId });
  const log = instanceLog.child({ component: 'worker' });
  try {
    return await runInstance(config, instanceId, instanceLog);
  } catch (error) {
    log.fatal({ err: error }, 'worker failed');
    // As the command line answers errors: 2 for what the user can fix from the message.
    return error instanceof ConfigError || (error as Error | undefined)?.name === 'ModelNotFoundError' ? 2 : 1;
  }
}

async function runInstance(config: Config, instanceId: string, instanceLog: Logger): Promise<number> {
  const log = instanceLog.child({ component: 'worker' });
  const runtime = await openRuntime(config);
  const stopping = new AbortController();
  const onSignal = () => {
    log.info('asked to stop: finishing the image in hand');
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
      log: instanceLog.child({ component: 'classifier' }),
    });
    // libvips keeps recent operations for reuse; a worker decodes each image once, so the
    // cache would only hold memory (some 10 MB of peak resident memory, measured).
    sharp.cache(false);
    log.info({ model: path.basename(modelPath) }, 'worker ready');
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
    log.info({ reason: summary.reason, processed: summary.processed }, 'worker stopping');
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
