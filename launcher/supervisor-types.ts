/**
 * What the supervisor (supervisor.ts) says about its bots: states, status, exit reasons, events,
 * and the settings and options it is created with.
 */
import type { Logger } from 'pino';
import type { AuditHead } from '../bots/ipc.js';
import type { OrgSource } from '../capabilities/workspace/org.js';

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
  /** Where workspace.delegate's org tree is read (default: the manifests, through a DeviceRegistry). */
  org?: OrgSource;
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
  /** A device bot posted an approval request asked for by the HTTP API (bots/ipc.ts approval-ask). */
  'approval-posted': [{ device: string; ask: string; approvalId: string }];
  /** …and an operator (or the timeout) decided it. */
  'approval-verdict': [{ device: string; ask: string; approved: boolean; by: string; reason?: string | undefined }];
  /** A manifest change (or reconcile) restarted this bot. */
  reconciled: [{ started: string[]; stopped: string[]; restarted: string[]; retried: string[] }];
}
