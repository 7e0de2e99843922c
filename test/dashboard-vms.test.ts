/**
 * The dashboard's VMs page (launcher/http/dashboard/vms.ts) in a real browser (Debian's Chromium through
 * playwright-core), over the real HTTP server with a config (levels) and real podman (a busybox httpd
 * image from a local rootfs):
 * - a citizen sees only their own VMs and only this page of the dashboard; they create a VM from the
 *   vm.new form, share its port (the link answers through the share gateway), unshare it, stop it, start
 *   it (the manifest asks approval: an operator approves it on the device page), and remove it;
 * - each action runs through invoke with the citizen as actor and caller (audited, the VM gate's
 *   ownership rule: another's VM is refused);
 * - an operator sees every VM with its owner; a stranger gets 403.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfigOrThrow, writeConfig } from '../capabilities/config.js';
import { DashboardLogins } from '../capabilities/dashboard-login.js';
import type { Caller } from '../capabilities/levels.js';
import { logger } from '../capabilities/log.js';
import { setShareStore } from '../capabilities/vm/shares.js';
import { createLoginLink, dashboardSurface } from '../launcher/http/dashboard/index.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { shareSurface } from '../launcher/http/share.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { CHROMIUM, logIn, startBrowser, type BrowserEnv } from './helpers/dashboard-env.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `w${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-dashvm-${RUN}:latest`;
const OP: Caller = { user: '@op:example.org', level: 'operator' };
const CIT: Caller = { user: '@cit:example.org', level: 'citizen' };
const OPS_VM = `opvm-${RUN}`;
const OLD = `citold-${RUN}`;
const NEW = `citnew-${RUN}`;
const home = mkdtempSync(path.join(tmpdir(), 'mp-dashvm-'));
const podman = (...args: string[]): string => execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let rt: Runtime;
let server: RunningHttpServer;
let b: BrowserEnv;
let citizen: BrowserContext;
let cp: Page;

const call = (caller: Caller, capability: string, args: Record<string, unknown>) =>
  rt.invoker.invoke({ device: 'local', capability, args, actor: caller.user, caller });

/** A session cookie for this person (for fetch-level checks). */
function cookieFor(actor: string): string {
  const logins = new DashboardLogins(rt.db);
  const r = logins.consumeLink(logins.createLink(actor));
  if (!r.ok) throw new Error(r.reason);
  return `meshpilot_session=${r.sessionId}`;
}

/** Runs a row's action in the citizen's page and waits for its result in #vm-result. */
async function rowAction(p: Page, vm: string, verb: string): Promise<string> {
  await p.click(`tr[data-vm="${vm}"] button[data-verb="${verb}"]`);
  const result = p.locator(`#vm-result [data-capability="${verb}"]`);
  await result.waitFor();
  return (await result.textContent()) ?? '';
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);
  busyboxRootfs(home, { applets: ['sh', 'httpd', 'sleep'], dirs: ['www'], files: { 'www/index.html': '<h1>citizen web</h1>\n' } });
  podman('import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(home, 'rootfs.tar'), IMAGE);

  writeConfig(path.join(home, 'config.yaml'), {
    matrix: { homeserver_url: 'http://127.0.0.1:9' },
    operators: [OP.user],
    users: { [CIT.user]: 'citizen' },
    quotas: { citizen: { vms: 2, cpus: 4, memory_mb: 4096, disk_mb: 20480, max_ttl_h: 24 } },
    http: { listen: '127.0.0.1:0' },
  });
  rt = openRuntime({ root: home });
  const all = '[citizen, operator, admin]';
  writeFileSync(path.join(rt.home.manifests, 'local.yaml'), `device: local
capabilities:
  vm.new: { images: ["localhost/mp-dashvm-*"], tiers: ${all}, approval: never }
  vm.ls: { tiers: ${all} }
  vm.stop: { tiers: ${all}, approval: never }
  vm.start: { tiers: ${all}, approval: always }
  vm.rm: { tiers: ${all}, approval: never }
  vm.share: { tiers: ${all}, approval: never }
  vm.unshare: { tiers: ${all}, approval: never }
  sys.info: {}
`);
  for (const [caller, name] of [[OP, OPS_VM], [CIT, OLD]] as const) {
    const made = await call(caller, 'vm.new', { name, image: IMAGE, memory_mb: 64, ttl_h: 2 });
    expect(made.error).toBeUndefined();
  }
  server = await startHttpServer({
    runtime: rt, config: loadConfigOrThrow(path.join(home, 'config.yaml')),
    http: { listen: '127.0.0.1:0', max_body_bytes: 64 * 1024, auth_failures_per_min: 10 }, logger: logger('http'),
  }, [shareSurface(), dashboardSurface({ approvalTimeoutMs: 60_000 })]);
  b = await startBrowser();
  citizen = await b.browser.newContext({ viewport: { width: 1280, height: 900 } });
  cp = await citizen.newPage();
}, 120_000);

afterAll(async () => {
  await b?.close();
  await server?.close();
  for (const n of [OPS_VM, OLD, NEW]) try { podman('rm', '-f', '-t', '0', `mp-${n}`); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  await rt?.close();
  setShareStore(undefined);
  rmSync(home, { recursive: true, force: true });
}, 60_000);

describe('the VMs page', () => {
  it('a citizen sees only their own VMs, and only this page of the dashboard; a stranger none', async () => {
    await logIn(cp, createLoginLink({ runtime: rt }, server.url, CIT.user));
    // The rest of the dashboard is for staff.
    expect(await cp.textContent('body')).toContain('may open what was shared with them');
    await cp.goto(`${server.url}/vms`);
    expect(await cp.locator('nav a[aria-current="page"]').textContent()).toBe('VMs');
    const rows = await cp.locator('tr[data-vm]').evaluateAll((trs) => trs.map((t) => t.getAttribute('data-vm')));
    expect(rows).toEqual([OLD]);
    const row = cp.locator(`tr[data-vm="${OLD}"]`);
    expect(await row.locator('[data-state]').getAttribute('data-state')).toBe('running');
    expect(await row.locator('td[data-label="Owner"]').textContent()).toBe(CIT.user);
    expect(await row.locator('td[data-label="Image"]').textContent()).toBe(IMAGE);
    expect(await row.locator('td[data-label="Limits"]').textContent()).toBe('1 CPU · 64 MiB · disk 2048 MiB');
    expect(await cp.textContent('#vms-local h2')).toContain('your VMs (citizen)');

    const stranger = await fetch(`${server.url}/vms`, { headers: { cookie: cookieFor('@nobody:example.org') } });
    expect(stranger.status).toBe(403);
    const anon = await fetch(`${server.url}/vms`);
    expect(anon.status).toBe(401);
  }, 60_000);

  it('the citizen creates a VM from the vm.new form, shares its port (the link works), unshares it, stops it and removes it', async () => {
    await cp.click('#cap-vm-new-local summary');
    await cp.fill('#cap-vm-new-local input[name="name"]', NEW);
    await cp.fill('#cap-vm-new-local input[name="image"]', IMAGE);
    await cp.fill('#cap-vm-new-local input[name="memory_mb"]', '64');
    await cp.fill('#cap-vm-new-local input[name="ttl_h"]', '1');
    await cp.fill('#cap-vm-new-local textarea[name="ports"]', '8080');
    await cp.fill('#cap-vm-new-local textarea[name="command"]', 'httpd\n-f\n-p\n8080\n-h\n/www');
    await cp.click('#cap-vm-new-local button[type="submit"]');
    const created = cp.locator('#vm-result [data-capability="vm.new"]');
    await created.waitFor({ timeout: 30_000 });
    expect(await created.getAttribute('data-outcome')).toBe('ok');
    // The list reloads with the new VM.
    const row = cp.locator(`tr[data-vm="${NEW}"]`);
    await row.waitFor();
    expect(await row.locator('td[data-label="Ports"]').textContent()).toMatch(/^8080→127\.0\.0\.1:\d+$/);

    // Within the quota and no further: a third VM is refused, naming the quota and the use.
    const csrf = await cp.locator('input[name="_csrf"]').first().getAttribute('value');
    const cookie = (await citizen.cookies()).map((c) => `${c.name}=${c.value}`).join('; ');
    const third = await fetch(`${server.url}/vms/run`, {
      method: 'POST', headers: { cookie, 'content-type': 'application/x-www-form-urlencoded', 'hx-request': 'true' },
      body: new URLSearchParams({ _csrf: csrf!, _device: 'local', _capability: 'vm.new', name: `citthird-${RUN}`, image: IMAGE, memory_mb: '64' }).toString(),
    });
    expect(await third.text()).toContain(`vm.new citthird-${RUN} refused: citizen quota: 2 VMs, you have 2`);

    // Share: the row's form, from vm.share's schema (the VM's name fixed).
    const shareForm = `#cap-vm-share-local-${NEW}`;
    await cp.click(`${shareForm} summary`);
    expect(await cp.locator(`${shareForm} input[name="name"][type="hidden"]`).getAttribute('value')).toBe(NEW);
    await cp.fill(`${shareForm} input[name="port"]`, '8080');
    await cp.selectOption(`${shareForm} select[name="public"]`, 'true');
    await cp.click(`${shareForm} button[type="submit"]`);
    const link = cp.locator(`tr[data-vm="${NEW}"] ul.shares a`);
    await link.waitFor({ timeout: 15_000 });
    const href = (await link.getAttribute('href'))!;
    expect(href).toMatch(/^\/s\/[0-9a-f]{32}\/$/);
    let page = await fetch(`${server.url}${href}`);
    for (let i = 0; i < 30 && page.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
      page = await fetch(`${server.url}${href}`);
    }
    expect(page.status).toBe(200);
    expect(await page.text()).toBe('<h1>citizen web</h1>\n');

    expect(await rowAction(cp, NEW, 'vm.unshare')).toContain('ok');
    expect((await fetch(`${server.url}${href}`)).status).toBe(404);
    await cp.locator(`tr[data-vm="${NEW}"] ul.shares`).waitFor({ state: 'detached' });

    expect(await rowAction(cp, NEW, 'vm.stop')).toContain('ok');
    await cp.locator(`tr[data-vm="${NEW}"] [data-state="exited"]`).waitFor();
    expect(podman('container', 'inspect', '--format', '{{.State.Status}}', `mp-${NEW}`).trim()).toBe('exited');

    expect(await rowAction(cp, NEW, 'vm.rm')).toContain('ok');
    await cp.locator(`tr[data-vm="${NEW}"]`).waitFor({ state: 'detached' });
    expect(() => podman('container', 'exists', `mp-${NEW}`)).toThrow();

    // Each action went through invoke with the citizen as actor, from the dashboard.
    const mine = rt.audit.tail(200, 'local').filter((e) => e.actor === CIT.user && e.outcome === 'ok' && (e.context as { surface?: string } | null)?.surface === 'dashboard');
    expect(mine.map((e) => e.capability).filter((c) => c !== 'vm.ls')).toEqual(['vm.new', 'vm.share', 'vm.unshare', 'vm.stop', 'vm.rm']);
  }, 90_000);

  it('a citizen\'s start waits for an operator\'s approval (decided on the device page), then runs', async () => {
    await cp.goto(`${server.url}/vms`);
    await rowAction(cp, OLD, 'vm.stop');
    await cp.locator(`tr[data-vm="${OLD}"] [data-state="exited"]`).waitFor();
    await cp.click(`tr[data-vm="${OLD}"] button[data-verb="vm.start"]`);
    await cp.locator('#vm-result [data-waiting]').waitFor();
    expect(await cp.textContent('#vm-result')).toContain('vm.start on local waits for approval by an operator');

    // The operator, in another browser, approves it on the device page.
    await logIn(b.page, createLoginLink({ runtime: rt }, server.url, OP.user));
    await b.page.goto(`${server.url}/devices/local`);
    const pending = b.page.locator('#approvals li[data-approval]');
    await pending.waitFor();
    expect(await pending.textContent()).toContain(`asked by ${CIT.user}`);
    await b.page.click('#approvals button[value="approve"]');

    const done = cp.locator('#vm-result [data-capability="vm.start"]');
    await done.waitFor({ timeout: 15_000 });
    expect(await done.getAttribute('data-outcome')).toBe('ok');
    await cp.locator(`tr[data-vm="${OLD}"] [data-state="running"]`).waitFor();
    const entry = rt.audit.tail(50, 'local').find((e) => e.capability === 'vm.start' && e.outcome === 'ok');
    expect(entry).toMatchObject({ actor: CIT.user, decision: 'approved' });
    expect(entry?.reason).toContain(`approved by ${OP.user}`);
  }, 60_000);

  it('another person\'s VM is refused to the citizen (the VM gate); the operator sees every VM with its owner', async () => {
    const csrf = await cp.locator('input[name="_csrf"]').first().getAttribute('value');
    const cookies = await citizen.cookies();
    const cookie = cookies.map((c) => `${c.name}=${c.value}`).join('; ');
    const res = await fetch(`${server.url}/vms/run`, {
      method: 'POST', headers: { cookie, 'content-type': 'application/x-www-form-urlencoded', 'hx-request': 'true' },
      body: new URLSearchParams({ _csrf: csrf!, _device: 'local', _capability: 'vm.stop', name: OPS_VM }).toString(),
    });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain('data-outcome="error"');
    expect(text).toContain(`vm.stop ${OPS_VM} denied: ${OPS_VM} is not one of your VMs on local`);
    expect(podman('container', 'inspect', '--format', '{{.State.Status}}', `mp-${OPS_VM}`).trim()).toBe('running');
    // A private share from the page: recorded, and the page says no login-link DM went out from here.
    const priv = await fetch(`${server.url}/vms/run`, {
      method: 'POST', headers: { cookie, 'content-type': 'application/x-www-form-urlencoded', 'hx-request': 'true' },
      body: new URLSearchParams({ _csrf: csrf!, _device: 'local', _capability: 'vm.share', name: OLD, port: '8080', to: '@friend:example.org' }).toString(),
    });
    const privText = await priv.text();
    expect(privText).toContain('data-outcome="ok"');
    expect(privText).toContain('data-no-dm');
    expect(privText).not.toContain('a one-time login link goes to');
    expect(rt.audit.tail(20, 'local').find((e) => e.capability === 'vm.share' && e.outcome === 'ok' && (e.args as { name: string }).name === OLD)?.actor).toBe(CIT.user);
    // Only vm.* verbs of the page run here.
    const other = await fetch(`${server.url}/vms/run`, {
      method: 'POST', headers: { cookie, 'content-type': 'application/x-www-form-urlencoded', 'hx-request': 'true' },
      body: new URLSearchParams({ _csrf: csrf!, _device: 'local', _capability: 'sys.info' }).toString(),
    });
    expect(other.status).toBe(400);

    await b.page.goto(`${server.url}/vms`);
    const rows = await b.page.locator('tr[data-vm]').evaluateAll((trs) => trs.map((t) => t.getAttribute('data-vm')));
    expect(rows).toEqual(expect.arrayContaining([OPS_VM, OLD]));
    expect(await b.page.locator(`tr[data-vm="${OLD}"] td[data-label="Owner"]`).textContent()).toBe(CIT.user);
    expect(await b.page.locator(`tr[data-vm="${OPS_VM}"] td[data-label="Owner"]`).textContent()).toBe(OP.user);
    expect(await b.page.textContent('#vms-local h2')).not.toContain('your VMs');
  }, 60_000);
});
