/**
 * The supervisor: one child process per device bot, so one device's crash stays there.
 *
 * Children are forked from `entry` (a .ts module runs through tsx's loader, resolved to an absolute
 * path so the launcher's cwd does not matter) and talk to the launcher over Node's IPC channel, in the
 * protocol of bots/ipc.ts (init/shutdown down; ready/heartbeat/fatal/log up).
 *
 * Every message is zod-validated and bounded both ways. A child must exit when its IPC channel
 * disconnects (the launcher is gone) and on SIGTERM.
 *
 * Secrets never travel in argv. Children get a scrubbed environment (see childEnv): PATH, HOME,
 * USER, LOGNAME, LANG, LC_ALL, TZ, TMPDIR, MESHPILOT_HOME, MESHPILOT_LOG_LEVEL and nothing else
 * from the launcher — not NODE_OPTIONS, not ANTHROPIC_API_KEY. Whatever a bot needs beyond that
 * (ANTHROPIC_API_KEY, tokens) the caller passes explicitly in `options.env`; the child reads the
 * rest from MESHPILOT_HOME itself. On top of that every child gets fixed memory settings
 * (BOT_RUNTIME_ENV, BOT_NODE_ARGS; botEnv / botExecArgv, which test/helpers/bot-env.ts uses too).
 *
 * Per device: starting → running (after 'ready') → restarting (unexpected exit; exponential backoff
 * with jitter, capped at backoffMaxS) → crash-looping (more than maxCrashes exits within
 * crashWindowS: no more restarts) | failed ('fatal' message) | stopping → stopped.
 * No 'ready' within readyTimeoutMs, or no heartbeat for heartbeatTimeoutMs: SIGTERM, then SIGKILL
 * after killGraceMs, counted as a crash.
 *
 * Each child runs in its own process group (detached), so a Ctrl-C in the launcher's terminal
 * reaches only the launcher, which then stops the bots gracefully; SIGTERM/SIGKILL go to the
 * child's whole group (anything it spawned goes with it).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { mkdirSync, readFileSync, renameSync, rmSync, watch, writeFileSync, type FSWatcher } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Logger } from 'pino';
import { MeshpilotError } from '../capabilities/errors.js';
import { logger as makeLogger } from '../capabilities/log.js';
import { DeviceNameSchema } from '../capabilities/manifest.js';
import { heartbeatIntervalFor, parseChildMessage, ParentMessageSchema, type AuditHead, type ParentMessage } from '../bots/ipc.js';

// The IPC protocol (messages, bounds, parseChildMessage) is declared once in bots/ipc.ts, shared with the bot.

// ---------------------------------------------------------------------------------------------
// Child environment

/** The only variables a child inherits from the launcher's environment. */
export const INHERITED_ENV = ['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'MESHPILOT_LOG_LEVEL'] as const;

/**
 * The environment of a bot child: the INHERITED_ENV subset of `parent`, MESHPILOT_HOME = home,
 * then `extra` (what the caller hands over on purpose, e.g. ANTHROPIC_API_KEY).
 */
export function childEnv(home: string, extra: Record<string, string> = {}, parent: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  for (const k of INHERITED_ENV) {
    const v = parent[k];
    if (v !== undefined) env[k] = v;
  }
  env['MESHPILOT_HOME'] = home;
  for (const [k, v] of Object.entries(extra)) env[k] = v;
  return env;
}

let tsxLoaderUrl: string | undefined;
/** execArgv for forking `entry`: tsx's loader (absolute file URL) for TypeScript, nothing for JS. */
export function execArgvFor(entry: string): string[] {
  if (!/\.(c|m)?ts$/.test(entry)) return [];
  tsxLoaderUrl ??= pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
  return ['--import', tsxLoaderUrl];
}

/*
 * Memory settings of every bot child (RSS per bot, `npx tsx bench/run.ts bot`). Bots are I/O bound and
 * many run side by side, so they trade peak JS speed for memory; WebAssembly stays on (ssh2's poly1305,
 * Matrix crypto), so no --jitless / --lite-mode.
 *
 * - glibc malloc: blocks of 32 KiB and up are mmapped and go back to the system when freed. Parsing and
 *   compiling the bundle churns through ~20-35 MB of V8 zone memory in 32 KiB segments; with glibc's
 *   default (dynamic) threshold they came from the main arena, which kept ~20 MB of freed memory per bot.
 *   GLIBC_TUNABLES is read by the dynamic loader: other C libraries ignore it.
 * - --no-opt --no-sparkplug: JavaScript runs in Ignition, V8's interpreter, only: no TurboFan code and
 *   zone memory, and no Sparkplug baseline code (1.5-2 MB of code space per bot, measured; CPU per
 *   message unchanged within noise). WebAssembly is compiled as before and still tiers up.
 * - --expose-gc: when a bot goes quiet it runs two compacting collections (bots/memory-settle.ts), which
 *   move live objects together so the emptied pages go back to the system (84-85 MB right after traffic, 78 MB at rest).
 * - --wasm-tiering-budget=100000000 (V8's default 1800000): the WebAssembly crypto starts on Liftoff, V8's
 *   baseline compiler, and a function moves to TurboFan once it has run ~this many bytes of code. At the
 *   default, the few hundred ms of key generation, signing and store loading at start already pushed
 *   hundreds of functions through TurboFan: ~0.45 s of CPU per bot start (measured, 20 bots on 2 cores:
 *   13 s up → 8 s up). A bot's crypto is a few calls per message; the truly hot functions still tier up
 *   over its lifetime.
 * - --wasm-lazy-validation: each WebAssembly function is validated when it is first compiled (compilation
 *   is lazy already) instead of all at load: compiling the crypto module takes 22 ms of CPU instead of 55.
 * - --max-semi-space-size=1: bots are I/O bound; a small young generation keeps their memory down.
 * - --max-old-space-size=512: a bound that also sizes V8's heap for a small process (measured: ~2 MB less
 *   than V8's default sizing for a machine's RAM); a bot's live heap is ~20 MB.
 */
/** Environment every bot child gets in addition to childEnv (an explicit `extra` variable wins). */
export const BOT_RUNTIME_ENV: Readonly<Record<string, string>> = { GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=32768' };
/** Node/V8 flags every bot child gets, before the caller's nodeArgs (a later flag wins). */
export const BOT_NODE_ARGS: readonly string[] = [
  '--no-opt', '--no-sparkplug', '--wasm-tiering-budget=100000000', '--wasm-lazy-validation', '--max-old-space-size=512', '--max-semi-space-size=1',
  '--expose-gc',
];

/** The environment a bot child starts with: BOT_RUNTIME_ENV, then childEnv(home, extra, parent). */
export function botEnv(home: string, extra: Record<string, string> = {}, parent: NodeJS.ProcessEnv = process.env): Record<string, string> {
  return { ...BOT_RUNTIME_ENV, ...childEnv(home, extra, parent) };
}

/** execArgv for a bot child: BOT_NODE_ARGS, the caller's nodeArgs, then execArgvFor(entry). */
export function botExecArgv(entry: string, nodeArgs: readonly string[] = []): string[] {
  return [...BOT_NODE_ARGS, ...nodeArgs, ...execArgvFor(entry)];
}

// ---------------------------------------------------------------------------------------------
// Launcher pid file (MESHPILOT_HOME/launcher.pid): `<pid>\n[start=<ticks>\n]`

export function pidFilePath(home: string): string {
  return path.join(home, 'launcher.pid');
}

/** Process start time in clock ticks since boot (Linux /proc); undefined elsewhere or when gone. */
function processStartTicks(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19]; // field 22, starttime
  } catch {
    return undefined;
  }
}

/** True while a process with this pid exists (EPERM: it exists, owned by someone else). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface PidFileInfo {
  pid: number;
  file: string;
  /** The process exists and (on Linux) is the same process that wrote the file (not a reused pid). */
  alive: boolean;
}

/** The launcher's pid file, or undefined when there is none (or it is unreadable/garbled). */
export function readPidFile(home: string): PidFileInfo | undefined {
  const file = pidFilePath(home);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  if (text.length > 200) return undefined;
  const [first, second] = text.split('\n');
  const pid = Number(first?.trim());
  if (!Number.isInteger(pid) || pid <= 1 || pid > 4_194_304) return undefined;
  let alive = pidAlive(pid);
  const recorded = /^start=(\d+)$/.exec(second?.trim() ?? '')?.[1];
  if (alive && recorded !== undefined) {
    const now = processStartTicks(pid);
    if (now !== undefined && now !== recorded) alive = false; // the pid was reused by another process
  }
  return { pid, file, alive };
}

/**
 * Writes MESHPILOT_HOME/launcher.pid (0600, atomically). Throws MeshpilotError('config') when
 * another live launcher already holds it; a stale file is replaced.
 */
export function writePidFile(home: string, pid: number = process.pid): string {
  const existing = readPidFile(home);
  if (existing && existing.alive && existing.pid !== pid) {
    throw new MeshpilotError('config', `another launcher is already running (pid ${existing.pid}, ${existing.file}); stop it first or run \`meshpilot reload\``);
  }
  const file = pidFilePath(home);
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const start = processStartTicks(pid);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${pid}\n${start !== undefined ? `start=${start}\n` : ''}`, { mode: 0o600 });
  renameSync(tmp, file);
  return file;
}

/** Removes the pid file if it names `pid` (so a launcher never removes another one's file). */
export function removePidFile(home: string, pid: number = process.pid): void {
  const existing = readPidFile(home);
  if (existing && existing.pid === pid) rmSync(existing.file, { force: true });
}

// ---------------------------------------------------------------------------------------------
// Supervisor

export type BotState = 'starting' | 'running' | 'restarting' | 'crash-looping' | 'failed' | 'stopping' | 'stopped';

/** Why a child exited: asked to (stop/restart/fatal) or not (crash, killed for a timeout). */
export type ExitReason = 'stop' | 'restart' | 'fatal' | 'crash' | 'ready-timeout' | 'heartbeat-timeout';

export interface ExitInfo {
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  reason: ExitReason;
  at: string;
}

export interface BotStatus {
  device: string;
  state: BotState;
  pid: number | null;
  /** Spawns after the first one (crash restarts, manifest restarts, restart()). */
  restarts: number;
  crashesInWindow: number;
  lastExit: ExitInfo | null;
  /** When the bot entered its current state (ISO time). */
  since: string;
  busy: boolean;
  auditHead: AuditHead | null;
  /** Set in state 'failed': what the bot reported. */
  fatal: { code: string; message: string } | null;
}

export interface SupervisorSettings {
  maxCrashes: number;
  crashWindowS: number;
  backoffMaxS: number;
  /** First restart delay; doubles per crash in the window. Default 500. */
  backoffBaseMs?: number;
  /** Default 30 000. */
  readyTimeoutMs?: number;
  /** How long stop()/restart() wait after 'shutdown' before SIGTERM. Default 15 000. */
  shutdownGraceMs?: number;
  /** Default 60 000. Children are told to beat every quarter of it. */
  heartbeatTimeoutMs?: number;
  /** SIGTERM → SIGKILL delay. Default 5 000. */
  killGraceMs?: number;
  /** Periodic reconcile (safety net for fs.watch). Default 5 000. */
  reconcileIntervalMs?: number;
  /** Debounce for manifest directory events. Default 250. */
  watchDebounceMs?: number;
  /** Lines of child stderr kept for the crash-loop report. Default 20. */
  stderrTailLines?: number;
}

export interface SupervisorOptions {
  /** Absolute path of the child module (.ts runs through tsx). */
  entry: string;
  /** MESHPILOT_HOME. Manifests are watched in <home>/manifests unless manifestsDir is given. */
  home: string;
  manifestsDir?: string;
  /** The devices that should have a bot (e.g. the valid ones from DeviceRegistry). */
  desiredDevices: () => string[];
  /** A bot whose hash changes between reconciles is restarted. */
  manifestHash?: (device: string) => string | undefined;
  settings: SupervisorSettings;
  logger?: Logger;
  /** Extra environment for children (the only way secrets such as ANTHROPIC_API_KEY reach them). */
  env?: Record<string, string>;
  /** Extra node flags for children (e.g. V8 memory settings). */
  nodeArgs?: string[];
  /** Watch the manifests directory (default true; the periodic reconcile runs either way). */
  watch?: boolean;
  /** start() installs a SIGHUP handler running reconcile({retryFailed:true}); stop() removes it. */
  handleSighup?: boolean;
  /** Write child stdout/stderr through to the launcher's stderr (default true). */
  forwardOutput?: boolean;
}

export interface SupervisorEvents {
  /** Every state change. */
  state: [BotStatus];
  spawn: [{ device: string; pid: number; restarts: number }];
  ready: [{ device: string; pid: number }];
  exit: [{ device: string } & ExitInfo & { expected: boolean }];
  'restart-scheduled': [{ device: string; delayMs: number; crashesInWindow: number }];
  'crash-loop': [{ device: string; code: number | null; signal: NodeJS.Signals | null; reason: ExitReason; crashesInWindow: number; stderrTail: string[] }];
  failed: [{ device: string; code: string; message: string }];
  stopped: [{ device: string; removed: boolean }];
  /** A manifest change (or reconcile) restarted this bot. */
  reconciled: [{ started: string[]; stopped: string[]; restarted: string[]; retried: string[] }];
}

interface Bot {
  device: string;
  state: BotState;
  since: number;
  child: ChildProcess | undefined;
  /** Increments per spawn; events from an older child are ignored. */
  gen: number;
  spawns: number;
  crashes: number[];
  lastExit: ExitInfo | null;
  busy: boolean;
  auditHead: AuditHead | null;
  fatal: { code: string; message: string } | null;
  hash: string | undefined;
  stderrTail: string[];
  /** Why the current child is expected to exit (set before we ask it to). */
  intent: ExitReason | undefined;
  /** What to do after the current child exits when it was stopped on purpose. */
  after: 'stopped' | 'remove' | 'respawn' | undefined;
  exited: Promise<void>;
  resolveExited: () => void;
  readyTimer?: NodeJS.Timeout;
  heartbeatTimer?: NodeJS.Timeout;
  restartTimer?: NodeJS.Timeout;
  termTimer?: NodeJS.Timeout;
  killTimer?: NodeJS.Timeout;
  badMessages: number;
  logTokens: number;
  logRefill: number;
}

const STDERR_LINE_MAX = 2000;
const PARTIAL_LINE_MAX = 16 * 1024;
const LOG_MESSAGES_PER_SECOND = 200;

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export class Supervisor extends EventEmitter<SupervisorEvents> {
  private readonly bots = new Map<string, Bot>();
  private readonly log: Logger;
  private readonly s: Required<SupervisorSettings>;
  private readonly manifestsDir: string;
  private started = false;
  private stopping = false;
  private stopPromise: Promise<void> | undefined;
  private interval: NodeJS.Timeout | undefined;
  private watcher: FSWatcher | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private reconciling: Promise<void> | undefined;
  private pending: { retryFailed: boolean } | undefined;
  private readonly onSighup = (): void => {
    this.log.info('SIGHUP: reloading manifests, retrying failed bots');
    void this.reconcile({ retryFailed: true });
  };

  constructor(private readonly opts: SupervisorOptions) {
    super();
    if (!path.isAbsolute(opts.entry)) throw new MeshpilotError('usage', `supervisor entry must be an absolute path: ${opts.entry}`);
    this.log = opts.logger ?? makeLogger('supervisor');
    const st = opts.settings;
    this.s = {
      maxCrashes: st.maxCrashes,
      crashWindowS: st.crashWindowS,
      backoffMaxS: st.backoffMaxS,
      backoffBaseMs: st.backoffBaseMs ?? 500,
      readyTimeoutMs: st.readyTimeoutMs ?? 30_000,
      shutdownGraceMs: st.shutdownGraceMs ?? 15_000,
      heartbeatTimeoutMs: st.heartbeatTimeoutMs ?? 60_000,
      killGraceMs: st.killGraceMs ?? 5_000,
      reconcileIntervalMs: st.reconcileIntervalMs ?? 5_000,
      watchDebounceMs: st.watchDebounceMs ?? 250,
      stderrTailLines: st.stderrTailLines ?? 20,
    };
    this.manifestsDir = opts.manifestsDir ?? path.join(opts.home, 'manifests');
  }

  /** Starts a bot for every desired device, then watches the manifests. */
  async start(): Promise<void> {
    if (this.started) return;
    if (this.stopping) throw new MeshpilotError('usage', 'this supervisor was stopped; create a new one');
    this.started = true;
    if (this.opts.watch !== false) this.startWatching();
    this.interval = setInterval(() => {
      if (this.opts.watch !== false && !this.watcher) this.startWatching();
      void this.reconcile();
    }, this.s.reconcileIntervalMs);
    if (this.opts.handleSighup && process.platform !== 'win32') process.on('SIGHUP', this.onSighup);
    await this.reconcile();
  }

  /**
   * Brings the bots in line with desiredDevices(): starts new ones, stops removed ones, restarts
   * those whose manifest hash changed (a failed or crash-looping one gets a fresh start then too),
   * leaves the others alone. retryFailed also restarts 'failed' and 'crash-looping' bots.
   * Concurrent calls are coalesced.
   */
  reconcile(opts: { retryFailed?: boolean } = {}): Promise<void> {
    if (this.stopping) return Promise.resolve();
    if (this.reconciling) {
      this.pending = { retryFailed: (this.pending?.retryFailed ?? false) || !!opts.retryFailed };
      return this.reconciling;
    }
    const run = async (retryFailed: boolean): Promise<void> => {
      try {
        await this.reconcileOnce(retryFailed);
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'reconcile failed');
      }
      if (this.pending && !this.stopping) {
        const next = this.pending;
        this.pending = undefined;
        await run(next.retryFailed);
      }
    };
    this.reconciling = run(!!opts.retryFailed).finally(() => { this.reconciling = undefined; });
    return this.reconciling;
  }

  private async reconcileOnce(retryFailed: boolean): Promise<void> {
    let desired: string[];
    try {
      desired = [...new Set(this.opts.desiredDevices())].filter((d) => DeviceNameSchema.safeParse(d).success);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'listing devices failed; leaving bots as they are');
      return;
    }
    const want = new Set(desired);
    const summary = { started: [] as string[], stopped: [] as string[], restarted: [] as string[], retried: [] as string[] };
    const work: Promise<void>[] = [];
    for (const [device, bot] of this.bots) {
      if (!want.has(device) && bot.after !== 'remove') {
        summary.stopped.push(device);
        work.push(this.stopBot(bot, 'remove'));
      }
    }
    for (const device of desired) {
      const hash = this.hashOf(device);
      const bot = this.bots.get(device);
      if (!bot || bot.after === 'remove') {
        if (bot) {
          // Back before its removal finished: start it again once the old child is gone.
          bot.after = 'respawn';
          bot.hash = hash;
          summary.started.push(device);
          continue;
        }
        const fresh = this.newBot(device);
        fresh.hash = hash;
        this.bots.set(device, fresh);
        summary.started.push(device);
        this.spawn(fresh);
        continue;
      }
      if (bot.after === 'respawn' || bot.state === 'stopping') continue;
      const dead = bot.state === 'failed' || bot.state === 'crash-looping' || bot.state === 'stopped';
      if (hash !== bot.hash) {
        bot.hash = hash;
        summary.restarted.push(device);
        work.push(this.restartBot(bot));
      } else if (dead && retryFailed) {
        summary.retried.push(device);
        work.push(this.restartBot(bot));
      }
    }
    if (summary.started.length || summary.stopped.length || summary.restarted.length || summary.retried.length) {
      this.log.info(summary, 'reconciled');
      this.emit('reconciled', summary);
    }
    await Promise.all(work);
  }

  /** Restarts one bot (graceful stop, fresh start, crash history cleared). */
  async restart(device: string): Promise<void> {
    const bot = this.bots.get(device);
    if (!bot || bot.after === 'remove') throw new MeshpilotError('unknown_device', `no bot for device ${device}`);
    if (this.stopping) return;
    await this.restartBot(bot);
  }

  /**
   * Graceful stop: every bot gets 'shutdown' and up to shutdownGraceMs to finish its current call
   * and exit, then SIGTERM, then SIGKILL. Resolves when every child has exited.
   */
  stop(): Promise<void> {
    this.stopPromise ??= (async () => {
      this.stopping = true;
      this.pending = undefined;
      if (this.interval) clearInterval(this.interval);
      if (this.debounce) clearTimeout(this.debounce);
      this.watcher?.close();
      this.watcher = undefined;
      process.off('SIGHUP', this.onSighup);
      await Promise.all([...this.bots.values()].map((b) => this.stopBot(b, 'stopped')));
      // A reconcile that was in flight may have spawned meanwhile: stopBot again until quiet.
      await this.reconciling;
      await Promise.all([...this.bots.values()].map((b) => this.stopBot(b, 'stopped')));
    })();
    return this.stopPromise;
  }

  status(): BotStatus[] {
    return [...this.bots.values()].sort((a, b) => a.device.localeCompare(b.device)).map((b) => this.statusOf(b));
  }

  // -------------------------------------------------------------------------------------------

  private statusOf(b: Bot): BotStatus {
    return {
      device: b.device,
      state: b.state,
      pid: b.child?.pid ?? null,
      restarts: Math.max(0, b.spawns - 1),
      crashesInWindow: this.crashesInWindow(b),
      lastExit: b.lastExit,
      since: new Date(b.since).toISOString(),
      busy: b.busy,
      auditHead: b.auditHead,
      fatal: b.fatal,
    };
  }

  private hashOf(device: string): string | undefined {
    try {
      return this.opts.manifestHash?.(device);
    } catch {
      return undefined;
    }
  }

  private newBot(device: string): Bot {
    let resolveExited!: () => void;
    const exited = new Promise<void>((r) => { resolveExited = r; });
    resolveExited();
    return {
      device, state: 'stopped', since: Date.now(), child: undefined, gen: 0, spawns: 0, crashes: [],
      lastExit: null, busy: false, auditHead: null, fatal: null, hash: undefined, stderrTail: [],
      intent: undefined, after: undefined, exited, resolveExited, badMessages: 0,
      logTokens: LOG_MESSAGES_PER_SECOND, logRefill: Date.now(),
    };
  }

  private setState(b: Bot, state: BotState): void {
    if (b.state === state) return;
    b.state = state;
    b.since = Date.now();
    this.emit('state', this.statusOf(b));
  }

  private crashesInWindow(b: Bot): number {
    const cutoff = Date.now() - this.s.crashWindowS * 1000;
    while (b.crashes.length && b.crashes[0]! < cutoff) b.crashes.shift();
    return b.crashes.length;
  }

  private clearTimers(b: Bot): void {
    for (const t of [b.readyTimer, b.heartbeatTimer, b.restartTimer, b.termTimer, b.killTimer]) if (t) clearTimeout(t);
    b.readyTimer = b.heartbeatTimer = b.restartTimer = b.termTimer = b.killTimer = undefined;
  }

  private spawn(b: Bot): void {
    if (this.stopping) return;
    b.restartTimer = undefined;
    b.gen += 1;
    const gen = b.gen;
    b.intent = undefined;
    b.after = undefined;
    b.busy = false;
    b.fatal = null;
    b.stderrTail = [];
    let resolveExited!: () => void;
    b.exited = new Promise<void>((r) => { resolveExited = r; });
    b.resolveExited = resolveExited;

    let child: ChildProcess;
    try {
      child = fork(this.opts.entry, [], {
        execArgv: botExecArgv(this.opts.entry, this.opts.nodeArgs),
        env: botEnv(this.opts.home, this.opts.env),
        cwd: this.opts.home,
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
        serialization: 'json',
        detached: true,
      });
    } catch (err) {
      this.log.error({ device: b.device, err: (err as Error).message }, 'could not start bot');
      b.resolveExited();
      this.onExit(b, gen, -1, null, 0);
      return;
    }
    b.child = child;
    b.spawns += 1;
    this.setState(b, 'starting');
    const pid = child.pid ?? 0;

    let exitSeen = false;
    child.on('error', (err) => {
      this.log.warn({ device: b.device, err: err.message }, 'bot process error');
      // A spawn failure emits 'error' without 'exit'.
      if (child.pid === undefined && !exitSeen) {
        exitSeen = true;
        b.resolveExited();
        this.onExit(b, gen, -1, null, 0);
      }
    });
    this.pipeOutput(b, gen, child.stdout, false);
    const closed = new Promise<void>((r) => child.once('close', () => r()));
    this.pipeOutput(b, gen, child.stderr, true);
    child.on('message', (raw: unknown) => this.onMessage(b, gen, raw));
    child.on('exit', (code, signal) => {
      if (exitSeen) return;
      exitSeen = true;
      // Let the last stderr lines arrive (bounded: a grandchild could hold the pipe open).
      void Promise.race([closed, delay(300)]).then(() => {
        if (b.gen === gen) b.resolveExited();
        this.onExit(b, gen, code, signal, pid);
      });
    });

    if (pid) {
      this.log.info({ device: b.device, pid, restarts: b.spawns - 1 }, 'bot started');
      this.emit('spawn', { device: b.device, pid, restarts: b.spawns - 1 });
    }
    this.send(b, { type: 'init', device: b.device, heartbeatMs: heartbeatIntervalFor(this.s.heartbeatTimeoutMs) });
    b.readyTimer = setTimeout(() => {
      if (b.gen !== gen || b.state !== 'starting') return;
      this.log.warn({ device: b.device, pid, readyTimeoutMs: this.s.readyTimeoutMs }, 'bot did not become ready in time; killing it');
      this.kill(b, 'ready-timeout');
    }, this.s.readyTimeoutMs);
  }

  private pipeOutput(b: Bot, gen: number, stream: NodeJS.ReadableStream | null, isStderr: boolean): void {
    if (!stream) return;
    const forward = this.opts.forwardOutput !== false;
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      if (forward) process.stderr.write(chunk);
      if (!isStderr || b.gen !== gen) return;
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      if (partial.length > PARTIAL_LINE_MAX) {
        lines.push(partial);
        partial = '';
      }
      for (const line of lines) {
        if (!line) continue;
        b.stderrTail.push(line.length > STDERR_LINE_MAX ? `${line.slice(0, STDERR_LINE_MAX)}…` : line);
        if (b.stderrTail.length > this.s.stderrTailLines) b.stderrTail.shift();
      }
    });
    stream.on('end', () => {
      if (isStderr && partial && b.gen === gen) {
        b.stderrTail.push(partial.slice(0, STDERR_LINE_MAX));
        if (b.stderrTail.length > this.s.stderrTailLines) b.stderrTail.shift();
      }
      partial = '';
    });
  }

  private send(b: Bot, msg: ParentMessage): void {
    const child = b.child;
    if (!child || !child.connected) return;
    try {
      child.send(ParentMessageSchema.parse(msg), (err) => {
        if (err) this.log.debug({ device: b.device, err: err.message }, 'IPC send failed');
      });
    } catch (err) {
      this.log.debug({ device: b.device, err: (err as Error).message }, 'IPC send failed');
    }
  }

  private armHeartbeat(b: Bot, gen: number): void {
    if (b.heartbeatTimer) clearTimeout(b.heartbeatTimer);
    b.heartbeatTimer = setTimeout(() => {
      if (b.gen !== gen || b.state !== 'running') return;
      this.log.warn({ device: b.device, pid: b.child?.pid, heartbeatTimeoutMs: this.s.heartbeatTimeoutMs }, 'no heartbeat from bot; killing it');
      this.kill(b, 'heartbeat-timeout');
    }, this.s.heartbeatTimeoutMs);
  }

  private onMessage(b: Bot, gen: number, raw: unknown): void {
    if (b.gen !== gen) return;
    const parsed = parseChildMessage(raw);
    if (!parsed.ok) {
      b.badMessages += 1;
      if (b.badMessages <= 5 || b.badMessages % 1000 === 0) {
        this.log.warn({ device: b.device, count: b.badMessages, reason: parsed.reason }, 'invalid IPC message from bot (ignored)');
      }
      return;
    }
    const msg = parsed.msg;
    switch (msg.type) {
      case 'ready': {
        if (b.state !== 'starting' || b.intent !== undefined) return;
        if (b.readyTimer) clearTimeout(b.readyTimer);
        b.readyTimer = undefined;
        this.setState(b, 'running');
        this.armHeartbeat(b, gen);
        const pid = b.child?.pid ?? 0;
        this.log.info({ device: b.device, pid }, 'bot ready');
        this.emit('ready', { device: b.device, pid });
        return;
      }
      case 'heartbeat': {
        b.busy = msg.busy;
        if (msg.auditHead) b.auditHead = msg.auditHead;
        if (b.state === 'running') this.armHeartbeat(b, gen);
        return;
      }
      case 'fatal': {
        if (b.intent === 'stop' || b.intent === 'restart') return;
        b.fatal = { code: msg.code, message: msg.message };
        b.intent = 'fatal';
        b.after = undefined;
        if (b.readyTimer) clearTimeout(b.readyTimer);
        if (b.heartbeatTimer) clearTimeout(b.heartbeatTimer);
        b.readyTimer = b.heartbeatTimer = undefined;
        this.setState(b, 'failed');
        this.log.error({ device: b.device, code: msg.code, message: msg.message }, 'bot reported a fatal problem; not restarting it until reload');
        this.emit('failed', { device: b.device, code: msg.code, message: msg.message });
        // It should exit by itself; if it lingers, end it.
        this.escalate(b, this.s.killGraceMs);
        return;
      }
      case 'log': {
        const now = Date.now();
        b.logTokens = Math.min(LOG_MESSAGES_PER_SECOND, b.logTokens + ((now - b.logRefill) / 1000) * LOG_MESSAGES_PER_SECOND);
        b.logRefill = now;
        if (b.logTokens < 1) return;
        b.logTokens -= 1;
        this.log[msg.level]({ device: b.device, from: 'bot' }, msg.msg);
        return;
      }
    }
  }

  /** SIGTERM to the child's process group after `termAfterMs`, SIGKILL killGraceMs later. */
  private escalate(b: Bot, termAfterMs: number): void {
    const child = b.child;
    if (!child) return;
    const gen = b.gen;
    if (b.termTimer) clearTimeout(b.termTimer);
    if (b.killTimer) clearTimeout(b.killTimer);
    const term = (): void => {
      if (b.gen !== gen || b.child !== child) return;
      this.signal(child, 'SIGTERM');
      b.killTimer = setTimeout(() => {
        if (b.gen !== gen || b.child !== child) return;
        this.log.warn({ device: b.device, pid: child.pid }, 'bot ignored SIGTERM; SIGKILL');
        this.signal(child, 'SIGKILL');
      }, this.s.killGraceMs);
    };
    if (termAfterMs <= 0) term();
    else b.termTimer = setTimeout(term, termAfterMs);
  }

  private signal(child: ChildProcess, sig: NodeJS.Signals): void {
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    try {
      process.kill(-child.pid, sig); // the child's process group (it is a group leader: detached)
    } catch {
      try { child.kill(sig); } catch { /* already gone */ }
    }
  }

  /** Kills the child now (SIGTERM, then SIGKILL) for a timeout; counted as a crash. */
  private kill(b: Bot, reason: 'ready-timeout' | 'heartbeat-timeout'): void {
    b.intent = reason;
    this.escalate(b, 0);
  }

  /** Asks the current child to shut down gracefully; resolves when it has exited. */
  private stopBot(b: Bot, after: 'stopped' | 'remove'): Promise<void> {
    if (b.restartTimer) {
      clearTimeout(b.restartTimer);
      b.restartTimer = undefined;
    }
    if (!b.child) {
      if (after === 'remove') {
        this.bots.delete(b.device);
        this.emit('stopped', { device: b.device, removed: true });
      } else if (b.state === 'restarting' || b.state === 'starting') {
        this.setState(b, 'stopped');
        this.emit('stopped', { device: b.device, removed: false });
      }
      return Promise.resolve();
    }
    // Already on its way out (fatal, timeout kill, or an earlier stop): just change what follows.
    if (b.intent === undefined) {
      b.intent = 'stop';
      this.send(b, { type: 'shutdown' });
      this.escalate(b, this.s.shutdownGraceMs);
    }
    if (b.after !== 'remove') b.after = after;
    if (b.state !== 'failed') this.setState(b, 'stopping');
    return b.exited;
  }

  private async restartBot(b: Bot): Promise<void> {
    if (b.restartTimer) {
      clearTimeout(b.restartTimer);
      b.restartTimer = undefined;
    }
    b.crashes = [];
    if (!b.child) {
      this.spawn(b);
      return;
    }
    if (b.intent === undefined) {
      b.intent = 'restart';
      this.send(b, { type: 'shutdown' });
      this.escalate(b, this.s.shutdownGraceMs);
    }
    b.after = 'respawn';
    this.setState(b, 'stopping');
    await b.exited;
  }

  private onExit(b: Bot, gen: number, code: number | null, signal: NodeJS.Signals | null, pid: number): void {
    if (b.gen !== gen) return;
    this.clearTimers(b);
    b.child = undefined;
    b.busy = false;
    const reason: ExitReason = b.intent ?? 'crash';
    const expected = reason === 'stop' || reason === 'restart' || reason === 'fatal';
    b.lastExit = { pid, code, signal, reason, at: new Date().toISOString() };
    const after = b.after;
    b.intent = undefined;
    b.after = undefined;
    this.log[expected ? 'info' : 'warn']({ device: b.device, pid, code, signal, reason }, 'bot exited');
    this.emit('exit', { device: b.device, ...b.lastExit, expected });

    if (after === 'remove') {
      this.bots.delete(b.device);
      this.setState(b, 'stopped');
      this.emit('stopped', { device: b.device, removed: true });
      return;
    }
    if (this.stopping || after === 'stopped') {
      if (reason !== 'fatal') this.setState(b, 'stopped');
      this.emit('stopped', { device: b.device, removed: false });
      return;
    }
    if (after === 'respawn') {
      this.spawn(b);
      return;
    }
    if (reason === 'fatal') return; // state 'failed' already; waits for reload or a manifest change

    b.crashes.push(Date.now());
    const n = this.crashesInWindow(b);
    if (n > this.s.maxCrashes) {
      this.setState(b, 'crash-looping');
      const stderrTail = [...b.stderrTail];
      this.log.error({ device: b.device, code, signal, reason, crashes: n, windowS: this.s.crashWindowS }, 'bot is crash-looping; not restarting it until reload');
      this.emit('crash-loop', { device: b.device, code, signal, reason, crashesInWindow: n, stderrTail });
      return;
    }
    // base·2^(n-1) with "equal jitter" (between half and all of it), then capped: each delay is at
    // least the previous one, and at most backoffMaxS.
    const raw = this.s.backoffBaseMs * 2 ** Math.min(n - 1, 30);
    const delayMs = Math.round(Math.min(this.s.backoffMaxS * 1000, raw / 2 + Math.random() * (raw / 2)));
    this.setState(b, 'restarting');
    this.emit('restart-scheduled', { device: b.device, delayMs, crashesInWindow: n });
    b.restartTimer = setTimeout(() => {
      if (b.gen !== gen || b.state !== 'restarting' || this.stopping) return;
      this.spawn(b);
    }, delayMs);
  }

  private startWatching(): void {
    if (this.watcher) return;
    try {
      this.watcher = watch(this.manifestsDir, { persistent: false }, () => {
        if (this.debounce) clearTimeout(this.debounce);
        this.debounce = setTimeout(() => { this.debounce = undefined; void this.reconcile(); }, this.s.watchDebounceMs);
      });
      this.watcher.on('error', (err) => {
        this.log.warn({ err: err.message, dir: this.manifestsDir }, 'watching manifests failed; relying on the periodic reconcile');
        this.watcher?.close();
        this.watcher = undefined;
      });
    } catch (err) {
      this.log.warn({ err: (err as Error).message, dir: this.manifestsDir }, 'cannot watch manifests; relying on the periodic reconcile');
      this.watcher = undefined;
    }
  }
}
