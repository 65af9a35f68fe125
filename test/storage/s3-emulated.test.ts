/**
 * The shared object-store contract against the S3 adapter on the fauxqs emulator on
 * loopback: the same SDK requests as against S3, without an AWS account. The conditional
 * writes that fauxqs ignores run against s3rver with its fixes (test/storage/s3.test.ts).
 */
import { S3ObjectStore } from '../../src/storage/s3.js';
import { startEmulator } from '../cloud/emulator.js';
import { objectStoreContract } from './contract.js';

objectStoreContract('s3 (fauxqs emulator)', async () => {
  const emulator = await startEmulator();
  const store = new S3ObjectStore({ region: emulator.region, endpoint: emulator.endpoint, forcePathStyle: true, credentials: emulator.credentials });
  return {
    store,
    async cleanup() {
      await store.close();
      await emulator.stop();
    },
  };
}, {
  emulatorDifferences: {
    conditionalWrites: 'fauxqs ignores If-None-Match and If-Match on PutObject and overwrites; s3rver with its fixes runs these (test/storage/s3.test.ts)',
  },
});
