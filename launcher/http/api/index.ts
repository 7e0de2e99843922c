/**
 * The `/v1` API surface: public /health and /openapi.json, then every other route behind the token
 * check and rate limits (auth.ts): exec and approvals (exec.ts), reads (read.ts), add-pc and revoke
 * (fleet.ts), workspaces (workspaces.ts). Shapes in schemas.ts, the document in openapi.ts.
 */
import { Hono } from 'hono';
import type { HttpDeps, HttpEnv, HttpSurface } from '../types.js';
import { TokenStore } from '../tokens.js';
import { ApiApprovals } from './approvals.js';
import { authMiddleware, type ApiEnv } from './auth.js';
import { execRoutes } from './exec.js';
import { fleetRoutes } from './fleet.js';
import { openApiDocument } from './openapi.js';
import { readRoutes } from './read.js';
import { workspaceRoutes } from './workspaces.js';

export function createApi(deps: HttpDeps): Hono<HttpEnv> {
  const app = new Hono<HttpEnv>();
  app.get('/health', (c) => c.json({ ok: true as const }, 200));
  app.get('/openapi.json', (c) => c.json(openApiDocument(), 200));
  const tokens = new TokenStore(deps.runtime.db, deps.runtime.audit);
  const approvals = new ApiApprovals(deps.supervisor, (deps.config?.approvals.timeout_s ?? 300) * 1000);
  const guarded = new Hono<ApiEnv>();
  guarded.use(authMiddleware(tokens, { authFailuresPerMin: deps.http.auth_failures_per_min }));
  guarded.route('/', execRoutes(deps.runtime, approvals));
  guarded.route('/', readRoutes(deps));
  guarded.route('/', fleetRoutes(deps));
  guarded.route('/', workspaceRoutes(deps));
  app.route('/', guarded as unknown as Hono<HttpEnv>); // ApiEnv only adds `principal`, set by the middleware
  return app;
}

export function apiSurface(): HttpSurface {
  return { path: '/v1', create: (deps) => createApi(deps) };
}
