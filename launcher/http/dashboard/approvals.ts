/**
 * Approvals on the dashboard. A capability run from the dashboard that needs approval (policy.ts
 * needsApproval) waits for an operator's decision like a chat request: a row in the same `approvals`
 * table (bots/approvals.ts), bound to the call's request id, expiring after the configured timeout
 * (default 5 minutes). The device page lists the device's pending rows; this process decides the ones
 * it is waiting for. Rows a device bot is waiting for (asked in chat) are decided in that bot's DM: the
 * page shows them with a pointer there.
 */
import { randomBytes } from 'node:crypto';
import type { Db } from '../../../capabilities/db.js';
import type { ApprovalHook, ApprovalVerdict } from '../../../capabilities/invoke.js';
import '../../../bots/approvals.js';

export const DASHBOARD_ROOM = 'dashboard';

export interface PendingApproval {
  id: string;
  device: string;
  capability: string;
  args: string;
  requester: string;
  createdAt: number;
  expiresAt: number;
  /** true: asked from the dashboard (decided here); false: a device bot waits for it in Matrix. */
  here: boolean;
}

export class DashboardApprovals {
  private readonly waiting = new Map<string, { resolve: (v: ApprovalVerdict) => void; timer: NodeJS.Timeout; device: string }>();

  constructor(private readonly db: Db, private readonly timeoutMs = 5 * 60_000) {}

  /** The hook for a dashboard run: asks, then waits for a decision on the device page. */
  hook(): ApprovalHook {
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
    return rows.map((r) => ({ id: r.id, device: r.device, capability: r.capability, args: r.args, requester: r.requester, createdAt: r.created_at, expiresAt: r.expires_at, here: this.waiting.has(r.id) }));
  }

  /** An operator's decision from the page. Returns false when nothing here waits for that id (decided, expired, or a chat request). */
  decideBy(device: string, id: string, approve: boolean, by: string): boolean {
    const w = this.waiting.get(id);
    if (!w || w.device !== device) return false;
    return this.decide(id, approve, by, approve ? 'approved' : 'rejected');
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
