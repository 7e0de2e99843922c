/**
 * The VMs page (`/vms`): the VMs on every device the logged-in person may see, with their state,
 * image, limits, expiry, owner, ports and shares (links), and the actions of the `vm` command family
 * (capabilities/vm/commands.ts VM_VERBS): new, stop, start, rm, share, unshare. Each action's form comes
 * from its capability's zod schema (cap-form.ts) and runs through `Invoker.invoke()` with the person as
 * actor and caller, so policy, the VM gate (ownership, quotas), approvals and the audit are the same as
 * in chat and on the CLI. Listing is vm.ls through invoke too (audited; a listing never waits for an
 * approval).
 *
 * Who sees what follows the VM gate (capabilities/vm/quota-gate.ts): operators and admins every VM;
 * below them (citizens, newbies: people the config's `users:` names) only their own, on the devices
 * whose manifest grants their level vm.ls. This page is the only one of the dashboard those people may
 * open (index.ts mounts it before the staff-only middleware). Without a config (the embedded default)
 * everyone who can log in is an operator, as on every other page.
 */
import { randomUUID } from 'node:crypto';
import type { Context, Hono } from 'hono';
import { html } from 'hono/html';
import type { AnyCapability } from '../../../capabilities/capability.js';
import type { Config } from '../../../capabilities/config.js';
import type { DashboardSession } from '../../../capabilities/dashboard-login.js';
import type { ApprovalHook, InvokeResult } from '../../../capabilities/invoke.js';
import { grants, isStaff, resolveLevel, type Caller, type Level } from '../../../capabilities/levels.js';
import type { Manifest } from '../../../capabilities/manifest.js';
import type { VmInfo } from '../../../capabilities/vm/backend.js';
import { VM_VERBS } from '../../../capabilities/vm/commands.js';
import type { VmShare } from '../../../capabilities/vm/shares.js';
import type { Runtime } from '../../runtime-core.js';
import type { DashboardApprovals } from './approvals.js';
import { formOf, sessionOf, type DashEnv } from './auth.js';
import { argsFromForm, capForm } from './cap-form.js';
import { DashboardRuns } from './runs.js';
import { ago, csrfField, page, type Html } from './layout.js';

/** The verbs this page offers, by capability (their schemas come from VM_VERBS). */
const ACTIONS = ['vm.new', 'vm.stop', 'vm.start', 'vm.rm', 'vm.share', 'vm.unshare'] as const;
type Action = (typeof ACTIONS)[number];
/** A listing of one device that takes longer is shown as not answering. */
const LIST_TIMEOUT_MS = 15_000;

export interface VmsDeps {
  runtime: Runtime;
  approvals: DashboardApprovals;
  /** The config (levels); undefined: everyone who logs in is an operator. */
  config: Config | undefined;
}

type Listed = VmInfo & { shares?: VmShare[] };
interface DeviceVms { device: string; caller: Caller; manifest: Manifest; vms: Listed[]; error?: string; granted: Set<string> }

/** The person's caller on a device: the config's levels and the manifest's operators (a terminal link and no config: operator). */
export function callerOn(config: Config | undefined, actor: string, manifest: Manifest | undefined): Caller {
  if (config === undefined || actor.startsWith('cli:')) return { user: actor, level: 'operator' };
  return { user: actor, level: resolveLevel(actor, config, manifest) };
}

/** Whether the VMs page is for this person: staff, or someone a device grants vm.ls. */
export function mayUseVms(config: Config | undefined, rt: Pick<Runtime, 'devices'>, actor: string): boolean {
  if (config === undefined || actor.startsWith('cli:')) return true;
  return rt.devices.names().some((d) => {
    const m = rt.devices.get(d);
    const level = callerOn(config, actor, m).level;
    return isStaff(level) || (m !== undefined && grants(m.capabilities['vm.ls'], level));
  });
}

/** The page may show an action when the device enables the capability for the person's level. */
function granted(m: Manifest, level: Level | null): Set<string> {
  return new Set(ACTIONS.filter((a) => grants(m.capabilities[a], level)));
}

const noWaitForList: ApprovalHook = async () => ({ approved: false, by: 'dashboard', reason: 'the VMs page lists without waiting for an approval' });

function expiry(v: VmInfo, now: number): Html {
  if (v.expiresAt === null) return html`<span class="muted">never</span>`;
  const when = new Date(v.expiresAt).toISOString().replace('T', ' ').slice(0, 16);
  if (v.expiresAt <= now) return html`<time datetime="${new Date(v.expiresAt).toISOString()}" class="bad">expired ${ago(v.expiresAt, now)}</time>`;
  const h = (v.expiresAt - now) / 3_600_000;
  return html`<time datetime="${new Date(v.expiresAt).toISOString()}">${when}</time> <small class="muted">in ${h < 1 ? `${Math.round(h * 60)} min` : h < 48 ? `${Math.round(h)} h` : `${Math.round(h / 24)} d`}</small>`;
}

function limits(v: VmInfo): string {
  return [v.cpus !== null ? `${v.cpus} CPU` : '', v.memoryMb !== null ? `${v.memoryMb} MiB` : '', v.diskMb !== null ? `disk ${v.diskMb} MiB` : ''].filter(Boolean).join(' · ');
}

/** A one-button form for a verb on a VM (its other fields are the VM's name and, for unshare, the port). */
function verbButton(device: string, cap: Action, fields: Record<string, string>, label: string, s: DashboardSession, cls = ''): Html {
  return html`<form method="post" action="/vms/run" hx-post="/vms/run" hx-target="#vm-result" hx-swap="innerHTML" class="inline">
${csrfField(s)}<input type="hidden" name="_device" value="${device}"><input type="hidden" name="_capability" value="${cap}">${Object.entries(fields).map(([k, v]) => html`<input type="hidden" name="${k}" value="${v}">`)}<button type="submit" data-verb="${cap}"${cls ? html` class="${cls}"` : ''}>${label}</button></form>`;
}

function shareCell(d: DeviceVms, v: Listed, s: DashboardSession): Html {
  const shares = v.shares ?? [];
  if (shares.length === 0) return html`<span class="muted">—</span>`;
  return html`<ul class="shares">${shares.map((sh) => html`<li data-share="${sh.id}"><a href="/s/${sh.id}/">:${sh.port}</a> ${sh.public ? html`<span class="warn">public</span>` : html`<small>to ${[sh.owner, ...sh.grantees.filter((g) => g !== sh.owner)].join(', ')}</small>`}
${d.granted.has('vm.unshare') ? verbButton(d.device, 'vm.unshare', { name: v.name, port: String(sh.port) }, 'Unshare', s) : ''}</li>`)}</ul>`;
}

function vmRow(d: DeviceVms, v: Listed, s: DashboardSession, defs: Map<string, AnyCapability>, now: number): Html {
  const running = v.state === 'running';
  const ports = v.ports.filter((p) => p.host !== null).map((p) => `${p.guest}→${p.hostIp ?? '127.0.0.1'}:${p.host}`).join(', ');
  const shareDef = defs.get('vm.share');
  const key = `${d.device}-${v.name}`;
  return html`<tr data-vm="${v.name}" data-device="${d.device}">
<td data-label="VM"><strong>${v.name}</strong><br><small class="muted">${d.device}</small></td>
<td data-label="State"><span class="state state-${running ? 'online' : 'offline'}" data-state="${v.state}">${v.state}</span></td>
<td data-label="Image"><code>${v.image}</code></td>
<td data-label="Limits">${limits(v)}</td>
<td data-label="Expires">${expiry(v, now)}</td>
<td data-label="Owner">${v.owner || html`<span class="muted">?</span>`}</td>
<td data-label="Ports">${ports || html`<span class="muted">—</span>`}</td>
<td data-label="Shares">${shareCell(d, v, s)}</td>
<td data-label="Actions" class="actions">
${running && d.granted.has('vm.stop') ? verbButton(d.device, 'vm.stop', { name: v.name }, 'Stop', s) : ''}
${!running && d.granted.has('vm.start') ? verbButton(d.device, 'vm.start', { name: v.name }, 'Start', s) : ''}
${d.granted.has('vm.rm') ? verbButton(d.device, 'vm.rm', { name: v.name }, 'Remove', s, 'bad') : ''}
${shareDef && d.granted.has('vm.share') ? capForm(d.device, shareDef, s, { action: '/vms/run', fixed: { name: v.name }, idSuffix: key, summary: 'Share', target: '#vm-result' }) : ''}
</td></tr>`;
}

function deviceSection(d: DeviceVms, s: DashboardSession, defs: Map<string, AnyCapability>, now: number): Html {
  const newDef = defs.get('vm.new');
  const staff = isStaff(d.caller.level);
  return html`<section class="vm-device" id="vms-${d.device}" data-device="${d.device}">
<h2>${d.device} <small class="muted">${d.manifest.transport.kind}${staff ? '' : ` · your VMs (${d.caller.level})`}</small></h2>
${d.error ? html`<p class="notice bad" data-error>${d.error}</p>` : d.vms.length === 0 ? html`<p class="muted" data-empty>No VMs${staff ? '' : ' of yours'} on ${d.device}.</p>` : html`<div class="scroll"><table class="grid vms"><thead><tr><th>VM</th><th>State</th><th>Image</th><th>Limits</th><th>Expires</th><th>Owner</th><th>Ports</th><th>Shares</th><th>Actions</th></tr></thead>
<tbody>${d.vms.map((v) => vmRow(d, v, s, defs, now))}</tbody></table></div>`}
${newDef && d.granted.has('vm.new') ? capForm(d.device, newDef, s, { action: '/vms/run', idSuffix: d.device, summary: `New VM on ${d.device}`, target: '#vm-result' }) : ''}
</section>`;
}

function resultHtml(r: InvokeResult): Html {
  // The login-link DMs of a private share are the device bot's (bots/share-links.ts): from this page none is sent.
  const to = r.ok && r.capability === 'vm.share' ? ((r.result?.data as { to?: unknown } | undefined)?.to) : undefined;
  const out = (r.result?.stdout ?? '').split('\n').filter((l) => !(Array.isArray(to) && to.length && l.startsWith('a one-time login link goes to'))).join('\n');
  return html`<div class="notice ${r.ok ? 'ok' : 'bad'}" data-outcome="${r.ok ? 'ok' : 'error'}" data-capability="${r.capability}"><strong>${r.capability} on ${r.device}: ${r.ok ? 'ok' : `failed: ${r.error?.code ?? 'error'}`}</strong>${r.error ? html` — ${r.error.message}` : ''}${r.audit ? html` · audit #${r.audit.seq}` : ''}</div>${out ? html`<pre class="stdout">${out}</pre>` : ''}${Array.isArray(to) && to.length ? html`<p class="notice warn" data-no-dm>Shared with ${to.join(', ')}, but no login link was sent from here: the one-time links go out as DMs from the device bot when you share from chat (<code>!vm share … to=…</code>; sharing again keeps this link).</p>` : ''}`;
}

export function vmsRoutes(app: Hono<DashEnv>, deps: VmsDeps): void {
  const rt = deps.runtime;
  const runs = new DashboardRuns();
  const defs = (): Map<string, AnyCapability> => new Map(VM_VERBS.flatMap((v) => {
    const def = rt.capabilities.get(v.capability);
    return def ? [[v.capability, def] as [string, AnyCapability]] : [];
  }));

  /** Each device this person may list VMs on, listed through invoke (in parallel). */
  const collect = async (actor: string): Promise<DeviceVms[]> => {
    const names = rt.devices.names().slice().sort();
    const rows = await Promise.all(names.map(async (device): Promise<DeviceVms | undefined> => {
      const manifest = rt.devices.get(device);
      if (!manifest || manifest.capabilities['vm.ls'] === undefined) return undefined;
      const caller = callerOn(deps.config, actor, manifest);
      if (!grants(manifest.capabilities['vm.ls'], caller.level)) return undefined;
      const d: DeviceVms = { device, caller, manifest, vms: [], granted: granted(manifest, caller.level) };
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        rt.invoker.invoke({ device, capability: 'vm.ls', args: { all: true }, actor, caller, context: { surface: 'dashboard' } }, noWaitForList),
        new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), LIST_TIMEOUT_MS); timer.unref(); }),
      ]);
      clearTimeout(timer);
      if (r === 'timeout') d.error = `${device} did not answer within ${LIST_TIMEOUT_MS / 1000} s`;
      else if (!r.ok) d.error = r.error?.message ?? 'vm.ls failed';
      else d.vms = (r.result?.data ?? []) as Listed[];
      return d;
    }));
    return rows.filter((d): d is DeviceVms => d !== undefined);
  };

  const listHtml = async (s: DashboardSession): Promise<Html> => {
    const devices = await collect(s.actor);
    const now = Date.now();
    const d = defs();
    return html`<div id="vm-list" hx-get="/vms/list" hx-trigger="vms-changed from:body" hx-swap="outerHTML">${devices.length === 0
      ? html`<p class="muted" data-empty>No device lets you list VMs (its manifest enables <code>vm.ls</code> for your level).</p>`
      : devices.map((x) => deviceSection(x, s, d, now))}</div>`;
  };

  app.get('/vms', async (c) => {
    const s = sessionOf(c);
    return c.html(page({ title: 'VMs', session: s, nav: 'vms' }, html`<h1>VMs</h1>
<div id="vm-result" aria-live="polite"></div>
${await listHtml(s)}`));
  });

  app.get('/vms/list', async (c) => c.html(await listHtml(sessionOf(c))));

  app.post('/vms/run', async (c) => {
    const s = sessionOf(c);
    const form = await formOf(c);
    const device = form['_device'] ?? '';
    const name = form['_capability'] ?? '';
    const htmx = c.req.header('hx-request') !== undefined;
    const answer = async (body: Html, status: 200 | 202 | 400 | 404 = 200): Promise<Response> => {
      // htmx: the result goes into #vm-result and the list reloads (HX-Trigger); without JavaScript: the page again.
      if (htmx) return c.html(body, status, { 'HX-Trigger': 'vms-changed' });
      return c.html(page({ title: 'VMs', session: s, nav: 'vms' }, html`<h1>VMs</h1><div id="vm-result">${body}</div>${await listHtml(s)}`), status);
    };
    const manifest = rt.devices.get(device);
    if (!manifest) return answer(html`<p class="notice bad">No device named ${device.slice(0, 64)}.</p>`, 404);
    if (!(ACTIONS as readonly string[]).includes(name)) return answer(html`<p class="notice bad">The VMs page does not run ${name.slice(0, 64)}.</p>`, 400);
    const def = rt.capabilities.get(name);
    if (!def) return answer(html`<p class="notice bad">Unknown capability ${name.slice(0, 64)}.</p>`, 404);
    const parsed = argsFromForm(def, form);
    if (!parsed.ok) return answer(html`<p class="notice bad">${parsed.message}</p>`, 400);
    const caller = callerOn(deps.config, s.actor, manifest);
    const id = randomUUID();
    const first = await runs.start(id, { device, actor: s.actor }, deps.approvals.hook(device, def.name, s.actor), (hook) =>
      rt.invoker.invoke({ device, capability: def.name, args: parsed.args, actor: s.actor, caller, requestId: id, context: { surface: 'dashboard' } }, hook));
    if (first !== 'waiting') return answer(resultHtml(first));
    const where = isStaff(caller.level) ? html`on <a href="/devices/${device}">${device}'s page</a> or in the bot's DM` : 'by an operator';
    return answer(html`<div hx-get="/vms/runs/${id}" hx-trigger="every 1s" hx-swap="outerHTML" data-waiting><p class="notice warn">${def.name} on ${device} waits for approval ${where}. <a href="/vms/runs/${id}">Result</a></p></div>`, 202);
  });

  app.get('/vms/runs/:id', (c: Context<DashEnv>) => {
    const s = sessionOf(c);
    const run = runs.get(c.req.param('id') ?? '');
    const htmx = c.req.header('hx-request') !== undefined;
    if (!run || run.actor !== s.actor) return c.html(html`<p class="muted">No such run.</p>`, 404);
    if (!run.done) {
      const body = html`<div hx-get="/vms/runs/${c.req.param('id')}" hx-trigger="every 1s" hx-swap="outerHTML" data-waiting><p class="notice warn">Still waiting for approval.</p></div>`;
      return htmx ? c.html(body) : c.html(page({ title: 'VMs', session: s, nav: 'vms' }, body));
    }
    return htmx ? c.html(resultHtml(run.done), 200, { 'HX-Trigger': 'vms-changed' }) : c.html(page({ title: 'VMs', session: s, nav: 'vms' }, html`${resultHtml(run.done)}<p><a href="/vms">Back to the VMs</a></p>`));
  });
}
