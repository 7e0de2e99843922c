/**
 * The fleet grid: one row per device with its health (launcher/health/: online / stale / offline /
 * unreachable / corrupted, as the monitor last stored it), last handshake, transport, agent and bot
 * state, and capability count; and the live feed that pushes the grid over server-sent events.
 *
 * The health monitor, a CLI `meshpilot health` and the supervisor change what the grid shows, some of
 * them in other processes, so the feed watches the source instead of being told: every `pollMs`
 * (100 ms), while at least one browser listens, it reads a signature of the health table (device,
 * state, updated_ms), the manifests (names, mtimes via the registry's cache) and the bots' states, and
 * renders and pushes the grid only when the signature changed.
 */
import { html } from 'hono/html';
import type { Db } from '../../../capabilities/db.js';
import type { DeviceRegistry } from '../../../capabilities/device-registry.js';
import type { DeviceHealth } from '../../health/state.js';
import { HealthStore } from '../../health/state.js';
import { ago, type Html } from './layout.js';

export interface BotStates {
  status(): Array<{ device: string; state: string }>;
}

export interface GridRow {
  device: string;
  /** The monitor's state, `unknown` before its first cycle, `invalid` for a manifest that does not load. */
  state: string;
  since: number | null;
  detail: string;
  transport: string;
  /** Unix seconds of the last WireGuard handshake; 0 never; null no WireGuard signal. */
  lastHandshake: number | null;
  agent: string;
  bot: string;
  capabilities: number | null;
}

export interface FleetSources {
  db: Db;
  devices: DeviceRegistry;
  supervisor?: BotStates | undefined;
}

function agentText(h: DeviceHealth | undefined): string {
  if (!h?.agent) return h?.transport === 'mesh' ? 'unknown' : '—';
  if (h.agent.ok) return `ok${h.agent.version ? ` ${h.agent.version}` : ''}`;
  return `failing (${h.agent.failures})${h.agent.error ? `: ${h.agent.error}` : ''}`;
}

/** The grid's rows: every device with a manifest file, and revoked ones the monitor still remembers are left out. */
export function fleetRows(src: FleetSources): GridRow[] {
  const health = new Map(new HealthStore(src.db, Date.now).snapshot().map((h) => [h.device, h]));
  const bots = new Map((src.supervisor?.status() ?? []).map((b) => [b.device, b.state]));
  return src.devices.list().map((l): GridRow => {
    const h = health.get(l.device);
    const transport = l.manifest?.transport.kind ?? h?.transport ?? '?';
    return {
      device: l.device,
      state: !l.manifest ? 'invalid' : h?.state ?? 'unknown',
      since: h ? h.since : null,
      detail: !l.manifest ? (l.issues?.[0]?.message ?? 'invalid manifest') : h?.detail ?? 'no health check yet',
      transport,
      lastHandshake: h?.lastHandshake ?? null,
      agent: agentText(h),
      bot: bots.get(l.device) ?? h?.bot ?? (src.supervisor ? 'not running' : 'no bots (Matrix not configured)'),
      capabilities: l.manifest ? Object.keys(l.manifest.capabilities).length : null,
    };
  });
}

function handshake(ts: number | null, now: number): string {
  if (ts === null) return '—';
  if (ts === 0) return 'never';
  return ago(ts * 1000, now);
}

/** The grid's rows (the tbody's content): what the SSE feed swaps in. */
export function renderRows(rows: readonly GridRow[], now = Date.now()): Html {
  if (rows.length === 0) return html`<tr><td colspan="7" class="muted">No devices yet. <a href="/add">Add one</a>.</td></tr>`;
  return html`${rows.map((r) => html`<tr id="dev-${r.device}" data-state="${r.state}"><td data-label="device"><a href="/devices/${r.device}">${r.device}</a></td><td data-label="state"><span class="state state-${r.state}">${r.state}</span> <small class="muted" title="${r.detail}">${r.since !== null ? ago(r.since, now) : ''}</small></td><td data-label="handshake">${handshake(r.lastHandshake, now)}</td><td data-label="transport">${r.transport}</td><td data-label="agent">${r.agent}</td><td data-label="bot">${r.bot}</td><td data-label="capabilities">${r.capabilities ?? '—'}</td></tr>`)}`;
}

/** The whole grid: a table whose body follows the `grid` events of /events (htmx SSE extension). */
export function renderGrid(rows: readonly GridRow[], now = Date.now()): Html {
  return html`<div hx-ext="sse" sse-connect="/events">
<table class="grid">
<thead><tr><th>Device</th><th>State</th><th>Last handshake</th><th>Transport</th><th>Agent</th><th>Bot</th><th>Capabilities</th></tr></thead>
<tbody id="fleet" sse-swap="grid" hx-swap="innerHTML">${renderRows(rows, now)}</tbody>
</table>
</div>
<p class="muted"><small>Live: the grid follows the health monitor without a reload.</small></p>`;
}

type Listener = (rowsHtml: string) => void;

/** Pushes the grid's rows to every listener when what they show changed. */
export class FleetFeed {
  private readonly listeners = new Set<Listener>();
  private timer: NodeJS.Timeout | undefined;
  private lastSig = '';
  private lastHtml = '';

  constructor(private readonly src: FleetSources, private readonly pollMs = 100) {}

  /** What changes the grid, cheaply read: no manifest parsing when nothing changed on disk. */
  signature(): string {
    const health = this.src.db.prepare('SELECT device, state, updated_ms, since_ms FROM health_device ORDER BY device').raw().all() as unknown[][];
    const names = this.src.devices.names();
    const bots = this.src.supervisor?.status().map((b) => `${b.device}=${b.state}`).join(',') ?? '';
    return `${health.map((r) => r.join(':')).join(',')}|${names.map((n) => {
      const l = this.src.devices.listing(n);
      return `${n}${l?.manifest ? `:${Object.keys(l.manifest.capabilities).length}:${l.manifest.transport.kind}` : ':x'}`;
    }).join(',')}|${bots}`;
  }

  /** The rows' HTML as of now. */
  async render(): Promise<string> {
    return String(await renderRows(fleetRows(this.src)));
  }

  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    if (!this.timer) {
      this.lastSig = this.signature();
      this.timer = setInterval(() => void this.tick(), this.pollMs);
      this.timer.unref();
    }
    return () => {
      this.listeners.delete(fn);
      if (this.listeners.size === 0) this.stop();
    };
  }

  /** Reads the sources now (also called by the poll): pushes when they changed. */
  async tick(): Promise<void> {
    let sig: string;
    try {
      sig = this.signature();
    } catch {
      return; // the database is busy or closing: next tick
    }
    if (sig === this.lastSig) return;
    this.lastSig = sig;
    const rows = await this.render();
    if (rows === this.lastHtml) return;
    this.lastHtml = rows;
    for (const fn of this.listeners) fn(rows);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}


