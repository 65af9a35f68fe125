/** Logits to ranked predictions. */
import type { Prediction } from './port.js';

export const DEFAULT_TOP_K = 5;

/**
 * Softmax that subtracts the largest logit first, so large logits cannot overflow
 * `Math.exp` to Infinity (and the result to NaN).
 */
export function softmax(logits: ArrayLike<number>): Float32Array {
  const n = logits.length;
  const out = new Float32Array(n);
  if (n === 0) return out;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(logits[i]! - max);
    out[i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) out[i] = out[i]! / sum;
  return out;
}

/**
 * The k most probable classes, most probable first; ties keep the lower index first so
 * the order is deterministic. k is clamped to the number of classes.
 */
export function topK(probabilities: ArrayLike<number>, labels: readonly string[], k: number = DEFAULT_TOP_K): Prediction[] {
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`topK must be a whole number of at least 1, got ${k}`);
  const n = Math.min(probabilities.length, labels.length);
  const count = Math.min(k, n);
  // A partial selection keeps this O(n * k); k is small (5 by default) next to 1000 classes.
  const picked: number[] = [];
  for (let i = 0; i < n; i++) {
    const p = probabilities[i]!;
    if (picked.length === count && p <= probabilities[picked[count - 1]!]!) continue;
    let at = picked.length === count ? count - 1 : picked.length;
    while (at > 0 && probabilities[picked[at - 1]!]! < p) at--;
    picked.splice(at, 0, i);
    if (picked.length > count) picked.pop();
  }
  return picked.map((index) => ({ label: labels[index]!, probability: probabilities[index]!, index }));
}
