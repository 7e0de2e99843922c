/**
 * The workspaces page (`/workspaces`, issue 18): the org tree from the workspace engine
 * (launcher/workspaces listWorkspaces, what `meshpilot workspace ls` and `!org` show) with each
 * workspace's state, its bot, its device, home, model, parent and owner, and links to its device page
 * and its audit; an import form (paste the YAML or pick a file, merge or reconcile) → the plan preview
 * (the tree of the CLI's dry run) → Apply, which plans again and, when the org changed since the
 * preview, shows the new plan instead of applying it; the import's steps and summary; and rm with a
 * confirmation that names the descendants removed first. Everything runs through the same engine as
 * the CLI and the operator room, with the logged-in operator as actor (audited as such). A template
 * here is one file: `!include` cannot come with it (org-upload.ts).
 */
import { createHash } from 'node:crypto';
import type { Context, Hono } from 'hono';
import { html } from 'hono/html';
import { TEMPLATE_LIMITS } from '../../../capabilities/workspace/schema.js';
import { WorkspaceStore } from '../../../capabilities/workspace/store.js';
import { stageTemplate } from '../../org-upload.js';
import { ImportModeSchema } from '../../workspaces/args.js';
import type { ImportProgress, WorkspaceListing } from '../../workspaces/index.js';
import { workspaceOptions } from '../api/workspaces.js';
import type { HttpDeps } from '../types.js';
import { sessionOf, type DashEnv } from './auth.js';
import { csrfField, page, type Html } from './layout.js';

const NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;
const hashOf = (text: string): string => createHash('sha256').update(text).digest('hex');

interface ImportForm { yaml: string; filename: string; mode: 'merge' | 'reconcile'; shown?: string }

/** The form's fields: the pasted YAML, or the chosen file's text (bounded); the mode. */
async function importForm(c: Context<DashEnv>): Promise<{ ok: true; form: ImportForm } | { ok: false; message: string }> {
  const type = c.req.header('content-type') ?? '';
  if (!type.includes('application/x-www-form-urlencoded') && !type.includes('multipart/form-data')) return { ok: false, message: 'send the form' };
  const body = await c.req.parseBody();
  const str = (k: string): string => (typeof body[k] === 'string' ? body[k] : '');
  const mode = ImportModeSchema.safeParse(str('mode') || 'merge');
  if (!mode.success) return { ok: false, message: 'mode: merge or reconcile' };
  let yaml = str('yaml');
  let filename = str('filename') || 'org.yaml';
  const file = body['file'];
  if (file instanceof File && file.size > 0) {
    if (file.size > TEMPLATE_LIMITS.fileBytes) return { ok: false, message: `${file.name}: ${file.size} bytes; an org template file may have at most ${TEMPLATE_LIMITS.fileBytes}` };
    yaml = await file.text();
    filename = file.name || filename;
  }
  if (!yaml.trim()) return { ok: false, message: 'paste an org template or choose its file' };
  return { ok: true, form: { yaml: yaml.replace(/\r\n/g, '\n'), filename, mode: mode.data, ...(str('shown') ? { shown: str('shown') } : {}) } };
}

export function workspacesRoutes(app: Hono<DashEnv>, deps: HttpDeps): void {
  const rt = deps.runtime;
  const opts = (c: Context<DashEnv>) => workspaceOptions(deps, sessionOf(c).actor);

  const tree = async (c: Context<DashEnv>): Promise<Html> => {
    const { listWorkspaces } = await import('../../workspaces/index.js');
    const l = listWorkspaces(opts(c));
    const s = sessionOf(c);
    const models = new Map(new WorkspaceStore(rt.db).list().map((r) => [r.name, r.model]));
    const node = (n: WorkspaceListing): Html => html`<li data-workspace="${n.name}">
<div class="ws"><span><strong>${n.name}</strong> <span class="state state-${n.state.replace(/\s+/g, '-')}">${n.state}</span>${n.bot ? html` <span class="muted">bot ${n.bot}</span>` : ''}</span>
<small class="muted">on <a href="/devices/${n.device}">${n.device}</a> · home <code>${n.home}</code> · model ${models.get(n.name) ?? 'default'} · reports to ${n.parent ?? '—'} · ${n.template ? `template ${n.template}` : 'by hand'}</small>
<span class="links">${rt.devices.listing(n.name) ? html`<a href="/devices/${n.name}">device page</a> · ` : ''}<a href="/audit?device=${n.name}">audit</a> · <a href="/workspaces/${n.name}/rm">remove…</a></span></div>
${n.children.length ? html`<ul>${n.children.map(node)}</ul>` : ''}</li>`;
    return html`<p class="muted">${l.count} workspace${l.count === 1 ? '' : 's'}${l.launcher ? '' : ' · no launcher is running here: bots start with meshpilot up'}</p>
${l.count === 0 ? html`<p class="muted" id="org-empty">No workspaces yet: import an org template below.</p>` : html`<ul class="org" id="org">${l.roots.map(node)}</ul>`}
<h2>Import an org template</h2>
<form method="post" action="/workspaces/plan" enctype="multipart/form-data" class="stack" id="import">${csrfField(s)}
<label>Template (YAML)<textarea name="yaml" class="yaml" rows="10" maxlength="${TEMPLATE_LIMITS.fileBytes}" placeholder="name: home-lab&#10;defaults: { device: server, capabilities: [fs.read] }&#10;workspaces:&#10;  - name: ops-lead&#10;    role: Keeps the lab healthy.&#10;    home: ~/workspaces/ops-lead"></textarea><small>one file; !include works only with <code>meshpilot workspace import &lt;dir&gt;</code></small></label>
<label>…or its file<input type="file" name="file" accept=".yaml,.yml,application/yaml,text/yaml"></label>
<label>Mode<select name="mode"><option value="merge">merge: add and update</option><option value="reconcile">reconcile: also remove what this template created and no longer names</option></select></label>
<button type="submit">Preview the plan</button>
</form>`;
  };

  const orgPage = async (c: Context<DashEnv>, notice?: Html, status: 200 | 400 | 409 | 500 = 200): Promise<Response> =>
    c.html(page({ title: 'Workspaces', session: sessionOf(c), nav: 'workspaces' }, html`<h1>Workspaces</h1>${notice ?? ''}${await tree(c)}`), status);

  /** The plan of a form's template, and the Apply form (or why there is nothing to apply). */
  const preview = async (c: Context<DashEnv>, f: ImportForm, notice?: Html): Promise<Response> => {
    const s = sessionOf(c);
    const st = stageTemplate(f.yaml, f.filename);
    if (!st.ok) return orgPage(c, html`<p class="notice bad" id="problems">✗ ${st.message}</p>`, 400);
    try {
      const { planImport } = await import('../../workspaces/index.js');
      const p = planImport(st.staged.file, { ...opts(c), mode: f.mode });
      if (!p.ok) {
        return orgPage(c, html`<div class="notice bad" id="problems"><p>✗ ${st.staged.filename}: ${p.issues.length} problem${p.issues.length === 1 ? '' : 's'}, nothing planned:</p><pre><code>${p.issues.slice(0, 100).join('\n')}</code></pre></div>`, 400);
      }
      const canApply = p.plan.blocked.length === 0 && !p.plan.noop;
      const body = html`<h1>Workspaces: plan of ${st.staged.filename}</h1>${notice ?? ''}
${p.closed.map((l) => html`<p class="notice">${l}</p>`)}
<pre id="plan"><code>${p.text}</code></pre>
${canApply ? html`<form method="post" action="/workspaces/import" class="stack" id="apply">${csrfField(s)}
<input type="hidden" name="mode" value="${f.mode}"><input type="hidden" name="filename" value="${st.staged.filename}"><input type="hidden" name="shown" value="${hashOf(p.text)}">
<textarea name="yaml" hidden>${f.yaml}</textarea>
${p.plan.removals.length ? html`<p class="notice warn">This removes ${p.plan.removals.length} workspace${p.plan.removals.length === 1 ? '' : 's'}, children first: ${p.plan.removals.join(', ')}.</p>` : ''}
<button type="submit">Apply (${f.mode})</button> <a href="/workspaces">cancel</a>
</form>` : html`<p class="notice" id="no-apply">${p.plan.blocked.length ? 'The plan is blocked: nothing can be applied.' : 'Nothing to do: the workspaces match the template.'} <a href="/workspaces">Back</a></p>`}`;
      return c.html(page({ title: 'Workspaces: plan', session: s, nav: 'workspaces' }, body), p.plan.blocked.length ? 409 : 200);
    } finally {
      st.staged.remove();
    }
  };

  app.get('/workspaces', (c) => orgPage(c));

  app.post('/workspaces/plan', async (c) => {
    const f = await importForm(c);
    if (!f.ok) return orgPage(c, html`<p class="notice bad" id="problems">✗ ${f.message}</p>`, 400);
    return preview(c, f.form);
  });

  app.post('/workspaces/import', async (c) => {
    const f = await importForm(c);
    if (!f.ok) return orgPage(c, html`<p class="notice bad" id="problems">✗ ${f.message}</p>`, 400);
    const st = stageTemplate(f.form.yaml, f.form.filename);
    if (!st.ok) return orgPage(c, html`<p class="notice bad" id="problems">✗ ${st.message}</p>`, 400);
    try {
      const { applyImport, planImport } = await import('../../workspaces/index.js');
      const o = opts(c);
      const p = planImport(st.staged.file, { ...o, mode: f.form.mode });
      if (!p.ok || hashOf(p.text) !== f.form.shown) {
        // The org (or a device) changed since the preview: show the plan as it is now; nothing applied.
        return preview(c, f.form, html`<p class="notice warn" id="changed">⚠ The org changed since the preview: nothing was applied. This is the plan now.</p>`);
      }
      const steps: string[] = [];
      const r = await applyImport(p, o, (e: ImportProgress) => {
        if (e.type === 'info') steps.push(e.message);
        else if (e.type === 'start') steps.push(`${e.template} (${e.mode}): ${e.total} step${e.total === 1 ? '' : 's'}`);
        else if (e.status !== 'running') steps.push(`[${e.index}/${e.total}] ${e.action} ${e.name}: ${e.status}${e.ms === undefined ? '' : ` (${(e.ms / 1000).toFixed(1)} s)`}${e.message ? ` — ${e.message}` : ''}`);
      });
      const failures = r.failures.filter((x) => x.undone.length || x.leftovers.length);
      return orgPage(c, html`<div class="notice ${r.ok ? 'ok' : 'bad'}" id="result"><p><strong>${r.ok ? '✓' : '✗'} ${r.message}</strong></p>
${steps.length ? html`<ol class="steps" id="steps">${steps.map((l) => html`<li>${l}</li>`)}</ol>` : ''}
${failures.length ? html`<ul>${failures.map((x) => html`<li>${x.name}: ${x.undone.length ? `undone: ${x.undone.join(', ')}` : ''}${x.leftovers.length ? ` left: ${x.leftovers.join('; ')}` : ''}</li>`)}</ul>` : ''}</div>`, r.ok ? 200 : r.status === 'partly done' ? 500 : 409);
    } finally {
      st.staged.remove();
    }
  });

  app.get('/workspaces/:name/rm', async (c) => {
    const name = c.req.param('name');
    if (!NAME.test(name)) return orgPage(c, html`<p class="notice bad">Not a workspace name.</p>`, 400);
    const { removalOrder } = await import('../../workspaces/index.js');
    const names = removalOrder(name, opts(c));
    const others = names.filter((n) => n !== name);
    const s = sessionOf(c);
    return c.html(page({ title: `Remove ${name}`, session: s, nav: 'workspaces' }, html`<h1>Remove ${name}</h1>
<p class="notice warn" id="descendants">${others.length
    ? html`This also removes its ${others.length} descendant${others.length === 1 ? '' : 's'}, first: <strong>${others.join(', ')}</strong>.`
    : 'It has no descendants.'} Their bots stop, their Matrix accounts are deactivated, manifests and keys are archived; homes are kept unless you purge them.</p>
<form method="post" action="/workspaces/${name}/rm" class="stack" id="rm">${csrfField(s)}
<label>Type <code>${name}</code> to confirm<input name="confirm" required autocomplete="off" pattern="${name}"></label>
<label><span><input type="checkbox" name="purge" value="1"> also delete the files in ${names.length === 1 ? 'its home' : 'their homes'}</span></label>
<button type="submit">Remove ${names.length} workspace${names.length === 1 ? '' : 's'}</button> <a href="/workspaces">cancel</a>
</form>`));
  });

  app.post('/workspaces/:name/rm', async (c) => {
    const name = c.req.param('name');
    const body = await c.req.parseBody();
    if (!NAME.test(name) || body['confirm'] !== name) return orgPage(c, html`<p class="notice bad" id="result">✗ Not removed: type the workspace's name to confirm.</p>`, 400);
    const { removeWorkspace } = await import('../../workspaces/index.js');
    const r = await removeWorkspace(name, { ...opts(c), ...(body['purge'] === '1' ? { purge: true } : {}) });
    return orgPage(c, html`<p class="notice ${r.ok ? 'ok' : 'bad'}" id="result">${r.ok ? '✓' : '✗'} ${r.message}</p>`, r.ok ? 200 : 500);
  });
}
