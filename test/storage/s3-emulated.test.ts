/**
 * The shared object-store contract against the S3 adapter on the fauxqs emulator on
 * loopback: the same SDK requests as against S3, without an AWS account. The conditional
 * writes that fauxqs ignores run against s3rver with its fixes (test/storage/s3.test.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { S3ObjectStore } from '../../src/storage/s3.js';
import { startEmulator } from '../cloud/emulator.js';
import { byBytes, objectStoreContract } from './contract.js';

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

describe('S3ObjectStore listing over the S3 wire protocol', () => {
  it('lists every page (S3 returns at most 1,000 keys a page) once, in binary key order', async () => {
    const emulator = await startEmulator();
    const store = new S3ObjectStore({ region: emulator.region, endpoint: emulator.endpoint, forcePathStyle: true, credentials: emulator.credentials });
    try {
      await store.ensureBucket('paged');
      // Upper and lower case, so locale order and binary order differ across the page break.
      const keys = Array.from({ length: 2_003 }, (_, i) => `p/${i % 2 === 0 ? 'K' : 'k'}${String(i).padStart(4, '0')}`);
      for (let i = 0; i < keys.length; i += 50) await Promise.all(keys.slice(i, i + 50).map((key) => store.put('paged', key, Buffer.from(key))));
      await store.put('paged', 'q/outside', Buffer.from('not under the prefix'));
      const listed: string[] = [];
      for await (const object of store.list('paged', 'p/')) listed.push(object.key);
      assert.equal(listed.length, keys.length);
      assert.deepEqual(listed, [...keys].sort(byBytes));
    } finally {
      await store.close();
      await emulator.stop();
    }
  });
});

describe('fauxqs differences the contract skips', () => {
  it('still ignores conditional writes (when this fails, run those contract cases on fauxqs too)', async () => {
    const emulator = await startEmulator();
    const store = new S3ObjectStore({ region: emulator.region, endpoint: emulator.endpoint, forcePathStyle: true, credentials: emulator.credentials });
    try {
      await store.ensureBucket('conditions');
      await store.put('conditions', 'k', Buffer.from('first'), { ifNoneMatch: '*' });
      await store.put('conditions', 'k', Buffer.from('second'), { ifNoneMatch: '*' });
      assert.equal(
        (await store.get('conditions', 'k'))?.body.toString(),
        'second',
        'fauxqs now honours If-None-Match: drop the conditionalWrites skip above, and s3rver if If-Match works too',
      );
    } finally {
      await store.close();
      await emulator.stop();
    }
  });
});
