/**
 * Human approvals in chat. A request names the exact capability, args and device; an operator
 * reacts ✅ or ❌ on that message (or types !approve / !reject). It expires (default 5 min), and a
 * restart rejects whatever was pending. There is no "approve always".
 */
import { randomBytes } from 'node:crypto';
import type { ApprovalHook, ApprovalRequest, ApprovalVerdict } from '../capabilities/invoke.js';
import { registerMigration, type Db } from '../capabilities/db.js';
import { escapeHtml } from './format.js';

registerMigration('bots.approvals.v1', `
  CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT,
    request_id TEXT NOT NULL,
    capability TEXT NOT NULL,
    args TEXT NOT NULL,
    requester TEXT NOT NULL,
    state TEXT NOT NULL,
    decided_by TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
  );
  CREATE INDEX approvals_pending ON approvals (device, state);
`);

export const APPROVE_KEYS = new Set(['✅', '✔️', '👍', '✅️']);
export const REJECT_KEYS = new Set(['❌', '✖️', '👎', '🚫']);

export interface ApprovalPoster {
  /** Posts the request; returns the event id reactions must point at. */
  post(roomId: string, plain: string, html: string): Promise<string>;
}

interface Pending {
  id: string;
  roomId: string;
  eventId: string | undefined;
  resolve: (v: ApprovalVerdict) => void;
  timer: NodeJS.Timeout;
}

export class ApprovalManager {
  private readonly pending = new Map<string, Pending>();

  constructor(
    private readonly db: Db,
    private readonly opts: { device: string; timeoutMs: number; isOperator: (userId: string) => boolean; poster: ApprovalPoster },
  ) {}

  /** A restart rejects everything that was waiting: nobody can approve a call that no longer exists. */
  expireStale(): number {
    return this.db.prepare("UPDATE approvals SET state = 'expired', decided_by = 'restart' WHERE device = ? AND state = 'pending'").run(this.opts.device).changes;
  }

  /** The approval hook for calls started from `roomId`. */
  hookFor(roomId: string): ApprovalHook {
    return (req) => this.ask(roomId, req);
  }

  private async ask(roomId: string, req: ApprovalRequest): Promise<ApprovalVerdict> {
    const id = randomBytes(3).toString('hex');
    const minutes = Math.round(this.opts.timeoutMs / 60000);
    const args = JSON.stringify(req.args, null, 1).replace(/\n\s*/g, ' ');
    const plain = `🔐 Approval needed [${id}]: ${req.capability} on ${req.device}\n${args}\nasked by ${req.actor} (${req.risk})\nReact ✅ to approve, ❌ to reject (expires in ${minutes} min), or reply !approve ${id} / !reject ${id}.`;
    const html = `🔐 <b>Approval needed</b> [${id}]: <code>${escapeHtml(req.capability)}</code> on <b>${escapeHtml(req.device)}</b><pre><code>${escapeHtml(args)}</code></pre>asked by ${escapeHtml(req.actor)} (${req.risk})<br>React ✅ to approve, ❌ to reject (expires in ${minutes} min), or reply <code>!approve ${id}</code> / <code>!reject ${id}</code>.`;
    const now = Date.now();
    this.db.prepare('INSERT INTO approvals (id, device, room_id, request_id, capability, args, requester, state, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(id, this.opts.device, roomId, req.requestId, req.capability, JSON.stringify(req.args).slice(0, 8192), req.actor, 'pending', now, now + this.opts.timeoutMs);
    return new Promise<ApprovalVerdict>((resolve) => {
      const timer = setTimeout(() => this.decide(id, false, 'timeout', 'expired'), this.opts.timeoutMs);
      const entry: Pending = { id, roomId, eventId: undefined, resolve, timer };
      this.pending.set(id, entry);
      this.opts.poster.post(roomId, plain, html).then((eventId) => {
        entry.eventId = eventId;
        this.db.prepare('UPDATE approvals SET event_id = ? WHERE id = ?').run(eventId, id);
      }, () => this.decide(id, false, 'error', 'rejected', 'the approval request could not be posted'));
    });
  }

  private decide(id: string, approved: boolean, by: string, state: 'approved' | 'rejected' | 'expired', reason?: string): boolean {
    const p = this.pending.get(id);
    if (!p) return false;
    this.pending.delete(id);
    clearTimeout(p.timer);
    this.db.prepare('UPDATE approvals SET state = ?, decided_by = ? WHERE id = ?').run(state, by, id);
    p.resolve(approved ? { approved: true, by } : { approved: false, by, ...(reason ? { reason } : state === 'expired' ? { reason: 'expired' } : {}) });
    return true;
  }

  /** A reaction: counts only from an operator, on the exact request message. Returns true when it decided something. */
  onReaction(roomId: string, sender: string, relatesTo: string, key: string): boolean {
    if (!this.opts.isOperator(sender)) return false;
    const approve = APPROVE_KEYS.has(key);
    if (!approve && !REJECT_KEYS.has(key)) return false;
    for (const p of this.pending.values()) {
      if (p.roomId === roomId && p.eventId === relatesTo) return this.decide(p.id, approve, sender, approve ? 'approved' : 'rejected');
    }
    return false;
  }

  /** `!approve [id]` / `!reject [id]`: without an id, the only pending request in the room. */
  onCommand(roomId: string, sender: string, approve: boolean, id?: string): string {
    if (!this.opts.isOperator(sender)) return 'Only operators can approve.';
    const inRoom = [...this.pending.values()].filter((p) => p.roomId === roomId);
    const target = id ? inRoom.find((p) => p.id === id) : inRoom.length === 1 ? inRoom[0] : undefined;
    if (!target) {
      if (inRoom.length === 0) return 'Nothing is waiting for approval here.';
      return id ? `No pending request ${id}. Waiting: ${inRoom.map((p) => p.id).join(', ')}` : `Several requests wait: say which (${inRoom.map((p) => p.id).join(', ')}).`;
    }
    this.decide(target.id, approve, sender, approve ? 'approved' : 'rejected');
    return approve ? `Approved ${target.id}.` : `Rejected ${target.id}.`;
  }

  pendingCount(): number {
    return this.pending.size;
  }

  /** Rejects everything pending (shutdown). */
  rejectAll(by: string): void {
    for (const id of [...this.pending.keys()]) this.decide(id, false, by, 'rejected', 'the bot is shutting down');
  }
}
