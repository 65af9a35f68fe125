import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { softmax, topK } from '../../src/classifier/postprocess.js';

describe('softmax', () => {
  it('gives probabilities that sum to 1 and keep the order of the logits', () => {
    const p = softmax([1, 2, 3]);
    assert.ok(Math.abs(p.reduce((s, v) => s + v, 0) - 1) < 1e-6);
    assert.ok(p[0]! < p[1]! && p[1]! < p[2]!);
    assert.ok(Math.abs(p[2]! - Math.exp(3) / (Math.exp(1) + Math.exp(2) + Math.exp(3))) < 1e-6);
  });

  it('stays finite for very large and very small logits', () => {
    const p = softmax([1000, 1001, -1000]);
    assert.ok(p.every(Number.isFinite));
    assert.ok(Math.abs(p[1]! - 1 / (1 + Math.exp(-1))) < 1e-6);
    assert.equal(p[2], 0);
  });
});

describe('topK', () => {
  const labels = ['a', 'b', 'c', 'd', 'e', 'f'];
  const probabilities = [0.05, 0.3, 0.1, 0.3, 0.2, 0.05];

  it('returns the k most probable, most probable first, ties by lower index', () => {
    assert.deepEqual(topK(probabilities, labels, 3).map((p) => [p.label, p.index]), [['b', 1], ['d', 3], ['e', 4]]);
    const [first] = topK(probabilities, labels, 1);
    assert.deepEqual(first, { label: 'b', probability: 0.3, index: 1 });
  });

  it('defaults to 5 and clamps k to the number of classes', () => {
    assert.equal(topK(probabilities, labels).length, 5);
    assert.deepEqual(topK(probabilities, labels, 100).map((p) => p.index), [1, 3, 4, 2, 0, 5]);
  });

  it('refuses a k that is not a positive whole number', () => {
    for (const k of [0, -1, 1.5, Number.NaN]) assert.throws(() => topK(probabilities, labels, k), RangeError);
  });
});
