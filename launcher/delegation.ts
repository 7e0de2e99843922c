/**
 * The launcher's half of workspace.delegate (bots/ipc.ts): a parent bot's delegate-request is checked
 * against the org tree again here — the launcher is the authority, so a parent bot that was tampered
 * with still cannot reach a workspace outside its subtree — then relayed to the child's bot as
 * delegate-run under an id of the launcher's own; the child's delegate-done goes back to the parent as
 * delegate-result. Only the bot the run was sent to can answer it. Every request ends with exactly one
 * result: the answer, a refusal, the child not running, the child exiting, or the time running out.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { ChildMessage, ParentMessage } from '../bots/ipc.js';
import { checkDelegation, type OrgSource } from '../capabilities/workspace/org.js';

type Request = Extract<ChildMessage, { type: 'delegate-request' }>;
type Done = Extract<ChildMessage, { type: 'delegate-done' }>;
type Result = Extract<ParentMessage, { type: 'delegate-result' }>;

export interface DelegationRelayOptions {
  org: OrgSource;
  /** Sends to a running bot; false when the device has none running. */
  sendTo(device: string, msg: ParentMessage): boolean;
  logger: Logger;
  /** Delegations in flight per parent (default 4) and in all (default 32). */
  maxPerParent?: number;
  maxTotal?: number;
  /** Added to a request's timeoutMs before the launcher gives up on the child (default 2 000). */
  graceMs?: number;
}

interface Pending {
  from: string;
  parentId: string;
  to: string;
  timer: NodeJS.Timeout;
}

export class DelegationRelay {
  private readonly pending = new Map<string, Pending>();

  constructor(private readonly o: DelegationRelayOptions) {}

  /** In flight now (tests, status). */
  get size(): number {
    return this.pending.size;
  }

  /** A parent bot asks: check, then relay to the child (or answer at once). */
  request(from: string, msg: Request): void {
    const reply = (r: Omit<Result, 'type' | 'id'>): void => {
      this.o.sendTo(from, { type: 'delegate-result', id: msg.id, ...r });
    };
    const check = checkDelegation(this.o.org, from, msg.to);
    if (!check.ok) {
      this.o.logger.warn({ from, to: msg.to }, 'delegation refused by the launcher: not a descendant');
      reply({ ok: false, error: { code: 'policy_denied', message: check.reason } });
      return;
    }
    let mine = 0;
    for (const p of this.pending.values()) if (p.from === from) mine++;
    if (mine >= (this.o.maxPerParent ?? 4) || this.pending.size >= (this.o.maxTotal ?? 32)) {
      reply({ ok: false, error: { code: 'quota', message: `${from} already has ${mine} delegations in flight; wait for one to finish` } });
      return;
    }
    const id = randomBytes(12).toString('base64url');
    const timer = setTimeout(() => {
      if (!this.pending.delete(id)) return;
      this.o.logger.warn({ from, to: msg.to }, 'delegated task timed out');
      reply({ ok: false, error: { code: 'timeout', message: `${msg.to} did not answer within ${Math.round(msg.timeoutMs / 1000)} s` } });
    }, msg.timeoutMs + (this.o.graceMs ?? 2_000));
    timer.unref();
    this.pending.set(id, { from, parentId: msg.id, to: msg.to, timer });
    if (!this.o.sendTo(msg.to, { type: 'delegate-run', id, from, task: msg.task, timeoutMs: msg.timeoutMs })) {
      clearTimeout(timer);
      this.pending.delete(id);
      reply({ ok: false, error: { code: 'unreachable', message: `the bot of ${msg.to} is not running (see \`meshpilot status\`); the task was not handed over` } });
      return;
    }
    this.o.logger.info({ from, to: msg.to }, 'delegated task relayed');
  }

  /** A child bot answers a run; only the bot the run went to may. */
  done(device: string, msg: Done): void {
    const p = this.pending.get(msg.id);
    if (!p || p.to !== device) {
      this.o.logger.warn({ device }, 'a delegate-done that matches no relayed task (ignored)');
      return;
    }
    clearTimeout(p.timer);
    this.pending.delete(msg.id);
    const { type: _type, id: _id, ...outcome } = msg;
    this.o.sendTo(p.from, { type: 'delegate-result', id: p.parentId, ...outcome, workspace: device });
  }

  /** A bot exited: its runs will not be answered, and results for it have nowhere to go. */
  gone(device: string): void {
    for (const [id, p] of this.pending) {
      if (p.to === device) {
        clearTimeout(p.timer);
        this.pending.delete(id);
        this.o.sendTo(p.from, { type: 'delegate-result', id: p.parentId, ok: false, error: { code: 'unreachable', message: `the bot of ${device} stopped before it answered` } });
      } else if (p.from === device) {
        clearTimeout(p.timer);
        this.pending.delete(id);
      }
    }
  }

  close(): void {
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
  }
}
