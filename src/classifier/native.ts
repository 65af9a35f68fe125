/**
 * sharp and ONNX Runtime, loaded with require(). An ESM import of a CommonJS package makes
 * Node scan the package's source for its export names, and sharp's ESM build imports
 * CommonJS dependencies (semver, @img/colour), so the scan ran long enough for V8 to
 * optimise the scanner on a background thread as well. Measured in a fresh process:
 * sharp 145 ms by import, 65 ms by require; onnxruntime-node 61 ms and 24 ms. A worker
 * instance pays this at every start, on the cores its classifier needs.
 *
 * Everything in the service that uses either package takes it from here, so one instance
 * of each is loaded (sharp's settings, such as its thread count and cache, belong to it).
 */
import { createRequire } from 'node:module';
import type * as OnnxRuntime from 'onnxruntime-node';
import type SharpFactory from 'sharp';

const requireModule = createRequire(import.meta.url);

export const sharp = requireModule('sharp') as typeof SharpFactory;
export const ort = requireModule('onnxruntime-node') as typeof OnnxRuntime;
export type { OnnxRuntime };
