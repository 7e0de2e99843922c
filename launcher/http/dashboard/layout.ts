/**
 * The dashboard's page shell: one stylesheet (served from the package, see assets.ts), htmx and its SSE
 * extension, the navigation, and the CSRF token htmx sends as `X-CSRF-Token` with every request.
 * Pages are whole HTML documents: with JavaScript off the read-only pages read the same, and forms post
 * and answer with a page.
 */
import { html, raw } from 'hono/html';
import type { HtmlEscapedString } from 'hono/utils/html';
import type { DashboardSession } from '../../../capabilities/dashboard-login.js';

export type Html = HtmlEscapedString | Promise<HtmlEscapedString>;

export interface PageOptions {
  title: string;
  session?: DashboardSession;
  /** Which navigation entry is the current page. */
  nav?: 'fleet' | 'vms' | 'workspaces' | 'add' | 'audit' | 'tokens';
}

const NAV: Array<[NonNullable<PageOptions['nav']>, string, string]> = [
  ['fleet', '/', 'Fleet'],
  ['vms', '/vms', 'VMs'],
  ['workspaces', '/workspaces', 'Workspaces'],
  ['add', '/add', 'Add a device'],
  ['audit', '/audit', 'Audit'],
  ['tokens', '/tokens', 'API tokens'],
];

export function page(opts: PageOptions, body: Html): Html {
  const s = opts.session;
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${opts.title} · meshpilot</title>
<link rel="stylesheet" href="/assets/dashboard.css">
<script src="/assets/htmx.min.js" defer></script>
<script src="/assets/sse.js" defer></script>
</head>
<body${s ? raw(` hx-headers='${JSON.stringify({ 'X-CSRF-Token': s.csrf }).replace(/'/g, '&#39;')}'`) : ''}>
<header>
<a class="brand" href="/">meshpilot</a>
${s ? html`<nav>${NAV.map(([k, href, label]) => html`<a href="${href}"${k === opts.nav ? raw(' aria-current="page"') : ''}>${label}</a>`)}</nav>
<form method="post" action="/logout" class="who"><input type="hidden" name="_csrf" value="${s.csrf}"><span>${s.actor}</span> <button type="submit">Log out</button></form>` : ''}
</header>
<main>
${body}
</main>
</body>
</html>`;
}

/** The hidden field that carries the CSRF token in forms (for browsers without JavaScript). */
export function csrfField(s: DashboardSession): Html {
  return html`<input type="hidden" name="_csrf" value="${s.csrf}">`;
}

/** `3 s ago`, `5 min ago`, `2 h ago`, `4 d ago`. */
export function ago(ms: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 48 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export const CSS = `
:root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --muted: #6e7781; --line: #d0d7de; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; padding: .6rem 1rem; border-bottom: 1px solid var(--line); }
header .brand { font-weight: 700; text-decoration: none; color: inherit; }
header nav { display: flex; flex-wrap: wrap; gap: .25rem .9rem; }
header nav a[aria-current] { font-weight: 700; }
header .who { margin-left: auto; display: flex; gap: .5rem; align-items: center; color: var(--muted); }
main { padding: 1rem; max-width: 72rem; margin: 0 auto; }
h1 { font-size: 1.35rem; margin: .2rem 0 1rem; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .85rem; }
.state { display: inline-block; padding: .05rem .5rem; border-radius: 1rem; font-size: .85rem; font-weight: 600; border: 1px solid currentColor; }
.state-online, .ok { color: var(--ok); }
.state-stale, .state-unknown, .warn { color: var(--warn); }
.state-offline, .state-unreachable, .state-corrupted, .state-revoked, .bad { color: var(--bad); }
.muted { color: var(--muted); }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .85rem; }
pre { white-space: pre-wrap; word-break: break-word; padding: .6rem; border: 1px solid var(--line); border-radius: .3rem; max-height: 24rem; overflow: auto; }
form.cap, form.stack { display: grid; gap: .5rem; max-width: 36rem; }
label { display: grid; gap: .15rem; font-weight: 600; font-size: .9rem; }
label small { font-weight: 400; color: var(--muted); }
input, select, button, textarea { font: inherit; padding: .35rem .5rem; }
button { cursor: pointer; }
details { margin: .5rem 0; border: 1px solid var(--line); border-radius: .3rem; padding: .4rem .6rem; }
summary { cursor: pointer; font-weight: 600; }
ol.steps { padding-left: 1.5rem; }
.notice { padding: .6rem .8rem; border: 1px solid var(--line); border-radius: .3rem; margin: .5rem 0; }
form.inline { display: inline; }
ul.shares { margin: 0; padding-left: 1rem; }
td.actions details { margin: .3rem 0 0; }
ul.org, ul.org ul { list-style: none; padding-left: 1.2rem; margin: .2rem 0; }
ul.org { padding-left: 0; }
ul.org .ws { display: grid; gap: .1rem; padding: .3rem 0; border-bottom: 1px solid var(--line); }
textarea.yaml { font: 400 .85rem/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
.state-live { color: var(--ok); }
.state-pending, .state-removing { color: var(--warn); }
.state-failed { color: var(--bad); }
.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-bottom: .8rem; }
/* Phones: the grid becomes one card per device. */
@media (max-width: 640px) {
  table.grid thead { display: none; }
  table.grid, table.grid tbody, table.grid tr, table.grid td { display: block; width: 100%; }
  table.grid tr { border: 1px solid var(--line); border-radius: .4rem; margin-bottom: .6rem; padding: .3rem .2rem; }
  table.grid td { border: 0; padding: .15rem .5rem; }
  table.grid td[data-label]::before { content: attr(data-label) ": "; color: var(--muted); font-size: .85rem; }
  .scroll { overflow-x: auto; }
}
`;
