import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileOffsetClock, offsetClock, systemClock } from '../src/clock.js';
import { makeTempDir, waitFor } from './helpers.js';

describe('clock', () => {
  it('offsets the wall clock by the number in the clock file, re-read as it changes, and never the monotonic one', async () => {
    const temp = await makeTempDir('icaas-clock-');
    try {
      const file = path.join(temp.dir, 'offset');
      const clock = fileOffsetClock(file);
      assert.ok(Math.abs(clock.now() - Date.now()) < 1_000, 'a missing file means no offset');
      await writeFile(file, '-30000\n');
      await waitFor('the step back to be seen', () => Date.now() - clock.now() > 29_000, { timeoutMs: 2_000, intervalMs: 20 });
      const monotonic = clock.monotonic();
      assert.ok(Math.abs(monotonic - systemClock.monotonic()) < 1_000, 'the monotonic clock is not offset');
      await writeFile(file, 'not a number');
      await waitFor('a bad file to mean no offset', () => Math.abs(clock.now() - Date.now()) < 1_000, { timeoutMs: 2_000, intervalMs: 20 });
    } finally {
      await temp.cleanup();
    }
  });

  it('an offset clock follows its offset at each call', () => {
    let offset = 5_000;
    const clock = offsetClock(() => offset);
    assert.ok(clock.now() - Date.now() > 4_000);
    offset = -5_000;
    assert.ok(Date.now() - clock.now() > 4_000);
  });
});
