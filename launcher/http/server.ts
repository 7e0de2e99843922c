/**
 * The launcher's HTTP server: one Hono app (hono + @hono/node-server) with the `/v1` API and the
 * dashboard mounted as surfaces (launcher/http/surfaces.ts), started by `meshpilot up` beside the bots,
 * or alone in the embedded default (no Matrix config).
 *
 * What every request gets here, before any surface sees it:
 * - a request id (`X-Request-Id`) and the client's address;
 * - a Host check while bound to loopback (a DNS-rebinding page cannot talk to it through a name that
 *   resolves to 127.0.0.1);
 * - a body limit (`http.max_body_bytes`: 413 `{code:'too_large'}`), counted on the stream, not trusted
 *   from Content-Length;
 * - one log line per request (method, path without the query, status, ms; never headers or bodies);
 * - errors as `{code, message}`: unknown paths 404, anything thrown 500 with a generic message (the
 *   error goes to the log, never a stack trace to the client).
 */
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { serve } from '@hono/node-server';
import { getConnInfo } from '@hono/node-server/conninfo';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { MeshpilotError } from '../../capabilities/errors.js';
import { httpError } from './errors.js';
import type { HttpDeps, HttpEnv, HttpSurface } from './types.js';

export interface Listen {
  host: string;
  port: number;
}

/** `127.0.0.1:7400`, `[::1]:7400`, `0.0.0.0:7400` → host and port (port 0: any free one). */
export function parseListen(listen: string): Listen {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([A-Za-z0-9.-]{1,253})):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new MeshpilotError('config', `http.listen ${JSON.stringify(listen)} must be host:port, e.g. 127.0.0.1:7400`);
  return { host: m[1] ?? m[2]!, port };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

const LOOPBACK_NAMES = new Set(['127.0.0.1', 'localhost', '[::1]']);

/** Host header without the port: `127.0.0.1:7400` → `127.0.0.1`, `[::1]:7400` → `[::1]`. */
function hostName(header: string): string {
  const m = /^(\[[^\]]*\]|[^:]*)/.exec(header.trim().toLowerCase());
  return m?.[1] ?? '';
}

export function createApp(deps: HttpDeps, surfaces: ReadonlyArray<{ path: string; app: Hono<HttpEnv> }>, opts: { loopback: boolean }): Hono<HttpEnv> {
  const app = new Hono<HttpEnv>();
  const log = deps.logger;
  app.use(async (c, next) => {
    const t0 = performance.now();
    const rid = randomUUID();
    c.set('requestId', rid);
    let address = 'unknown';
    try {
      address = getConnInfo(c).remote.address ?? 'unknown';
    } catch { /* not a node:http request (app.request in a test) */ }
    c.set('clientAddress', address);
    if (opts.loopback && !LOOPBACK_NAMES.has(hostName(c.req.header('host') ?? ''))) {
      const res = httpError(c, 'forbidden', 'this server answers only to 127.0.0.1, localhost or [::1] (it is bound to loopback)');
      log.warn({ rid, method: c.req.method, path: c.req.path, status: 403, address }, 'refused: Host header is not a loopback name');
      return res;
    }
    // Before next(): set after, hono rebuilds the finished Response (and the Node adapter loses its fast path).
    c.header('X-Request-Id', rid);
    await next();
    const status = c.res.status;
    const line = { rid, method: c.req.method, path: c.req.path, status, ms: Math.round((performance.now() - t0) * 10) / 10, address };
    if (status >= 500) log.warn(line, 'request');
    else log.debug(line, 'request');
  });
  const max = deps.http.max_body_bytes;
  const tooLarge = (c: Context<HttpEnv>): Response => httpError(c, 'too_large', `the request body is over ${max} bytes`);
  const streamed = bodyLimit({ maxSize: max, onError: tooLarge });
  app.use(async (c, next) => {
    // hono's bodyLimit first asks for the body stream, which makes the Node adapter build a full web
    // Request for every request (~0.3 ms); a GET has no body to count, and a declared Content-Length
    // is what Node's parser reads (no more), so only a chunked body goes through the counting stream.
    if (c.req.method === 'GET' || c.req.method === 'HEAD') return next();
    const length = c.req.header('content-length');
    if (length !== undefined && c.req.header('transfer-encoding') === undefined) return Number(length) > max ? tooLarge(c) : next();
    return streamed(c, next);
  });
  for (const s of surfaces) app.route(s.path, s.app);
  app.notFound((c) => httpError(c, 'not_found', `no such endpoint: ${c.req.method} ${c.req.path.slice(0, 200)}`));
  app.onError((err, c) => {
    log.error({ rid: c.get('requestId'), method: c.req.method, path: c.req.path, err }, 'request failed');
    return httpError(c, 'internal', `internal error (request ${c.get('requestId') ?? '?'}; see the launcher log)`, 500);
  });
  return app;
}

export interface RunningHttpServer {
  /** `http://127.0.0.1:7400` (the address it really bound: port 0 becomes the port it got). */
  url: string;
  host: string;
  port: number;
  app: Hono<HttpEnv>;
  close(): Promise<void>;
}

/**
 * Builds the surfaces, then listens on `deps.http.listen`. A listen error (port in use, address not
 * available) rejects with a `config` error naming the address.
 */
export async function startHttpServer(deps: Omit<HttpDeps, 'baseUrl'>, surfaces: readonly HttpSurface[]): Promise<RunningHttpServer> {
  const { host, port } = parseListen(deps.http.listen);
  let url = '';
  const full: HttpDeps = { ...deps, baseUrl: () => url };
  const built: Array<{ path: string; app: Hono<HttpEnv> }> = [];
  for (const s of surfaces) built.push({ path: s.path, app: await s.create(full) });
  const app = createApp(full, built, { loopback: isLoopback(host) });
  const server = await new Promise<Server>((resolve, reject) => {
    const srv = serve({ fetch: app.fetch, hostname: host, port }) as Server;
    srv.once('error', (err: NodeJS.ErrnoException) =>
      reject(new MeshpilotError('config', `the HTTP server cannot listen on ${deps.http.listen}: ${err.code ?? err.message} (set http.listen in config.yaml)`)));
    srv.once('listening', () => resolve(srv));
  });
  const addr = server.address() as AddressInfo;
  const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  url = `http://${shown === '0.0.0.0' || shown === '[::]' ? '127.0.0.1' : shown}:${addr.port}`;
  deps.logger.debug({ url, listen: deps.http.listen }, 'http server listening');
  let closing: Promise<void> | undefined;
  return {
    url, host, port: addr.port, app,
    close: () => closing ??= (async () => {
      for (const s of surfaces) await Promise.resolve(s.close?.()).catch(() => undefined);
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Open SSE streams and keep-alive sockets would hold close() forever.
        server.closeAllConnections();
      });
    })(),
  };
}
