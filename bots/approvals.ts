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

/** "45 s" under two minutes (a 5-s timeout must not read "0 min"), else whole minutes. */
export function expiresIn(ms: number): string {
  const s = Math.max(1, Math.round(ms / 1000));
  return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
}

export const APPROVE_KEYS = new Set(['✅', '✔️', '👍', '✅️']);
export const REJECT_KEYS = new Set(['❌', '✖️', '👎', '🚫']);

export interface ApprovalPoster {
  /** Posts the request; returns where it went (the poster may move it to another room) and the event reactions must point at. */
  post(roomId: string, plain: string, html: string): Promise<{ roomId: string; eventId: string }>;
}

/** A request that was waiting for approval when the bot died. */
export interface StaleApproval {
  id: string;
  roomId: string;
  eventId: string | null;
  requestId: string;
  capability: string;
  /** As stored (cut at 8 KiB: a cut value comes back as `{ unparsed: <text> }`). */
  args: unknown;
  requester: string;
  createdAt: number;
}

function parseArgs(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return { unparsed: text.slice(0, 256) };
  }
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

  /**
   * A restart rejects everything that was waiting: nobody can approve a call that no longer exists.
   * Returns the dropped requests, so the caller can audit them and tell their rooms (the process that
   * asked died before its invoke could record anything).
   */
  expireStale(): StaleApproval[] {
    return this.db.transaction(() => {
      const rows = this.db.prepare("SELECT id, room_id, event_id, request_id, capability, args, requester, created_at FROM approvals WHERE device = ? AND state = 'pending' ORDER BY created_at")
        .all(this.opts.device) as Array<{ id: string; room_id: string; event_id: string | null; request_id: string; capability: string; args: string; requester: string; created_at: number }>;
      this.db.prepare("UPDATE approvals SET state = 'expired', decided_by = 'restart' WHERE device = ? AND state = 'pending'").run(this.opts.device);
      return rows.map((r) => ({ id: r.id, roomId: r.room_id, eventId: r.event_id, requestId: r.request_id, capability: r.capability, args: parseArgs(r.args), requester: r.requester, createdAt: r.created_at }));
    }).immediate(); // the write lock first: a read upgraded to a write fails at once (SQLITE_BUSY) when another bot wrote meanwhile
  }

  /** How the approval of a request ended ('approved', 'rejected', 'expired'), or undefined when none was asked. */
  stateOf(requestId: string): string | undefined {
    const row = this.db.prepare('SELECT state FROM approvals WHERE request_id = ? ORDER BY created_at DESC LIMIT 1').get(requestId) as { state: string } | undefined;
    return row?.state;
  }

  /** The approval hook for calls started from `roomId`. */
  hookFor(roomId: string): ApprovalHook {
    return (req) => this.ask(roomId, req);
  }

  private async ask(roomId: string, req: ApprovalRequest): Promise<ApprovalVerdict> {
    const id = randomBytes(3).toString('hex');
    const expiry = expiresIn(this.opts.timeoutMs);
    const args = JSON.stringify(req.args, null, 1).replace(/\n\s*/g, ' ');
    const plain = `🔐 Approval needed [${id}]: ${req.capability} on ${req.device}\n${args}\nasked by ${req.actor} (${req.risk})\nReact ✅ to approve, ❌ to reject (expires in ${expiry}), or reply !approve ${id} / !reject ${id}.`;
    const html = `🔐 <b>Approval needed</b> [${id}]: <code>${escapeHtml(req.capability)}</code> on <b>${escapeHtml(req.device)}</b><pre><code>${escapeHtml(args)}</code></pre>asked by ${escapeHtml(req.actor)} (${req.risk})<br>React ✅ to approve, ❌ to reject (expires in ${expiry}), or reply <code>!approve ${id}</code> / <code>!reject ${id}</code>.`;
    const now = Date.now();
    this.db.prepare('INSERT INTO approvals (id, device, room_id, request_id, capability, args, requester, state, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(id, this.opts.device, roomId, req.requestId, req.capability, JSON.stringify(req.args).slice(0, 8192), req.actor, 'pending', now, now + this.opts.timeoutMs);
    return new Promise<ApprovalVerdict>((resolve) => {
      const timer = setTimeout(() => this.decide(id, false, 'timeout', 'expired'), this.opts.timeoutMs);
      const entry: Pending = { id, roomId, eventId: undefined, resolve, timer };
      this.pending.set(id, entry);
      this.opts.poster.post(roomId, plain, html).then((posted) => {
        entry.roomId = posted.roomId;
        entry.eventId = posted.eventId;
        this.db.prepare('UPDATE approvals SET room_id = ?, event_id = ? WHERE id = ?').run(posted.roomId, posted.eventId, id);
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
