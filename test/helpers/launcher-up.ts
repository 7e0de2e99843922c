/**
 * `meshpilot up` as a user starts it (bin/meshpilot.mjs, the bundle), for e2e tests: its output
 * collected, a wait for a line of it, and a stop that ends it gracefully (SIGKILL after 15 s).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../../capabilities/home.js';

export const MESHPILOT_BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs');

export interface UpLauncher {
  child: ChildProcess;
  /** stdout and stderr so far */
  output(): string;
  /** Resolves when the output matches `re`; rejects after `ms` with the output's tail. */
  waitOut(re: RegExp, ms?: number): Promise<void>;
  /** SIGTERM, then SIGKILL if it has not exited within 15 s. */
  stop(): Promise<void>;
}

export function startLauncher(env: NodeJS.ProcessEnv): UpLauncher {
  const child = spawn(process.execPath, [MESHPILOT_BIN, 'up'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  return {
    child,
    output: () => out,
    waitOut: (re, ms = 90_000) => new Promise<void>((resolve, reject) => {
      const iv = setInterval(() => { if (re.test(out)) { clearInterval(iv); clearTimeout(t); resolve(); } }, 100);
      const t = setTimeout(() => { clearInterval(iv); reject(new Error(`launcher did not print ${re}; output:\n${out.slice(-3000)}`)); }, ms);
    }),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}
