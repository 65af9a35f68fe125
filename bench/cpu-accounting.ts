/**
 * Where a service run's CPU goes, read from Linux's /proc while it runs (bench/all.ts prints
 * it under the 900-image row): how busy the whole machine was from the upload's start to
 * the last result and during the upload alone, and the CPU seconds of the web tier (the
 * `icaas start` process), of its worker instances (the processes it started) and of the
 * benchmark itself (the client that streams the upload and polls for results).
 *
 * A run that keeps every core busy is bound by the CPU it spends, so only spending less
 * makes it faster; idle cores mean it waits for something. The figures say which.
 *
 * Sampled every SAMPLE_MS: a worker's last sample before it exits is its total (it is idle
 * by then), and the moment of the last result is matched to the nearest sample.
 */
import { readFileSync } from 'node:fs';

const SAMPLE_MS = 100;

/** The machine's CPU ticks and the processes' CPU seconds at one moment. */
interface Sample {
  at: number;
  busyTicks: number;
  idleTicks: number;
  /** CPU seconds since the start of the web tier, of each worker by pid (all of it), and of this benchmark. */
  web: number;
  workers: Map<number, number>;
  bench: number;
}

export interface CpuAccount {
  /** Share of all cores busy from the upload's start to the last result, and during the upload. */
  busyShare: number;
  uploadBusyShare: number;
  coreSeconds: number;
  webSeconds: number;
  workerSeconds: number;
  workers: number;
  benchSeconds: number;
}

export interface CpuAccounting {
  /** Marks the end of the upload. */
  uploaded(): void;
  /** Stops sampling; the run ended at `endedAt` (Date.now() time of its last result). */
  finish(endedAt: number): CpuAccount | undefined;
  /** Stops sampling without an account (a run that failed). */
  cancel(): void;
}

/** Clock ticks per second of /proc/stat and /proc/<pid>/stat: 100 on every Linux build Node runs on. */
const TICKS_PER_SECOND = 100;

function machineTicks(): { busy: number; idle: number } {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: idle and iowait are the idle time.
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = fields;
  return { busy: user + nice + system + irq + softirq + steal, idle: idle + iowait };
}

/** utime + stime of a process, in seconds; undefined once it is gone. */
function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/**
 * Processes started by `parent`'s main thread (where Node spawns them), from the kernel's
 * list of its children: cheap enough to read every sample, unlike a scan of all of /proc.
 */
function childrenOf(parent: number): number[] {
  try {
    return readFileSync(`/proc/${parent}/task/${parent}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Starts sampling at the upload's start; undefined where /proc cannot be read (not Linux). */
export function startCpuAccounting(webPid: number): CpuAccounting | undefined {
  try {
    machineTicks();
  } catch {
    return undefined;
  }
  const benchAtStart = process.cpuUsage();
  const webAtStart = cpuSeconds(webPid) ?? 0;
  const workers = new Map<number, number>();
  const take = (): Sample => {
    const { busy, idle } = machineTicks();
    for (const pid of childrenOf(webPid)) {
      const seconds = cpuSeconds(pid);
      if (seconds !== undefined) workers.set(pid, seconds);
    }
    const bench = process.cpuUsage(benchAtStart);
    return {
      at: Date.now(),
      busyTicks: busy,
      idleTicks: idle,
      web: (cpuSeconds(webPid) ?? webAtStart) - webAtStart,
      workers: new Map(workers),
      bench: (bench.user + bench.system) / 1e6,
    };
  };
  const samples: Sample[] = [take()];
  let uploadEnd: Sample | undefined;
  const timer = setInterval(() => samples.push(take()), SAMPLE_MS);
  timer.unref();
  return {
    cancel: () => clearInterval(timer),
    uploaded() {
      uploadEnd = take();
      samples.push(uploadEnd);
    },
    finish(endedAt) {
      clearInterval(timer);
      samples.push(take());
      const start = samples[0]!;
      const end = samples.reduce((best, sample) => (Math.abs(sample.at - endedAt) < Math.abs(best.at - endedAt) ? sample : best));
      const share = (from: Sample, to: Sample) => {
        const busy = to.busyTicks - from.busyTicks;
        const all = busy + to.idleTicks - from.idleTicks;
        return all > 0 ? busy / all : 0;
      };
      if (end === start) return undefined;
      const workerSeconds = [...end.workers.values()].reduce((sum, seconds) => sum + seconds, 0);
      return {
        busyShare: share(start, end),
        uploadBusyShare: uploadEnd ? share(start, uploadEnd) : NaN,
        coreSeconds: (end.busyTicks - start.busyTicks + end.idleTicks - start.idleTicks) / TICKS_PER_SECOND,
        webSeconds: end.web,
        workerSeconds,
        workers: end.workers.size,
        benchSeconds: end.bench,
      };
    },
  };
}

export function describeCpuAccount(account: CpuAccount, rawCpuSecondsPerImage: number, images: number): string {
  const total = account.webSeconds + account.workerSeconds + account.benchSeconds;
  return [
    `CPU of the ${images}-image run: all ${account.coreSeconds.toFixed(1)} core-seconds of the run ${(account.busyShare * 100).toFixed(0)} % busy (the upload alone ${(account.uploadBusyShare * 100).toFixed(0)} %);`,
    `  web tier ${account.webSeconds.toFixed(1)} s, ${account.workers} workers ${account.workerSeconds.toFixed(1)} s (start-up included), this benchmark's client ${account.benchSeconds.toFixed(1)} s: ${total.toFixed(1)} s;`,
    `  the raw classifier spends about ${(rawCpuSecondsPerImage * images).toFixed(1)} s on the same images (its cores × its time).`,
  ].join('\n');
}
