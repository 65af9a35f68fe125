/** The web tier in this process on the real embedded adapters, for HTTP-level tests. */
import { loadConfig } from '../../src/config.js';
import { silentLogger, type Logger } from '../../src/log.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { startWebTier, type WebTier, type WebTierOptions } from '../../src/web/index.js';

export interface InProcessWebTier {
  runtime: Runtime;
  web: WebTier;
  url: string;
  stop(): Promise<void>;
}

/** Starts on a free loopback port with its data in dataDir; extra flags as on the command line. */
export async function startInProcessWebTier(dataDir: string, flags: string[] = [], log: Logger = silentLogger(), options: WebTierOptions = {}): Promise<InProcessWebTier> {
  const { config } = loadConfig({ argv: ['--host', '127.0.0.1', '--port', '0', '--data', dataDir, ...flags], env: {} });
  const runtime = await openRuntime(config);
  const web = await startWebTier(runtime, log, undefined, options).catch(async (error: unknown) => {
    await runtime.close();
    throw error;
  });
  return {
    runtime,
    web,
    url: web.url,
    async stop() {
      await web.stop();
      await runtime.close();
    },
  };
}
