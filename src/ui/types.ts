/**
 * The HTTP API's shapes as the page reads them: the types come from the schemas the server
 * validates and serialises with (type-only imports, so none of their code is bundled).
 */
import type { Batch, ErrorResult, Image, OkResult } from '../api-schemas.js';

export type {
  ErrorResult,
  ImageStatus,
  InstanceStatus,
  LoopHealth,
  OkResult,
  Prediction,
  QueueCounts,
  QueueName,
  Rejection,
  ScalingStatus,
  StatusSnapshot,
  UploadAccepted,
  UploadRefused,
} from '../api-schemas.js';

/**
 * An image as the page holds it: as the API shows it, or as an upload just accepted it
 * (before its first event: no attempts yet, and the batch is the upload's).
 */
export type ApiImage = Omit<Image, 'attempts' | 'batchId' | 'size' | 'contentType'> & Partial<Pick<Image, 'attempts' | 'batchId' | 'size' | 'contentType'>>;

export type ApiBatch = Batch;

export function isOk(result: ApiImage['result']): result is OkResult {
  return result !== undefined && 'label' in result;
}

export function isError(result: ApiImage['result']): result is ErrorResult {
  return result !== undefined && 'error' in result;
}
