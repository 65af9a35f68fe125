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

/** One loop of the service (launch controller, output phase, ...) and its current error. */
export interface LoopHealth {
  loop: string;
  ok: boolean;
  /** What is wrong and what to do about it. */
  problem?: string;
  detail?: string;
  since?: number;
  failures?: number;
}

export interface StatusSnapshot {
  max: number;
  /** A queue whose counts could not be read is missing; `health` says why. */
  queues: Partial<Record<QueueName, QueueCounts>>;
  instances: InstanceStatus[];
  images?: Record<string, number>;
  /** Absent from servers older than the health report. */
  health?: LoopHealth[];
  /** Why the tier has the size it has; absent until the controllers have reported. */
  scaling?: ScalingStatus;
  at: number;
}

export interface ScalingStatus {
  policy: string;
  capacity: number;
  max: number;
  backlog: number;
  inFlight: number;
  target: number;
  drainMs: number | null;
  serviceMs: number;
  startupMs: number;
  measured: { service: boolean; startup: boolean };
  reason: string;
  at: number;
}

export function isOk(result: ApiImage['result']): result is OkResult {
  return result !== undefined && 'label' in result;
}

export function isError(result: ApiImage['result']): result is ErrorResult {
  return result !== undefined && 'error' in result;
}
