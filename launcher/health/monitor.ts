/**
 * The mesh health monitor: runs inside the launcher on a node-cron schedule (health.schedule, default
 * every minute) and on demand (`meshpilot health`, `!health` in the operator room).
 *
 * Per device, the transport decides the signals:
 *   mesh   WireGuard latest-handshake age of its address on the hub (`wg show <if> dump`, local or over
 *          SSH to health.hub_device), the agent's GET /health (short timeout, no retries; the agent
 *          client of capabilities/agent/client.ts, which cannot invoke), and the agent's audit chain
 *   ssh    a cheap authenticated exec (`true`) on the pooled connection (ssh.ts sshPing)
 *   local  this machine: always reachable
 *   all    the bot process state from the supervisor (running / restarting / crash-looping / failed)
 *
 * State: revoked > corrupted > offline (handshake older than 24 h, never, or no peer on the hub) >
 * unreachable (agent or ssh failed health.unreachable_after times in a row) > stale (handshake older
 * than stale_after_s) > online. A device whose handshake is older than 24 h is never online.
 *
 * The other jobs live beside it: state.ts (the stored state and the tables), alerts.ts (alert text
 * and the outbox every message goes through), chains.ts (agent and controller audit chains).
 */
import cron, { type ScheduledTask } from 'node-cron';
import { Agent } from 'undici';
import type { Logger } from 'pino';
import { AgentClient, networkReason } from '../../capabilities/agent/client.js';
import type { HealthResponse } from '../../capabilities/agent/protocol.js';
import type { SqliteAuditLog } from '../../capabilities/audit-sqlite.js';
import type { Db } from '../../capabilities/db.js';
import { MeshpilotError, toMpError } from '../../capabilities/errors.js';
import { logger as makeLogger } from '../../capabilities/log.js';
import type { Manifest } from '../../capabilities/manifest.js';
import { sshPing as defaultSshPing } from '../../capabilities/transports/ssh.js';
import type { AnchorRead } from '../audit-anchors.js';
import type { Config } from '../../capabilities/config.js';
import type { DeviceListing } from '../../capabilities/device-registry.js';
import { parseWgDump, peersByAddress, type WgDump, type WgDumpReader } from '../wg.js';
import { AlertOutbox, DAY_S, ago, alertText, botAlertText, botRecoveredText, recoveredText, reminderText, type AlertSender, type Transition } from './alerts.js';
import { AuditChains, mapLimit, type AnchorSource } from './chains.js';
import { DOWN_STATES, HealthStore, mirrorKey, type ChainStatus, type DeviceHealth, type DeviceState, type HealthRow } from './state.js';

const BAD_BOT_STATES = new Set(['crash-looping', 'failed']);

/** What the monitor needs from the supervisor (launcher/supervisor.ts satisfies it). */
export interface SupervisorLike {
  status(): Array<{ device: string; state: string }>;
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
  /** Jobs that run on the same schedule, after each cycle (the VM reaper: capabilities/vm/reaper.ts); a failure is logged, never fails the cycle. */
  afterCycle?: ReadonlyArray<{ name: string; run(now: number): Promise<unknown> }>;
}

interface Probe {
  health: DeviceHealth;
  agentFailures: number;
  sshFailures: number;
}

/** The short why of a failed probe, as the state detail and the alert show it. */
function errWhy(err: unknown): string {
  const network = networkReason(err);
  if (network) return network;
  if (err instanceof MeshpilotError) return err.message;
  return toMpError(err).message.slice(0, 200);
}

export class HealthMonitor {
  private readonly now: () => number;
  private readonly log: Logger;
  private readonly dispatcher: Agent;
  private readonly agentTimeoutMs: number;
  /** One agent client per mesh device, kept while its address stays the same. */
  private readonly agents = new Map<string, { key: string; client: AgentClient }>();
  private readonly sshPing: (m: Manifest) => Promise<unknown>;
  private readonly concurrency: number;
  private readonly store: HealthStore;
  private readonly outbox: AlertOutbox;
  private readonly chains: AuditChains;
  private task: ScheduledTask | undefined;
  private running: Promise<CycleResult> | undefined;
  private cycles = 0;
  last: CycleResult | undefined;

  constructor(private readonly o: HealthMonitorOptions) {
    this.now = o.now ?? Date.now;
    this.log = o.logger ?? makeLogger('health');
    this.agentTimeoutMs = o.agentTimeoutMs ?? 3_000;
    const t = this.agentTimeoutMs;
    this.dispatcher = new Agent({ connect: { timeout: t }, keepAliveTimeout: 90_000, keepAliveMaxTimeout: 120_000, connections: 2, pipelining: 1 });
    this.sshPing = o.sshPing ?? ((m) => defaultSshPing(m, 10_000));
    this.concurrency = o.concurrency ?? 64;
    this.store = new HealthStore(o.db, this.now);
    this.outbox = new AlertOutbox({ db: o.db, send: o.send, now: this.now, log: this.log, digestMin: o.settings.digest_min ?? 5 });
    this.chains = new AuditChains({
      db: o.db, audit: o.audit, home: o.home, anchors: o.anchors, controllerAnchors: o.controllerAnchors,
      auditPerCycle: o.auditPerCycle ?? 5_000, anchorEvery: o.anchorEvery ?? 60, log: this.log,
    });
  }

  get settings(): HealthSettings {
    return this.o.settings;
  }

  /** Starts the cron schedule (a cycle still running when the next is due is not doubled). */
  start(): void {
    if (this.task) return;
    if (!cron.validate(this.o.settings.schedule)) throw new MeshpilotError('config', `health.schedule "${this.o.settings.schedule}" is not a cron expression`);
    this.outbox.resume();
    this.task = cron.schedule(this.o.settings.schedule, async () => {
      try { await this.runCycle(); } catch (err) { this.log.error({ err: toMpError(err).message }, 'health cycle failed'); }
    }, { name: 'meshpilot-health', noOverlap: true });
  }

  async stop(): Promise<void> {
    this.outbox.stop();
    if (this.task) { await this.task.destroy(); this.task = undefined; }
    await this.running?.catch(() => undefined);
    await this.outbox.settled();
    this.agents.clear();
    await this.dispatcher.close();
  }

  /** One cycle; concurrent callers share the one in flight. */
  runCycle(): Promise<CycleResult> {
    this.running ??= this.cycle().finally(() => { this.running = undefined; });
    return this.running;
  }

  /** The last stored health of each device (for !devices and `meshpilot health` without a cycle). */
  snapshot(): DeviceHealth[] {
    return this.store.snapshot();
  }

  history(device: string, limit = 20): Array<{ at: number; from: string | null; to: string; detail: string }> {
    return this.store.history(device, limit);
  }

  /** Marks a device revoked (no more probes or alerts for it); the revoke flow calls this. */
  markRevoked(device: string, revoked = true): void {
    this.store.markRevoked(device, revoked);
  }

  /** Pending outbox messages, oldest first. */
  pending(): Array<{ id: number; created_ms: number; text: string; attempts: number }> {
    return this.outbox.pending();
  }

  /** Sends what the outbox holds, in order, stopping at the first failure (retried a little later). */
  flush(): Promise<void> {
    return this.outbox.flush();
  }

  /** The read-only agent client of a mesh device (through the monitor's shared dispatcher). */
  private agentOf(device: string, at: { address: string; port: number }): AgentClient {
    const key = `${at.address}:${at.port}`;
    const hit = this.agents.get(device);
    if (hit && hit.key === key) return hit.client;
    const secret = this.o.agentSecret;
    const client = new AgentClient({
      device, address: at.address, port: at.port, home: this.o.home, dispatcher: this.dispatcher,
      ...(secret ? { secret: () => secret(device) } : {}),
      healthTimeoutMs: this.agentTimeoutMs, auditTimeoutMs: Math.max(this.agentTimeoutMs, 15_000), retryDelaysMs: [],
    });
    this.agents.set(device, { key, client });
    return client;
  }

  // ---- the cycle -----------------------------------------------------------------------------------

  private async cycle(): Promise<CycleResult> {
    const t0 = performance.now();
    const startedAt = this.now();
    this.cycles++;
    const listings = this.o.devices.list();
    // A workspace shares its host's transport: it is not probed (or alerted for) a second time.
    const manifests = listings.filter((l): l is DeviceListing & { manifest: Manifest } => l.manifest !== undefined && !l.manifest.workspace).map((l) => l.manifest);
    const rows = this.store.rows();

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

    const active = manifests.filter((m) => !rows.get(m.device)?.revoked);
    await this.chains.refreshAgentAnchors(active.filter((m) => m.transport.kind === 'mesh').map((m) => m.device), this.cycles);
    await this.chains.refreshControllerAnchors(active.map((m) => m.device), this.cycles);

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
    const remindMs = this.o.settings.remind_after_s * 1000;
    this.store.write((w) => {
      for (const m of manifests) {
        const row = rows.get(m.device);
        if (row?.revoked) { devices.push({ ...(JSON.parse(row.info) as DeviceHealth), state: 'revoked', since: row.since_ms, detail: row.detail }); continue; }
        const p = probes.get(m.device);
        if (!p) continue;
        const h = p.health;
        const prev: DeviceState | null = row?.state ?? null;
        let since = row?.since_ms ?? now;
        let reminded = row?.reminded_ms ?? null;
        if (prev !== h.state) {
          since = now;
          reminded = null;
          w.transition(m.device, now, prev, h.state, h.detail);
          if (DOWN_STATES.has(h.state)) transitions.push({ device: m.device, kind: 'alert', from: prev, to: h.state, text: alertText(m.device, h.state, h.detail) });
          else if (h.state === 'online' && prev && DOWN_STATES.has(prev)) transitions.push({ device: m.device, kind: 'recovered', from: prev, to: 'online', text: recoveredText(m.device, prev, now - (row?.since_ms ?? now)) });
        } else if (DOWN_STATES.has(h.state) && now - Math.max(since, reminded ?? 0) >= remindMs) {
          reminded = now;
          transitions.push({ device: m.device, kind: 'reminder', from: prev, to: h.state, text: reminderText(m.device, h.state, now - since, h.detail) });
        }
        // Bot process: its own alert when it starts crash-looping or failing, and when it recovers.
        const botBad = h.bot && BAD_BOT_STATES.has(h.bot) ? h.bot : null;
        if (botBad && botBad !== row?.bot_bad) transitions.push({ device: m.device, kind: 'alert', from: prev, to: h.state, text: botAlertText(m.device, botBad, h.state) });
        else if (!botBad && row?.bot_bad && h.bot === 'running') transitions.push({ device: m.device, kind: 'recovered', from: prev, to: h.state, text: botRecoveredText(m.device, row.bot_bad) });
        h.since = since;
        w.save({
          device: m.device, state: h.state, since_ms: since, detail: h.detail, info: JSON.stringify(h),
          agent_failures: p.agentFailures, ssh_failures: p.sshFailures, bot_bad: botBad ?? (h.bot === 'running' || !h.bot ? null : row?.bot_bad ?? null),
          reminded_ms: reminded, updated_ms: now,
        });
        devices.push(h);
      }
    });

    const queued = this.outbox.enqueue(transitions, now);
    const result: CycleResult = { startedAt, durationMs: performance.now() - t0, devices: devices.sort((a, b) => a.device.localeCompare(b.device)), transitions, queued, wg };
    this.last = result;
    this.log[transitions.length ? 'info' : 'debug']({ devices: devices.length, transitions: transitions.length, ms: Math.round(result.durationMs) }, 'health cycle');
    await this.flush();
    for (const job of this.o.afterCycle ?? []) {
      try { await job.run(this.now()); } catch (err) { this.log.error({ job: job.name, err: toMpError(err).message }, 'after-cycle job failed'); }
    }
    return result;
  }

  private async probe(m: Manifest, row: HealthRow | undefined, peers: Map<string, { latestHandshake: number }> | undefined, wg: CycleResult['wg'], bot: string | null): Promise<Probe> {
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
        health = await this.agentOf(m.device, t).health();
        agentFailures = 0;
        h.agent = { ok: true, failures: 0, version: health.version };
      } catch (err) {
        agentFailures++;
        h.agent = { ok: false, failures: agentFailures, error: errWhy(err) };
        if (agentFailures >= n) unreachable = `agent: ${h.agent.error}, ${agentFailures} failures`;
      }
      if (health) {
        h.chain = await this.chains.checkAgentChain(this.agentOf(m.device, t), health).catch((err): ChainStatus => {
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

    const controller = this.chains.checkControllerChain(m.device);
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
}

/** Builds the monitor from the launcher's config and runtime (the wg reader follows health.hub_*). */
export function healthSettings(config: Pick<Config, 'health'> | undefined): HealthSettings {
  return config?.health ?? { schedule: '* * * * *', stale_after_s: 600, unreachable_after: 2, remind_after_s: 21600, digest_min: 5 };
}
