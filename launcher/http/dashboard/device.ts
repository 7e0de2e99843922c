/**
 * The device page: its health, a form for every capability its manifest enables (cap-form.ts), the
 * last audit entries with the chain's status and the last anchor in Matrix, and pending approvals.
 * A run goes through `Invoker.invoke()` with the logged-in operator as the actor; when it waits for an
 * approval the answer says so at once and the result follows (htmx polls /devices/<d>/runs/<id>).
 */
import { randomUUID } from 'node:crypto';
import type { Context, Hono } from 'hono';
import { html } from 'hono/html';
import type { AuditEntry } from '../../../capabilities/audit.js';
import type { DashboardSession } from '../../../capabilities/dashboard-login.js';
import type { InvokeResult } from '../../../capabilities/invoke.js';
import type { Runtime } from '../../runtime-core.js';
import { HealthStore } from '../../health/state.js';
import type { DashEnv } from './auth.js';
import { formOf, sessionOf } from './auth.js';
import type { DashboardApprovals } from './approvals.js';
import { argsFromForm, capForm } from './cap-form.js';
import { DashboardRuns } from './runs.js';
import { ago, csrfField, page, type Html } from './layout.js';


export function entryRows(entries: readonly AuditEntry[]): Html {
  if (entries.length === 0) return html`<tr><td colspan="6" class="muted">No entries.</td></tr>`;
  return html`${entries.map((e) => html`<tr><td>#${e.seq}</td><td><time datetime="${e.ts}">${e.ts.replace('T', ' ').slice(0, 19)}</time></td><td>${e.device}</td><td>${e.actor}</td><td><code>${e.capability}</code></td><td class="${e.outcome === 'ok' ? 'ok' : e.outcome === 'started' ? 'muted' : 'bad'}">${e.decision}/${e.outcome}${e.exit_code !== null ? ` exit=${e.exit_code}` : ''}${e.reason && e.outcome !== 'ok' ? html` <small>— ${e.reason.slice(0, 200)}</small>` : ''}</td></tr>`)}`;
}

function resultHtml(r: InvokeResult): Html {
  const out = r.result?.stdout ?? '';
  const err = r.result?.stderr ?? '';
  return html`<div class="notice ${r.ok ? 'ok' : 'bad'}" data-outcome="${r.ok ? 'ok' : 'error'}"><strong>${r.ok ? 'ok' : `failed: ${r.error?.code ?? 'error'}`}</strong>${r.error ? html` — ${r.error.message}` : ''}${r.result?.exitCode !== undefined ? ` · exit ${r.result.exitCode}` : ''}${r.audit ? html` · audit #${r.audit.seq} <code title="${r.audit.hash}">${r.audit.hash.slice(0, 12)}…</code>` : ''}</div>
${out ? html`<pre class="stdout">${out}</pre>` : ''}${err ? html`<pre class="stderr">${err}</pre>` : ''}`;
}

export interface DeviceDeps {
  runtime: Runtime;
  approvals: DashboardApprovals;
}

export function deviceRoutes(app: Hono<DashEnv>, deps: DeviceDeps): void {
  const rt = deps.runtime;
  /** Runs still waiting (for an approval), and finished ones until read, by run id. */
  const runs = new DashboardRuns();

  const known = (c: Context<DashEnv>, device: string): Response | Promise<Response> | undefined =>
    rt.devices.listing(device) ? undefined : c.html(page({ title: 'Unknown device', session: sessionOf(c) }, html`<h1>Unknown device</h1><p>No device named <code>${device}</code>. <a href="/">Back to the fleet</a>.</p>`), 404);

  const approvalsHtml = (device: string, s: DashboardSession): Html => {
    const list = deps.approvals.pending(device);
    return html`<div id="approvals" hx-get="/devices/${device}/approvals" hx-trigger="every 2s" hx-swap="outerHTML">${list.length === 0 ? html`<p class="muted">Nothing waits for approval.</p>` : html`<ul>${list.map((a) => html`<li data-approval="${a.id}"><strong>[${a.id}]</strong> <code>${a.capability}</code> <code>${a.args.slice(0, 300)}</code> asked by ${a.requester}, expires ${ago(a.expiresAt)}
${a.decidable ? html`<form method="post" action="/devices/${device}/approvals/${a.id}" hx-post="/devices/${device}/approvals/${a.id}" hx-target="#approvals" hx-swap="outerHTML" style="display:inline">${csrfField(s)}<button name="decision" value="approve">Approve</button> <button name="decision" value="reject">Reject</button></form>` : html`<small class="muted">its bot is not running: decide it in the bot's DM (react ✅/❌) when it is back</small>`}</li>`)}</ul>`}</div>`;
  };

  app.get('/devices/:device', async (c) => {
    const s = sessionOf(c);
    const device = c.req.param('device');
    const unknown = known(c, device);
    if (unknown) return unknown;
    const listing = rt.devices.listing(device)!;
    const h = new HealthStore(rt.db, Date.now).snapshot().find((x) => x.device === device);
    const v = rt.audit.verify(device);
    const { checkChainAnchors } = await import('../../audit-anchors.js');
    const anchor = await Promise.race([
      checkChainAnchors(rt.home.root, rt.audit, device).catch((err: unknown) => ({ kind: 'unchecked' as const, message: String(err) })),
      new Promise<{ kind: 'unchecked'; message: string }>((resolve) => setTimeout(() => resolve({ kind: 'unchecked', message: 'Matrix did not answer within 3 s' }), 3000).unref()),
    ]);
    const caps = rt.invoker.allowedCapabilities(device);
    return c.html(page({ title: device, session: s, nav: 'fleet' }, html`<h1>${device}</h1>
<p><span class="state state-${h?.state ?? 'unknown'}">${h?.state ?? 'unknown'}</span> ${h ? html`<small class="muted">${h.detail}</small>` : html`<small class="muted">no health check yet</small>`}
· ${listing.manifest?.transport.kind ?? 'invalid manifest'} · ${caps.length} capabilities</p>
${listing.issues ? html`<pre class="bad">${listing.issues.map((i) => `${i.field}: ${i.message}`).join('\n')}</pre>` : ''}
<h2>Run a capability</h2>
${caps.length === 0 ? html`<p class="muted">The manifest enables no capability.</p>` : caps.map((d) => capForm(device, d, s))}
<h2>Pending approvals</h2>
${approvalsHtml(device, s)}
<h2>Audit</h2>
<p id="chain">Chain: ${v.ok ? html`<span class="ok">ok</span>, ${v.count} entries${v.head ? html`, head #${v.head.seq} <code>${v.head.hash.slice(0, 12)}…</code>` : ''}` : html`<span class="bad">BROKEN at seq ${v.badSeq}</span>: ${v.reason}`}
· Last anchor: ${anchor.kind === 'matched' ? html`<span class="ok">#${anchor.anchor.seq} in Matrix matches</span>` : anchor.kind === 'mismatch' ? html`<span class="bad">#${anchor.anchor.seq} disagrees at seq ${anchor.badSeq}</span>` : html`<span class="muted">${anchor.kind === 'none' ? 'none' : 'not checked'} (${anchor.message})</span>`}</p>
<div class="scroll"><table><thead><tr><th>Seq</th><th>Time</th><th>Device</th><th>Actor</th><th>Capability</th><th>Outcome</th></tr></thead><tbody>${entryRows(rt.audit.tail(20, device).reverse())}</tbody></table></div>
<p><a href="/audit?device=${device}">All of ${device}'s audit</a> · <a href="/devices/${device}/revoke">Revoke ${device}…</a></p>`));
  });

  app.get('/devices/:device/approvals', (c) => c.html(approvalsHtml(c.req.param('device'), sessionOf(c))));

  app.post('/devices/:device/approvals/:id', async (c) => {
    const s = sessionOf(c);
    const device = c.req.param('device');
    const form = await formOf(c);
    const approve = form['decision'] === 'approve';
    const ok = deps.approvals.decideBy(device, c.req.param('id'), approve, s.actor);
    // A bot decides asynchronously: give it a moment, so the list shows the decision.
    if (ok) await new Promise((r) => setTimeout(r, 300));
    if (c.req.header('hx-request')) return c.html(approvalsHtml(device, s));
    return c.html(page({ title: device, session: s }, html`<p>${ok ? (approve ? 'Approved.' : 'Rejected.') : 'Nothing waits for that approval here any more.'} <a href="/devices/${device}">Back to ${device}</a></p>`), ok ? 200 : 409);
  });

  app.post('/devices/:device/run', async (c) => {
    const s = sessionOf(c);
    const device = c.req.param('device');
    const unknown = known(c, device);
    if (unknown) return unknown;
    const form = await formOf(c);
    const name = form['_capability'] ?? '';
    const def = rt.capabilities.get(name);
    const answer = (body: Html, status: 200 | 202 | 400 | 404 = 200): Response | Promise<Response> =>
      c.req.header('hx-request') ? c.html(body, status) : c.html(page({ title: `${name} on ${device}`, session: s, nav: 'fleet' }, html`<h1>${name} on ${device}</h1>${body}<p><a href="/devices/${device}">Back to ${device}</a></p>`), status);
    if (!def) return answer(html`<p class="bad">Unknown capability ${name.slice(0, 64)}.</p>`, 404);
    const parsed = argsFromForm(def, form);
    if (!parsed.ok) return answer(html`<p class="bad">${parsed.message}</p>`, 400);
    const id = randomUUID();
    // Answer at once when the call waits for an approval; else with its result.
    const first = await runs.start(id, { device, actor: s.actor }, deps.approvals.hook(device, def.name, s.actor), (hook) =>
      rt.invoker.invoke({ device, capability: def.name, args: parsed.args, actor: s.actor, requestId: id, context: { surface: 'dashboard' } }, hook));
    if (first !== 'waiting') return answer(resultHtml(first));
    return answer(html`<div hx-get="/devices/${device}/runs/${id}" hx-trigger="every 1s" hx-swap="outerHTML"><p class="notice warn">Waiting for approval: see <em>Pending approvals</em> below (or in the bot's DM). <a href="/devices/${device}/runs/${id}">Result</a></p></div>`, 202);
  });

  app.get('/devices/:device/runs/:id', (c) => {
    const s = sessionOf(c);
    const run = runs.get(c.req.param('id'));
    if (!run || run.device !== c.req.param('device') || run.actor !== s.actor) return c.html(html`<p class="muted">No such run.</p>`, 404);
    if (!run.done) {
      const body = html`<div hx-get="/devices/${run.device}/runs/${c.req.param('id')}" hx-trigger="every 1s" hx-swap="outerHTML"><p class="notice warn">Still waiting for approval.</p></div>`;
      return c.req.header('hx-request') ? c.html(body) : c.html(page({ title: 'Run', session: s }, body));
    }
    return c.req.header('hx-request') ? c.html(resultHtml(run.done)) : c.html(page({ title: 'Run', session: s }, html`${resultHtml(run.done)}<p><a href="/devices/${run.device}">Back</a></p>`));
  });
}
