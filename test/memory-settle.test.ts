/** bots/memory-settle.ts: collections once the bot is quiet, never while work is in flight. */
import { describe, expect, it } from 'vitest';
import { createMemorySettler } from '../bots/memory-settle.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('memory settler', () => {
  it('collects once after a quiet spell, not during work, and again only after new activity', async () => {
    let collections = 0;
    const s = createMemorySettler({ idleMs: 60, gc: () => void collections++ });
    try {
      await sleep(120);
      expect(collections).toBe(0); // nothing happened yet: nothing to give back
      let release!: () => void;
      const work = s.track(() => new Promise<void>((r) => (release = r)));
      await sleep(150);
      expect(collections).toBe(0); // in flight: never collect under a running call
      release();
      await work;
      await sleep(30);
      expect(collections).toBe(0); // the idle clock restarted when the work ended
      await sleep(100);
      expect(s.settles).toBe(1);
      expect(collections).toBe(2);
      await sleep(150);
      expect(s.settles).toBe(1); // still quiet: no repeat
      s.touch();
      await sleep(120);
      expect(s.settles).toBe(2);
    } finally {
      s.stop();
    }
  });

  it('returns the result and error of tracked work, and does nothing once stopped', async () => {
    let collections = 0;
    const s = createMemorySettler({ idleMs: 20, gc: () => void collections++ });
    await expect(s.track(async () => 42)).resolves.toBe(42);
    await expect(s.track(async () => { throw new Error('boom'); })).rejects.toThrow('boom');
    s.stop();
    s.touch();
    await sleep(80);
    expect(collections).toBe(0);
  });

  it('really collects with node --expose-gc: a large dropped object is gone after the settle', async () => {
    // in a child process of its own: vitest's workers do not run with --expose-gc
    const { execFileSync } = await import('node:child_process');
    const script = `
      const { createMemorySettler } = await import(${JSON.stringify(new URL('../bots/memory-settle.ts', import.meta.url).href)});
      let big = new Array(2_000_000).fill(0).map((_, i) => ({ i }));
      const ref = new WeakRef(big);
      const s = createMemorySettler({ idleMs: 50 });
      await s.track(async () => { big = null; });
      await new Promise((r) => setTimeout(r, 300));
      process.stdout.write(JSON.stringify({ settles: s.settles, collected: ref.deref() === undefined }));
      s.stop();`;
    const out = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', cwd: new URL('..', import.meta.url).pathname });
    expect(JSON.parse(out)).toEqual({ settles: 1, collected: true });
  });
});
