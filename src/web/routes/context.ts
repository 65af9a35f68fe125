/** What the route plugins share: the service, the web tier's state, and its guards. */
import type { FastifyReply } from 'fastify';
import type { StatusSnapshot } from '../../api-schemas.js';
import type { Logger } from '../../log.js';
import type { ServiceMetrics } from '../../metrics.js';
import type { Runtime } from '../../runtime.js';
import type { EventHub } from '../events.js';
import type { RateLimitHooks } from '../rate-limit.js';
import type { ResultsIndex } from '../results.js';
import type { UploadContext } from '../upload.js';

export interface RouteContext {
  runtime: Runtime;
  index: ResultsIndex;
  hub: EventHub;
  uploads: UploadContext;
  limits: RateLimitHooks;
  log: Logger;
  /** This process's metrics registry, served on /metrics. */
  metrics: ServiceMetrics;
  /** The service's status; answers even when the queues or instances cannot be read. */
  status(): Promise<StatusSnapshot>;
  /** Answers 503 while draining or 429 while the launch queue is full, and then says true. */
  refuseWhenBusy(reply: FastifyReply): Promise<boolean>;
  /** Aborted when the server stops waiting for results (shutdown). */
  closing: AbortSignal;
  /** Folder of the built browser page. */
  uiDir: string;
}

/** Route plugins take the context as their options. */
export interface RouteOptions {
  context: RouteContext;
}
