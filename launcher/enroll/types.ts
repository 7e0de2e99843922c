/**
 * The vocabulary of enrollment (`meshpilot add-pc`, `meshpilot revoke`): exit codes, progress
 * events, options and results. Every other file of launcher/enroll/ and each caller (the CLI, the
 * operator room) speaks it; it imports nothing.
 */
import type { ErrorCode } from '../../capabilities/errors.js';

/**
 * Exit codes of add-pc / revoke:
 *   0   done (live; or registered while no launcher runs: start one with `npm start`)
 *   1   a step failed; everything it had done was undone (nothing is left behind)
 *   2   usage: bad name or flags, the name is taken, no `mesh` config, another add-pc is running
 *   5   the target's ssh host key is not trusted yet (or changed): check it, pass --accept-host-key
 *   6   a step failed AND some undo failed too: the result lists what is left; run the same
 *       add-pc again (it resumes the cleanup) or `meshpilot revoke <name>`
 *   130 interrupted (Ctrl-C): run the same add-pc again to resume, or revoke to undo
 */
export const ENROLL_EXIT = { ok: 0, failed: 1, usage: 2, hostKey: 5, partial: 6, interrupted: 130 } as const;

export type Via = 'wg' | 'ssh';
export type EnrollStatus = 'running' | 'interrupted' | 'failed' | 'rolled_back' | 'registered' | 'live' | 'revoked';
export type StepState = 'pending' | 'running' | 'done' | 'failed' | 'undone' | 'undo_failed';

export type EnrollEvent =
  | { type: 'start'; device: string; via: Via; mode: 'new' | 'resume' | 'verify'; total: number; message: string }
  | { type: 'step'; device: string; index: number; total: number; step: string; title: string; status: 'running' | 'done' | 'skipped' | 'failed'; ms?: number; detail?: string; error?: { code: ErrorCode; message: string } }
  | { type: 'undo'; device: string; step: string; title: string; status: 'done' | 'failed'; message?: string }
  | { type: 'info' | 'warn'; device: string; message: string }
  | { type: 'result'; device: string; ok: boolean; status: EnrollStatus; exit: number; message: string; undone?: string[]; leftovers?: string[]; error?: { code: ErrorCode; message: string }; timings?: Record<string, number> };

export type OnEvent = (e: EnrollEvent) => void;

// ---- options -----------------------------------------------------------------------------------

export interface AddPcOptions {
  name: string;
  via: Via;
  /** alias (from ~/.ssh/config) or user@host[:port] */
  ssh: string;
  /** Private key for the ssh connection (default: the ssh transport's default keys). */
  sshKey?: string;
  os?: 'linux' | 'darwin';
  arch?: string;
  /** The manifest template profile for --via wg (default readonly). */
  profile?: 'readonly' | 'operator';
  dryRun?: boolean;
  /** SHA256:… the operator checked on the target. */
  acceptHostKey?: string;
  /** MESHPILOT_HOME (default resolveHome()). */
  home?: string;
  /** Asks the operator a question (host key confirmation); absent: non-interactive. */
  ask?: (question: string) => Promise<string>;
  /** Stops the run between steps (Ctrl-C). */
  signal?: AbortSignal;
  /** Replaces the wait for the bot's "live" message (tests, the operator room bot). */
  waitLive?: (w: LiveWait) => Promise<void>;
  /** Fault injection for tests: `fail:<step>` fails that step after it ran, `corrupt-upload` corrupts the agent upload. */
  fault?: string;
  /** Who runs it, for the audit log (default cli:<user>). */
  actor?: string;
}

export interface LiveWait {
  device: string;
  homeserverUrl: string;
  botUserId: string;
  botToken: string;
  /** Only messages at or after this time count. */
  sinceTs: number;
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface EnrollResult {
  ok: boolean;
  exit: number;
  status: EnrollStatus;
  message: string;
}
