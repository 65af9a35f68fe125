/** Shapes of the public HTTP API as the page reads them. */
export type ImageStatus = 'queued' | 'processing' | 'done' | 'error';

export interface Prediction {
  label: string;
  probability: number;
}

export interface OkResult {
  label: string;
  probability: number;
  top5: Prediction[];
  instanceId: string;
  durationMs?: number;
}

export interface ErrorResult {
  error: string;
}

export interface ApiImage {
  id: string;
  name: string;
  batchId?: string;
  status: ImageStatus;
  /** Absent in upload answers, where every image is on its first attempt. */
  attempts?: number;
  size?: number;
  contentType?: string;
  instanceId?: string;
  result?: OkResult | ErrorResult;
  finishedAt?: number;
}

export interface ApiBatch {
  batchId: string;
  createdAt?: number;
  total: number;
  done: number;
  errors: number;
  images: ApiImage[];
}

export interface Rejection {
  name: string;
  reason: string;
}

export interface UploadOutcome {
  batchId: string | null;
  images: ApiImage[];
  rejected: Rejection[];
  error?: string;
}

export interface QueueCounts {
  visible: number;
  inFlight: number;
  delayed: number;
}

export type QueueName = 'launch' | 'monitor' | 'output';

export interface InstanceStatus {
  id: string;
  state: string;
  startedAt: number;
  imageId?: string;
  processed?: number;
}

export interface StatusSnapshot {
  max: number;
  queues: Record<QueueName, QueueCounts>;
  instances: InstanceStatus[];
  images?: Record<string, number>;
  at: number;
}

export function isOk(result: ApiImage['result']): result is OkResult {
  return result !== undefined && 'label' in result;
}

export function isError(result: ApiImage['result']): result is ErrorResult {
  return result !== undefined && 'error' in result;
}
