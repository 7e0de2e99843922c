/**
 * The controller's audit log: one hash chain per device in the `audit` table of meshpilot.db.
 * Each append reads the device's head and inserts the next entry in one BEGIN IMMEDIATE
 * transaction, so concurrent writers (launcher, bots, CLI) never fork a chain.
 *
 * `body` holds the entry's canonical JSON (without its hash); device and seq are copies for lookups.
 * Few columns on purpose: every append pays for each one. Verification hashes `prev_hash + body` straight from the row.
 */
import type { Statement } from 'better-sqlite3';
import {
  AuditEntrySchema, buildEntryWithBody, canonicalBody, GENESIS_HASH, hashBody,
  type AuditEntry, type AuditHead, type AuditInput, type VerifyResult,
} from './audit.js';
import { registerMigration, type Db } from './db.js';

registerMigration('audit-v1', `
  CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (device, seq)
  );
`);

function parseBody(body: string, hash: string): AuditEntry {
  return AuditEntrySchema.parse({ ...(JSON.parse(body) as object), hash });
}

export interface AuditSink {
  append(input: AuditInput): AuditEntry;
  head(device: string): AuditHead | null;
}

export class SqliteAuditLog implements AuditSink {
  private readonly headStmt: Statement<[string], { seq: number; hash: string }>;
  private readonly insertStmt: Statement<[string, number, string, string]>;
  private readonly appendTx: (input: AuditInput) => AuditEntry;

  constructor(private readonly db: Db) {
    this.headStmt = db.prepare('SELECT seq, hash FROM audit WHERE device = ? ORDER BY seq DESC LIMIT 1');
    this.insertStmt = db.prepare('INSERT INTO audit (device, seq, body, hash) VALUES (?, ?, ?, ?)');
    const tx = db.transaction((input: AuditInput) => {
      const { entry, body } = buildEntryWithBody(input, this.headStmt.get(input.device));
      this.insertStmt.run(entry.device, entry.seq, body, entry.hash);
      return entry;
    });
    this.appendTx = (input) => tx.immediate(input);
  }

  private insert(entry: AuditEntry): void {
    const { hash, ...unhashed } = entry;
    this.insertStmt.run(entry.device, entry.seq, canonicalBody(unhashed), hash);
  }

  append(input: AuditInput): AuditEntry {
    return this.appendTx(input);
  }

  /** Mirrors an entry written elsewhere (the device agent's chain) as-is, after the caller verified it. */
  insertVerified(entry: AuditEntry): void {
    this.insert(entry);
  }

  head(device: string): AuditHead | null {
    return this.headStmt.get(device) ?? null;
  }

  devices(): string[] {
    return (this.db.prepare('SELECT DISTINCT device FROM audit ORDER BY device').all() as Array<{ device: string }>).map((r) => r.device);
  }

  /** The last `n` entries (of one device, or of all), oldest first. */
  tail(n: number, device?: string): AuditEntry[] {
    const rows = (device
      ? this.db.prepare('SELECT body, hash FROM audit WHERE device = ? ORDER BY id DESC LIMIT ?').all(device, n)
      : this.db.prepare('SELECT body, hash FROM audit ORDER BY id DESC LIMIT ?').all(n)) as Array<{ body: string; hash: string }>;
    return rows.reverse().map((r) => parseBody(r.body, r.hash));
  }

  get(device: string, seq: number): AuditEntry | undefined {
    const row = this.db.prepare('SELECT body, hash FROM audit WHERE device = ? AND seq = ?').get(device, seq) as { body: string; hash: string } | undefined;
    return row ? parseBody(row.body, row.hash) : undefined;
  }

  /** Entries of a device after `afterSeq`, in stored order, at most `limit`. */
  entriesAfter(device: string, afterSeq: number, limit: number): AuditEntry[] {
    const rows = this.db.prepare('SELECT body, hash FROM audit WHERE device = ? AND seq > ? ORDER BY id LIMIT ?').all(device, afterSeq, limit) as Array<{ body: string; hash: string }>;
    return rows.map((r) => parseBody(r.body, r.hash));
  }

  /**
   * Verifies a device's chain in stored (insertion) order, so deleted, edited, forged and reordered
   * rows all show up, from the start or incrementally from a trusted seq + hash.
   */
  verify(device: string, from?: AuditHead): VerifyResult {
    let startId = 0;
    if (from) {
      const anchor = this.db.prepare('SELECT id, hash FROM audit WHERE device = ? AND seq = ?').get(device, from.seq) as { id: number; hash: string } | undefined;
      if (!anchor || anchor.hash !== from.hash) {
        return { ok: false, count: 0, badSeq: from.seq, reason: `entry ${from.seq} no longer has the trusted hash ${from.hash.slice(0, 12)}…`, head: null };
      }
      startId = anchor.id;
    }
    // NOT INDEXED: walk rowid order (insertion order); via the (device, seq) index SQLite would sort.
    const rows = this.db.prepare('SELECT body, hash FROM audit NOT INDEXED WHERE id > ? AND device = ? ORDER BY id').raw().iterate(startId, device) as IterableIterator<[string, string]>;
    const chain = new ChainWalker(from);
    for (const [body, hash] of rows) if (!chain.step(body, hash)) break;
    return chain.result();
  }

  /** Verifies every device's chain in one pass over the table. */
  verifyAll(): Map<string, VerifyResult> {
    const chains = new Map<string, ChainWalker>();
    const rows = this.db.prepare('SELECT device, body, hash FROM audit NOT INDEXED ORDER BY id').raw().iterate() as IterableIterator<[string, string, string]>;
    for (const [device, body, hash] of rows) {
      let chain = chains.get(device);
      if (!chain) chains.set(device, (chain = new ChainWalker()));
      chain.step(body, hash);
    }
    return new Map([...chains].sort(([a], [b]) => a.localeCompare(b)).map(([d, c]) => [d, c.result()]));
  }
}

/** Checks one chain entry by entry, straight from canonical bodies (no JSON parsing). */
class ChainWalker {
  private prevSeq: number;
  private prevHash: string;
  private count = 0;
  private failure: { badSeq: number; reason: string } | undefined;

  constructor(from?: AuditHead) {
    this.prevSeq = from?.seq ?? 0;
    this.prevHash = from?.hash ?? GENESIS_HASH;
  }

  /** Returns false once the chain is broken (later entries are not looked at). */
  step(body: string, hash: string): boolean {
    if (this.failure) return false;
    // In canonical JSON the top-level keys after prev_hash (reason, request_id, seq, ts) are
    // never objects, so the last occurrences of these markers are the top-level fields.
    const seqAt = body.lastIndexOf('"seq":');
    const seq = Number(body.slice(seqAt + 6, body.indexOf(',', seqAt)));
    const expectedSeq = this.prevSeq + 1;
    if (seq !== expectedSeq) {
      this.failure = {
        badSeq: expectedSeq,
        reason: seq > expectedSeq
          ? `entry ${expectedSeq} is missing (found ${seq} next): a row was deleted or rows were reordered`
          : `entry ${seq} appears where ${expectedSeq} was expected: rows were reordered or duplicated`,
      };
      return false;
    }
    const prevAt = body.lastIndexOf('"prev_hash":"');
    if (body.slice(prevAt + 13, prevAt + 77) !== this.prevHash) {
      this.failure = { badSeq: seq, reason: `prev_hash does not match the hash of entry ${seq - 1}: an earlier entry was changed and re-hashed, or this one was forged` };
      return false;
    }
    if (hashBody(this.prevHash, body) !== hash) {
      this.failure = { badSeq: seq, reason: `hash does not match the entry's content: entry ${seq} was edited` };
      return false;
    }
    this.prevSeq = seq;
    this.prevHash = hash;
    this.count++;
    return true;
  }

  result(): VerifyResult {
    const head = this.prevSeq === 0 ? null : { seq: this.prevSeq, hash: this.prevHash };
    return this.failure ? { ok: false, count: this.count, head, ...this.failure } : { ok: true, count: this.count, head };
  }
}
