/**
 * Tokens drawn from a pooled block of random bytes: right length and encoding, and no byte
 * handed out twice, across the refills of the block.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomToken } from '../src/random-token.js';

describe('randomToken', () => {
  it('encodes the asked number of bytes', () => {
    assert.match(randomToken(16, 'hex'), /^[0-9a-f]{32}$/);
    assert.match(randomToken(8, 'hex'), /^[0-9a-f]{16}$/);
    assert.match(randomToken(12, 'base64url'), /^[A-Za-z0-9_-]{16}$/);
    assert.match(randomToken(24, 'base64url'), /^[A-Za-z0-9_-]{32}$/);
  });

  it('never repeats a token across many refills of its block', () => {
    // 20,000 tokens of 24 bytes use the 4 KiB block about 117 times over; sizes that do not
    // divide the block make tokens straddle where a refill happens.
    const seen = new Set<string>();
    for (let i = 0; i < 20_000; i++) {
      const token = randomToken(i % 3 === 0 ? 24 : i % 3 === 1 ? 12 : 16, 'hex');
      assert.ok(!seen.has(token), `token ${i} repeated an earlier one`);
      seen.add(token);
    }
  });

  it('hands out fresh bytes: the hex digits of many tokens are evenly spread', () => {
    // A block reused without a refill, or a zeroed one, would skew this at once.
    const counts = new Map<string, number>();
    for (let i = 0; i < 4_000; i++) for (const digit of randomToken(24, 'hex')) counts.set(digit, (counts.get(digit) ?? 0) + 1);
    const total = 4_000 * 48;
    assert.equal(counts.size, 16);
    for (const [digit, count] of counts) assert.ok(Math.abs(count / total - 1 / 16) < 0.01, `digit ${digit}: ${count} of ${total}`);
  });

  it('refuses sizes it cannot serve', () => {
    for (const size of [0, -1, 1.5, Number.NaN, 4097]) assert.throws(() => randomToken(size, 'hex'), RangeError, String(size));
  });
});
