/**
 * The mesh health monitor: runs inside the launcher on a node-cron schedule (health.schedule, default
 * every minute) and on demand (`meshpilot health`, `!health` in the operator room).
 *
 * Per device, the transport decides the signals:
 *   mesh   WireGuard latest-handshake age of its address on the hub (`wg show <if> dump`, local or over
 *          SSH to health.hub_device), the agent's GET /health (short timeout, no retries), and the
 *          agent's audit chain (below)
 *   ssh    a cheap authenticated exec (`true`) on the pooled connection (ssh.ts sshPing)
 *   local  this machine: always reachable
 *   all    the bot process state from the supervisor (running / restarting / crash-looping / failed)
 *
 * State: revoked > corrupted > offline (handshake older than 24 h, never, or no peer on the hub) >
 * unreachable (agent or ssh failed health.unreachable_after times in a row) > stale (handshake older
 * than stale_after_s) > online. A device whose handshake is older than 24 h is never online.
 *
 * Agent audit mirror: the agent's chain is pulled incrementally (/v1/audit?after=<mirrored seq>, only
 * when /health reports a head we have not mirrored), verified from the last verified seq + hash, and
 * mirrored into the controller's `audit` table under the device key `<device>@agent` (not a valid
 * device name, so it never collides; `meshpilot audit verify` walks it like any chain). Heads anchored
 * in Matrix (dev.meshpilot.audit_head, through the AnchorSource) are compared with it: a chain that does
 * not verify, contradicts the mirror, or no longer contains an anchored head is `corrupted`, with the
 * first bad seq.
 *
 * Controller chains (the launcher's own, one per device): each device bot anchors its chain's head in its
 * DM rooms. The monitor reads the newest anchor with the bot's account (launcher/audit-anchors.ts; on the
 * first cycle, then every anchorEvery cycles, and while a device has none, whenever its head moved) and
 * checks each cycle that the chain still holds it and verifies after it. A chain rewritten with every
 * later hash recomputed verifies by itself; only this comparison gives it away: `corrupted`, naming
 * the anchored seq. Until the next read, rewrites after the cached anchor are caught only when they were
 * not re-hashed.
 *
 * Alerts: one message per transition ([ALERT] / [RECOVERED]), a [REMINDER] after remind_after_s for a
 * device still down, a [DIGEST] when digest_min or more messages come in one cycle. Every message goes
 * through the SQLite outbox (health_outbox) and is sent in order; one that waited over a minute is
 * marked `(late: N min)`.
 */
import cron, { type ScheduledTask } from 'node-cron';
import { Agent, request } from 'undici';
import type { Logger } from 'pino';
import { loadSecretFile, signRequest } from '../capabilities/agent/auth.js';
import { AuditPageSchema, HealthResponseSchema, type AuditPage, type HealthResponse } from '../capabilities/agent/protocol.js';
import { compareWithAnchors } from '../capabilities/audit-anchor.js';
import { verifyEntries, type AuditEntry, type AuditHead } from '../capabilities/audit.js';
import type { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { registerMigration, type Db } from '../capabilities/db.js';
import { MeshpilotError, toMpError } from '../capabilities/errors.js';
import { logger as makeLogger } from '../capabilities/log.js';
import type { Manifest } from '../capabilities/manifest.js';
import { agentSecretPath } from '../capabilities/transports/mesh.js';
import { sshPing as defaultSshPing } from '../capabilities/transports/ssh.js';
import { readDeviceAnchor, type AnchorRead, type DeviceAnchor } from './audit-anchors.js';
import type { Config } from '../capabilities/config.js';
import type { DeviceListing } from '../capabilities/device-registry.js';
import { parseWgDump, peersByAddress, type WgDump, type WgDumpReader } from './wg.js';

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
const DAY_S = 24 * 3600;
const BAD_BOT_STATES = new Set(['crash-looping', 'failed']);

/** What the monitor needs from the supervisor (launcher/supervisor.ts satisfies it). */
export interface SupervisorLike {
  status(): Array<{ device: string; state: string }>;
}

/** Agent-chain heads anchored in Matrix, and a way to anchor new ones (launcher/operator-room.ts). */
export interface AnchorSource {
  /** Anchored heads of the agents' chains, per device (devices without anchors may be absent). */
  agentAnchors(devices: string[]): Promise<Map<string, AuditHead[]>>;
  /** Records a newly verified head of a device's agent chain. */
  anchor?(device: string, head: AuditHead): Promise<void>;
}

/** Where alert text goes; throws when it cannot be delivered now (the outbox keeps it). */
export type AlertSender = (text: string) => Promise<void>;

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

export interface Transition {
  device: string;
  kind: 'alert' | 'recovered' | 'reminder';
  from: DeviceState | null;
  to: DeviceState;
  text: string;
}

export interface CycleResult {
  startedAt: number;
  durationMs: number;
  devices: DeviceHealth[];
  transitions: Transition[];
  /** Messages queued in the outbox by this cycle (a digest counts as one). */
  queued: string[];
  wg: { ok: boolean; error?: string; peers?: number } | null;
}

export interface HealthSettings {
  schedule: string;
  stale_after_s: number;
  unreachable_after: number;
  remind_after_s: number;
  hub_interface?: string | undefined;
  hub_device?: string | undefined;
  digest_min?: number;
}

export interface HealthMonitorOptions {
  db: Db;
  audit: SqliteAuditLog;
  devices: { list(): DeviceListing[] };
  settings: HealthSettings;
  /** MESHPILOT_HOME (agent secrets live in keys/<device>/agent.secret). */
  home: string;
  now?: () => number;
  supervisor?: SupervisorLike;
  /** Reads the hub's `wg show <if> dump`; absent: no WireGuard signal. */
  wgDump?: WgDumpReader;
  sshPing?: (manifest: Manifest) => Promise<unknown>;
  agentSecret?: (device: string) => Buffer;
  anchors?: AnchorSource;
  /** Reads a device bot's newest controller-chain anchor (default: from Matrix with keys/<device>/matrix.json); false: never. */
  controllerAnchors?: ((device: string) => Promise<AnchorRead>) | false;
  send?: AlertSender;
  concurrency?: number;
  agentTimeoutMs?: number;
  /** Agent audit entries pulled per device per cycle at most (the rest next cycle). */
  auditPerCycle?: number;
  /** Re-read anchors of every device every N cycles (devices without a mirror: every cycle). */
  anchorEvery?: number;
  logger?: Logger;
}

// ---- formatting -----------------------------------------------------------------------------

export function ago(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}min`;
  if (s < 2 * DAY_S) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / DAY_S)}d`;
}

export function duration(ms: number): string {
  const min = Math.max(0, Math.round(ms / 60_000));
  if (min < 120) return `${min} min`;
  if (min < 48 * 60) return `${Math.floor(min / 60)} h`;
  return `${Math.floor(min / 1440)} d`;
}

export function alertText(device: string, state: DeviceState, detail: string): string {
  return `[ALERT] device_id=${device} status=${state}${detail ? ` (${detail})` : ''}`;
}
export function recoveredText(device: string, was: DeviceState, forMs: number): string {
  return `[RECOVERED] device_id=${device} status=online (was ${was} ${duration(forMs)})`;
}
export function reminderText(device: string, state: DeviceState, forMs: number, detail: string): string {
  return `[REMINDER] device_id=${device} status=${state} (down ${duration(forMs)}${detail ? `: ${detail}` : ''})`;
}

// ---- small helpers ----------------------------------------------------------------------------

async function mapLimit<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

async function readCapped(body: AsyncIterable<Buffer | Uint8Array>, max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of body) {
    size += c.length;
    if (size > max) throw new MeshpilotError('output_limit', `response over ${max} bytes`);
    chunks.push(Buffer.from(c));
  }
  return Buffer.concat(chunks, size).toString('utf8');
}

function errWhy(err: unknown): string {
  if (err instanceof MeshpilotError) return err.message;
  const code = String((err as { code?: unknown }).code ?? '');
  if (code === 'ECONNREFUSED') return 'connection refused';
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return 'connect timed out';
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || (err as Error).name === 'TimeoutError' || (err as Error).name === 'AbortError') return 'timed out';
  if (code) return code;
  return toMpError(err).message.slice(0, 200);
}

// ---- the agent client (read-only: /health and /v1/audit; it cannot invoke anything) -------------

class AgentProbe {
  constructor(private readonly dispatcher: Agent, private readonly timeoutMs: number, private readonly secretOf: (device: string) => Buffer) {}

  private origin(m: Manifest): string {
    if (m.transport.kind !== 'mesh') throw new MeshpilotError('internal', `${m.device} is not a mesh device`);
    const a = m.transport.address;
    return `http://${a.includes(':') ? `[${a}]` : a}:${m.transport.port}`;
  }

  async health(m: Manifest): Promise<HealthResponse> {
    const res = await request(`${this.origin(m)}/health`, {
      dispatcher: this.dispatcher, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs, signal: AbortSignal.timeout(this.timeoutMs),
    });
    const text = await readCapped(res.body, 64 * 1024);
    if (res.statusCode !== 200) throw new MeshpilotError('unreachable', `agent answered HTTP ${res.statusCode}`);
    let raw: unknown;
    try { raw = JSON.parse(text); } catch { raw = undefined; }
    const parsed = HealthResponseSchema.safeParse(raw);
    if (!parsed.success) throw new MeshpilotError('unreachable', 'the answer is not a meshpilot agent /health');
    if (parsed.data.device !== m.device) throw new MeshpilotError('config', `the agent there is ${parsed.data.device}, not ${m.device}`);
    return parsed.data;
  }

  async auditPage(m: Manifest, after: number, limit: number): Promise<AuditPage> {
    const p = `/v1/audit?after=${after}&limit=${limit}`;
    const headers = { accept: 'application/json', ...signRequest(this.secretOf(m.device), { device: m.device, method: 'GET', path: p }) };
    const t = Math.max(this.timeoutMs, 15_000);
    const res = await request(`${this.origin(m)}${p}`, { dispatcher: this.dispatcher, headers, headersTimeout: t, bodyTimeout: t, signal: AbortSignal.timeout(t) });
    const text = await readCapped(res.body, 48 * 1024 * 1024);
    if (res.statusCode !== 200) throw new MeshpilotError(res.statusCode === 401 ? 'auth' : 'unreachable', `audit pull answered HTTP ${res.statusCode}`);
    let raw: unknown;
    try { raw = JSON.parse(text); } catch { raw = undefined; }
    const parsed = AuditPageSchema.safeParse(raw);
    if (!parsed.success) throw new MeshpilotError('audit_broken', 'the agent sent audit entries that are not in the audit format');
    return parsed.data;
  }
}

// ---- persisted per-device record ----------------------------------------------------------------

interface Row {
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

interface Probe {
  health: DeviceHealth;
  agentFailures: number;
  sshFailures: number;
}

export const mirrorKey = (device: string): string => `${device}@agent`;

// ---- the monitor --------------------------------------------------------------------------------

export class HealthMonitor {
  private readonly now: () => number;
  private readonly log: Logger;
  private readonly dispatcher: Agent;
  private readonly agents: AgentProbe;
  private readonly sshPing: (m: Manifest) => Promise<unknown>;
  private readonly concurrency: number;
  private readonly auditPerCycle: number;
  private readonly anchorEvery: number;
  private task: ScheduledTask | undefined;
  private running: Promise<CycleResult> | undefined;
  private flushing: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private cycles = 0;
  private readonly corruptCache = new Map<string, { key: string; status: ChainStatus }>();
  private readonly secrets = new Map<string, Buffer>();
  private readonly anchorCache = new Map<string, AuditHead[]>();
  /** Controller-chain anchors read from Matrix, with the chain's head seq when read. */
  private readonly controllerAnchorCache = new Map<string, { anchor: DeviceAnchor | null; headSeq: number }>();
  private stopped = false;
  last: CycleResult | undefined;

  constructor(private readonly o: HealthMonitorOptions) {
    this.now = o.now ?? Date.now;
    this.log = o.logger ?? makeLogger('health');
    const t = o.agentTimeoutMs ?? 3_000;
    this.dispatcher = new Agent({ connect: { timeout: t }, keepAliveTimeout: 90_000, keepAliveMaxTimeout: 120_000, connections: 2, pipelining: 1 });
    this.agents = new AgentProbe(this.dispatcher, t, o.agentSecret ?? ((d) => {
      let s = this.secrets.get(d);
      if (!s) { s = loadSecretFile(agentSecretPath(d, o.home)); this.secrets.set(d, s); }
      return s;
    }));
    this.sshPing = o.sshPing ?? ((m) => defaultSshPing(m, 10_000));
    this.concurrency = o.concurrency ?? 64;
    this.auditPerCycle = o.auditPerCycle ?? 5_000;
    this.anchorEvery = o.anchorEvery ?? 60;
  }

  get settings(): HealthSettings {
    return this.o.settings;
  }

  /** Starts the cron schedule (a cycle still running when the next is due is not doubled). */
  start(): void {
    if (this.task) return;
    if (!cron.validate(this.o.settings.schedule)) throw new MeshpilotError('config', `health.schedule "${this.o.settings.schedule}" is not a cron expression`);
    this.stopped = false;
    this.task = cron.schedule(this.o.settings.schedule, async () => {
      try { await this.runCycle(); } catch (err) { this.log.error({ err: toMpError(err).message }, 'health cycle failed'); }
    }, { name: 'meshpilot-health', noOverlap: true });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.task) { await this.task.destroy(); this.task = undefined; }
    if (this.retryTimer) { clearTimeout(this.retryTimer); this.retryTimer = undefined; }
    await this.running?.catch(() => undefined);
    await this.flushing?.catch(() => undefined);
    await this.dispatcher.close();
  }

  /** One cycle; concurrent callers share the one in flight. */
  runCycle(): Promise<CycleResult> {
    this.running ??= this.cycle().finally(() => { this.running = undefined; });
    return this.running;
  }

  // ---- state table -------------------------------------------------------------------------------

  private rows(): Map<string, Row> {
    const all = this.o.db.prepare('SELECT * FROM health_device').all() as Row[];
    return new Map(all.map((r) => [r.device, r]));
  }

  /** The last stored health of each device (for !devices and `meshpilot health` without a cycle). */
  snapshot(): DeviceHealth[] {
    return [...this.rows().values()].sort((a, b) => a.device.localeCompare(b.device)).map((r) => ({ ...(JSON.parse(r.info) as DeviceHealth), state: r.state, since: r.since_ms, detail: r.detail }));
  }

  history(device: string, limit = 20): Array<{ at: number; from: string | null; to: string; detail: string }> {
    return (this.o.db.prepare('SELECT at_ms AS at, from_state AS "from", to_state AS "to", detail FROM health_history WHERE device = ? ORDER BY id DESC LIMIT ?').all(device, limit) as Array<{ at: number; from: string | null; to: string; detail: string }>);
  }

  /** Marks a device revoked (no more probes or alerts for it); the revoke flow calls this. */
  markRevoked(device: string, revoked = true): void {
    const now = this.now();
    const row = this.rows().get(device);
    if (!row) {
      const info: DeviceHealth = { device, state: 'revoked', since: now, detail: 'revoked', transport: '?', meshIp: null, lastHandshake: null, agent: null, ssh: null, bot: null, chain: null };
      this.o.db.prepare('INSERT INTO health_device (device, state, since_ms, detail, info, revoked, updated_ms) VALUES (?, ?, ?, ?, ?, 1, ?)').run(device, 'revoked', now, 'revoked', JSON.stringify(info), now);
    } else {
      this.o.db.prepare('UPDATE health_device SET revoked = ?, state = CASE WHEN ? = 1 THEN \'revoked\' ELSE state END, since_ms = ?, updated_ms = ? WHERE device = ?').run(revoked ? 1 : 0, revoked ? 1 : 0, now, now, device);
    }
    this.o.db.prepare('INSERT INTO health_history (device, at_ms, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)').run(device, now, row?.state ?? null, revoked ? 'revoked' : (row?.state ?? 'online'), revoked ? 'revoked by an operator' : 'revocation lifted');
  }

  // ---- the cycle -----------------------------------------------------------------------------------

  private async cycle(): Promise<CycleResult> {
    const t0 = performance.now();
    const startedAt = this.now();
    this.cycles++;
    const listings = this.o.devices.list();
    const manifests = listings.filter((l): l is DeviceListing & { manifest: Manifest } => l.manifest !== undefined).map((l) => l.manifest);
    const rows = this.rows();

    // WireGuard: one dump per cycle.
    let wg: CycleResult['wg'] = null;
    let peers: Map<string, { latestHandshake: number }> | undefined;
    const needsWg = this.o.wgDump && manifests.some((m) => m.transport.kind === 'mesh');
    if (needsWg && this.o.wgDump) {
      try {
        const dump: WgDump = parseWgDump(await this.o.wgDump());
        peers = peersByAddress(dump);
        wg = { ok: true, peers: dump.peers.length };
      } catch (err) {
        wg = { ok: false, error: toMpError(err).message.slice(0, 300) };
        this.log.warn({ err: wg.error }, 'cannot read the WireGuard hub: handshake ages unknown this cycle');
      }
    }

    const bots = new Map((this.o.supervisor?.status() ?? []).map((s) => [s.device, s.state]));

    // Anchors: devices without a mirror every cycle, everyone every anchorEvery cycles.
    const meshDevices = manifests.filter((m) => m.transport.kind === 'mesh' && !rows.get(m.device)?.revoked).map((m) => m.device);
    if (this.o.anchors && meshDevices.length) {
      const want = this.cycles % this.anchorEvery === 1 || this.anchorEvery === 1 ? meshDevices : meshDevices.filter((d) => !this.anchorCache.has(d) && this.o.audit.head(mirrorKey(d)) === null);
      if (want.length) {
        try {
          const got = await this.o.anchors.agentAnchors(want);
          for (const d of want) this.anchorCache.set(d, got.get(d) ?? []);
        } catch (err) {
          this.log.warn({ err: toMpError(err).message }, 'cannot read audit anchors from Matrix this cycle');
        }
      }
    }

    await this.readControllerAnchors(manifests.filter((m) => !rows.get(m.device)?.revoked).map((m) => m.device));

    const probes = new Map<string, Probe>();
    await mapLimit(manifests, this.concurrency, async (m) => {
      const row = rows.get(m.device);
      if (row?.revoked) return;
      try {
        probes.set(m.device, await this.probe(m, row, peers, wg, bots.get(m.device) ?? null));
      } catch (err) {
        this.log.error({ device: m.device, err: toMpError(err).message }, 'probe failed unexpectedly');
      }
    });

    // Decide transitions and persist, in one transaction.
    const now = this.now();
    const transitions: Transition[] = [];
    const devices: DeviceHealth[] = [];
    const upsert = this.o.db.prepare(`INSERT INTO health_device (device, state, since_ms, detail, info, agent_failures, ssh_failures, bot_bad, reminded_ms, revoked, updated_ms)
      VALUES (@device, @state, @since_ms, @detail, @info, @agent_failures, @ssh_failures, @bot_bad, @reminded_ms, 0, @updated_ms)
      ON CONFLICT (device) DO UPDATE SET state = excluded.state, since_ms = excluded.since_ms, detail = excluded.detail, info = excluded.info,
        agent_failures = excluded.agent_failures, ssh_failures = excluded.ssh_failures, bot_bad = excluded.bot_bad, reminded_ms = excluded.reminded_ms, updated_ms = excluded.updated_ms`);
    const hist = this.o.db.prepare('INSERT INTO health_history (device, at_ms, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)');
    const remindMs = this.o.settings.remind_after_s * 1000;
    this.o.db.transaction(() => {
      for (const m of manifests) {
        const row = rows.get(m.device);
        if (row?.revoked) { devices.push({ ...(JSON.parse(row.info) as DeviceHealth), state: 'revoked', since: row.since_ms, detail: row.detail }); continue; }
        const p = probes.get(m.device);
        if (!p) continue;
        const h = p.health;
        const prev = row?.state ?? null;
        let since = row?.since_ms ?? now;
        let reminded = row?.reminded_ms ?? null;
        if (prev !== h.state) {
          since = now;
          reminded = null;
          hist.run(m.device, now, prev, h.state, h.detail);
          if (DOWN_STATES.has(h.state)) transitions.push({ device: m.device, kind: 'alert', from: prev, to: h.state, text: alertText(m.device, h.state, h.detail) });
          else if (h.state === 'online' && prev && DOWN_STATES.has(prev)) transitions.push({ device: m.device, kind: 'recovered', from: prev, to: 'online', text: recoveredText(m.device, prev, now - (row?.since_ms ?? now)) });
        } else if (DOWN_STATES.has(h.state) && now - Math.max(since, reminded ?? 0) >= remindMs) {
          reminded = now;
          transitions.push({ device: m.device, kind: 'reminder', from: prev, to: h.state, text: reminderText(m.device, h.state, now - since, h.detail) });
        }
        // Bot process: its own alert when it starts crash-looping or failing, and when it recovers.
        const botBad = h.bot && BAD_BOT_STATES.has(h.bot) ? h.bot : null;
        if (botBad && botBad !== row?.bot_bad) transitions.push({ device: m.device, kind: 'alert', from: prev, to: h.state, text: `[ALERT] device_id=${m.device} bot=${botBad} (status ${h.state})` });
        else if (!botBad && row?.bot_bad && h.bot === 'running') transitions.push({ device: m.device, kind: 'recovered', from: prev, to: h.state, text: `[RECOVERED] device_id=${m.device} bot=running (was ${row.bot_bad})` });
        h.since = since;
        upsert.run({
          device: m.device, state: h.state, since_ms: since, detail: h.detail, info: JSON.stringify(h),
          agent_failures: p.agentFailures, ssh_failures: p.sshFailures, bot_bad: botBad ?? (h.bot === 'running' || !h.bot ? null : row?.bot_bad ?? null),
          reminded_ms: reminded, updated_ms: now,
        });
        devices.push(h);
      }
    }).immediate();

    const queued = this.enqueue(transitions, now);
    const result: CycleResult = { startedAt, durationMs: performance.now() - t0, devices: devices.sort((a, b) => a.device.localeCompare(b.device)), transitions, queued, wg };
    this.last = result;
    this.log[transitions.length ? 'info' : 'debug']({ devices: devices.length, transitions: transitions.length, ms: Math.round(result.durationMs) }, 'health cycle');
    await this.flush();
    return result;
  }

  private async probe(m: Manifest, row: Row | undefined, peers: Map<string, { latestHandshake: number }> | undefined, wg: CycleResult['wg'], bot: string | null): Promise<Probe> {
    const now = this.now();
    const nowS = now / 1000;
    const n = this.o.settings.unreachable_after;
    const t = m.transport;
    const h: DeviceHealth = {
      device: m.device, state: 'online', since: row?.since_ms ?? now, detail: '', transport: t.kind,
      meshIp: t.kind === 'mesh' ? t.address : null, lastHandshake: null, agent: null, ssh: null, bot, chain: null,
    };
    let agentFailures = row?.agent_failures ?? 0;
    let sshFailures = row?.ssh_failures ?? 0;
    const prevInfo = row ? (JSON.parse(row.info) as DeviceHealth) : undefined;

    let offline: string | null = null;
    let stale: string | null = null;
    let unreachable: string | null = null;
    let corrupted: string | null = null;

    if (t.kind === 'mesh') {
      if (peers) {
        const peer = peers.get(t.address);
        h.lastHandshake = peer ? peer.latestHandshake : 0;
        if (!peer) offline = `no WireGuard peer for ${t.address} on the hub`;
        else if (peer.latestHandshake === 0) offline = 'never handshaked';
        else {
          const age = nowS - peer.latestHandshake;
          if (age > DAY_S) offline = `handshake ${ago(age)} ago`;
          else if (age > this.o.settings.stale_after_s) stale = `handshake ${ago(age)} ago`;
        }
      } else if (wg && !wg.ok) {
        h.lastHandshake = prevInfo?.lastHandshake ?? null;
        // Hub unreadable: keep the 24 h rule on the last known handshake.
        if (h.lastHandshake !== null && (h.lastHandshake === 0 || nowS - h.lastHandshake > DAY_S)) offline = h.lastHandshake === 0 ? 'never handshaked' : `handshake ${ago(nowS - h.lastHandshake)} ago`;
      }
      let health: HealthResponse | undefined;
      try {
        health = await this.agents.health(m);
        agentFailures = 0;
        h.agent = { ok: true, failures: 0, version: health.version };
      } catch (err) {
        agentFailures++;
        h.agent = { ok: false, failures: agentFailures, error: errWhy(err) };
        if (agentFailures >= n) unreachable = `agent: ${h.agent.error}, ${agentFailures} failures`;
      }
      if (health) {
        h.chain = await this.checkChain(m, health).catch((err): ChainStatus => {
          this.log.warn({ device: m.device, err: toMpError(err).message }, 'audit pull failed');
          const head = this.o.audit.head(mirrorKey(m.device));
          return prevInfo?.chain && !prevInfo.chain.ok ? prevInfo.chain : { ok: true, seq: head?.seq ?? 0, reason: `audit pull failed: ${errWhy(err)}` };
        });
      } else if (prevInfo?.chain && !prevInfo.chain.ok) {
        h.chain = prevInfo.chain; // corruption stays until the agent shows a sound chain again
      } else h.chain = prevInfo?.chain ?? null;
      if (h.chain && !h.chain.ok) corrupted = `audit chain: first bad seq ${h.chain.badSeq ?? '?'}${h.chain.reason ? `: ${h.chain.reason}` : ''}`.slice(0, 400);
    } else if (t.kind === 'ssh') {
      try {
        const ms = await this.sshPing(m);
        sshFailures = 0;
        h.ssh = { ok: true, failures: 0, ...(typeof ms === 'number' ? { ms: Math.round(ms) } : {}) };
      } catch (err) {
        sshFailures++;
        h.ssh = { ok: false, failures: sshFailures, error: errWhy(err) };
        if (sshFailures >= n) unreachable = `ssh: ${h.ssh.error}, ${sshFailures} failures`;
      }
    }

    const controller = this.checkControllerChain(m.device);
    if (controller) {
      h.controllerChain = controller;
      if (!controller.ok) corrupted ??= `controller audit chain: first bad seq ${controller.badSeq ?? '?'}${controller.reason ? `: ${controller.reason}` : ''}`.slice(0, 400);
    }

    if (corrupted) { h.state = 'corrupted'; h.detail = corrupted; }
    else if (offline) { h.state = 'offline'; h.detail = offline; }
    else if (unreachable) { h.state = 'unreachable'; h.detail = unreachable; }
    else if (stale) { h.state = 'stale'; h.detail = stale; }
    else if (row?.state === 'unreachable' && ((t.kind === 'mesh' && !h.agent?.ok) || (t.kind === 'ssh' && !h.ssh?.ok))) {
      h.state = 'unreachable'; h.detail = row.detail; // still failing (counter reset by hand?): no flap
    } else { h.state = 'online'; h.detail = ''; }
    return { health: h, agentFailures, sshFailures };
  }

  /**
   * Incremental verification of the agent's chain against the mirror (`<device>@agent`) and the anchors.
   * Nothing that fails verification is mirrored.
   */
  private async checkChain(m: Manifest, health: HealthResponse): Promise<ChainStatus> {
    const key = mirrorKey(m.device);
    const head = this.o.audit.head(key);
    const agentHead = health.audit.hash ? { seq: health.audit.seq, hash: health.audit.hash } : null;
    const anchors = this.anchorCache.get(m.device) ?? [];
    if (!health.audit.chain_ok) {
      return { ok: false, seq: head?.seq ?? 0, badSeq: health.audit.bad_seq ?? health.audit.seq, reason: `the agent reports its chain broken: ${health.audit.reason ?? 'no reason given'}`.slice(0, 300) };
    }
    const cacheKey = `${agentHead?.seq}:${agentHead?.hash}:${head?.seq}:${head?.hash}`;
    const cached = this.corruptCache.get(m.device);
    if (cached && cached.key === cacheKey) return cached.status;
    const corrupt = (badSeq: number, reason: string): ChainStatus => {
      const status: ChainStatus = { ok: false, seq: head?.seq ?? 0, badSeq, reason: reason.slice(0, 300) };
      this.corruptCache.set(m.device, { key: cacheKey, status });
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
      return corrupt(await this.firstDifference(m, head), `the agent's chain ends at ${agentHead?.seq ?? 0} but ${head.seq} entries were already verified: its log was truncated or replaced`);
    }
    // Pull what is new, page by page, verifying from the mirrored head.
    const pageSize = 1000;
    const fresh: AuditEntry[] = [];
    let cursor: AuditHead | null = head;
    for (;;) {
      const page = await this.agents.auditPage(m, cursor?.seq ?? 0, pageSize);
      const foreign = page.entries.find((e) => e.device !== m.device);
      if (foreign) return corrupt(foreign.seq, `entry ${foreign.seq} belongs to device ${foreign.device}`);
      const v = verifyEntries(page.entries, cursor ?? undefined);
      if (!v.ok) {
        if (head && cursor && cursor.seq === head.seq && v.count === 0 && page.entries[0]?.seq === head.seq + 1) {
          // The first new entry does not follow our head: an entry we already verified was rewritten.
          return corrupt(await this.firstDifference(m, head), `entries already verified were changed on the device (${v.reason})`);
        }
        return corrupt(v.badSeq, v.reason);
      }
      fresh.push(...page.entries);
      cursor = v.head;
      if (page.entries.length < pageSize || fresh.length >= this.auditPerCycle) break;
    }
    if (agentHead && cursor && agentHead.seq === cursor.seq && agentHead.hash !== cursor.hash) {
      if (head && fresh.length === 0) return corrupt(await this.firstDifference(m, head), `entries already verified were changed on the device: the agent's head ${agentHead.hash.slice(0, 12)}… for entry ${cursor.seq} differs from the verified ${cursor.hash.slice(0, 12)}…`);
      return corrupt(cursor.seq, `the agent reports head ${agentHead.hash.slice(0, 12)}… for entry ${cursor.seq}, but its entries hash to ${cursor.hash.slice(0, 12)}…`);
    }
    const anchored = checkAnchors(cursor, fresh);
    if (anchored) return anchored;
    if (fresh.length) {
      // Mirrored under the `<device>@agent` key, bodies unchanged.
      this.o.db.transaction(() => { for (const e of fresh) this.o.audit.insertVerified(e, key); }).immediate();
      if (cursor && this.o.anchors?.anchor) {
        const at = cursor;
        void this.o.anchors.anchor(m.device, at).then(() => {
          const list = this.anchorCache.get(m.device) ?? [];
          this.anchorCache.set(m.device, [...list.filter((a) => a.seq !== at.seq), at].slice(-8));
        }, (err: unknown) => this.log.warn({ device: m.device, err: toMpError(err).message }, 'could not anchor the agent audit head'));
      }
    }
    this.corruptCache.delete(m.device);
    return { ok: true, seq: cursor?.seq ?? 0 };
  }

  /** Refreshes the cached controller-chain anchors that are due (see the module comment); failures keep the cache. */
  private async readControllerAnchors(devices: string[]): Promise<void> {
    if (this.o.controllerAnchors === false) return;
    const read = this.o.controllerAnchors ?? ((d: string) => readDeviceAnchor(this.o.home, d));
    const every = this.cycles % this.anchorEvery === 1 || this.anchorEvery === 1;
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
  private checkControllerChain(device: string): ChainStatus | null {
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

  /** The first seq at which the agent's chain differs from the mirror (its entries are compared page by page). */
  private async firstDifference(m: Manifest, head: AuditHead): Promise<number> {
    const key = mirrorKey(m.device);
    let after = 0;
    const pageSize = 1000;
    while (after < head.seq && after < 200_000) {
      const page = await this.agents.auditPage(m, after, pageSize);
      const ours = this.o.audit.entriesAfter(key, after, pageSize);
      for (let i = 0; i < ours.length; i++) {
        const theirs = page.entries[i];
        if (!theirs || theirs.seq !== ours[i]!.seq || theirs.hash !== ours[i]!.hash) return ours[i]!.seq;
      }
      if (page.entries.length === 0 || ours.length === 0) return after + 1;
      after = ours[ours.length - 1]!.seq;
    }
    return Math.min(head.seq, after + 1);
  }

  // ---- alerts and the outbox -----------------------------------------------------------------------

  private enqueue(transitions: Transition[], now: number): string[] {
    if (!transitions.length) return [];
    const digestMin = this.o.settings.digest_min ?? 5;
    let texts: string[];
    if (transitions.length >= digestMin) {
      const counts = new Map<string, number>();
      for (const t of transitions) counts.set(t.kind, (counts.get(t.kind) ?? 0) + 1);
      const summary = [...counts].map(([k, c]) => `${c} ${k === 'alert' ? 'alerts' : k === 'recovered' ? 'recovered' : 'reminders'}`).join(', ');
      const shown = transitions.slice(0, 200).map((t) => t.text);
      const more = transitions.length > shown.length ? [`… and ${transitions.length - shown.length} more (see !devices)`] : [];
      texts = [[`[DIGEST] ${transitions.length} device changes (${summary})`, ...shown, ...more].join('\n')];
    } else texts = transitions.map((t) => t.text);
    const ins = this.o.db.prepare('INSERT INTO health_outbox (created_ms, text) VALUES (?, ?)');
    this.o.db.transaction(() => { for (const t of texts) ins.run(now, t); }).immediate();
    return texts;
  }

  /** Pending outbox messages, oldest first. */
  pending(): Array<{ id: number; created_ms: number; text: string; attempts: number }> {
    return this.o.db.prepare('SELECT id, created_ms, text, attempts FROM health_outbox WHERE sent_ms IS NULL ORDER BY id').all() as Array<{ id: number; created_ms: number; text: string; attempts: number }>;
  }

  /** Sends what the outbox holds, in order, stopping at the first failure (retried a little later). */
  flush(): Promise<void> {
    this.flushing ??= this.doFlush().finally(() => { this.flushing = undefined; });
    return this.flushing;
  }

  private async doFlush(): Promise<void> {
    const send = this.o.send;
    if (!send) return;
    const mark = this.o.db.prepare('UPDATE health_outbox SET sent_ms = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?');
    const fail = this.o.db.prepare('UPDATE health_outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?');
    for (const msg of this.pending()) {
      const lateMs = this.now() - msg.created_ms;
      const text = lateMs >= 60_000 ? `${msg.text} (late: ${duration(lateMs)})` : msg.text;
      try {
        await send(text);
        mark.run(this.now(), msg.id);
      } catch (err) {
        fail.run(toMpError(err).message.slice(0, 300), msg.id);
        this.log.warn({ pending: this.pending().length, err: toMpError(err).message }, 'alert not delivered; kept in the outbox');
        if (!this.stopped && !this.retryTimer) {
          this.retryTimer = setTimeout(() => { this.retryTimer = undefined; void this.flush(); }, 15_000);
          this.retryTimer.unref();
        }
        return;
      }
    }
  }
}

/** Builds the monitor from the launcher's config and runtime (the wg reader follows health.hub_*). */
export function healthSettings(config: Pick<Config, 'health'> | undefined): HealthSettings {
  return config?.health ?? { schedule: '* * * * *', stale_after_s: 600, unreachable_after: 2, remind_after_s: 21600, digest_min: 5 };
}
