/**
 * The controller's audit log: one hash chain per device in the `audit` table of meshpilot.db.
 * Each append reads the device's head and inserts the next entry in one BEGIN IMMEDIATE
 * transaction, so concurrent writers (launcher, bots, CLI) never fork a chain.
 */
import type { Statement } from 'better-sqlite3';
import {
  buildEntry, verifyEntries,
  type AuditEntry, type AuditHead, type AuditInput, type VerifyResult,
} from './audit.js';
import type { Db } from './db.js';

interface AuditRow {
  device: string; seq: number; ts: string; actor: string; request_id: string | null; capability: string;
  args: string; decision: string; outcome: string; exit_code: number | null; output_sha256: string | null;
  duration_ms: number | null; error_code: string | null; reason: string | null; context: string | null;
  prev_hash: string; hash: string;
}

const COLUMNS = 'device, seq, ts, actor, request_id, capability, args, decision, outcome, exit_code, output_sha256, duration_ms, error_code, reason, context, prev_hash, hash';

function rowToEntry(r: AuditRow): AuditEntry {
  return {
    seq: r.seq, ts: r.ts, device: r.device, actor: r.actor, request_id: r.request_id, capability: r.capability,
    args: JSON.parse(r.args) as unknown, decision: r.decision as AuditEntry['decision'],
    outcome: r.outcome as AuditEntry['outcome'], exit_code: r.exit_code, output_sha256: r.output_sha256,
    duration_ms: r.duration_ms, error_code: r.error_code, reason: r.reason,
    context: r.context === null ? null : (JSON.parse(r.context) as Record<string, unknown>),
    prev_hash: r.prev_hash, hash: r.hash,
  };
}

export interface AuditSink {
  append(input: AuditInput): AuditEntry;
  head(device: string): AuditHead | null;
}

export class SqliteAuditLog implements AuditSink {
  private readonly headStmt: Statement<[string], { seq: number; hash: string }>;
  private readonly insertStmt: Statement;
  private readonly appendTx: (input: AuditInput) => AuditEntry;

  constructor(private readonly db: Db) {
    this.headStmt = db.prepare('SELECT seq, hash FROM audit WHERE device = ? ORDER BY seq DESC LIMIT 1');
    this.insertStmt = db.prepare(`INSERT INTO audit (${COLUMNS}) VALUES (${COLUMNS.split(', ').map((c) => '@' + c).join(', ')})`);
    const tx = db.transaction((input: AuditInput) => {
      const prev = this.headStmt.get(input.device);
      const entry = buildEntry(input, prev);
      this.insertStmt.run({
        ...entry,
        args: JSON.stringify(entry.args),
        context: entry.context === null ? null : JSON.stringify(entry.context),
      });
      return entry;
    });
    this.appendTx = (input) => tx.immediate(input);
  }

  append(input: AuditInput): AuditEntry {
    return this.appendTx(input);
  }

  /** Mirrors an entry written elsewhere (the device agent's chain) as-is, after the caller verified it. */
  insertVerified(entry: AuditEntry): void {
    this.insertStmt.run({ ...entry, args: JSON.stringify(entry.args), context: entry.context === null ? null : JSON.stringify(entry.context) });
  }

  head(device: string): AuditHead | null {
    return this.headStmt.get(device) ?? null;
  }

  devices(): string[] {
    return (this.db.prepare('SELECT DISTINCT device FROM audit ORDER BY device').all() as Array<{ device: string }>).map((r) => r.device);
  }

  /** The last `n` entries (of one device, or of all), oldest first. */
  tail(n: number, device?: string): AuditEntry[] {
    const rows = device
      ? (this.db.prepare(`SELECT ${COLUMNS} FROM audit WHERE device = ? ORDER BY id DESC LIMIT ?`).all(device, n) as AuditRow[])
      : (this.db.prepare(`SELECT ${COLUMNS} FROM audit ORDER BY id DESC LIMIT ?`).all(n) as AuditRow[]);
    return rows.reverse().map(rowToEntry);
  }

  get(device: string, seq: number): AuditEntry | undefined {
    const row = this.db.prepare(`SELECT ${COLUMNS} FROM audit WHERE device = ? AND seq = ?`).get(device, seq) as AuditRow | undefined;
    return row ? rowToEntry(row) : undefined;
  }

  /** Entries of a device in stored order (insertion order, so reordered rows show up). */
  *iterate(device: string, afterSeq = 0): Generator<AuditEntry> {
    const stmt = this.db.prepare(`SELECT ${COLUMNS} FROM audit WHERE device = ? AND id > ? ORDER BY id`);
    const startId = afterSeq > 0
      ? ((this.db.prepare('SELECT id FROM audit WHERE device = ? AND seq = ?').get(device, afterSeq) as { id: number } | undefined)?.id ?? 0)
      : 0;
    for (const row of stmt.iterate(device, startId) as IterableIterator<AuditRow>) yield rowToEntry(row);
  }

  /** Verifies a device's chain, from the start or incrementally from a trusted seq + hash. */
  verify(device: string, from?: AuditHead): VerifyResult {
    if (from) {
      const anchor = this.get(device, from.seq);
      if (!anchor || anchor.hash !== from.hash) {
        return { ok: false, count: 0, badSeq: from.seq, reason: `entry ${from.seq} no longer has the trusted hash ${from.hash.slice(0, 12)}…`, head: null };
      }
    }
    return verifyEntries(this.iterate(device, from?.seq ?? 0), from);
  }
}
