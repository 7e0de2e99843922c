/**
 * Audit integrity, as the health monitor checks it each cycle.
 *
 * Agent chains (mesh devices): the agent's chain is pulled incrementally (only when /health reports a
 * head we have not mirrored), verified from the last verified seq + hash, and mirrored into the
 * controller's `audit` table under `<device>@agent` (state.ts mirrorKey; `meshpilot audit verify` walks
 * it like any chain). Heads anchored in Matrix (dev.meshpilot.audit_head, through the AnchorSource)
 * are compared with it: a chain that does not verify, contradicts the mirror, or no longer contains an
 * anchored head is corrupted, with the first bad seq.
 *
 * Controller chains (the launcher's own, one per device): each device bot anchors its chain's head in
 * its DM rooms. The newest anchor is read with the bot's account (launcher/audit-anchors.ts; on the
 * first cycle, then every anchorEvery cycles, and while a device has none, whenever its head moved)
 * and each cycle checks that the chain still holds it and verifies after it. A chain rewritten with
 * every later hash recomputed verifies by itself; only this comparison gives it away. Until the next
 * read, rewrites after the cached anchor are caught only when they were not re-hashed.
 */
import type { Logger } from 'pino';
import type { AgentClient } from '../../capabilities/agent/client.js';
import type { HealthResponse } from '../../capabilities/agent/protocol.js';
import { compareWithAnchors } from '../../capabilities/audit-anchor.js';
import type { AuditEntry, AuditHead } from '../../capabilities/audit.js';
import type { SqliteAuditLog } from '../../capabilities/audit-sqlite.js';
import type { Db } from '../../capabilities/db.js';
import { toMpError } from '../../capabilities/errors.js';
import { readDeviceAnchor, type AnchorRead, type DeviceAnchor } from '../audit-anchors.js';
import { mirrorKey, type ChainStatus } from './state.js';

/** Agent-chain heads anchored in Matrix, and a way to anchor new ones (launcher/operator-room.ts). */
export interface AnchorSource {
  /** Anchored heads of the agents' chains, per device (devices without anchors may be absent). */
  agentAnchors(devices: string[]): Promise<Map<string, AuditHead[]>>;
  /** Records a newly verified head of a device's agent chain. */
  anchor?(device: string, head: AuditHead): Promise<void>;
}

export interface AuditChainsOptions {
  db: Db;
  audit: SqliteAuditLog;
  /** MESHPILOT_HOME (the bots' Matrix credentials, for controller anchors). */
  home: string;
  anchors?: AnchorSource | undefined;
  /** Reads a device bot's newest controller-chain anchor (default: from Matrix with keys/<device>/matrix.json); false: never. */
  controllerAnchors?: ((device: string) => Promise<AnchorRead>) | false | undefined;
  /** Agent audit entries pulled per device per cycle at most (the rest next cycle). */
  auditPerCycle: number;
  /** Re-read anchors of every device every N cycles (devices without a mirror: every cycle). */
  anchorEvery: number;
  log: Logger;
}

const PAGE_SIZE = 1000;

export async function mapLimit<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

export class AuditChains {
  private readonly corruptCache = new Map<string, { key: string; status: ChainStatus }>();
  private readonly anchorCache = new Map<string, AuditHead[]>();
  /** Controller-chain anchors read from Matrix, with the chain's head seq when read. */
  private readonly controllerAnchorCache = new Map<string, { anchor: DeviceAnchor | null; headSeq: number }>();
  private readonly log: Logger;

  constructor(private readonly o: AuditChainsOptions) {
    this.log = o.log;
  }

  /** Whether this cycle re-reads every device's anchors (the first, then every anchorEvery). */
  private everyoneDue(cycle: number): boolean {
    return cycle % this.o.anchorEvery === 1 || this.o.anchorEvery === 1;
  }

  /** Refreshes the agent-chain anchors that are due: devices without a mirror every cycle, everyone every anchorEvery cycles. */
  async refreshAgentAnchors(meshDevices: string[], cycle: number): Promise<void> {
    if (!this.o.anchors || !meshDevices.length) return;
    const want = this.everyoneDue(cycle) ? meshDevices : meshDevices.filter((d) => !this.anchorCache.has(d) && this.o.audit.head(mirrorKey(d)) === null);
    if (!want.length) return;
    try {
      const got = await this.o.anchors.agentAnchors(want);
      for (const d of want) this.anchorCache.set(d, got.get(d) ?? []);
    } catch (err) {
      this.log.warn({ err: toMpError(err).message }, 'cannot read audit anchors from Matrix this cycle');
    }
  }

  /**
   * Incremental verification of the agent's chain against the mirror (`<device>@agent`) and the anchors.
   * Nothing that fails verification is mirrored.
   */
  async checkAgentChain(agent: AgentClient, health: HealthResponse): Promise<ChainStatus> {
    const device = agent.device;
    const key = mirrorKey(device);
    const head = this.o.audit.head(key);
    const agentHead = health.audit.hash ? { seq: health.audit.seq, hash: health.audit.hash } : null;
    const anchors = this.anchorCache.get(device) ?? [];
    if (!health.audit.chain_ok) {
      return { ok: false, seq: head?.seq ?? 0, badSeq: health.audit.bad_seq ?? health.audit.seq, reason: `the agent reports its chain broken: ${health.audit.reason ?? 'no reason given'}`.slice(0, 300) };
    }
    const cacheKey = `${agentHead?.seq}:${agentHead?.hash}:${head?.seq}:${head?.hash}`;
    const cached = this.corruptCache.get(device);
    if (cached && cached.key === cacheKey) return cached.status;
    const corrupt = (badSeq: number, reason: string): ChainStatus => {
      const status: ChainStatus = { ok: false, seq: head?.seq ?? 0, badSeq, reason: reason.slice(0, 300) };
      this.corruptCache.set(device, { key: cacheKey, status });
      return status;
    };
    const checkAnchors = (upTo: AuditHead | null, fresh: AuditEntry[]): ChainStatus | null => {
      const bySeq = new Map(fresh.map((e) => [e.seq, e.hash]));
      for (const a of anchors) {
        if (agentHead && a.seq > agentHead.seq) return corrupt(agentHead.seq + 1, `the chain ends at ${agentHead.seq} but entry ${a.seq} was anchored in Matrix: the log was truncated or replaced`);
        if (!upTo || a.seq > upTo.seq) continue;
        const have = bySeq.get(a.seq) ?? this.o.audit.get(key, a.seq)?.hash;
        if (have !== undefined && have !== a.hash) return corrupt(a.seq, `entry ${a.seq} no longer has the hash anchored in Matrix (${a.hash.slice(0, 12)}…): it or an earlier entry was rewritten`);
      }
      return null;
    };

    if (head && agentHead && agentHead.seq === head.seq && agentHead.hash === head.hash) {
      return checkAnchors(head, []) ?? { ok: true, seq: head.seq };
    }
    if (head && (agentHead?.seq ?? 0) < head.seq) {
      return corrupt(await this.firstDifference(agent, head), `the agent's chain ends at ${agentHead?.seq ?? 0} but ${head.seq} entries were already verified: its log was truncated or replaced`);
    }
    // Pull what is new, page by page, verifying from the mirrored head.
    const pulled = await agent.pullAudit(head, { pageSize: PAGE_SIZE, maxEntries: this.o.auditPerCycle });
    if (!pulled.ok) {
      switch (pulled.kind) {
        case 'diverged': // the first new entry does not follow our head: an entry we already verified was rewritten
          return corrupt(await this.firstDifference(agent, head!), `entries already verified were changed on the device (${pulled.reason})`);
        case 'truncated':
          return corrupt(await this.firstDifference(agent, head!), pulled.reason);
        case 'head':
          if (head && pulled.entries.length === 0) {
            const cursor = pulled.head!;
            return corrupt(await this.firstDifference(agent, head), `entries already verified were changed on the device: the agent's head ${pulled.agentHead!.hash.slice(0, 12)}… for entry ${cursor.seq} differs from the verified ${cursor.hash.slice(0, 12)}…`);
          }
          return corrupt(pulled.badSeq, pulled.reason);
        default:
          return corrupt(pulled.badSeq, pulled.reason);
      }
    }
    const fresh = pulled.entries;
    const cursor = pulled.head;
    const anchored = checkAnchors(cursor, fresh);
    if (anchored) return anchored;
    if (fresh.length) {
      // Mirrored under the `<device>@agent` key, bodies unchanged.
      this.o.db.transaction(() => { for (const e of fresh) this.o.audit.insertVerified(e, key); }).immediate();
      if (cursor && this.o.anchors?.anchor) {
        const at = cursor;
        void this.o.anchors.anchor(device, at).then(() => {
          const list = this.anchorCache.get(device) ?? [];
          this.anchorCache.set(device, [...list.filter((a) => a.seq !== at.seq), at].slice(-8));
        }, (err: unknown) => this.log.warn({ device, err: toMpError(err).message }, 'could not anchor the agent audit head'));
      }
    }
    this.corruptCache.delete(device);
    return { ok: true, seq: cursor?.seq ?? 0 };
  }

  /** The first seq at which the agent's chain differs from the mirror (its entries are compared page by page). */
  private async firstDifference(agent: AgentClient, head: AuditHead): Promise<number> {
    const key = mirrorKey(agent.device);
    let after = 0;
    while (after < head.seq && after < 200_000) {
      const page = await agent.auditPage(after, PAGE_SIZE);
      const ours = this.o.audit.entriesAfter(key, after, PAGE_SIZE);
      for (let i = 0; i < ours.length; i++) {
        const theirs = page.entries[i];
        if (!theirs || theirs.seq !== ours[i]!.seq || theirs.hash !== ours[i]!.hash) return ours[i]!.seq;
      }
      if (page.entries.length === 0 || ours.length === 0) return after + 1;
      after = ours[ours.length - 1]!.seq;
    }
    return Math.min(head.seq, after + 1);
  }

  /** Refreshes the cached controller-chain anchors that are due (see the module comment); failures keep the cache. */
  async refreshControllerAnchors(devices: string[], cycle: number): Promise<void> {
    if (this.o.controllerAnchors === false) return;
    const read = this.o.controllerAnchors ?? ((d: string) => readDeviceAnchor(this.o.home, d));
    const every = this.everyoneDue(cycle);
    const due = devices.filter((d) => {
      const c = this.controllerAnchorCache.get(d);
      return every || !c || (c.anchor === null && c.headSeq !== (this.o.audit.head(d)?.seq ?? 0));
    });
    await mapLimit(due, 8, async (d) => {
      const headSeq = this.o.audit.head(d)?.seq ?? 0;
      try {
        const r = await read(d);
        if (r.status === 'read') this.controllerAnchorCache.set(d, { anchor: r.anchor, headSeq });
        else if (r.status === 'no_account') this.controllerAnchorCache.set(d, { anchor: null, headSeq });
        else this.log.warn({ device: d, why: r.message }, 'cannot read the audit anchor from Matrix this cycle: the controller chain is checked against the last one read');
      } catch (err) {
        this.log.warn({ device: d, err: toMpError(err).message }, 'reading the audit anchor failed');
      }
    });
  }

  /** The device's controller chain against its cached anchor: null when there is none to compare with. */
  checkControllerChain(device: string): ChainStatus | null {
    const anchor = this.controllerAnchorCache.get(device)?.anchor;
    if (!anchor) return null;
    const head = this.o.audit.head(device);
    const c = compareWithAnchors(this.o.audit, device, [anchor]);
    if (!c.ok) return { ok: false, seq: head?.seq ?? 0, badSeq: c.badSeq, reason: c.reason.slice(0, 300) };
    // Entries after the anchor: verified from it (cheap: only what came since the anchor).
    const v = this.o.audit.verify(device, anchor);
    if (!v.ok) return { ok: false, seq: head?.seq ?? 0, badSeq: v.badSeq, reason: v.reason.slice(0, 300) };
    return { ok: true, seq: head?.seq ?? 0 };
  }
}
