/**
 * What an attacker with write access to meshpilot.db does: rewrites one controller audit entry and
 * recomputes every hash after it, so the chain verifies by itself. Works on the SQLite file directly
 * (no meshpilot code writes the rows), with the same canonical body and hash as capabilities/audit.ts.
 */
import Database from 'better-sqlite3';
import { AuditEntrySchema, canonicalBody, hashBody, type AuditEntryUnhashed } from '../../capabilities/audit.js';

export interface ForgeResult {
  /** Hashes after the forgery, by seq. */
  hashes: Map<number, string>;
  head: { seq: number; hash: string };
}

export function forgeAuditEntry(dbFile: string, device: string, seq: number, change: (e: AuditEntryUnhashed) => void): ForgeResult {
  const db = new Database(dbFile);
  try {
    const rows = db.prepare('SELECT id, body, hash FROM audit WHERE device = ? ORDER BY id').all(device) as Array<{ id: number; body: string; hash: string }>;
    if (!rows.some((r) => AuditEntrySchema.parse({ ...(JSON.parse(r.body) as object), hash: r.hash }).seq === seq)) throw new Error(`no entry ${seq} of ${device} to forge`);
    const update = db.prepare('UPDATE audit SET body = ?, hash = ? WHERE id = ?');
    const hashes = new Map<number, string>();
    let prevHash: string | undefined;
    db.transaction(() => {
      for (const r of rows) {
        const { hash: _old, ...e } = AuditEntrySchema.parse({ ...(JSON.parse(r.body) as object), hash: r.hash });
        if (e.seq < seq) { hashes.set(e.seq, r.hash); prevHash = r.hash; continue; }
        if (e.seq === seq) change(e);
        if (prevHash !== undefined) e.prev_hash = prevHash;
        const body = canonicalBody(e);
        const hash = hashBody(e.prev_hash, body);
        update.run(body, hash, r.id);
        hashes.set(e.seq, hash);
        prevHash = hash;
      }
    })();
    const last = Math.max(...hashes.keys());
    return { hashes, head: { seq: last, hash: hashes.get(last)! } };
  } finally {
    db.close();
  }
}
