/**
 * What the HTTP surfaces (the `/v1` API in launcher/http/api/, the dashboard in launcher/http/dashboard/)
 * are built from: the runtime, the config when there is one, the supervisor when bots run, a logger.
 * A surface is a Hono app mounted at a path by launcher/http/server.ts.
 */
import type { Hono } from 'hono';
import type { Logger } from 'pino';
import type { Config, HttpConfig } from '../../capabilities/config.js';
import type { Runtime } from '../runtime-core.js';
import type { Supervisor } from '../supervisor.js';

export interface HttpDeps {
  runtime: Runtime;
  /** The parsed config.yaml; undefined in the embedded default (no Matrix configured). */
  config?: Config;
  http: HttpConfig;
  /** The device bots' supervisor; undefined when no bots run (embedded default, tests). */
  supervisor?: Supervisor;
  logger: Logger;
  /** Tests only: an add-pc fault to inject (launcher/enroll/types.ts AddPcOptions.fault). */
  addPcFault?: string;
  /** The server's own base URL (`http://127.0.0.1:7400`), known once it listens. */
  baseUrl(): string;
}

/** Hono's variables set by the server's middleware, readable by every surface. */
export interface HttpVars {
  /** The request's id (also the `X-Request-Id` answer header). */
  requestId: string;
  /** The client's address (for per-address limits). */
  clientAddress: string;
}
export type HttpEnv = { Variables: HttpVars };

export interface HttpSurface {
  /** Where it is mounted: `/v1`, `/`. */
  path: string;
  create(deps: HttpDeps): Hono<HttpEnv> | Promise<Hono<HttpEnv>>;
  /** Called when the server stops (timers, SSE streams). */
  close?(): Promise<void> | void;
}
