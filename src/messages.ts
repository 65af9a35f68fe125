/**
 * The messages that travel between the tiers, and the result record stored in the output
 * bucket. Every message is validated when it is read, so a malformed one is reported and
 * dropped instead of crashing a consumer.
 */
import { z } from 'zod';

const imageRef = {
  imageId: z.string().min(1).max(100),
  batchId: z.string().min(1).max(100),
  /** The file name as the user gave it (display only; never used as a path). */
  name: z.string().max(2000),
  /** Key of the image in the input bucket. */
  key: z.string().min(1).max(1024),
};

/** Launch queue: "classify this image", one per image and attempt. */
export const launchMessageSchema = z.object({
  type: z.literal('launch'),
  ...imageRef,
  attempt: z.number().int().min(1),
  queuedAt: z.number(),
});
export type LaunchMessage = z.infer<typeof launchMessageSchema>;

/** Monitor queue: "instance I started image X, attempt n", sent before the launch message is deleted. */
export const monitorNoticeSchema = z.object({
  type: z.literal('monitor'),
  ...imageRef,
  attempt: z.number().int().min(1),
  instanceId: z.string().min(1),
  startedAt: z.number(),
  /** The launch message's queuedAt, for the time the image waited (absent from older workers). */
  queuedAt: z.number().optional(),
});
export type MonitorNotice = z.infer<typeof monitorNoticeSchema>;

export const predictionSchema = z.object({ label: z.string(), probability: z.number().min(0).max(1) });

const resultBase = {
  imageId: imageRef.imageId,
  batchId: imageRef.batchId,
  name: imageRef.name,
  attempts: z.number().int().min(1),
  finishedAt: z.number(),
};

/** The final result of one image, stored in the output bucket under resultKey(imageId). */
export const imageResultSchema = z.discriminatedUnion('status', [
  z.object({
    status: z.literal('ok'),
    ...resultBase,
    instanceId: z.string(),
    label: z.string(),
    probability: z.number().min(0).max(1),
    top5: z.array(predictionSchema).max(5),
    durationMs: z.number().min(0),
  }),
  z.object({
    status: z.literal('error'),
    ...resultBase,
    instanceId: z.string().optional(),
    error: z.string(),
  }),
]);
export type ImageResult = z.infer<typeof imageResultSchema>;

/** Output queue: final results, and progress notes so the user sees which instance holds an image. */
export const outputMessageSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('result'), result: imageResultSchema }),
  z.object({
    type: z.literal('progress'),
    imageId: imageRef.imageId,
    batchId: imageRef.batchId,
    instanceId: z.string(),
    attempt: z.number().int().min(1),
    at: z.number(),
  }),
]);
export type OutputMessage = z.infer<typeof outputMessageSchema>;

export class InvalidMessageError extends Error {
  constructor(kind: string, detail: string) {
    super(`invalid ${kind}: ${detail}`);
    this.name = 'InvalidMessageError';
  }
}

function parseWith<T>(schema: z.ZodType<T>, kind: string, text: string): T {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new InvalidMessageError(kind, 'not JSON');
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidMessageError(kind, issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'does not match');
  }
  return parsed.data;
}

export const parseLaunchMessage = (text: string): LaunchMessage => parseWith(launchMessageSchema, 'launch message', text);
export const parseMonitorNotice = (text: string): MonitorNotice => parseWith(monitorNoticeSchema, 'monitor notice', text);
export const parseOutputMessage = (text: string): OutputMessage => parseWith(outputMessageSchema, 'output message', text);
export const parseImageResult = (text: string): ImageResult => parseWith(imageResultSchema, 'image result', text);

/** Where things live in the buckets. */
export const inputKey = (batchId: string, imageId: string): string => `images/${batchId}/${imageId}`;
/** One manifest per upload request, so uploads that add to a running batch never rewrite each other's. */
export const batchManifestKey = (batchId: string, uploadId: string): string => `batches/${batchId}/${uploadId}.json`;
export const resultKey = (imageId: string): string => `results/${imageId}.json`;

/** A batch manifest, stored in the input bucket so the web tier can rebuild its index after a restart. */
export const batchManifestSchema = z.object({
  batchId: z.string(),
  createdAt: z.number(),
  images: z.array(z.object({ imageId: z.string(), name: z.string(), key: z.string(), size: z.number(), contentType: z.string() })),
  /**
   * Written by earlier versions: false until every launch message of the upload was out,
   * then true. The `pending/` marker alone says so now, and the manifest is written once
   * without it; a leftover marker beside a manifest marked true is an upload that finished.
   */
  launched: z.boolean().optional(),
});
export type BatchManifest = z.infer<typeof batchManifestSchema>;

/**
 * How long a worker's monitor notice stays hidden after it is sent: the monitor's check
 * interval, in the whole seconds a queue delay takes (at most SQS's 900). See
 * WorkerOptions.noticeDelaySeconds.
 */
export function noticeDelaySeconds(settings: { monitorCheckSeconds: number }): number {
  return Math.min(900, Math.floor(settings.monitorCheckSeconds));
}
