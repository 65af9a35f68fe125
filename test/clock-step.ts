/**
 * Steps this process's wall clock the way NTP or an operator would, without touching the
 * machine's: Date.now() (which src/clock.ts reads) is shifted, performance.now() is not.
 * Every component in the process sees the step at once, old code that reads Date.now()
 * directly included.
 */
const realNow = Date.now.bind(Date);
let offsetMs = 0;

/** Shifts the wall clock by `ms` more (negative: back). */
export function stepWallClock(ms: number): void {
  offsetMs += ms;
  Date.now = () => realNow() + offsetMs;
}

/** Puts the wall clock right again. */
export function resetWallClock(): void {
  offsetMs = 0;
  Date.now = realNow;
}
