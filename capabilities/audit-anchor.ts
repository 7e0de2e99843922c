/**
 * Comparing a device's audit chain with heads anchored outside it (device bots write
 * `dev.meshpilot.audit_head` state events in their DM rooms; launcher/audit-anchors.ts reads them).
 *
 * Why anchors: a chain that was rewritten with every hash after the edit recomputed verifies by
 * itself. What an attacker on the controller cannot rewrite is a head already recorded on the
 * homeserver, so the chain must still hold, at each anchored seq, the anchored hash.
 *
 * What can be named: only the anchored seq. A rewrite of any entry at or before it changes the hash
 * there (hashes chain), but which earlier entry was rewritten cannot be told from one hash. With
 * several anchors, the earliest that disagrees is named: the rewrite lies at or before it.
 * Pure: no I/O, no Matrix; the caller supplies the chain's lookups.
 */
import { z } from 'zod';
import type { AuditHead } from './audit.js';

/** What the comparison needs from a chain (SqliteAuditLog has both). */
export interface AnchoredChain {
  head(device: string): AuditHead | null;
  get(device: string, seq: number): { hash: string } | undefined;
}

/** True when an audit sink can be compared with anchors (the JSONL sink of the agent cannot look up by seq). */
export function canCompareAnchors(sink: object): sink is AnchoredChain {
  const s = sink as Partial<AnchoredChain>;
  return typeof s.head === 'function' && typeof s.get === 'function';
}

/** The content of a `dev.meshpilot.audit_head` state event (extra members, e.g. `actions`, are allowed). */
export const AnchorContentSchema = z.looseObject({
  device: z.string().min(1).max(64),
  seq: z.number().int().min(1).max(4294967295),
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  ts: z.string().max(40).optional(),
});
export type AnchorContent = z.infer<typeof AnchorContentSchema>;

export type AnchorComparison =
  | { ok: true; /** The newest anchor that matched (null: no anchors given). */ anchor: AuditHead | null }
  | {
    ok: false;
    /** The first seq that disagrees with an anchor: the anchored seq, or the first missing entry when the chain ends before it. */
    badSeq: number;
    /** The anchor it disagrees with. */
    anchor: AuditHead;
    reason: string;
  };

/**
 * Compares the device's chain with anchored heads. Returns ok, or the earliest anchor the chain
 * contradicts: the chain ends before the anchored seq (badSeq = the first entry it lacks), or the
 * entry at the anchored seq has another hash (badSeq = that seq).
 */
export function compareWithAnchors(chain: AnchoredChain, device: string, anchors: readonly AuditHead[]): AnchorComparison {
  const sorted = [...anchors].sort((a, b) => a.seq - b.seq);
  const head = chain.head(device);
  let matched: AuditHead | null = null;
  for (const a of sorted) {
    const last = head?.seq ?? 0;
    if (last < a.seq) {
      return {
        ok: false, badSeq: last + 1, anchor: a,
        reason: `the chain ends at seq ${last} but seq ${a.seq} was anchored in Matrix (${a.hash.slice(0, 12)}…): entries were deleted or the log was replaced`,
      };
    }
    const have = chain.get(device, a.seq)?.hash;
    if (have !== a.hash) {
      return {
        ok: false, badSeq: a.seq, anchor: a,
        reason: `entry ${a.seq} has hash ${have ? `${have.slice(0, 12)}…` : '(none)'} but ${a.hash.slice(0, 12)}… was anchored in Matrix: it or an earlier entry was rewritten`,
      };
    }
    matched = a;
  }
  return { ok: true, anchor: matched };
}
