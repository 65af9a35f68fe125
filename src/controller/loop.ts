/**
 * Runs a tick function every interval until stopped, never overlapping ticks, and keeps
 * going after a failed tick (logging it) because controllers must outlive passing faults.
 */
export interface Loop {
  stop(): Promise<void>;
}

export function every(intervalMs: number, tick: (signal: AbortSignal) => Promise<void>, onError: (error: unknown) => void): Loop {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let wake: (() => void) | undefined;
  const running = (async () => {
    while (!controller.signal.aborted) {
      try {
        await tick(controller.signal);
      } catch (error) {
        if (!controller.signal.aborted) onError(error);
      }
      if (controller.signal.aborted) break;
      await new Promise<void>((resolve) => {
        wake = resolve;
        timer = setTimeout(resolve, intervalMs);
      });
    }
  })();
  return {
    async stop() {
      controller.abort();
      clearTimeout(timer);
      wake?.();
      await running;
    },
  };
}
