/**
 * The simulated queue and instances, modelled on the real service:
 *
 * - The launch queue is FIFO. A message is deleted the moment an instance takes it (the
 *   real worker deletes it right after its monitor notice), so nothing is counted in
 *   flight, and no image is retried, so nothing is delayed.
 * - A started instance is 'starting' until its start-up time has passed; then it is idle.
 *   Start-up is split in two: first `startCostMs` of CPU (loading Node, the model and ONNX
 *   Runtime), which competes for the cores like classification does, then the rest of the
 *   drawn start-up as plain waiting (I/O) that takes no CPU.
 * - An idle instance long-polls the queue: it takes an image the moment one is waiting
 *   (the instance idle longest first), holds one image at a time, and takes the next as soon
 *   as it finishes. After `idleWaitMs` idle with nothing to take it stops itself.
 * - Capacity: the instances share `capacity` cores. The load is the busy instances plus
 *   those in the CPU part of their start-up; while the load exceeds the capacity, every one
 *   of them progresses at capacity / load (processor sharing), so an image of service
 *   time S takes S x load / capacity of wall time. With capacity = maximum (EC2: a core
 *   per instance) the load never exceeds it and nothing slows down.
 * - Each instance reports what the real worker reports: its state, when it started and
 *   became ready, and its moving average of wall time per image (`serviceMs`), which
 *   includes any slow-down from sharing the cores.
 */
import type { InstanceInfo, InstanceState } from '../compute/port.js';
import { movingAverage } from '../moving-average.js';

/** Times closer than this (ms) count as the same instant: float sums drift by far less. */
export const EPSILON_MS = 1e-6;
/** How long a stopped instance is still listed (the process adapter's keepStoppedMs). */
const KEEP_STOPPED_MS = 60_000;

export interface SimImage {
  index: number;
  arrivedAt: number;
  /** CPU time the image needs on one core, in ms. */
  serviceMs: number;
  startedAt?: number;
  finishedAt?: number;
  instanceId?: string;
}

type Phase = 'start-cpu' | 'start-wait' | 'idle' | 'busy' | 'stopped';

interface SimInstance {
  id: string;
  phase: Phase;
  launchedAt: number;
  /** CPU of the start-up still to do, in ms on one core. */
  startCpuLeft: number;
  /** Plain waiting after the CPU part of the start-up. */
  startWaitMs: number;
  readyDueAt: number;
  readyAt?: number;
  idleSince: number;
  image?: SimImage;
  workLeft: number;
  serviceAverage?: number;
  processed: number;
  stoppedAt?: number;
}

export interface ClusterSettings {
  capacity: number;
  idleWaitMs: number;
  startCostMs: number;
}

export class Cluster {
  private readonly instances: SimInstance[] = [];
  private readonly queue: SimImage[] = [];
  private queueHead = 0;
  private launched = 0;

  constructor(private readonly settings: ClusterSettings) {}

  get waiting(): number {
    return this.queue.length - this.queueHead;
  }

  /** Instances not stopped: what counts against the maximum. */
  get active(): number {
    return this.instances.filter((instance) => instance.phase !== 'stopped').length;
  }

  enqueue(image: SimImage): void {
    this.queue.push(image);
  }

  launch(startupMs: number[], now: number): string[] {
    return startupMs.map((startup) => {
      const cpu = Math.min(startup, this.settings.startCostMs);
      const id = `sim-${++this.launched}`;
      this.instances.push({ id, phase: 'start-cpu', launchedAt: now, startCpuLeft: cpu, startWaitMs: startup - cpu, readyDueAt: Infinity, idleSince: Infinity, workLeft: 0, processed: 0 });
      return id;
    });
  }

  /** The share of a core each CPU-using instance gets now. */
  rate(): number {
    let load = 0;
    for (const instance of this.instances) if (instance.phase === 'start-cpu' || instance.phase === 'busy') load++;
    return load > this.settings.capacity ? this.settings.capacity / load : 1;
  }

  /** When the next instance event happens if nothing else changes: Infinity when none will. */
  nextEventAt(now: number): number {
    const rate = this.rate();
    let next = Infinity;
    for (const instance of this.instances) {
      switch (instance.phase) {
        case 'start-cpu':
          next = Math.min(next, now + instance.startCpuLeft / rate);
          break;
        case 'start-wait':
          next = Math.min(next, instance.readyDueAt);
          break;
        case 'busy':
          next = Math.min(next, now + instance.workLeft / rate);
          break;
        case 'idle':
          // With images waiting an idle instance takes one at once; it can only time out on an empty queue.
          if (this.waiting === 0) next = Math.min(next, instance.idleSince + this.settings.idleWaitMs);
          break;
      }
    }
    return next;
  }

  /** Lets `elapsed` ms of wall time pass at the current rate. */
  advance(elapsed: number): void {
    if (elapsed <= 0) return;
    const done = this.rate() * elapsed;
    for (const instance of this.instances) {
      if (instance.phase === 'start-cpu') instance.startCpuLeft -= done;
      else if (instance.phase === 'busy') instance.workLeft -= done;
    }
  }

  /** Ends the start-up phases and images that are due; returns the images finished now. */
  completeDue(now: number): SimImage[] {
    const finished: SimImage[] = [];
    for (const instance of this.instances) {
      if (instance.phase === 'start-cpu' && instance.startCpuLeft <= EPSILON_MS) {
        instance.phase = 'start-wait';
        instance.readyDueAt = now + instance.startWaitMs;
      }
      if (instance.phase === 'start-wait' && instance.readyDueAt <= now + EPSILON_MS) {
        instance.phase = 'idle';
        instance.readyAt = now;
        instance.idleSince = now;
      }
      if (instance.phase === 'busy' && instance.workLeft <= EPSILON_MS) finished.push(this.finish(instance, now));
    }
    return finished;
  }

  /** Idle instances take waiting images, the one idle longest first. */
  dispatch(now: number): void {
    if (this.waiting === 0) return;
    const idle = this.instances.filter((instance) => instance.phase === 'idle').sort((a, b) => a.idleSince - b.idleSince);
    for (const instance of idle) {
      const image = this.queue[this.queueHead];
      if (!image) break;
      this.queue[this.queueHead++] = undefined as unknown as SimImage; // let it be collected
      instance.phase = 'busy';
      instance.image = image;
      instance.workLeft = image.serviceMs;
      image.startedAt = now;
      image.instanceId = instance.id;
    }
    if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
  }

  /** Instances whose long poll came back empty stop themselves: the tier scales in. */
  stopIdle(now: number): void {
    if (this.waiting > 0) return;
    for (const instance of this.instances) {
      if (instance.phase === 'idle' && instance.idleSince + this.settings.idleWaitMs <= now + EPSILON_MS) {
        instance.phase = 'stopped';
        instance.stoppedAt = now;
      }
    }
  }

  /** What the compute adapter would list now. */
  list(now: number): InstanceInfo[] {
    const listed: InstanceInfo[] = [];
    for (const instance of this.instances) {
      if (instance.phase === 'stopped' && now - instance.stoppedAt! > KEEP_STOPPED_MS) continue;
      listed.push({
        id: instance.id,
        state: stateOf(instance.phase),
        startedAt: instance.launchedAt,
        processed: instance.processed,
        ...(instance.image ? { imageId: String(instance.image.index) } : {}),
        ...(instance.readyAt !== undefined ? { readyAt: instance.readyAt } : {}),
        ...(instance.serviceAverage !== undefined ? { serviceMs: instance.serviceAverage } : {}),
      });
    }
    return listed;
  }

  countByState(): Record<Exclude<InstanceState, 'stopped'>, number> {
    const counts = { starting: 0, idle: 0, busy: 0 };
    for (const instance of this.instances) {
      const state = stateOf(instance.phase);
      if (state !== 'stopped') counts[state]++;
    }
    return counts;
  }

  /** Launch to stop, summed over instances, in ms; those still running count up to `now`. */
  instanceMs(now: number): number {
    return this.instances.reduce((sum, instance) => sum + (instance.stoppedAt ?? now) - instance.launchedAt, 0);
  }

  get launches(): number {
    return this.launched;
  }

  private finish(instance: SimInstance, now: number): SimImage {
    const image = instance.image!;
    image.finishedAt = now;
    const wall = now - image.startedAt!;
    instance.serviceAverage = movingAverage(instance.serviceAverage, wall);
    instance.processed++;
    instance.image = undefined;
    instance.workLeft = 0;
    instance.phase = 'idle';
    instance.idleSince = now;
    return image;
  }
}

function stateOf(phase: Phase): InstanceState {
  return phase === 'start-cpu' || phase === 'start-wait' ? 'starting' : phase;
}
