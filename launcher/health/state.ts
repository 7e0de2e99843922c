/**
 * The health monitor's stored state: the health tables (one migration), the last known health of
 * each device (health_device), its transitions (health_history), and revocation. The outbox table
 * is created here too (same migration) and used by alerts.ts.
 */
import { registerMigration, type Db } from '../../capabilities/db.js';

registerMigration('health-v1', `
  CREATE TABLE health_device (
    device TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    detail TEXT NOT NULL,
    info TEXT NOT NULL,
    agent_failures INTEGER NOT NULL DEFAULT 0,
    ssh_failures INTEGER NOT NULL DEFAULT 0,
    bot_bad TEXT,
    reminded_ms INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL
  );
  CREATE TABLE health_history (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    detail TEXT NOT NULL
  );
  CREATE INDEX health_history_device ON health_history (device, id);
  CREATE TABLE health_outbox (
    id INTEGER PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    text TEXT NOT NULL,
    sent_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
  );
  CREATE INDEX health_outbox_pending ON health_outbox (sent_ms, id);
`);

export type DeviceState = 'online' | 'stale' | 'unreachable' | 'offline' | 'corrupted' | 'revoked';
export const DOWN_STATES: ReadonlySet<DeviceState> = new Set(['stale', 'unreachable', 'offline', 'corrupted']);

export interface ChainStatus {
  ok: boolean;
  /** Verified (mirrored) head of the agent's chain. */
  seq: number;
  badSeq?: number;
  reason?: string;
}

export interface DeviceHealth {
  device: string;
  state: DeviceState;
  /** ms (monitor clock) since the device is in this state. */
  since: number;
  detail: string;
  transport: string;
  meshIp: string | null;
  /** Unix seconds of the latest handshake seen on the hub; 0 = never; null = no WireGuard signal. */
  lastHandshake: number | null;
  agent: { ok: boolean; failures: number; error?: string; version?: string } | null;
  ssh: { ok: boolean; failures: number; error?: string; ms?: number } | null;
  bot: string | null;
  chain: ChainStatus | null;
  /** The controller's chain of this device against its bot's newest anchor in Matrix (absent: no anchor read). */
  controllerChain?: ChainStatus;
}

/** A device's stored record. */
export interface HealthRow {
  device: string;
  state: DeviceState;
  since_ms: number;
  detail: string;
  info: string;
  agent_failures: number;
  ssh_failures: number;
  bot_bad: string | null;
  reminded_ms: number | null;
  revoked: number;
  updated_ms: number;
}

/** What one cycle stores for a device (revocation is marked apart, by markRevoked). */
export type HealthUpdate = Omit<HealthRow, 'revoked'>;

/** The controller's mirror of a device agent's audit chain: not a valid device name, so it never collides. */
export const mirrorKey = (device: string): string => `${device}@agent`;

export class HealthStore {
  constructor(private readonly db: Db, private readonly now: () => number) {}

  rows(): Map<string, HealthRow> {
    const all = this.db.prepare('SELECT * FROM health_device').all() as HealthRow[];
    return new Map(all.map((r) => [r.device, r]));
  }

  /** The last stored health of each device (for !devices and `meshpilot health` without a cycle). */
  snapshot(): DeviceHealth[] {
    return [...this.rows().values()].sort((a, b) => a.device.localeCompare(b.device)).map((r) => ({ ...(JSON.parse(r.info) as DeviceHealth), state: r.state, since: r.since_ms, detail: r.detail }));
  }

  history(device: string, limit = 20): Array<{ at: number; from: string | null; to: string; detail: string }> {
    return (this.db.prepare('SELECT at_ms AS at, from_state AS "from", to_state AS "to", detail FROM health_history WHERE device = ? ORDER BY id DESC LIMIT ?').all(device, limit) as Array<{ at: number; from: string | null; to: string; detail: string }>);
  }

  /** Marks a device revoked (no more probes or alerts for it); the revoke flow calls this. */
  markRevoked(device: string, revoked = true): void {
    const now = this.now();
    const row = this.rows().get(device);
    if (!row) {
      const info: DeviceHealth = { device, state: 'revoked', since: now, detail: 'revoked', transport: '?', meshIp: null, lastHandshake: null, agent: null, ssh: null, bot: null, chain: null };
      this.db.prepare('INSERT INTO health_device (device, state, since_ms, detail, info, revoked, updated_ms) VALUES (?, ?, ?, ?, ?, 1, ?)').run(device, 'revoked', now, 'revoked', JSON.stringify(info), now);
    } else {
      this.db.prepare('UPDATE health_device SET revoked = ?, state = CASE WHEN ? = 1 THEN \'revoked\' ELSE state END, since_ms = ?, updated_ms = ? WHERE device = ?').run(revoked ? 1 : 0, revoked ? 1 : 0, now, now, device);
    }
    this.db.prepare('INSERT INTO health_history (device, at_ms, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)').run(device, now, row?.state ?? null, revoked ? 'revoked' : (row?.state ?? 'online'), revoked ? 'revoked by an operator' : 'revocation lifted');
  }

  /** Runs `fn` in one write transaction, with a writer for device records and their history. */
  write(fn: (w: { save(u: HealthUpdate): void; transition(device: string, at: number, from: DeviceState | null, to: DeviceState, detail: string): void }) => void): void {
    const upsert = this.db.prepare(`INSERT INTO health_device (device, state, since_ms, detail, info, agent_failures, ssh_failures, bot_bad, reminded_ms, revoked, updated_ms)
      VALUES (@device, @state, @since_ms, @detail, @info, @agent_failures, @ssh_failures, @bot_bad, @reminded_ms, 0, @updated_ms)
      ON CONFLICT (device) DO UPDATE SET state = excluded.state, since_ms = excluded.since_ms, detail = excluded.detail, info = excluded.info,
        agent_failures = excluded.agent_failures, ssh_failures = excluded.ssh_failures, bot_bad = excluded.bot_bad, reminded_ms = excluded.reminded_ms, updated_ms = excluded.updated_ms`);
    const hist = this.db.prepare('INSERT INTO health_history (device, at_ms, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)');
    this.db.transaction(() => fn({
      save: (u) => { upsert.run(u); },
      transition: (device, at, from, to, detail) => { hist.run(device, at, from, to, detail); },
    })).immediate();
  }
}
