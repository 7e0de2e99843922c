/**
 * What every CLI command gets: the terminal (CliIo), the runtime (opened on first use), the exit code,
 * and the conventions they share (EXIT codes, UsageError). Command families (launcher/commands/*.ts)
 * import this, never cli.ts: cli.ts only sets the program up from their declarations.
 */
import * as os from 'node:os';
import type { ApprovalHook } from '../../capabilities/invoke.js';
import type { AnyCommand, CommandEntry } from '../../capabilities/commands.js';
import type { Runtime } from '../runtime-core.js';

export const EXIT = { ok: 0, failed: 1, usage: 2, denied: 3, capFailed: 4 } as const;

export interface CliIo {
  out: (text: string) => void;
  err: (text: string) => void;
  isTTY: boolean;
  ask?: (question: string) => Promise<string>;
}

/** A mistake in how the command was called: printed as one line, exit code 2. */
export class UsageError extends Error {}

/** Which transports the runtime loads: all (the default: what any device may need), or none yet (`cap` loads its device's). */
export interface RuntimeOptions {
  approve?: ApprovalHook;
  transports?: 'all' | 'none';
}

export interface CommandContext {
  io: CliIo;
  /**
   * The data dir, database, audit log, devices and invoker. The CLI opens it on first call and closes it
   * after the command (cli.ts); over HTTP it is the launcher's open runtime, never closed by a command
   * (launcher/http/api/commands.ts). A command never closes it itself.
   */
  runtime(opts?: RuntimeOptions): Promise<Runtime>;
  setExit(code: number): void;
  /** Who runs it, for the audit log: unset on the CLI (`cli:<user>`), `api:<token name>` over HTTP. */
  actor?: string;
  /** The caller's device scope (an API token's device globs); unset: every device (the local account). */
  allowsDevice?: (device: string) => boolean;
  /**
   * How a capability call the manifest wants approved is decided when the surface has no terminal:
   * unset on the CLI (the TTY prompt, or `--yes`); over HTTP a hook that refuses (an API call's approval
   * goes to the device's operators through POST /v1/exec, never to the token itself).
   */
  approve?: ApprovalHook;
}

/** The actor a command acts as: the surface's (an API token's) or the local account's. */
export function actorOf(ctx: CommandContext): string {
  if (ctx.actor) return ctx.actor;
  try { return `cli:${os.userInfo().username}`; } catch { return 'cli:unknown'; }
}

/** A CLI command: its handler's code is imported inside `run`, so `meshpilot --help` loads declarations only. */
export type CliCommand = AnyCommand<CommandContext>;
export type CliEntry = CommandEntry<CommandContext>;

export function unknownDevice(r: Runtime, device: string): string {
  const names = r.devices.names();
  return `unknown device ${device}; known: ${names.length ? names.join(', ') : 'none'} (manifests live in ${r.home.manifests})`;
}
