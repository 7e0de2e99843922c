/**
 * Starting the HTTP server from `meshpilot up` (launcher/up.ts):
 * - beside the bots when Matrix is configured (a listen failure is reported, the bots run anyway);
 * - alone in the embedded default: no Matrix config, so `npm start` keeps running and serves the
 *   dashboard and the API for this machine (device `local`, SQLite, a browser) until Ctrl-C.
 * It prints the URL; the dashboard adds its one-time login link after it.
 */
import { HttpConfigSchema, loadConfig, type Config, type HttpConfig } from '../../capabilities/config.js';
import { toMpError } from '../../capabilities/errors.js';
import { logger } from '../../capabilities/log.js';
/** The terminal `up` prints to (launcher/commands/context.ts CliIo). */
interface CliIo { out(text: string): void; err(text: string): void }
import type { Runtime } from '../runtime-core.js';
import type { Supervisor } from '../supervisor.js';
import { isLoopback, parseListen, startHttpServer, type RunningHttpServer } from './server.js';
import { httpSurfaces } from './surfaces.js';

/** http settings without a config file: the defaults, with MESHPILOT_HTTP_LISTEN applied as config.ts does. */
export function httpConfigWithoutFile(env: NodeJS.ProcessEnv = process.env): HttpConfig {
  return HttpConfigSchema.parse(env['MESHPILOT_HTTP_LISTEN'] ? { listen: env['MESHPILOT_HTTP_LISTEN'] } : {});
}

/** The http settings `up` uses: config.yaml's when it loads, else the defaults. */
export function resolveHttpConfig(configFile: string, env: NodeJS.ProcessEnv = process.env): HttpConfig {
  const c = loadConfig(configFile, env);
  return c.ok ? c.config.http : httpConfigWithoutFile(env);
}

async function start(rt: Runtime, io: CliIo, http: HttpConfig, config?: Config, supervisor?: Supervisor): Promise<RunningHttpServer> {
  const server = await startHttpServer({
    runtime: rt, http, logger: logger('http'),
    ...(config ? { config } : {}), ...(supervisor ? { supervisor } : {}),
  }, await httpSurfaces());
  const exposed = isLoopback(parseListen(http.listen).host) ? '' : ` (listening on ${http.listen}: reachable from the network, as http.listen says)`;
  io.out(`web: dashboard ${server.url}/ · API ${server.url}/v1${exposed}\n`);
  // The dashboard's one-time login link for the operator at this terminal (`meshpilot dashboard` prints another).
  const { createLoginLink } = await import('./dashboard/index.js');
  io.out(`web: log in (one-time link, 5 min): ${createLoginLink({ runtime: rt }, server.url)}\n`);
  return server;
}

export async function startBeside(rt: Runtime, io: CliIo, config: Config, supervisor: Supervisor): Promise<RunningHttpServer | undefined> {
  try {
    return await start(rt, io, config.http, config, supervisor);
  } catch (err) {
    io.out(`web: not started: ${toMpError(err).message} (device bots run anyway)\n`);
    return undefined;
  }
}

/** Serves until `until` resolves (default: SIGINT / SIGTERM). Returns the exit code: 0, or 2 when it cannot listen. */
export async function serveEmbedded(rt: Runtime, io: CliIo, until?: Promise<void>): Promise<number> {
  let server: RunningHttpServer;
  try {
    server = await start(rt, io, resolveHttpConfig(rt.home.config));
  } catch (err) {
    io.err(`${toMpError(err).message}\n`);
    return 2;
  }
  io.out(`serving this machine (device "local") on the web meanwhile; Ctrl-C stops\n`);
  try {
    await (until ?? new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    }));
  } finally {
    await server.close();
  }
  io.out('stopped\n');
  return 0;
}
