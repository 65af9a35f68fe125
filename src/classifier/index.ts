/** The classifier: find the model, load it, classify image bytes. */
import { defaultCacheDir, locateModel, type ModelSource } from './model.js';
import { createOnnxClassifier } from './onnx.js';
import type { Classifier } from './port.js';
import type { Logger } from '../log.js';

export type { Classifier, Prediction } from './port.js';
export { ImageDecodeError } from './port.js';
export { LabelsError } from './labels.js';
export {
  DEFAULT_DOWNLOAD_URLS,
  MODEL_FILE,
  LABELS_FILE,
  MODEL_SHA256,
  ModelNotFoundError,
  defaultCacheDir,
  defaultSharedDir,
  downloadAllowedByEnv,
  locateModel,
  projectRoot,
  type LocateModelOptions,
  type LocatedModel,
  type ModelSource,
} from './model.js';
export { ModelLoadError, createOnnxClassifier, loadOnnxModel, type OnnxClassifierOptions, type OnnxModel } from './onnx.js';
export { DEFAULT_MAX_PIXELS, preprocess, type PreprocessOptions } from './preprocess.js';
export { DEFAULT_TOP_K, softmax, topK } from './postprocess.js';

export interface LoadClassifierOptions {
  /** Model path (--model / ICAAS_MODEL); empty means "not configured". */
  model?: string;
  /** Labels path (--labels / ICAAS_LABELS); empty means "next to the model". */
  labels?: string;
  /** Default `<project root>/.cache/models`. */
  cacheDir?: string;
  /** Default `../shared/models` relative to the project root. */
  sharedDir?: string;
  maxPixels?: number;
  /** Default: ICAAS_MODEL_DOWNLOAD, allowed unless 0. */
  allowDownload?: boolean;
  /** Default: silent. */
  log?: Logger;
}

export async function loadClassifier(options: LoadClassifierOptions = {}): Promise<{ classifier: Classifier; modelPath: string; source: ModelSource }> {
  const located = await locateModel({
    // The configuration reports unset paths as empty strings.
    modelPath: options.model || undefined,
    labelsPath: options.labels || undefined,
    cacheDir: options.cacheDir ?? defaultCacheDir(),
    sharedDir: options.sharedDir,
    allowDownload: options.allowDownload,
    log: options.log,
  });
  const classifier = await createOnnxClassifier({ modelPath: located.modelPath, labelsPath: located.labelsPath, maxPixels: options.maxPixels });
  options.log?.info({ classifier: classifier.description, source: located.source, modelPath: located.modelPath }, 'classifier loaded');
  return { classifier, modelPath: located.modelPath, source: located.source };
}
