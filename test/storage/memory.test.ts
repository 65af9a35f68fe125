import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryObjectStore } from '../../src/storage/memory.js';
import { objectStoreContract } from './contract.js';

objectStoreContract('memory', async () => {
  const store = new MemoryObjectStore();
  return { store, cleanup: () => store.close() };
});

describe('MemoryObjectStore', () => {
  it('keeps its own copy of a body: changing the caller\'s buffer, or the one read, changes nothing stored', async () => {
    const store = new MemoryObjectStore();
    await store.ensureBucket('copies');
    const body = Buffer.from('original');
    await store.put('copies', 'k', body);
    body.write('CHANGED!');
    const read = await store.get('copies', 'k');
    assert.equal(read?.body.toString(), 'original');
    read!.body.write('CHANGED!');
    assert.equal((await store.get('copies', 'k'))?.body.toString(), 'original');
  });
});
