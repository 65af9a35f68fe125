/**
 * The shared queue contract against the SQS adapter over the real SQS wire protocol, on
 * the fauxqs emulator on loopback: the same SDK requests as in production, without an AWS
 * account. test/queue/sqs-contract.test.ts runs the same contract on real SQS when given
 * credentials.
 */
import { SQSClient } from '@aws-sdk/client-sqs';
import { SqsQueueProvider } from '../../src/queue/sqs.js';
import { startEmulator } from '../cloud/emulator.js';
import { queueContract } from './contract.js';

queueContract('sqs (fauxqs emulator)', async () => {
  const emulator = await startEmulator();
  const client = new SQSClient({ endpoint: emulator.endpoint, region: emulator.region, credentials: emulator.credentials });
  const provider = new SqsQueueProvider({ prefix: 'icaas-', client, createMissing: true });
  return {
    provider,
    async cleanup() {
      await provider.close();
      client.destroy();
      await emulator.stop();
    },
  };
}, {
  emulatorDifferences: {
    astralCharacters: 'fauxqs refuses characters above U+FFFF (InvalidMessageContents); SQS accepts #x10000 to #x10FFFF',
  },
});
