/**
 * The share gateway, mounted at `/s` (launcher/http/surfaces.ts, before the dashboard): `/s/<id>/…`
 * proxies to the shared VM port (capabilities/vm/shares.ts, made by vm.share).
 *
 * - Who: a public share answers anyone with the link; a private one only a dashboard session
 *   (capabilities/dashboard-login.ts, the cookie of launcher/http/dashboard/auth.ts) whose person is
 *   the share's owner or a grantee: no session or another person is 403. An id that is not (or no
 *   longer) a share is 404: the row is read on every request, so vm.unshare and vm.rm end it at once.
 * - Where: what VmBackend.publish answered at vm.share (the published loopback port, else the VM's
 *   bridge address and the guest port). Local devices: that address directly; ssh devices: through a
 *   direct-tcpip channel on the pooled ssh connection (sshForward, one channel per request); mesh
 *   devices: the device's mesh address (the manifest's transport.address) and the published port,
 *   which the device agent publishes on that address (capabilities/vm/podman.ts setPublishAddress). A
 *   port published elsewhere on a mesh device (loopback, the bridge) is out of the mesh's reach: 502
 *   saying so.
 * - How: HTTP/1.1 with the bodies streamed both ways; at most MAX_HEADERS request headers and
 *   MAX_HEADER_BYTES of them (431 over); hop-by-hop headers (and those the Connection header names)
 *   are not forwarded either way; the meshpilot session cookie never reaches the VM, and the VM cannot
 *   set it; a redirect to `/x` becomes `/s/<id>/x`. A public share's pages get a CSP sandbox (no
 *   same-origin access to the dashboard on this origin): a private share's viewer is logged in, and
 *   the shared app can act as them here, so share privately with people you trust with that.
 */
import * as http from 'node:http';
import { Readable, type Duplex } from 'node:stream';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { Hono, type Context } from 'hono';
import { getCookie } from 'hono/cookie';
import { DashboardLogins } from '../../capabilities/dashboard-login.js';
import { openDatabase } from '../../capabilities/db.js';
import type { Manifest } from '../../capabilities/manifest.js';
import { sshForward } from '../../capabilities/transports/ssh.js';
import { mayOpen, SHARE_ID, ShareStore, type VmShare } from '../../capabilities/vm/shares.js';
import { COOKIE } from './dashboard/auth.js';
import { httpError } from './errors.js';
import type { HttpDeps, HttpEnv, HttpSurface } from './types.js';

export const MAX_HEADERS = 100;
export const MAX_HEADER_BYTES = 16 * 1024;
/**
 * Connections to the VMs are kept alive and reused (a new TCP connection through the port mapping per
 * request doubled a small GET). Answers are parsed strictly, so one response cannot bleed into the next.
 */
const upstreamAgent = new http.Agent({ keepAlive: true, maxSockets: 64, maxFreeSockets: 16, timeout: 30_000 });
/** Time to the VM's response headers. */
const UPSTREAM_TIMEOUT_MS = 60_000;

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host', 'content-length']);

/** The headers named by Connection, plus the standard hop-by-hop ones. */
function hopHeaders(connection: string | null | undefined): Set<string> {
  const out = new Set(HOP_BY_HOP);
  for (const h of (connection ?? '').split(',')) if (h.trim()) out.add(h.trim().toLowerCase());
  return out;
}

/** The Cookie header without meshpilot's session (the VM never sees it); undefined when nothing is left. */
function cookiesForVm(cookie: string): string | undefined {
  const kept = cookie.split(';').map((p) => p.trim()).filter((p) => p && !p.startsWith(`${COOKIE}=`));
  return kept.length ? kept.join('; ') : undefined;
}

export interface Target {
  host: string;
  port: number;
  /** ssh devices: the stream comes from a direct-tcpip channel on the pooled connection. */
  connect?: () => Promise<Duplex>;
}

export type Route = { ok: true; target: Target } | { ok: false; message: string };

/** Where a share's port is reached from the launcher. */
export function routeOf(share: VmShare, manifest: Manifest | undefined): Route {
  if (manifest === undefined) return { ok: false, message: `device ${share.device} is not enrolled any more` };
  const hostPort = share.hostPort;
  if (hostPort === null) return { ok: false, message: `${share.vm}:${share.port} is not published on ${share.device} (the VM is not running?)` };
  const kind = manifest.transport.kind;
  const address = share.address;
  if (kind === 'local') return { ok: true, target: { host: address, port: hostPort } };
  if (kind === 'ssh') return { ok: true, target: { host: address, port: hostPort, connect: () => sshForward(manifest, address, hostPort) } };
  if (manifest.transport.kind === 'mesh') {
    const mesh = manifest.transport.address;
    if (address !== mesh) {
      return { ok: false, message: `${share.vm}:${share.port} is published on ${address} on ${share.device}, out of the mesh's reach (${mesh}): recreate the VM with vm.new ports=[${share.port}] while the device agent listens on its mesh address, then vm.share it again` };
    }
    return { ok: true, target: { host: mesh, port: hostPort } };
  }
  return { ok: false, message: `shares of VMs on ${kind} devices are not routed` };
}

function proxy(c: Context<HttpEnv>, share: VmShare, target: Target, rest: string): Promise<Response> {
  const reqHeaders = c.req.raw.headers;
  let count = 0;
  let bytes = 0;
  reqHeaders.forEach((v, k) => { count++; bytes += k.length + v.length + 4; });
  if (count > MAX_HEADERS || bytes > MAX_HEADER_BYTES) {
    return Promise.resolve(c.json({ code: 'too_large', message: `request headers over ${MAX_HEADERS} or ${MAX_HEADER_BYTES} bytes` }, 431));
  }
  const drop = hopHeaders(reqHeaders.get('connection'));
  const headers: Record<string, string> = {};
  reqHeaders.forEach((v, k) => {
    if (drop.has(k) || k === 'cookie' || k.startsWith('x-forwarded-')) return;
    headers[k] = v;
  });
  const cookie = cookiesForVm(reqHeaders.get('cookie') ?? '');
  if (cookie) headers['cookie'] = cookie;
  const prefix = `/s/${share.id}`;
  headers['host'] = `${target.host}:${target.port}`;
  headers['x-forwarded-for'] = c.get('clientAddress') ?? 'unknown';
  headers['x-forwarded-host'] = reqHeaders.get('host') ?? '';
  headers['x-forwarded-proto'] = new URL(c.req.url).protocol.replace(':', '');
  headers['x-forwarded-prefix'] = prefix;
  const length = reqHeaders.get('content-length');
  const hasBody = c.req.method !== 'GET' && c.req.method !== 'HEAD' && c.req.raw.body !== null;
  if (hasBody && length !== null && reqHeaders.get('transfer-encoding') === null) headers['content-length'] = length;

  return new Promise<Response>((resolve) => {
    const up = http.request({
      host: target.host, port: target.port, method: c.req.method, path: rest, headers,
      maxHeaderSize: MAX_HEADER_BYTES, timeout: UPSTREAM_TIMEOUT_MS,
      ...(target.connect
        ? {
          // One ssh channel per request (closed with it); the ssh connection itself is the pool's.
          createConnection: ((_o: unknown, done: (err: Error | null, s?: Duplex) => void) => {
            target.connect!().then((s) => done(null, s), (e: Error) => done(e));
            return undefined;
          }) as unknown as http.RequestOptions['createConnection'],
        }
        : { agent: upstreamAgent }),
    }, (res) => {
      const out = new Headers();
      const hop = hopHeaders(typeof res.headers['connection'] === 'string' ? res.headers['connection'] : undefined);
      hop.delete('content-length');
      for (const [k, v] of Object.entries(res.headers)) {
        if (v === undefined || hop.has(k)) continue;
        const values = Array.isArray(v) ? v : [v];
        for (const one of values) {
          if (k === 'set-cookie' && one.trim().startsWith(`${COOKIE}=`)) continue;
          if (k === 'location' && one.startsWith('/') && !one.startsWith('//')) out.append(k, `${prefix}${one}`);
          else out.append(k, one);
        }
      }
      if (share.public) out.set('content-security-policy', 'sandbox allow-scripts allow-forms allow-popups allow-downloads');
      const status = res.statusCode ?? 502;
      const noBody = c.req.method === 'HEAD' || status === 204 || status === 304;
      if (noBody) res.resume();
      // Under the Node adapter, the VM's body is piped straight to the client's socket (a web stream in
      // between made a 4 MiB answer ~2.5x slower than the bare port); elsewhere (app.request) a Response.
      const outgoing: unknown = (c.env as { outgoing?: unknown } | undefined)?.outgoing;
      if (!noBody && outgoing instanceof http.ServerResponse && !outgoing.headersSent) {
        const raw: string[] = ['x-request-id', c.get('requestId') ?? ''];
        out.forEach((v, k) => { if (k !== 'set-cookie') raw.push(k, v); });
        for (const v of out.getSetCookie()) raw.push('set-cookie', v);
        outgoing.writeHead(status, raw);
        res.on('error', () => outgoing.destroy());
        // The client went away mid-answer: drop the VM's connection too (it cannot be reused half-read).
        outgoing.on('close', () => { if (!res.complete) res.destroy(); });
        res.pipe(outgoing);
        resolve(RESPONSE_ALREADY_SENT);
        return;
      }
      // Readable.toWeb gives a web ReadableStream of Uint8Array; the DOM lib types it more narrowly.
      resolve(new Response(noBody ? null : (Readable.toWeb(res) as unknown as ReadableStream<Uint8Array>), { status, headers: out }));
    });
    up.on('timeout', () => up.destroy(new Error('timeout')));
    up.on('error', (err: NodeJS.ErrnoException) => {
      const msg = err.message === 'timeout'
        ? `${share.vm}:${share.port} did not answer within ${UPSTREAM_TIMEOUT_MS / 1000} s`
        : `${share.vm}:${share.port} on ${share.device} does not answer (${err.code ?? err.message}): is the VM running and listening on ${share.port}?`;
      resolve(httpError(c, err.message === 'timeout' ? 'timeout' : 'unreachable', msg));
    });
    c.req.raw.signal?.addEventListener('abort', () => up.destroy(), { once: true });
    if (hasBody && c.req.raw.body) Readable.fromWeb(c.req.raw.body as unknown as import('node:stream/web').ReadableStream).on('error', (e) => up.destroy(e)).pipe(up);
    else up.end();
  });
}

export function shareSurface(): HttpSurface {
  return {
    path: '/s',
    create(deps: HttpDeps): Hono<HttpEnv> {
      const rt = deps.runtime;
      // The runtime may have opened meshpilot.db before capabilities/vm/shares.ts registered its table.
      openDatabase(rt.home.db).close();
      const store = new ShareStore(rt.db);
      const logins = new DashboardLogins(rt.db);
      const log = deps.logger.child({ component: 'share-gateway' });
      const app = new Hono<HttpEnv>();
      const notFound = (c: Context<HttpEnv>): Response => httpError(c, 'not_found', 'no such share (it was removed, or the link is wrong)');

      app.all('/:id', (c) => {
        const id = c.req.param('id');
        if (!SHARE_ID.test(id) || !store.get(id)) return notFound(c);
        const q = new URL(c.req.url).search;
        return c.redirect(`/s/${id}/${q}`, 308);
      });
      app.all('/:id/*', async (c) => {
        const id = c.req.param('id');
        const share = SHARE_ID.test(id) ? store.get(id) : undefined;
        if (!share) return notFound(c);
        if (!share.public) {
          const session = logins.session(getCookie(c, COOKIE));
          if (!session) return httpError(c, 'forbidden', 'this share is private: open the one-time login link the device bot sent you, then this link again');
          if (!mayOpen(share, session.actor)) {
            log.warn({ share: id.slice(0, 8), viewer: session.actor }, 'share refused: not shared with this person');
            return httpError(c, 'forbidden', `${share.vm}:${share.port} is not shared with ${session.actor}`);
          }
        }
        const route = routeOf(share, rt.devices.get(share.device));
        if (!route.ok) return httpError(c, 'unreachable', route.message);
        const url = new URL(c.req.url);
        const rest = url.pathname.slice(`/s/${id}`.length) + url.search;
        return proxy(c, share, route.target, rest || '/');
      });
      return app;
    },
  };
}
