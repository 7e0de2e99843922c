/**
 * The web dashboard, mounted at `/` by launcher/http/surfaces.ts. Hono with server-rendered HTML
 * (hono/html: escaped by default) and htmx + its SSE extension for the live parts; assets from the
 * package (assets.ts). Every page but the login needs a session (auth.ts); every state change goes
 * through the same paths as chat and CLI: `Invoker.invoke()` with the operator as actor, the add-pc
 * engine, revoke.
 *
 *   /                 fleet grid, live over /events          fleet.ts
 *   /devices/<d>      capability forms, audit, approvals     device.ts, cap-form.ts, approvals.ts
 *   /vms              VMs of every device: list, new/stop/...  vms.ts (also for people below operator: their own VMs)
 *   /workspaces       the org tree, import (plan → apply), rm   workspaces.ts
 *   /add, /jobs/<id>  add a device, revoke, their progress   enroll.ts
 *   /audit            viewer and verify                      audit.ts
 *   /tokens           API tokens                             tokens.ts
 */
import { userInfo } from 'node:os';
import { Hono } from 'hono';
import { html } from 'hono/html';
import { streamSSE } from 'hono/streaming';
import { DashboardLogins, loginUrl } from '../../../capabilities/dashboard-login.js';
import { openDatabase } from '../../../capabilities/db.js';
import { isStaff, resolveLevel } from '../../../capabilities/levels.js';
import type { HttpDeps, HttpEnv, HttpSurface } from '../types.js';
import { DashboardApprovals } from './approvals.js';
import { assetRoutes } from './assets.js';
import { auditRoutes } from './audit.js';
import { authMiddleware, loginRoutes, sessionOf } from './auth.js';
import { deviceRoutes } from './device.js';
import { defaultEnroller, enrollRoutes, type Enroller } from './enroll.js';
import { FleetFeed, fleetRows, renderGrid } from './fleet.js';
import { page } from './layout.js';
import { tokenRoutes } from './tokens.js';
import { mayUseVms, vmsRoutes } from './vms.js';
import { workspacesRoutes } from './workspaces.js';

export interface DashboardOptions {
  /** add-pc / revoke (default: the real engine). */
  enroller?: Enroller;
  /** How often the live grid reads its sources (ms, default 100). */
  pollMs?: number;
  /** Approval timeout for dashboard runs (ms, default the config's, else 5 min). */
  approvalTimeoutMs?: number;
}

/** The actor of a link printed on this machine's terminal. */
export function cliActor(): string {
  let user = 'unknown';
  try {
    user = userInfo().username || user;
  } catch { /* no passwd entry (containers) */ }
  return `cli:${user.replace(/\s+/g, '_').slice(0, 64)}`;
}

/** A one-time login link for `actor` on the server at `baseUrl`. */
export function createLoginLink(deps: Pick<HttpDeps, 'runtime'>, baseUrl: string, actor = cliActor()): string {
  return loginUrl(baseUrl, new DashboardLogins(deps.runtime.db).createLink(actor));
}

export function dashboardSurface(opts: DashboardOptions = {}): HttpSurface {
  const closers: Array<() => void> = [];
  return {
    path: '/',
    create(deps: HttpDeps): Hono<HttpEnv> {
      const rt = deps.runtime;
      // The runtime opened meshpilot.db before these modules registered their tables (approvals, health):
      // opening it once more applies the named migrations registered since.
      openDatabase(rt.home.db).close();
      const log = deps.logger.child({ component: 'dashboard' });
      const logins = new DashboardLogins(rt.db);
      const timeoutMs = opts.approvalTimeoutMs ?? (deps.config ? deps.config.approvals.timeout_s * 1000 : 5 * 60_000);
      const approvals = new DashboardApprovals(rt.db, timeoutMs, deps.supervisor);
      const feed = new FleetFeed({ db: rt.db, devices: rt.devices, supervisor: deps.supervisor }, opts.pollMs ?? 100);
      const app = new Hono<HttpEnv>();
      assetRoutes(app);
      // With a config, only staff (CLI users, operators and admins) use the dashboard; people a VM was shared with only open /s/<id>/.
      const cfg = deps.config;
      const mayUse = cfg === undefined ? undefined : (actor: string): boolean =>
        actor.startsWith('cli:') || isStaff(resolveLevel(actor, cfg)) || rt.devices.names().some((d) => rt.devices.get(d)?.operators.includes(actor));
      // The VMs page, before the staff-only middleware: people below operator see and act on their own VMs there.
      const vmsAuth = authMiddleware(logins, (actor) => mayUseVms(cfg, rt, actor));
      app.use('/vms/*', vmsAuth); // Hono's /vms/* matches /vms too
      vmsRoutes(app, { runtime: rt, approvals, config: cfg });
      app.use(authMiddleware(logins, mayUse));
      loginRoutes(app, logins, log, deps.http.auth_failures_per_min);

      app.get('/', (c) => {
        const s = sessionOf(c);
        return c.html(page({ title: 'Fleet', session: s, nav: 'fleet' }, html`<h1>Fleet</h1>${renderGrid(fleetRows({ db: rt.db, devices: rt.devices, supervisor: deps.supervisor }))}`));
      });

      app.get('/events', (c) => streamSSE(c, async (stream) => {
        let wake: (() => void) | undefined;
        const pending: string[] = [];
        const off = feed.subscribe((rows) => { pending.push(rows); wake?.(); });
        stream.onAbort(() => wake?.());
        try {
          // A first push: the grid as of now (the page may be older than the connection).
          pending.push(await feed.render());
          while (!stream.aborted) {
            while (pending.length) await stream.writeSSE({ event: 'grid', data: pending.splice(0, pending.length).pop()! });
            let timer: NodeJS.Timeout | undefined;
            await new Promise<void>((resolve) => {
              wake = resolve;
              // A comment line every 25 s keeps proxies and idle timers from closing the stream.
              timer = setTimeout(resolve, 25_000);
              timer.unref();
            });
            clearTimeout(timer);
            if (!pending.length && !stream.aborted) await stream.write(': keep-alive\n\n');
          }
        } finally {
          off();
        }
      }));

      deviceRoutes(app, { runtime: rt, approvals });
      const jobs = enrollRoutes(app, opts.enroller ?? defaultEnroller, rt.home.root, log);
      auditRoutes(app, rt);
      tokenRoutes(app, rt);
      workspacesRoutes(app, deps);
      closers.push(() => feed.stop(), () => approvals.close(), () => jobs.close());
      return app;
    },
    close() {
      for (const fn of closers.splice(0)) fn();
    },
  };
}
