/**
 * Dashboard sessions: the magic link's landing page, the session cookie, and the CSRF check.
 *
 * - GET /login?t=… shows a "Log in" button; only its POST spends the link. A link preview or a
 *   prefetch that GETs the URL does not burn it. Failed POSTs are limited per client address
 *   (`http.auth_failures_per_min`, then 429), like failed API authentications.
 * - The session cookie is HttpOnly, SameSite=Strict, Path=/ (Secure when the page came over https).
 * - Every state-changing request (any method but GET/HEAD) must carry the session's CSRF token, as the
 *   `X-CSRF-Token` header (htmx, from the page's hx-headers) or the `_csrf` form field (plain forms);
 *   otherwise 403 `{code:'forbidden'}`. SameSite=Strict alone would leave older browsers open.
 */
import type { Context, MiddlewareHandler } from 'hono';
import { deleteCookie, getCookie, setCookie } from 'hono/cookie';
import { html } from 'hono/html';
import type { Logger } from 'pino';
import { csrfMatches, DashboardLogins, SESSION_TTL_MS, type DashboardSession } from '../../../capabilities/dashboard-login.js';
import { RateLimiter, rateLimitHeaders } from '../api/rate-limit.js';
import { httpError } from '../errors.js';
import type { HttpEnv } from '../types.js';
import { page } from './layout.js';

export const COOKIE = 'meshpilot_session';

/** Paths that need no session: the login page and the static assets. */
const OPEN = /^\/(login|assets\/[a-z0-9.-]+)$/;

export type DashEnv = HttpEnv;

const sessions = new WeakMap<Request, { id: string; session: DashboardSession }>();

/** The request's session (set by the middleware: routes behind it always have one). */
export function sessionOf(c: Context<DashEnv>): DashboardSession {
  const s = sessions.get(c.req.raw);
  if (!s) throw new Error('no dashboard session on this request');
  return s.session;
}

/** Reads the form body once (urlencoded or multipart), as strings. */
export async function formOf(c: Context<DashEnv>): Promise<Record<string, string>> {
  const type = c.req.header('content-type') ?? '';
  if (!type.includes('application/x-www-form-urlencoded') && !type.includes('multipart/form-data')) return {};
  const body = await c.req.parseBody();
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(body)) if (typeof v === 'string') out[k] = v;
  return out;
}

/** After logging in, a link may lead to one shared VM (`/login?t=…&next=/s/<id>/`, the device bot's share DMs); nowhere else. */
const NEXT = /^\/s\/[0-9a-f]{32}\/$/;

/**
 * `mayUse(actor)`: may this session's person use the dashboard? A person a VM was shared with
 * (launcher/http/share.ts) logs in through the same links, but only staff see the dashboard; the rest
 * get 403 here and use their session for /s/<id>/ only. Default: everyone (no config: no such people).
 */
export function authMiddleware(logins: DashboardLogins, mayUse: (actor: string) => boolean = () => true): MiddlewareHandler<DashEnv> {
  return async (c, next) => {
    // The API (/v1, mounted before the dashboard) answers for itself, its 404s included.
    if (OPEN.test(c.req.path) || c.req.path === '/v1' || c.req.path.startsWith('/v1/')) return next();
    const id = getCookie(c, COOKIE);
    const session = logins.session(id);
    if (!session || !id) {
      if (c.req.method === 'GET' || c.req.method === 'HEAD') {
        return c.html(page({ title: 'Log in' }, html`<h1>Log in</h1><p>Open a one-time login link: run <code>meshpilot dashboard</code> on the launcher's machine, or send <code>!dashboard</code> to a device bot in Matrix.</p>`), 401);
      }
      return httpError(c, 'auth', 'log in first: open a one-time link from `meshpilot dashboard` or `!dashboard`');
    }
    if (!mayUse(session.actor) && c.req.path !== '/logout') {
      return httpError(c, 'forbidden', `${session.actor} may open what was shared with them (/s/…), not the dashboard`);
    }
    if (c.req.method !== 'GET' && c.req.method !== 'HEAD') {
      let token = c.req.header('x-csrf-token');
      if (!token) {
        const form = await formOf(c);
        token = form['_csrf'];
      }
      if (!csrfMatches(session, token)) return httpError(c, 'forbidden', 'missing or wrong CSRF token: reload the page and try again');
    }
    sessions.set(c.req.raw, { id, session });
    return next();
  };
}

/** Failed link logins per client address per minute (http.auth_failures_per_min), as for the API's tokens. */
export function loginRoutes(app: import('hono').Hono<DashEnv>, logins: DashboardLogins, log: Logger, failuresPerMin: number): void {
  const failures = new RateLimiter();
  app.get('/login', (c) => {
    const t = (c.req.query('t') ?? '').slice(0, 128);
    const next = NEXT.test(c.req.query('next') ?? '') ? c.req.query('next') ?? '' : '';
    return c.html(page({ title: 'Log in' }, html`<h1>Log in to meshpilot</h1>
<form method="post" action="/login" class="stack"><input type="hidden" name="t" value="${t}"><input type="hidden" name="next" value="${next}"><button type="submit" id="login">Log in</button></form>
<p class="muted"><small>The link works once and for 5 minutes.</small></p>`));
  });
  app.post('/login', async (c) => {
    const addr = c.get('clientAddress') ?? 'unknown';
    const pre = failures.take(addr, failuresPerMin, 60, { peek: true });
    if (!pre.ok) {
      return c.html(page({ title: 'Log in' }, html`<h1>Log in</h1><p class="bad">Too many failed logins from here: retry in ${pre.retryAfterS} s.</p>`), 429, rateLimitHeaders('dashboard-login-failures', failuresPerMin, 60, pre));
    }
    const form = await formOf(c);
    const r = logins.consumeLink(form['t'] ?? '');
    if (!r.ok) {
      failures.take(addr, failuresPerMin, 60);
      log.warn({ reason: r.reason, address: addr }, 'login link refused');
      const why = r.reason === 'used' ? 'This link was already used.' : r.reason === 'expired' ? 'This link has expired (links work for 5 minutes).' : 'This link is not valid.';
      return c.html(page({ title: 'Log in' }, html`<h1>Log in</h1><p class="bad">${why}</p><p>Get a new one: <code>meshpilot dashboard</code>, or <code>!dashboard</code> to a device bot.</p>`), 401);
    }
    log.info({ actor: r.session.actor, address: addr }, 'logged in');
    setCookie(c, COOKIE, r.sessionId, {
      httpOnly: true, sameSite: 'Strict', path: '/', maxAge: Math.floor(SESSION_TTL_MS / 1000),
      secure: new URL(c.req.url).protocol === 'https:',
    });
    return c.redirect(NEXT.test(form['next'] ?? '') ? form['next']! : '/', 303);
  });
  app.post('/logout', (c) => {
    const id = getCookie(c, COOKIE);
    if (id) logins.endSession(id);
    deleteCookie(c, COOKIE, { path: '/' });
    return c.redirect('/login', 303);
  });
}
