/**
 * The audit viewer: the controller's chains (capabilities/audit-sqlite.ts), filtered by device, actor
 * and capability; and verify, which walks each chain and shows `ok` or the first broken seq.
 * Read-only pages: plain GET forms, readable without JavaScript.
 */
import type { Hono } from 'hono';
import { html } from 'hono/html';
import { z } from 'zod';
import type { Runtime } from '../../runtime-core.js';
import type { DashEnv } from './auth.js';
import { sessionOf } from './auth.js';
import { entryRows } from './device.js';
import { page } from './layout.js';

const SCANNED = 5000;

const FilterSchema = z.object({
  device: z.string().max(64).default(''),
  actor: z.string().max(256).default(''),
  capability: z.string().max(64).default(''),
  limit: z.coerce.number().int().min(1).max(1000).catch(200),
});

export function auditRoutes(app: Hono<DashEnv>, rt: Runtime): void {
  app.get('/audit', (c) => {
    const s = sessionOf(c);
    const f = FilterSchema.parse({
      device: c.req.query('device') ?? undefined, actor: c.req.query('actor') ?? undefined,
      capability: c.req.query('capability') ?? undefined, limit: c.req.query('limit') ?? undefined,
    });
    const devices = rt.audit.devices();
    const entries = rt.audit.tail(SCANNED, f.device || undefined)
      .filter((e) => (!f.actor || e.actor.includes(f.actor)) && (!f.capability || e.capability === f.capability || e.capability.startsWith(`${f.capability}.`)))
      .slice(-f.limit)
      .reverse();
    return c.html(page({ title: 'Audit', session: s, nav: 'audit' }, html`<h1>Audit</h1>
<form method="get" action="/audit" class="filters">
<label>Device<select name="device"><option value="">all</option>${devices.map((d) => html`<option value="${d}"${d === f.device ? ' selected' : ''}>${d}</option>`)}</select></label>
<label>Actor<input name="actor" value="${f.actor}" placeholder="@alice:example.org"></label>
<label>Capability<input name="capability" value="${f.capability}" placeholder="fs.read or fs"></label>
<button type="submit">Filter</button> <a href="/audit/verify${f.device ? `?device=${f.device}` : ''}">Verify the chain${f.device ? ` of ${f.device}` : 's'}</a>
</form>
<div class="scroll"><table id="audit"><thead><tr><th>Seq</th><th>Time</th><th>Device</th><th>Actor</th><th>Capability</th><th>Outcome</th></tr></thead><tbody>${entryRows(entries)}</tbody></table></div>
<p class="muted"><small>The latest ${f.limit} matching entries among the last ${SCANNED}${f.device ? ` of ${f.device}` : ''}.</small></p>`));
  });

  app.get('/audit/verify', (c) => {
    const s = sessionOf(c);
    const only = (c.req.query('device') ?? '').slice(0, 64);
    const devices = only ? [only] : rt.audit.devices();
    const results = devices.map((d) => ({ device: d, v: rt.audit.verify(d) }));
    return c.html(page({ title: 'Verify', session: s, nav: 'audit' }, html`<h1>Verify</h1>
${results.length === 0 ? html`<p>ok: the audit log is empty.</p>` : html`<ul id="verify">${results.map(({ device, v }) => html`<li data-device="${device}">${device}: ${v.ok
      ? html`<span class="ok">ok</span> ${v.count} entries${v.head ? html`, head #${v.head.seq} <code>${v.head.hash.slice(0, 16)}…</code>` : ''}`
      : html`<span class="bad">BROKEN at seq ${v.badSeq}</span>: ${v.reason} (${v.count} entries verified before it)`}</li>`)}</ul>`}
<p class="muted"><small>Each chain verified by itself; the device page compares it with its bot's anchor in Matrix.</small></p>
<p><a href="/audit">Back to the audit</a></p>`));
  });
}
