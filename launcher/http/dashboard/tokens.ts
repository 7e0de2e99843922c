/**
 * The tokens page: the API's tokens (launcher/http/tokens.ts TokenStore) listed with prefix, scopes,
 * rate, expiry and last use; created from a form whose fields are the `token create` command's
 * declaration (launcher/commands/token.ts), validated by its zod schema, the token shown once; revoked
 * with a button. Creating and revoking are audited in the `_api` chain with the logged-in operator.
 */
import type { Context, Hono } from 'hono';
import { html } from 'hono/html';
import { validateArgs, type AnyCommand } from '../../../capabilities/commands.js';
import { TOKEN_COMMANDS } from '../../commands/token.js';
import type { Runtime } from '../../runtime-core.js';
import { TokenStore, type TokenRecord } from '../tokens.js';
import type { DashEnv } from './auth.js';
import { formOf, sessionOf } from './auth.js';
import { csrfField, page, type Html } from './layout.js';

const CREATE = TOKEN_COMMANDS.find((c) => c.name === 'token create') as AnyCommand<unknown>;
const iso = (ms: number | null): string => (ms === null ? 'never' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z').replace('T', ' '));

export function tokenRoutes(app: Hono<DashEnv>, rt: Runtime): void {
  const store = new TokenStore(rt.db, rt.audit);

  const tokensPage = (c: Context<DashEnv>, notice?: Html, status: 200 | 400 = 200): Response | Promise<Response> => {
    const s = sessionOf(c);
    const now = Date.now();
    const list: TokenRecord[] = store.list();
    return c.html(page({ title: 'API tokens', session: s, nav: 'tokens' }, html`<h1>API tokens</h1>
${notice ?? ''}
<div class="scroll"><table id="tokens"><thead><tr><th>Name</th><th>Prefix</th><th>Devices</th><th>Capabilities</th><th>Rate</th><th>Expires</th><th>Last used</th><th></th></tr></thead><tbody>
${list.length === 0 ? html`<tr><td colspan="8" class="muted">No API tokens.</td></tr>` : list.map((t) => html`<tr data-token="${t.name}"><td>${t.name}</td><td><code>mp_${t.prefix}…</code></td><td>${t.devices.join(', ')}</td><td>${t.capabilities.join(', ')}</td><td>${t.rate.count}/${t.rate.windowS} s</td><td class="${t.expiresAt <= now ? 'bad' : ''}">${iso(t.expiresAt)}</td><td>${iso(t.lastUsedAt)}</td>
<td><form method="post" action="/tokens/${t.name}/revoke">${csrfField(s)}<button type="submit">Revoke</button></form></td></tr>`)}
</tbody></table></div>
<h2>Create a token</h2>
<form method="post" action="/tokens" class="stack">${csrfField(s)}
<label>Name<input name="name" required maxlength="48" pattern="[a-z0-9][a-z0-9._-]{0,47}" placeholder="deploy"><small>the audit actor is api:&lt;name&gt;</small></label>
<label>Devices<input name="device" required maxlength="4096" placeholder="web-*,db1"><small>globs, comma-separated</small></label>
<label>Capabilities<input name="capability" required maxlength="4096" placeholder="sys.*,svc.status"><small>globs; fleet.add-pc / fleet.revoke for the write endpoints</small></label>
<label>Expires in<input name="expires" required maxlength="5" value="30d"><small>30d, 12h, 8w, 1y (at most 1 year)</small></label>
<label>Rate<input name="rate" maxlength="20" value="60/min"><small>60/min, 5/s, 1000/h</small></label>
<button type="submit">Create</button>
</form>`), status);
  };

  app.get('/tokens', (c) => tokensPage(c));

  app.post('/tokens', async (c) => {
    const s = sessionOf(c);
    const form = await formOf(c);
    const raw: Record<string, unknown> = {};
    for (const k of ['name', 'device', 'capability', 'expires', 'rate']) if (form[k]) raw[k] = form[k];
    const v = validateArgs(CREATE, raw);
    if (!v.ok) return tokensPage(c, html`<p class="notice bad">${v.issue.arg || 'arguments'}: ${v.issue.message || 'missing'}</p>`, 400);
    const a = v.args as { name: string; device: string[]; capability: string[]; expires: number; rate: { count: number; windowS: number } };
    let created;
    try {
      created = store.create({ name: a.name, devices: a.device, capabilities: a.capability, expiresInS: a.expires, rate: a.rate, by: s.actor });
    } catch (err) {
      return tokensPage(c, html`<p class="notice bad">${err instanceof Error ? err.message : String(err)}</p>`, 400);
    }
    return tokensPage(c, html`<div class="notice ok" id="new-token"><p>Token <strong>${created.record.name}</strong> created. It is shown this once (only its hash is stored): copy it now.</p><pre><code>${created.token}</code></pre><p class="muted"><small>Use it as <code>Authorization: Bearer &lt;token&gt;</code>.</small></p></div>`);
  });

  app.post('/tokens/:name/revoke', (c) => {
    const name = c.req.param('name');
    const ok = store.revoke(name, sessionOf(c).actor);
    return tokensPage(c, ok ? html`<p class="notice ok">Revoked ${name}: its next request gets 401.</p>` : html`<p class="notice bad">No live token named ${name}.</p>`, ok ? 200 : 400);
  });
}
