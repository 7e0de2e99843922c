/**
 * Approvals on the dashboard: the device page lists the device's pending rows of the `approvals`
 * table (bots/approvals.ts), whoever asked, and lets the logged-in operator decide them.
 *
 * - A capability run from the dashboard that needs approval (policy.ts needsApproval): when the
 *   device's bot runs, it is asked exactly as an API call is (launcher/http/api/approvals.ts: IPC
 *   `approval-ask`): the bot posts it in its operators' DM and writes the row, ✅/❌ there or the
 *   buttons here decide it. Without a bot (the embedded default) this module writes the row itself and
 *   waits for the page's decision.
 * - A row a device bot waits for (chat, API, dashboard runs) is decided by sending that bot
 *   `approval-decide` (as if the operator had typed !approve <id> in its DM: the bot checks they are
 *   an operator). Rows this process waits for are decided here.
 */
import { randomBytes } from 'node:crypto';
import type { Db } from '../../../capabilities/db.js';
import type { ApprovalHook, ApprovalVerdict } from '../../../capabilities/invoke.js';
import '../../../bots/approvals.js';
import { ApiApprovals } from '../api/approvals.js';
import type { Supervisor } from '../../supervisor.js';

export const DASHBOARD_ROOM = 'dashboard';

export interface PendingApproval {
  id: string;
  device: string;
  capability: string;
  args: string;
  requester: string;
  createdAt: number;
  expiresAt: number;
  /** true: this process or a running bot waits for it, so the page can decide it. */
  decidable: boolean;
}

export class DashboardApprovals {
  private readonly waiting = new Map<string, { resolve: (v: ApprovalVerdict) => void; timer: NodeJS.Timeout; device: string }>();

  private readonly viaBots: ApiApprovals | undefined;

  constructor(private readonly db: Db, private readonly timeoutMs = 5 * 60_000, private readonly supervisor?: Pick<Supervisor, 'sendTo' | 'status' | 'on'>) {
    this.viaBots = supervisor ? new ApiApprovals(supervisor as Supervisor, timeoutMs) : undefined;
  }

  private botRuns(device: string): boolean {
    return this.supervisor?.status().some((b) => b.device === device && b.state === 'running') ?? false;
  }

  /** The hook for one dashboard run: through the device's bot when it runs, else decided on this page. */
  hook(device: string, capability: string, actor: string): ApprovalHook {
    if (this.viaBots && this.botRuns(device)) return this.viaBots.open('dashboard', device, capability, actor).hook;
    return (req) => {
      const id = randomBytes(3).toString('hex');
      const now = Date.now();
      this.db.prepare('INSERT INTO approvals (id, device, room_id, request_id, capability, args, requester, state, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
        .run(id, req.device, DASHBOARD_ROOM, req.requestId, req.capability, JSON.stringify(req.args).slice(0, 8192), req.actor, 'pending', now, now + this.timeoutMs);
      return new Promise<ApprovalVerdict>((resolve) => {
        const timer = setTimeout(() => this.decide(id, false, 'timeout', 'expired'), this.timeoutMs);
        timer.unref();
        this.waiting.set(id, { resolve, timer, device: req.device });
      });
    };
  }

  pending(device: string): PendingApproval[] {
    const rows = this.db.prepare("SELECT id, device, room_id, capability, args, requester, created_at, expires_at FROM approvals WHERE device = ? AND state = 'pending' AND expires_at > ? ORDER BY created_at")
      .all(device, Date.now()) as Array<{ id: string; device: string; room_id: string; capability: string; args: string; requester: string; created_at: number; expires_at: number }>;
    const bot = this.botRuns(device);
    return rows.map((r) => ({ id: r.id, device: r.device, capability: r.capability, args: r.args, requester: r.requester, createdAt: r.created_at, expiresAt: r.expires_at, decidable: this.waiting.has(r.id) || (bot && r.room_id !== DASHBOARD_ROOM) }));
  }

  /**
   * An operator's decision from the page: here when this process waits for it, else sent to the
   * device's bot. Returns false when nobody can take it (decided, expired, no bot running).
   */
  decideBy(device: string, id: string, approve: boolean, by: string): boolean {
    const w = this.waiting.get(id);
    if (w) return w.device === device && this.decide(id, approve, by, approve ? 'approved' : 'rejected');
    if (!/^[0-9a-f]{6}$/.test(id) || !this.supervisor) return false;
    return this.supervisor.sendTo(device, { type: 'approval-decide', id, approve, by });
  }

  private decide(id: string, approved: boolean, by: string, state: 'approved' | 'rejected' | 'expired'): boolean {
    const w = this.waiting.get(id);
    if (!w) return false;
    this.waiting.delete(id);
    clearTimeout(w.timer);
    this.db.prepare('UPDATE approvals SET state = ?, decided_by = ? WHERE id = ?').run(state, by, id);
    w.resolve(approved ? { approved: true, by } : { approved: false, by, ...(state === 'expired' ? { reason: 'expired' } : {}) });
    return true;
  }

  /** Rejects everything waiting (the server stops). */
  close(): void {
    for (const id of [...this.waiting.keys()]) this.decide(id, false, 'shutdown', 'rejected');
  }
}
