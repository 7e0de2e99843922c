/**
 * What the workspace engine works with: the runtime (data dir, database, audit, devices, the one
 * Invoker), the config (Matrix: the bots' accounts), who acts (for the audit log), and the seams the
 * operator room, the dashboard and tests replace: the wait for a bot's "live", the running launcher,
 * and the bots' states when the caller is the launcher itself (its supervisor).
 */
import * as os from 'node:os';
import type { Logger } from 'pino';
import type { Config } from '../../capabilities/config.js';
import { logger } from '../../capabilities/log.js';
import { WorkspaceStore } from '../../capabilities/workspace/store.js';
import type { LiveWait } from '../enroll/types.js';
import { readPidFile, type PidFileInfo } from '../pid-file.js';
import type { Runtime } from '../runtime-core.js';
import { ImportRuns } from './runs.js';

export interface WorkspaceOptions {
  runtime: Pick<Runtime, 'home' | 'db' | 'audit' | 'devices' | 'invoker'>;
  /** config.yaml; without it (no Matrix) workspaces cannot get bots */
  config?: Config | undefined;
  /** who acts, for the audit log (default cli:<user>) */
  actor?: string;
  /** replaces the wait for the bot's "✓ <name> live" (tests; default enroll/matrix.ts waitForLiveMessage) */
  waitLive?: (w: LiveWait) => Promise<void>;
  /** how long a new bot has to say live (default config.mesh.live_timeout_s, else 60 s) */
  liveTimeoutMs?: number;
  /** how long a removed workspace's bot has to stop (default 40 s: the supervisor's graceful stop is 30 s) */
  stopTimeoutMs?: number;
  /** the running launcher (default: MESHPILOT_HOME/launcher.pid); undefined when none runs */
  launcher?: () => PidFileInfo | undefined;
  /** the bots' states, when the caller runs inside the launcher (its supervisor's status()) */
  bots?: () => ReadonlyArray<{ device: string; state: string; pid: number | null }>;
  signal?: AbortSignal;
  logger?: Logger;
  /** fault injection for tests: `after-manifest:<name>` fails that workspace's create once its manifest is written, `no-live:<name>` its wait for live */
  fault?: string;
}

export function cliActor(): string {
  try { return `cli:${os.userInfo().username}`; } catch { return 'cli:unknown'; }
}

/** The resolved options plus the stores, opened once per call. */
export interface WorkspaceEnv {
  o: WorkspaceOptions;
  actor: string;
  store: WorkspaceStore;
  runs: ImportRuns;
  log: Logger;
  launcher(): PidFileInfo | undefined;
}

export function workspaceEnv(o: WorkspaceOptions): WorkspaceEnv {
  const log = o.logger ?? logger('workspaces');
  return {
    o,
    actor: o.actor ?? cliActor(),
    store: new WorkspaceStore(o.runtime.db, log),
    runs: new ImportRuns(o.runtime.db, o.runtime.audit),
    log,
    launcher: () => {
      const l = (o.launcher ?? (() => readPidFile(o.runtime.home.root)))();
      return l?.alive ? l : undefined;
    },
  };
}

/**
 * Closes imports whose process ended (their `started` gets its `failed`), and marks the workspaces
 * they left `pending` as failed (the next import creates them again). Returns one line per closed run.
 */
export function closeInterrupted(env: WorkspaceEnv): string[] {
  const closed = env.runs.closeInterrupted();
  if (closed.length === 0) return [];
  const templates = new Set(closed.map((c) => c.template));
  for (const r of env.store.list()) if (r.state === 'pending' && r.template !== null && templates.has(r.template)) env.store.setState(r.name, 'failed');
  return closed.map((c) => `closed the interrupted import ${c.id} of ${c.template} (its process ${c.pid} ended) as failed`);
}

/** Tells the running launcher to re-read the manifests now (it also watches the folder). */
export function pokeLauncher(env: WorkspaceEnv): boolean {
  const l = env.launcher();
  if (!l) return false;
  try { process.kill(l.pid, 'SIGHUP'); } catch { /* it watches the folder anyway */ }
  return true;
}
