/**
 * The controller's audit log: one hash chain per device in the `audit` table of meshpilot.db.
 * Each append reads the device's head and inserts the next entry in one BEGIN IMMEDIATE
 * transaction, so concurrent writers (launcher, bots, CLI) never fork a chain.
 *
 * Layout, chosen for append speed: the row id IS the chain position, `id = device_index * 2^32 + seq`
 * (device_index from `audit_devices`). A device's entries are one contiguous range of the table's
 * own b-tree: an append writes that b-tree only (no secondary index), and the head is the last row
 * of the range. `body` holds the entry's canonical JSON (without its hash) and is the authority;
 * `device` and `seq` are plain copies for people running SQL by hand.
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
// v2: the position in the rowid (see above). Existing rows keep their content.
registerMigration('audit-v2-rowid', `
  CREATE TABLE audit_devices (idx INTEGER PRIMARY KEY, device TEXT NOT NULL UNIQUE);
  INSERT INTO audit_devices (device) SELECT DISTINCT device FROM audit ORDER BY device;
  CREATE TABLE audit_v2 (id INTEGER PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, hash TEXT NOT NULL);
  INSERT INTO audit_v2 (id, device, seq, body, hash)
    SELECT d.idx * 4294967296 + a.seq, a.device, a.seq, a.body, a.hash FROM audit a JOIN audit_devices d ON d.device = a.device;
  DROP TABLE audit;
  ALTER TABLE audit_v2 RENAME TO audit;
`);

const SPAN = 4294967296; // 2^32 positions per device
const MAX_SEQ = SPAN - 1;

function parseBody(body: string, hash: string): AuditEntry {
  return AuditEntrySchema.parse({ ...(JSON.parse(body) as object), hash });
}

export interface AuditSink {
  append(input: AuditInput): AuditEntry;
  head(device: string): AuditHead | null;
}

export class SqliteAuditLog implements AuditSink {
  private readonly headStmt: Statement<[number, number], { id: number; hash: string }>;
  private readonly insertStmt: Statement<[number, string, number, string, string]>;
  private readonly idxStmt: Statement<[string], { idx: number }>;
  private readonly newIdxStmt: Statement<[string]>;
  private readonly appendTx: (input: AuditInput) => AuditEntry;
  /** device → index; an index never changes once given, so caching it is safe across processes. */
  private readonly indexCache = new Map<string, number>();

  constructor(private readonly db: Db) {
    this.headStmt = db.prepare('SELECT id, hash FROM audit WHERE id BETWEEN ? AND ? ORDER BY id DESC LIMIT 1');
    this.insertStmt = db.prepare('INSERT INTO audit (id, device, seq, body, hash) VALUES (?, ?, ?, ?, ?)');
    this.idxStmt = db.prepare('SELECT idx FROM audit_devices WHERE device = ?');
    this.newIdxStmt = db.prepare('INSERT INTO audit_devices (device) VALUES (?)');
    const tx = db.transaction((input: AuditInput) => {
      const base = this.indexOf(input.device, true)! * SPAN;
      const { entry, body } = buildEntryWithBody(input, this.headIn(base));
      if (entry.seq > MAX_SEQ) throw new Error(`the audit chain of ${input.device} is full`);
      this.insertStmt.run(base + entry.seq, entry.device, entry.seq, body, entry.hash);
      return entry;
    });
    this.appendTx = (input) => tx.immediate(input);
  }

  /** The device's index; with `create`, allocates one (inside the caller's write transaction). */
  private indexOf(device: string, create = false): number | undefined {
    const cached = this.indexCache.get(device);
    if (cached !== undefined) return cached;
    let row = this.idxStmt.get(device);
    if (!row && create) {
      this.newIdxStmt.run(device);
      row = this.idxStmt.get(device);
    }
    if (row) this.indexCache.set(device, row.idx);
    return row?.idx;
  }

  private headIn(base: number): AuditHead | undefined {
    const row = this.headStmt.get(base + 1, base + MAX_SEQ);
    return row ? { seq: row.id - base, hash: row.hash } : undefined;
  }

  append(input: AuditInput): AuditEntry {
    return this.appendTx(input);
  }

  /**
   * Stores an entry written elsewhere (the device agent's chain) as-is, after the caller verified it,
   * under `asDevice` (default: the entry's own device; the health monitor mirrors as `<device>@agent`).
   */
  insertVerified(entry: AuditEntry, asDevice: string = entry.device): void {
    const { hash, ...unhashed } = entry;
    this.db.transaction(() => {
      const base = this.indexOf(asDevice, true)! * SPAN;
      this.insertStmt.run(base + entry.seq, asDevice, entry.seq, canonicalBody(unhashed), hash);
    }).immediate();
  }

  head(device: string): AuditHead | null {
    const idx = this.indexOf(device);
    return idx === undefined ? null : (this.headIn(idx * SPAN) ?? null);
  }

  /** Devices that have at least one entry, by name. */
  devices(): string[] {
    return (this.db.prepare('SELECT device FROM audit_devices d WHERE EXISTS (SELECT 1 FROM audit WHERE id BETWEEN d.idx * 4294967296 + 1 AND d.idx * 4294967296 + 4294967295) ORDER BY device').all() as Array<{ device: string }>).map((r) => r.device);
  }

  private range(device: string): [number, number] | undefined {
    const idx = this.indexOf(device);
    return idx === undefined ? undefined : [idx * SPAN + 1, idx * SPAN + MAX_SEQ];
  }

  /** The last `n` entries (of one device, or of all devices merged by time), oldest first. */
  tail(n: number, device?: string): AuditEntry[] {
    const devices = device ? [device] : this.devices();
    const stmt = this.db.prepare('SELECT body, hash FROM audit WHERE id BETWEEN ? AND ? ORDER BY id DESC LIMIT ?');
    const all: AuditEntry[] = [];
    for (const d of devices) {
      const r = this.range(d);
      if (!r) continue;
      for (const row of stmt.all(r[0], r[1], n) as Array<{ body: string; hash: string }>) all.push(parseBody(row.body, row.hash));
    }
    all.sort((a, b) => (a.ts < b.ts ? -1 : a.ts > b.ts ? 1 : a.seq - b.seq));
    return all.slice(-n);
  }

  get(device: string, seq: number): AuditEntry | undefined {
    const idx = this.indexOf(device);
    if (idx === undefined || !Number.isInteger(seq) || seq < 1 || seq > MAX_SEQ) return undefined;
    const row = this.db.prepare('SELECT body, hash FROM audit WHERE id = ?').get(idx * SPAN + seq) as { body: string; hash: string } | undefined;
    return row ? parseBody(row.body, row.hash) : undefined;
  }

  /** Entries of a device after `afterSeq`, in chain order, at most `limit`. */
  entriesAfter(device: string, afterSeq: number, limit: number): AuditEntry[] {
    const r = this.range(device);
    if (!r) return [];
    const rows = this.db.prepare('SELECT body, hash FROM audit WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?').all(r[0] + Math.max(0, afterSeq), r[1], limit) as Array<{ body: string; hash: string }>;
    return rows.map((row) => parseBody(row.body, row.hash));
  }

  /**
   * Verifies a device's chain in position order, so deleted, edited, forged and swapped rows all
   * show up, from the start or incrementally from a trusted seq + hash.
   */
  verify(device: string, from?: AuditHead): VerifyResult {
    const r = this.range(device);
    if (from) {
      const anchor = this.get(device, from.seq);
      if (!anchor || anchor.hash !== from.hash) {
        return { ok: false, count: 0, badSeq: from.seq, reason: `entry ${from.seq} no longer has the trusted hash ${from.hash.slice(0, 12)}…`, head: null };
      }
    }
    const chain = new ChainWalker(from);
    if (!r) return chain.result();
    const rows = this.db.prepare('SELECT body, hash FROM audit WHERE id BETWEEN ? AND ? ORDER BY id').raw().iterate(r[0] + (from?.seq ?? 0), r[1]) as IterableIterator<[string, string]>;
    for (const [body, hash] of rows) if (!chain.step(body, hash)) break;
    return chain.result();
  }

  /** Verifies every device's chain in one pass over the table. */
  verifyAll(): Map<string, VerifyResult> {
    const names = new Map((this.db.prepare('SELECT idx, device FROM audit_devices').all() as Array<{ idx: number; device: string }>).map((d) => [d.idx, d.device]));
    const chains = new Map<string, ChainWalker>();
    const rows = this.db.prepare('SELECT id, body, hash FROM audit ORDER BY id').raw().iterate() as IterableIterator<[number, string, string]>;
    let currentIdx = -1;
    let chain: ChainWalker | undefined;
    for (const [id, body, hash] of rows) {
      const idx = Math.floor(id / SPAN);
      if (idx !== currentIdx) {
        currentIdx = idx;
        const device = names.get(idx) ?? `#${idx}`;
        chain = chains.get(device);
        if (!chain) chains.set(device, (chain = new ChainWalker()));
      }
      chain!.step(body, hash);
    }
    return new Map([...chains].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([d, c]) => [d, c.result()]));
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
