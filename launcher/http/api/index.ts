/**
 * The `/v1` API surface: public /health and /openapi.json, then every other route behind the token
 * check and rate limits (auth.ts): exec and approvals (exec.ts), reads (read.ts), add-pc and revoke
 * (fleet.ts), workspaces (workspaces.ts), and POST /v1/commands/… derived from the command declarations
 * with the `http` surface (commands.ts). Shapes in schemas.ts, the document in openapi.ts.
 */
import { Hono } from 'hono';
import type { CliEntry } from '../../commands/context.js';
import { HTTP_COMMAND_TABLE } from '../../commands/http-table.js';
import type { HttpDeps, HttpEnv, HttpSurface } from '../types.js';
import { TokenStore } from '../tokens.js';
import { ApiApprovals } from './approvals.js';
import { authMiddleware, type ApiEnv } from './auth.js';
import { commandRoutes } from './commands.js';
import { execRoutes } from './exec.js';
import { fleetRoutes } from './fleet.js';
import { openApiDocument } from './openapi.js';
import { readRoutes } from './read.js';
import { workspaceRoutes } from './workspaces.js';

export interface ApiOptions {
  /** The command table the command routes derive from (default: the CLI's families, launcher/commands/http-table.ts); tests inject their own. */
  commands?: readonly CliEntry[];
}

export function createApi(deps: HttpDeps, opts: ApiOptions = {}): Hono<HttpEnv> {
  const commands = opts.commands ?? HTTP_COMMAND_TABLE;
  const app = new Hono<HttpEnv>();
  app.get('/health', (c) => c.json({ ok: true as const }, 200));
  app.get('/openapi.json', (c) => c.json(openApiDocument(commands), 200));
  const tokens = new TokenStore(deps.runtime.db, deps.runtime.audit);
  const approvals = new ApiApprovals(deps.supervisor, (deps.config?.approvals.timeout_s ?? 300) * 1000);
  const guarded = new Hono<ApiEnv>();
  guarded.use(authMiddleware(tokens, { authFailuresPerMin: deps.http.auth_failures_per_min }));
  guarded.route('/', execRoutes(deps.runtime, approvals));
  guarded.route('/', readRoutes(deps));
  guarded.route('/', fleetRoutes(deps));
  guarded.route('/', workspaceRoutes(deps));
  guarded.route('/', commandRoutes(deps, commands));
  app.route('/', guarded as unknown as Hono<HttpEnv>); // ApiEnv only adds `principal`, set by the middleware
  return app;
}

export function apiSurface(opts: ApiOptions = {}): HttpSurface {
  return { path: '/v1', create: (deps) => createApi(deps, opts) };
}
