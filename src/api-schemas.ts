/**
 * The HTTP API's requests and answers, declared once. The server validates requests and
 * serialises answers with these schemas (so an answer carries no field that is not declared
 * here), /openapi.json is generated from them, and the page, the CLI client and the tests
 * use the types inferred from them.
 *
 * This module imports nothing but zod: the browser page imports its types (type-only, so
 * nothing of it reaches the bundle), and Node-only code here would break that.
 */
import { z } from 'zod';

/** Batch and image ids as the service makes them: 12 random bytes, base64url. */
const id = z.string().describe('an id the service made (base64url)');

// ---- Images and batches ----

export const imageStatusSchema = z.enum(['queued', 'processing', 'done', 'error']);
export type ImageStatus = z.infer<typeof imageStatusSchema>;

export const predictionSchema = z.object({ label: z.string(), probability: z.number() });
export type Prediction = z.infer<typeof predictionSchema>;

export const okResultSchema = z.object({
  label: z.string(),
  probability: z.number(),
  top5: z.array(predictionSchema),
  instanceId: z.string(),
  durationMs: z.number().optional(),
});
export type OkResult = z.infer<typeof okResultSchema>;

export const errorResultSchema = z.object({ error: z.string() });
export type ErrorResult = z.infer<typeof errorResultSchema>;

export const imageSchema = z.object({
  id,
  /** As uploaded (folder part kept), sanitised for display; never used as a path. */
  name: z.string(),
  batchId: id,
  status: imageStatusSchema,
  attempts: z.number().int().min(0),
  size: z.number().int().min(0),
  contentType: z.string(),
  /** The instance that holds it or held it last. */
  instanceId: z.string().optional(),
  result: z.union([okResultSchema, errorResultSchema]).optional(),
  finishedAt: z.number().optional(),
}).meta({ id: 'Image' });
export type Image = z.infer<typeof imageSchema>;

export const batchSchema = z.object({
  batchId: id,
  createdAt: z.number(),
  total: z.number().int().min(0),
  done: z.number().int().min(0),
  errors: z.number().int().min(0),
  images: z.array(imageSchema),
}).meta({ id: 'Batch' });
export type Batch = z.infer<typeof batchSchema>;

// ---- Uploads ----

export const rejectionSchema = z.object({ name: z.string(), reason: z.string() }).meta({ id: 'Rejection' });
export type Rejection = z.infer<typeof rejectionSchema>;

/** An image as an upload accepted it: stored and queued, on its first attempt. */
export const acceptedImageSchema = z.object({
  id,
  name: z.string(),
  status: z.literal('queued'),
  size: z.number().int().min(0),
  contentType: z.string(),
});
export type AcceptedImage = z.infer<typeof acceptedImageSchema>;

/** 202: some files were accepted (and maybe some rejected, each with its reason). */
export const uploadAcceptedSchema = z.object({
  batchId: id,
  images: z.array(acceptedImageSchema),
  rejected: z.array(rejectionSchema),
}).meta({ id: 'UploadAccepted' });
export type UploadAccepted = z.infer<typeof uploadAcceptedSchema>;

/** 400 with every file rejected, or another refusal of the whole request (then only `error`). */
export const uploadRefusedSchema = z.object({
  error: z.string(),
  batchId: z.null().optional(),
  images: z.array(acceptedImageSchema).max(0).optional(),
  rejected: z.array(rejectionSchema).optional(),
}).meta({ id: 'UploadRefused' });
export type UploadRefused = z.infer<typeof uploadRefusedSchema>;

export const uploadQuerySchema = z.object({
  batch: id.optional().describe('add the images to this existing batch instead of starting a new one'),
});

// ---- Errors ----

/** Every error answer: what went wrong, in words a user can act on. */
export const apiErrorSchema = z.object({ error: z.string() }).meta({ id: 'Error' });
export type ApiError = z.infer<typeof apiErrorSchema>;

/** 409 from DELETE /api/batches/:id while images still wait. */
export const batchBusySchema = z.object({
  error: z.string(),
  waiting: z.number().int().min(0),
  uploading: z.number().int().min(0),
}).meta({ id: 'BatchBusy' });
export type BatchBusy = z.infer<typeof batchBusySchema>;

/** The synchronous endpoint's JSON errors name the image when there is one. */
export const syncErrorSchema = z.object({
  error: z.string(),
  id: id.optional(),
  rejected: z.array(rejectionSchema).optional(),
}).meta({ id: 'SyncError' });
export type SyncError = z.infer<typeof syncErrorSchema>;

// ---- Status ----

export const queueCountsSchema = z.object({
  visible: z.number().int().min(0),
  inFlight: z.number().int().min(0),
  delayed: z.number().int().min(0),
});
export type QueueCounts = z.infer<typeof queueCountsSchema>;

export const queueNameSchema = z.enum(['launch', 'monitor', 'output']);
export type QueueName = z.infer<typeof queueNameSchema>;

export const instanceStatusSchema = z.object({
  id: z.string(),
  state: z.string(),
  startedAt: z.number(),
  /** Only for images of the batch the client named: image ids are capabilities. */
  imageId: id.optional(),
  processed: z.number().int().min(0).optional(),
});
export type InstanceStatus = z.infer<typeof instanceStatusSchema>;

/** One loop of the service (launch controller, output phase, ...) and its current error. */
export const loopHealthSchema = z.object({
  /** The loop as users know it, e.g. "launch controller". */
  loop: z.string().min(1).max(100),
  ok: z.boolean(),
  /** What is wrong and what to do about it, in the user's words. */
  problem: z.string().max(2000).optional(),
  /** The error as the code met it, for the operator. */
  detail: z.string().max(4000).optional(),
  /** When the current run of failures began (epoch milliseconds). */
  since: z.number().optional(),
  /** Failures in the current run. */
  failures: z.number().int().min(0).optional(),
}).meta({ id: 'LoopHealth' });
export type LoopHealth = z.infer<typeof loopHealthSchema>;

/** Why the tier has the size it has: the launch policy's last decision and what it saw. */
export const scalingStatusSchema = z.object({
  policy: z.string().max(50),
  /** Instances that can usefully run at once, and the hard maximum. */
  capacity: z.number().int().min(0),
  max: z.number().int().min(0),
  backlog: z.number().int().min(0),
  inFlight: z.number().int().min(0),
  /** Instances after the last decision (not stopped). */
  target: z.number().int().min(0),
  /** Expected time to drain the backlog, in ms; null when nothing waits. */
  drainMs: z.number().nullable(),
  serviceMs: z.number().min(0),
  startupMs: z.number().min(0),
  /** Whether the times are measured, or still the priors. */
  measured: z.object({ service: z.boolean(), startup: z.boolean() }),
  reason: z.string().max(500),
  at: z.number(),
}).meta({ id: 'ScalingStatus' });
export type ScalingStatus = z.infer<typeof scalingStatusSchema>;

export const statusSnapshotSchema = z.object({
  max: z.number().int().min(0),
  /** A queue whose counts cannot be read is left out; `health` says why. */
  queues: z.object({ launch: queueCountsSchema.optional(), monitor: queueCountsSchema.optional(), output: queueCountsSchema.optional() }),
  instances: z.array(instanceStatusSchema),
  /** Images of the batches this web tier holds in memory, by status. */
  images: z.record(z.string(), z.number().int().min(0)),
  /** Each loop of the service, with its current error in words a user can act on. */
  health: z.array(loopHealthSchema),
  /** Why the tier has the size it has; absent until the controllers have reported. */
  scaling: scalingStatusSchema.optional(),
  at: z.number(),
}).meta({ id: 'Status' });
export type StatusSnapshot = z.infer<typeof statusSnapshotSchema>;

export const batchQuerySchema = z.object({
  batch: z.string().optional().describe('the batch whose images the answer may name'),
});

// ---- Live events (server-sent events on GET /api/events) ----

/** `event: hello`, first on a new stream: where it starts. */
export const helloEventSchema = z.object({ seq: z.number().int().min(0), epoch: z.string() });
export type HelloEvent = z.infer<typeof helloEventSchema>;
/** `event: reset`: the client missed events that are no longer kept; reload the batch. */
export const resetEventSchema = z.object({ reason: z.string() });
export type ResetEvent = z.infer<typeof resetEventSchema>;
/** `event: deleted`: the batch was deleted; the stream ends. */
export const deletedEventSchema = z.object({ batchId: id });
export type DeletedEvent = z.infer<typeof deletedEventSchema>;
// `event: image` carries an Image, `event: status` a StatusSnapshot.

export const eventsQuerySchema = z.object({
  batch: z.string().optional().describe('the batch whose image events to stream; without it, status only'),
  key: z.string().optional().describe('the API key, for clients that cannot send headers (EventSource)'),
});

// ---- Other routes ----

export const idParamsSchema = z.object({ id: z.string() });

export const deleteQuerySchema = z.object({
  force: z.enum(['true', 'false'], { error: 'must be true or false' }).optional()
    .describe('true deletes even while images wait for a result'),
});

export const imageInputQuerySchema = z.object({
  key: z.string().optional().describe('the API key, for clients that cannot send headers (<img>)'),
});

export const healthSchema = z.object({ ok: z.literal(true) });
export type Health = z.infer<typeof healthSchema>;
