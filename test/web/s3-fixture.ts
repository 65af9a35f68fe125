/** An S3-protocol server on loopback (s3rver), for running the web tier on the S3 adapter. */
import S3rver from 's3rver';
import { makeS3rverFaithful } from '../storage/s3rver-fixes.js';
import { makeTempDir } from '../helpers.js';

export interface LocalS3 {
  /** Command-line flags that point the service at this server. */
  flags: string[];
  stop(): Promise<void>;
}

export async function startLocalS3(): Promise<LocalS3> {
  const temp = await makeTempDir('icaas-s3rver-');
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: temp.dir });
  makeS3rverFaithful(server);
  const { port } = await server.run();
  // The adapter takes credentials from the SDK's default chain; s3rver accepts these.
  process.env.AWS_ACCESS_KEY_ID ??= 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY ??= 'S3RVER';
  return {
    flags: ['--store', 's3', '--s3-endpoint', `http://127.0.0.1:${port}`, '--s3-path-style', '--region', 'us-east-1'],
    async stop() {
      server.httpServer?.closeAllConnections();
      await server.close();
      await temp.cleanup();
    },
  };
}
