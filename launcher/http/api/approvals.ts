/**
 * Approvals for API calls. The Invoker's approval hook for an API call sends `approval-ask` to the
 * device's bot over IPC (bots/ipc.ts); the bot posts the request in its operators' DM exactly as a
 * chat request (bots/approvals.ts: ✅/❌ or !approve <id>, the same expiry) and answers
 * `approval-verdict`. Meanwhile the API has answered 202 with this module's approval id; the call's
 * result lands here when invoke returns. Tokens never approve: only an operator in the DM (or the
 * dashboard, through `approval-decide`) does.
 *
 * In memory (bounded): a launcher restart drops pending API calls, as a bot restart drops chat ones
 * (the bot's sweep audits those as not approved).
 */
import { randomBytes } from 'node:crypto';
import type { ApprovalHook, ApprovalVerdict, InvokeResult } from '../../../capabilities/invoke.js';
import type { Supervisor } from '../../supervisor.js';

export type ApprovalState = 'pending' | 'approved' | 'rejected';

export interface ApiApproval {
  id: string;
  token: string;
  device: string;
  capability: string;
  actor: string;
  createdAt: number;
  state: ApprovalState;
  chatId: string | null;
  decidedBy: string | null;
  result: InvokeResult | null;
  /** Resolves when the call has finished (result set). */
  done: Promise<void>;
}

const MAX_KEPT = 2000;
const KEEP_DONE_MS = 3600_000;

export class ApiApprovals {
  private readonly byId = new Map<string, ApiApproval & { finish(): void }>();
  private readonly waiting = new Map<string, (v: ApprovalVerdict) => void>();

  constructor(private readonly supervisor: Supervisor | undefined, private readonly timeoutMs: number) {
    supervisor?.on('approval-posted', (e) => {
      const a = this.byId.get(e.ask);
      if (a && a.device === e.device) a.chatId = e.approvalId;
    });
    supervisor?.on('approval-verdict', (e) => {
      const a = this.byId.get(e.ask);
      if (!a || a.device !== e.device) return;
      this.waiting.get(e.ask)?.({ approved: e.approved, by: e.by, ...(e.reason ? { reason: e.reason } : {}) });
    });
  }

  /** A new record for one exec call; `asked` resolves when the call turned out to need approval. */
  open(token: string, device: string, capability: string, actor: string): { approval: ApiApproval; hook: ApprovalHook; asked: Promise<void> } {
    this.sweep();
    const id = `ap_${randomBytes(16).toString('base64url')}`;
    let finish!: () => void;
    const done = new Promise<void>((r) => (finish = r));
    const a: ApiApproval & { finish(): void } = { id, token, device, capability, actor, createdAt: Date.now(), state: 'pending', chatId: null, decidedBy: null, result: null, done, finish };
    let onAsked!: () => void;
    const asked = new Promise<void>((r) => (onAsked = r));
    const hook: ApprovalHook = (req) => {
      this.byId.set(id, a);
      onAsked();
      return new Promise<ApprovalVerdict>((resolve) => {
        const timer = setTimeout(() => settle({ approved: false, by: 'timeout', reason: 'no answer from the device bot' }), this.timeoutMs + 30_000);
        const settle = (v: ApprovalVerdict): void => {
          clearTimeout(timer);
          this.waiting.delete(id);
          a.state = v.approved ? 'approved' : 'rejected';
          a.decidedBy = v.by;
          resolve(v);
        };
        this.waiting.set(id, settle);
        const sent = this.supervisor?.sendTo(req.device, {
          type: 'approval-ask', ask: id, requestId: req.requestId, capability: req.capability, args: req.args, actor: req.actor, risk: req.risk, reason: req.reason.slice(0, 1000),
        });
        if (!sent) settle({ approved: false, by: 'error', reason: `no device bot is running for ${req.device} to ask its operators` });
      });
    };
    return { approval: a, hook, asked };
  }

  /** Records the finished call. */
  finish(a: ApiApproval, result: InvokeResult): void {
    a.result = result;
    (a as ApiApproval & { finish(): void }).finish();
  }

  get(id: string): ApiApproval | undefined {
    return this.byId.get(id);
  }

  private sweep(): void {
    const now = Date.now();
    for (const [id, a] of this.byId) {
      if (this.byId.size <= MAX_KEPT && (a.result === null || now - a.createdAt < KEEP_DONE_MS)) continue;
      if (a.result !== null || this.byId.size > MAX_KEPT * 2) this.byId.delete(id);
    }
  }
}
