/**
 * Read endpoints: GET /v1/devices, /v1/devices/<d>, /v1/audit, /v1/audit/verify. A token sees only
 * the devices its device globs match (and the `_api` chain only with a glob that matches it, e.g. `*`).
 */
import { Hono } from 'hono';
import { formatIssue } from '../../../capabilities/manifest.js';
import { needsApproval } from '../../../capabilities/policy.js';
import { HealthStore, type HealthRow } from '../../health/state.js';
import type { HttpDeps } from '../types.js';
import { httpError } from '../errors.js';
import { API_AUDIT_DEVICE } from '../tokens.js';
import type { ApiEnv } from './auth.js';
import { query } from './body.js';
import { AuditQuerySchema } from './schemas.js';

function healthRows(deps: HttpDeps): Map<string, HealthRow> {
  try {
    return new HealthStore(deps.runtime.db, Date.now).rows();
  } catch {
    return new Map(); // the health monitor never ran on this database
  }
}

export function readRoutes(deps: HttpDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  const rt = deps.runtime;
  const bots = (): Map<string, ReturnType<NonNullable<HttpDeps['supervisor']>['status']>[number]> =>
    new Map((deps.supervisor?.status() ?? []).map((b) => [b.device, b]));

  const summary = (l: ReturnType<typeof rt.devices.list>[number], health: Map<string, HealthRow>, bot: ReturnType<typeof bots>) => ({
    name: l.device,
    valid: l.manifest !== undefined,
    os: l.manifest?.os ?? null,
    transport: l.manifest?.transport.kind ?? null,
    capabilities: l.manifest ? Object.keys(l.manifest.capabilities).length : 0,
    health: health.get(l.device)?.state ?? null,
    bot: bot.get(l.device)?.state ?? null,
  });

  app.get('/devices', (c) => {
    const p = c.get('principal');
    const health = healthRows(deps);
    const bot = bots();
    return c.json({ devices: rt.devices.list().filter((l) => p.allowsDevice(l.device)).map((l) => summary(l, health, bot)) }, 200);
  });

  app.get('/devices/:device', (c) => {
    const name = c.req.param('device');
    const l = rt.devices.listing(name);
    if (!l || !c.get('principal').allowsDevice(name)) return httpError(c, 'unknown_device', `unknown device ${name.slice(0, 64)}`);
    const health = healthRows(deps);
    const bot = bots();
    const h = health.get(name);
    const b = bot.get(name);
    const m = l.manifest;
    return c.json({
      ...summary(l, health, bot),
      issues: (l.issues ?? []).map(formatIssue),
      manifest: m ? {
        capabilities: Object.entries(m.capabilities).map(([cap, opts]) => {
          const def = rt.capabilities.get(cap);
          return { name: cap, risk: def?.risk ?? 'unknown', approval: needsApproval(def?.risk, opts?.approval) };
        }),
        operators: m.operators,
      } : null,
      health_detail: h ? { since: new Date(h.since_ms).toISOString(), detail: h.detail, last_ok: null } : null,
      bot_detail: b ? { state: b.state, pid: b.pid, restarts: b.restarts, since: b.since, busy: b.busy } : null,
      audit_head: rt.audit.head(name),
    }, 200);
  });

  app.get('/audit', (c) => {
    const q = query(c, AuditQuerySchema);
    if (!q.ok) return q.res;
    const { device, after, limit } = q.data;
    if (!c.get('principal').allowsDevice(device)) return httpError(c, 'forbidden', `this token is not scoped for ${device}`);
    const entries = rt.audit.entriesAfter(device, after, limit);
    return c.json({ device, entries, next_after: entries.length === limit ? entries[entries.length - 1]!.seq : null }, 200);
  });

  app.get('/audit/verify', async (c) => {
    const p = c.get('principal');
    const { checkChainAnchors } = await import('../../audit-anchors.js');
    const chains = [];
    for (const [device, v] of rt.audit.verifyAll()) {
      if (!p.allowsDevice(device)) continue;
      const a = v.ok && device !== API_AUDIT_DEVICE ? await checkChainAnchors(rt.home.root, rt.audit, device) : { kind: 'none' as const, message: v.ok ? 'no anchor for the API chain' : 'chain broken' };
      chains.push({
        device, ok: v.ok && a.kind !== 'mismatch', count: v.count, head: v.head,
        ...(!v.ok ? { bad_seq: v.badSeq, reason: v.reason } : a.kind === 'mismatch' ? { bad_seq: a.badSeq, reason: `disagrees with the head anchored in Matrix: ${a.reason}` } : {}),
        anchor: a.kind === 'matched' || a.kind === 'mismatch' ? { kind: a.kind, seq: a.anchor.seq } : { kind: a.kind, message: a.message },
      });
    }
    return c.json({ ok: chains.every((x) => x.ok), chains }, 200);
  });

  return app;
}
