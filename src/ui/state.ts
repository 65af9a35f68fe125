/**
 * The page's copy of one batch. Updates come from upload answers, the live stream and
 * full refetches, in any order and possibly more than once; the merge rule makes every
 * image move only forward, so replays and races neither repeat nor undo a result.
 */
import type { ApiImage, ImageStatus } from './types.js';

const RANK: Record<ImageStatus, number> = { queued: 0, processing: 1, done: 2, error: 2 };

export function isFinal(status: ImageStatus): boolean {
  return status === 'done' || status === 'error';
}

/** Whether `next` is newer than `current`: a final result is never replaced (the first one wins on the server too). */
export function supersedes(current: ApiImage | undefined, next: ApiImage): boolean {
  if (!current) return true;
  if (isFinal(current.status)) return false;
  const from = RANK[current.status];
  const to = RANK[next.status];
  if (to !== from) return to > from;
  const was = current.attempts ?? 0;
  const now = next.attempts ?? 0;
  if (now !== was) return now > was;
  return next.instanceId !== current.instanceId && next.instanceId !== undefined;
}

export type StatusCounts = Record<ImageStatus, number>;

export class BatchState {
  readonly images = new Map<string, ApiImage>();
  /** Image ids in the order they were first seen: upload order. */
  readonly order: string[] = [];
  readonly counts: StatusCounts = { queued: 0, processing: 0, done: 0, error: 0 };
  createdAt: number | undefined;
  lastFinishedAt = 0;

  constructor(readonly batchId: string) {}

  /** Returns true when the image changed. */
  apply(image: ApiImage): boolean {
    if (image.batchId !== undefined && image.batchId !== this.batchId) return false;
    const current = this.images.get(image.id);
    if (!supersedes(current, image)) return false;
    if (current) this.counts[current.status]--;
    else this.order.push(image.id);
    this.counts[image.status]++;
    this.images.set(image.id, { ...image, attempts: image.attempts ?? 0 });
    if (image.finishedAt !== undefined && image.finishedAt > this.lastFinishedAt) this.lastFinishedAt = image.finishedAt;
    return true;
  }

  get total(): number {
    return this.order.length;
  }

  get finished(): number {
    return this.counts.done + this.counts.error;
  }

  get complete(): boolean {
    return this.total > 0 && this.finished === this.total;
  }

  /** Milliseconds from the batch's creation to its last result, or to `now` while it runs. */
  elapsedMs(now: number): number | undefined {
    if (this.createdAt === undefined) return undefined;
    const end = this.complete && this.lastFinishedAt > 0 ? this.lastFinishedAt : now;
    return Math.max(0, end - this.createdAt);
  }
}

/** Ids whose image passes the status filter and the search text (file name or label). */
export function filterIds(state: BatchState, status: ImageStatus | 'all', query: string): string[] {
  const needle = query.trim().toLowerCase();
  if (status === 'all' && needle === '') return state.order.slice();
  const ids: string[] = [];
  for (const id of state.order) {
    const image = state.images.get(id)!;
    if (status !== 'all' && image.status !== status) continue;
    if (needle !== '') {
      const label = image.result && 'label' in image.result ? image.result.label : '';
      if (!image.name.toLowerCase().includes(needle) && !label.toLowerCase().includes(needle)) continue;
    }
    ids.push(id);
  }
  return ids;
}
