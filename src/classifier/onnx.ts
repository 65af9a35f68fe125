/** The classifier port on ONNX Runtime (CPU). */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { ort, sharp, type OnnxRuntime } from './native.js';
import { readLabels } from './labels.js';
import type { Classifier, Prediction } from './port.js';
import { DEFAULT_TOP_K, softmax, topK } from './postprocess.js';
import { CHANNELS, INPUT_SIZE, preprocess, type PreprocessOptions } from './preprocess.js';

export interface OnnxModelOptions {
  modelPath: string;
  labelsPath: string;
  /** ONNX Runtime intra-op threads; default 1 (one thread per worker instance). */
  threads?: number;
}

/** The loaded network without image handling: normalized tensor data in, logits out. */
export interface OnnxModel {
  readonly labels: readonly string[];
  readonly description: string;
  readonly inputName: string;
  readonly outputName: string;
  /** `input` is one 3x224x224 image (float32 NCHW); returns its logits. */
  infer(input: Float32Array): Promise<Float32Array>;
  close(): Promise<void>;
}

export class ModelLoadError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ModelLoadError';
  }
}

function formatSize(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${(bytes / (1024 * 1024)).toFixed(1)} MB` : `${(bytes / 1024).toFixed(0)} kB`;
}

function checkThreads(threads: number, name: string): void {
  if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`${name} must be a whole number of at least 1, got ${threads}`);
}

export async function loadOnnxModel(options: OnnxModelOptions): Promise<OnnxModel> {
  const threads = options.threads ?? 1;
  checkThreads(threads, 'threads');
  let size: number;
  try {
    size = (await stat(options.modelPath)).size;
  } catch (error) {
    throw new ModelLoadError(`cannot read model file ${options.modelPath}: ${(error as Error).message}`, { cause: error });
  }

  let session: OnnxRuntime.InferenceSession;
  try {
    session = await ort.InferenceSession.create(options.modelPath, {
      // The service scales by running more single-image instances, so each one uses one
      // core; more threads per session would only contend with the other instances.
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3,
    });
  } catch (error) {
    throw new ModelLoadError(`cannot load model ${options.modelPath} with ONNX Runtime: ${(error as Error).message}`, { cause: error });
  }

  try {
    const inputName = session.inputNames[0];
    const outputName = session.outputNames[0];
    if (!inputName || !outputName || session.inputNames.length !== 1) {
      throw new ModelLoadError(`model ${options.modelPath} must have exactly one input and at least one output, has inputs [${session.inputNames.join(', ')}] and outputs [${session.outputNames.join(', ')}]`);
    }
    const inputMeta = session.inputMetadata[0];
    if (inputMeta?.isTensor) {
      const [, c, h, w] = inputMeta.shape;
      const fixed = (dim: number | string | undefined, want: number): boolean => typeof dim !== 'number' || dim === want;
      if (inputMeta.shape.length !== 4 || !fixed(c, CHANNELS) || !fixed(h, INPUT_SIZE) || !fixed(w, INPUT_SIZE)) {
        throw new ModelLoadError(`model ${options.modelPath} expects input ${inputName} of shape [${inputMeta.shape.join(', ')}], but the preprocessing produces [1, ${CHANNELS}, ${INPUT_SIZE}, ${INPUT_SIZE}]`);
      }
    }
    const outputMeta = session.outputMetadata[0];
    const classes = outputMeta?.isTensor ? outputMeta.shape[outputMeta.shape.length - 1] : undefined;
    const labels = await readLabels(options.labelsPath, typeof classes === 'number' ? classes : undefined);
    const description = `${path.basename(options.modelPath)} (${formatSize(size)})`;
    const dims = [1, CHANNELS, INPUT_SIZE, INPUT_SIZE] as const;
    let closed = false;

    return {
      labels,
      description,
      inputName,
      outputName,
      async infer(input: Float32Array): Promise<Float32Array> {
        if (closed) throw new Error(`classifier ${description} is closed`);
        if (input.length !== CHANNELS * INPUT_SIZE * INPUT_SIZE) {
          throw new RangeError(`input must hold ${CHANNELS * INPUT_SIZE * INPUT_SIZE} values, got ${input.length}`);
        }
        const results = await session.run({ [inputName]: new ort.Tensor('float32', input, dims) });
        const output = results[outputName];
        if (!output || !(output.data instanceof Float32Array)) {
          throw new Error(`model output ${outputName} is not float32 data`);
        }
        // Checked here when the model leaves the class count symbolic.
        if (output.data.length !== labels.length) {
          throw new Error(`model output ${outputName} has ${output.data.length} values but there are ${labels.length} labels (${options.labelsPath})`);
        }
        return output.data;
      },
      async close(): Promise<void> {
        if (closed) return;
        closed = true;
        await session.release();
      },
    };
  } catch (error) {
    await session.release().catch(() => {});
    throw error;
  }
}

export interface OnnxClassifierOptions extends OnnxModelOptions {
  /** Largest accepted image in pixels; default 50 million (as --max-pixels). */
  maxPixels?: number;
  /**
   * libvips threads for decoding and resizing. sharp's setting is per process; the
   * default (1) suits a worker instance that holds one image at a time, where the
   * service gets its parallelism from more instances, and a thread pool per instance
   * sized to every core would oversubscribe the CPU. 0 leaves sharp's setting alone
   * (for processes that also use sharp for other work).
   */
  sharpThreads?: number;
  /** Resize kernel and shrink-on-load; defaults are those measured best (see preprocess.ts). */
  preprocess?: Omit<PreprocessOptions, 'maxPixels'>;
}

export async function createOnnxClassifier(options: OnnxClassifierOptions): Promise<Classifier> {
  const sharpThreads = options.sharpThreads ?? 1;
  if (sharpThreads !== 0) checkThreads(sharpThreads, 'sharpThreads');
  const model = await loadOnnxModel(options);
  if (sharpThreads !== 0) sharp.concurrency(sharpThreads);
  const preprocessOptions: PreprocessOptions = { ...options.preprocess, maxPixels: options.maxPixels };

  return {
    description: model.description,
    async classify(image: Buffer, k: number = DEFAULT_TOP_K): Promise<Prediction[]> {
      if (!Number.isInteger(k) || k < 1) throw new RangeError(`topK must be a whole number of at least 1, got ${k}`);
      const input = await preprocess(image, preprocessOptions);
      const logits = await model.infer(input);
      return topK(softmax(logits), model.labels, k);
    },
    close: () => model.close(),
  };
}
