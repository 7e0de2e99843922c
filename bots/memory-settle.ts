/**
 * Hands memory back when a bot goes quiet. A bot is idle almost all the time, but V8 only collects the
 * old generation when it grows, so the garbage of start-up and of the last conversation (and the
 * fragmented pages it leaves) would otherwise stay resident until the next burst of work.
 *
 * After `idleMs` without work in flight, one settle runs two full garbage collections that compact
 * (V8's --compact-on-every-full-gc, set for just these two) and so release the emptied pages. Measured
 * with `npm run bench -- bot`: the bot's RSS goes from 84-85 MB right after the traffic to 78 MB, for a
 * few tens of ms of CPU once per quiet spell.
 * It needs `gc` (node --expose-gc, in the bot's arguments); without it, settling is a no-op.
 */
import { setFlagsFromString } from 'node:v8';
import type { Logger } from 'pino';

/** Quiet time after which a bot settles (bots/device-main.ts); the bench measures a bot at rest after it. */
export const SETTLE_IDLE_MS = 5_000;

export interface MemorySettler {
  /** Runs `work`, counting it as activity: no settle while it is in flight, the idle clock restarts when it ends. */
  track<T>(work: () => Promise<T>): Promise<T>;
  /** Marks a moment of activity (restarts the idle clock). */
  touch(): void;
  /** How many settles ran (for tests and logs). */
  readonly settles: number;
  stop(): void;
}

export function createMemorySettler(o: { idleMs: number; logger?: Logger; gc?: (() => void) | undefined }): MemorySettler {
  const gc = o.gc ?? (globalThis as { gc?: () => void }).gc;
  let inFlight = 0;
  let settles = 0;
  let dirty = false;
  let stopped = false;
  const settle = (): void => {
    if (stopped || inFlight > 0 || !dirty || !gc) return;
    dirty = false;
    const t0 = performance.now();
    // Compaction for these two collections only: on every collection it would cost the bot's start and
    // its conversations CPU for nothing (V8 reads the flag at each collection).
    setFlagsFromString('--compact-on-every-full-gc');
    try {
      gc();
      gc();
    } finally {
      setFlagsFromString('--no-compact-on-every-full-gc');
    }
    settles++;
    o.logger?.debug({ ms: Math.round(performance.now() - t0), rssMb: Math.round(process.memoryUsage.rss() / 1048576) }, 'memory settled after idle');
  };
  const timer = setTimeout(settle, o.idleMs);
  timer.unref();
  const touch = (): void => {
    if (stopped) return;
    dirty = true;
    timer.refresh();
  };
  return {
    async track(work) {
      inFlight++;
      touch();
      try {
        return await work();
      } finally {
        inFlight--;
        touch();
      }
    },
    touch,
    get settles() {
      return settles;
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
