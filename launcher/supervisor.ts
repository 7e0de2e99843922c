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
 * Secrets never travel in argv. Children get a scrubbed environment (childEnv, bot-child.ts): PATH, HOME,
 * USER, LOGNAME, LANG, LC_ALL, TZ, TMPDIR, MESHPILOT_HOME, MESHPILOT_LOG_LEVEL and nothing else
 * from the launcher — not NODE_OPTIONS, not ANTHROPIC_API_KEY. Whatever a bot needs beyond that
 * (ANTHROPIC_API_KEY, tokens) the caller passes explicitly in `options.env`; the child reads the
 * rest from MESHPILOT_HOME itself. On top of that every child gets fixed memory settings
 * (BOT_RUNTIME_ENV, BOT_NODE_ARGS; botEnv / botExecArgv, which test/helpers/bot-env.ts uses too).
 *
 * States, status, settings and events are declared in supervisor-types.ts.
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
import { watch, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { MeshpilotError } from '../capabilities/errors.js';
import { logger as makeLogger } from '../capabilities/log.js';
import { DeviceNameSchema } from '../capabilities/manifest.js';
import { DeviceRegistry } from '../capabilities/device-registry.js';
import { heartbeatIntervalFor, parseChildMessage, ParentMessageSchema, type AuditHead, type ParentMessage } from '../bots/ipc.js';
import { botEnv, botExecArgv, pipeChildOutput, signalGroup } from './bot-child.js';
import { DelegationRelay } from './delegation.js';
import type { BotState, BotStatus, ExitInfo, ExitReason, SupervisorEvents, SupervisorOptions, SupervisorSettings } from './supervisor-types.js';

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
  /** workspace.delegate between bots: checked against the org tree here, then relayed (delegation.ts). */
  private readonly delegation: DelegationRelay;
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
    this.delegation = new DelegationRelay({
      org: opts.org ?? new DeviceRegistry(this.manifestsDir),
      sendTo: (device, msg) => this.sendTo(device, msg),
      logger: this.log.child({ component: 'delegation' }),
    });
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
      this.delegation.close();
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
    const forward = this.opts.forwardOutput !== false;
    pipeChildOutput(child.stdout, forward);
    const closed = new Promise<void>((r) => child.once('close', () => r()));
    // The last stderr lines of this child, for the crash-loop report.
    pipeChildOutput(child.stderr, forward, (line) => {
      if (b.gen !== gen) return;
      b.stderrTail.push(line);
      if (b.stderrTail.length > this.s.stderrTailLines) b.stderrTail.shift();
    });
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

  /** Sends a message to a running device bot (approval requests from the HTTP API); false when it has none running. */
  sendTo(device: string, msg: ParentMessage): boolean {
    const b = this.bots.get(device);
    if (!b || b.state !== 'running' || !b.child?.connected) return false;
    this.send(b, msg);
    return true;
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
      case 'approval-posted': {
        this.emit('approval-posted', { device: b.device, ask: msg.ask, approvalId: msg.approvalId });
        return;
      }
      case 'approval-verdict': {
        this.emit('approval-verdict', { device: b.device, ask: msg.ask, approved: msg.approved, by: msg.by, reason: msg.reason });
        return;
      }
      case 'delegate-request':
        this.delegation.request(b.device, msg);
        return;
      case 'delegate-done':
        this.delegation.done(b.device, msg);
        return;
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
      signalGroup(child, 'SIGTERM');
      b.killTimer = setTimeout(() => {
        if (b.gen !== gen || b.child !== child) return;
        this.log.warn({ device: b.device, pid: child.pid }, 'bot ignored SIGTERM; SIGKILL');
        signalGroup(child, 'SIGKILL');
      }, this.s.killGraceMs);
    };
    if (termAfterMs <= 0) term();
    else b.termTimer = setTimeout(term, termAfterMs);
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
    this.delegation.gone(b.device);
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
