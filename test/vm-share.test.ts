/**
 * Shares over real HTTP: a real podman VM (busybox rootfs) serving `busybox httpd` on guest port 8080,
 * published on loopback; vm.share / vm.unshare through the launcher's Invoker; the launcher's HTTP
 * server (share gateway + dashboard) on a free port. Public: anyone; private: 403 without a session,
 * 403 for a non-grantee, 200 for a grantee and the owner; unshare (and vm.rm) → 404 at once; the
 * session cookie never reaches the VM; hop-by-hop headers are dropped; bodies stream both ways;
 * vm.ls lists the shares; audit entries for share and unshare.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DashboardLogins } from '../capabilities/dashboard-login.js';
import type { Caller } from '../capabilities/levels.js';
import { logger } from '../capabilities/log.js';
import { setShareStore } from '../capabilities/vm/shares.js';
import { openRuntime } from '../launcher/runtime-core.js';
import type { Runtime } from '../launcher/runtime-core.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { shareSurface } from '../launcher/http/share.js';
import { dashboardSurface } from '../launcher/http/dashboard/index.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `s${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-sharetest-${RUN}:latest`;
const VM = `web-${RUN}`;
const VM2 = `web2-${RUN}`;
const OWNER: Caller = { user: '@ann:example.org', level: 'citizen' };
const BOB: Caller = { user: '@bob:example.org', level: 'citizen' };
const OP: Caller = { user: '@op:example.org', level: 'operator' };
const FRIEND = '@friend:example.org';
const STRANGER = '@stranger:example.org';

const home = mkdtempSync(path.join(tmpdir(), 'mp-share-'));
let rt: Runtime;
let server: RunningHttpServer;
const podman = (...args: string[]): string => execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

const call = (caller: Caller, capability: string, args: Record<string, unknown>) =>
  rt.invoker.invoke({ device: 'local', capability, args, actor: caller.user, caller });

/** A dashboard session for this person, made through the dashboard's own link module. */
function sessionCookie(actor: string): string {
  const logins = new DashboardLogins(rt.db);
  const r = logins.consumeLink(logins.createLink(actor));
  if (!r.ok) throw new Error(r.reason);
  return `meshpilot_session=${r.sessionId}`;
}

/** A GET through node:http (fetch refuses a Connection header): status, headers, body. */
function rawGet(p: string, headers: Record<string, string>): Promise<{ status: number; setCookie: string[]; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(`${server.url}${p}`, { headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, setCookie: res.headers['set-cookie'] ?? [], body }));
    }).on('error', reject);
  });
}

const get = (p: string, headers: Record<string, string> = {}, init: RequestInit = {}) =>
  fetch(`${server.url}${p}`, { redirect: 'manual', ...init, headers });

beforeAll(async () => {
  // CGI: what the VM received (headers as HTTP_* variables, the body back). CRLF header lines: the
  // gateway parses the VM's answers strictly (busybox passes a CGI's bare LFs through).
  busyboxRootfs(home, { applets: ['sh', 'httpd', 'env', 'cat', 'head', 'grep', 'sort', '[', 'test', 'printf', 'sleep', 'echo'], dirs: ['www/cgi-bin'], files: { 'www/index.html': '<h1>hello from the VM</h1>\n', 'www/cgi-bin/echo': { content: '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\nSet-Cookie: meshpilot_session=evil; Path=/\\r\\nSet-Cookie: app=1; Path=/\\r\\n\\r\\n"\nenv | grep ^HTTP_ | sort\necho "METHOD=$REQUEST_METHOD"\n[ -n "$CONTENT_LENGTH" ] && head -c "$CONTENT_LENGTH"\necho\n', mode: 0o755 } } });

  rt = openRuntime({ root: home });
  writeFileSync(path.join(rt.home.manifests, 'local.yaml'), `device: local
capabilities:
  vm.new: { images: ["localhost/mp-sharetest-*"], tiers: [citizen, operator, admin], approval: never }
  vm.ls: { tiers: [citizen, operator, admin] }
  vm.rm: { tiers: [citizen, operator, admin], approval: never }
  vm.share: { tiers: [citizen, operator, admin], approval: never }
  vm.unshare: { tiers: [citizen, operator, admin], approval: never }
  vm.image.import: { paths_allowed: ["${home}/**"], approval: never }
`);
  const imp = await call(OP, 'vm.image.import', { path: path.join(home, 'rootfs.tar'), image: IMAGE });
  expect(imp.error).toBeUndefined();
  for (const name of [VM, VM2]) {
    const made = await call(OWNER, 'vm.new', { name, image: IMAGE, cpus: 0.5, memory_mb: 64, ttl_h: 1, ports: [8080], command: ['httpd', '-f', '-p', '8080', '-h', '/www'] });
    expect(made.error).toBeUndefined();
  }
  server = await startHttpServer({
    runtime: rt, http: { listen: '127.0.0.1:0', max_body_bytes: 1024 * 1024, auth_failures_per_min: 10 }, logger: logger('http'),
  }, [shareSurface(), dashboardSurface()]);
  // httpd needs a moment to listen after the container starts.
  const hostPort = Number(podman('port', `mp-${VM}`, '8080').trim().split(':').pop());
  for (let i = 0; i < 50; i++) {
    try { if ((await fetch(`http://127.0.0.1:${hostPort}/`)).ok) break; } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
}, 120_000);

afterAll(async () => {
  await server?.close();
  for (const n of [VM, VM2]) try { podman('rm', '-f', '-t', '0', `mp-${n}`); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  await rt?.close();
  setShareStore(undefined);
  rmSync(home, { recursive: true, force: true });
}, 60_000);

describe('vm.share through the share gateway (real podman, real HTTP)', () => {
  it('a public share answers anyone with the link, streams bodies, drops hop-by-hop headers and the session cookie; unshare → 404 at once', async () => {
    const shared = await call(OWNER, 'vm.share', { name: VM, port: 8080, public: true });
    expect(shared.error).toBeUndefined();
    const data = shared.result?.data as { id: string; path: string; public: boolean };
    expect(data.id).toMatch(/^[0-9a-f]{32}$/);
    expect(data.path).toBe(`/s/${data.id}/`);
    expect(data.public).toBe(true);

    const page = await get(data.path);
    expect(page.status).toBe(200);
    expect(await page.text()).toBe('<h1>hello from the VM</h1>\n');
    expect(page.headers.get('content-security-policy')).toMatch(/^sandbox /);
    expect(page.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect(page.headers.get('content-length')).toBe('27');
    // Without the trailing slash: a redirect to it (relative links resolve inside the share).
    const bare = await get(`/s/${data.id}`);
    expect(bare.status).toBe(308);
    expect(bare.headers.get('location')).toBe(`/s/${data.id}/`);

    // What the VM receives: no meshpilot session, other cookies kept, Connection-named headers dropped.
    const me = sessionCookie(OP.user);
    const cgi = await rawGet(`${data.path}cgi-bin/echo?x=1`, { cookie: `${me}; app=7`, connection: 'x-secret', 'x-secret': 'no', 'x-kept': 'yes' });
    expect(cgi.status).toBe(200);
    const seen = cgi.body;
    expect(seen).toContain('HTTP_COOKIE=app=7');
    expect(seen).not.toContain('meshpilot_session');
    expect(seen).not.toContain('HTTP_X_SECRET');
    expect(seen).toContain('HTTP_X_KEPT=yes');
    expect(seen).toContain(`HTTP_X_FORWARDED_PREFIX=/s/${data.id}`);
    // The VM cannot set meshpilot's session cookie; its own cookies pass.
    expect(cgi.setCookie).toEqual(['app=1; Path=/']);

    // A streamed (chunked) body goes through.
    const body = 'x'.repeat(200_000);
    const posted = await fetch(`${server.url}${data.path}cgi-bin/echo`, {
      method: 'POST', body: new Blob([body]).stream(), duplex: 'half', headers: { 'content-type': 'text/plain', 'content-length': String(body.length) },
    } as RequestInit);
    expect(posted.status).toBe(200);
    const echoed = await posted.text();
    expect(echoed).toContain('METHOD=POST');
    expect(echoed).toContain(body);

    // Bounded headers.
    const many: Record<string, string> = {};
    for (let i = 0; i < 120; i++) many[`x-h${i}`] = 'v';
    expect((await get(data.path, many)).status).toBe(431);

    // vm.ls shows the share under its VM.
    const ls = await call(OWNER, 'vm.ls', {});
    expect(ls.result?.stdout).toContain(`shared :8080 public /s/${data.id}/`);
    expect((ls.result?.data as Array<{ name: string; shares: Array<{ id: string }> }>).find((v) => v.name === VM)?.shares.map((s) => s.id)).toEqual([data.id]);

    const un = await call(OWNER, 'vm.unshare', { name: VM, port: 8080 });
    expect(un.result?.stdout).toBe(`unshared ${VM}:8080 on local`);
    expect((await get(data.path)).status).toBe(404);
    expect((await get(`${data.path}cgi-bin/echo`)).status).toBe(404);
    expect((await get('/s/00000000000000000000000000000000/')).status).toBe(404);
  }, 60_000);

  it('a private share: 403 without a session, 403 for someone it was not shared with, 200 for the grantee and the owner; vm.rm ends it', async () => {
    const shared = await call(OWNER, 'vm.share', { name: VM2, port: 8080, to: FRIEND });
    expect(shared.error).toBeUndefined();
    const data = shared.result?.data as { id: string; path: string; to: string[]; public: boolean };
    expect(data).toMatchObject({ public: false, to: [FRIEND] });
    expect(shared.result?.stdout).toContain(`private: ${OWNER.user}, ${FRIEND}`);

    const anon = await get(data.path);
    expect(anon.status).toBe(403);
    expect(await anon.json()).toMatchObject({ code: 'forbidden' });
    const stranger = await get(data.path, { cookie: sessionCookie(STRANGER) });
    expect(stranger.status).toBe(403);
    expect(await stranger.json()).toEqual({ code: 'forbidden', message: `${VM2}:8080 is not shared with ${STRANGER}` });
    const bogus = await get(data.path, { cookie: 'meshpilot_session=not-a-session' });
    expect(bogus.status).toBe(403);

    const friend = await get(data.path, { cookie: sessionCookie(FRIEND) });
    expect(friend.status).toBe(200);
    expect(await friend.text()).toBe('<h1>hello from the VM</h1>\n');
    expect(friend.headers.get('content-security-policy')).toBeNull();
    expect((await get(data.path, { cookie: sessionCookie(OWNER.user) })).status).toBe(200);

    // Another citizen cannot share or unshare a VM that is not theirs (the VM gate's ownership rule).
    const bobShare = await call(BOB, 'vm.share', { name: VM2, port: 8080, public: true });
    expect(bobShare.error).toEqual({ code: 'policy_denied', message: `vm.share ${VM2} denied: ${VM2} is not one of your VMs on local` });
    expect((await call(BOB, 'vm.unshare', { name: VM2 })).error?.code).toBe('policy_denied');
    expect((await get(data.path)).status).toBe(403);

    // A VM that is not there.
    expect((await call(OP, 'vm.share', { name: `nope-${RUN}`, port: 8080, public: true })).error).toEqual({ code: 'not_found', message: `no VM nope-${RUN} on local` });

    // Removing the VM removes its shares: 404 at once.
    expect((await call(OP, 'vm.rm', { name: VM2 })).ok).toBe(true);
    expect((await get(data.path, { cookie: sessionCookie(FRIEND) })).status).toBe(404);
  }, 60_000);

  it('shares and unshares are audited through invoke (allowed and denied)', () => {
    const rows = rt.audit.tail(200, 'local').filter((e) => e.capability === 'vm.share' || e.capability === 'vm.unshare')
      .map((e) => `${e.actor} ${e.capability} ${e.decision} ${e.outcome}${e.error_code ? ` ${e.error_code}` : ''}`);
    expect(rows).toEqual([
      `${OWNER.user} vm.share allowed started`, `${OWNER.user} vm.share allowed ok`,
      `${OWNER.user} vm.unshare allowed started`, `${OWNER.user} vm.unshare allowed ok`,
      `${OWNER.user} vm.share allowed started`, `${OWNER.user} vm.share allowed ok`,
      `${BOB.user} vm.share denied not_run policy_denied`,
      `${BOB.user} vm.unshare denied not_run policy_denied`,
      `${OP.user} vm.share allowed started`, `${OP.user} vm.share allowed error not_found`,
    ]);
    expect(rt.audit.verify('local').ok).toBe(true);
  });
});
