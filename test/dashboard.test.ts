/**
 * The web dashboard in a real browser (headless Chromium from Debian's package, playwright-core) against
 * the real HTTP server over a temporary MESHPILOT_HOME: magic-link login (single use), the fleet grid
 * following a health transition without a reload, a capability run from its generated form (audited
 * with the operator as actor), CSRF refusals, the audit viewer, and the phone layout. Screenshots of
 * the grid and the device page go to docs/ when MESHPILOT_SCREENSHOTS=1.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { HealthStore, type DeviceHealth, type DeviceState } from '../launcher/health/state.js';
import { CHROMIUM, logIn, startBrowser, startDashboard, type BrowserEnv, type DashboardEnv } from './helpers/dashboard-env.js';

let env: DashboardEnv;
let b: BrowserEnv;

function setHealth(device: string, state: DeviceState, detail: string, extra: Partial<DeviceHealth> = {}, sinceMs = 0): void {
  const now = Date.now() - sinceMs;
  const info: DeviceHealth = { device, state, since: now, detail, transport: 'local', meshIp: null, lastHandshake: null, agent: null, ssh: null, bot: 'running', chain: null, ...extra };
  new HealthStore(env.rt.db, () => now).write((w) => {
    w.save({ device, state, since_ms: now, detail, info: JSON.stringify(info), agent_failures: 0, ssh_failures: 0, bot_bad: null, reminded_ms: null, updated_ms: now });
    w.transition(device, now, null, state, detail);
  });
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: npm test installs it (scripts/ensure-deps.mjs), or apt-get install chromium`);
  env = await startDashboard();
  b = await startBrowser();
}, 60_000);

afterAll(async () => {
  await b?.close();
  await env?.stop();
});

/** docs/dashboard-*.png for the README (MESHPILOT_SCREENSHOTS=1): a small fleet in every state. */
async function screenshots(phone: import('playwright-core').Page): Promise<void> {
  const manifest = (name: string, transport: string): string => `device: ${name}\nos: linux\ntransport: ${transport}\noperators: []\ncapabilities:\n  sys.info: {}\n  sys.health: {}\n  proc.list: {}\n`;
  const nowS = Math.floor(Date.now() / 1000);
  const fleet: Array<[string, string, DeviceState, string, Partial<DeviceHealth>, number]> = [
    ['nas', '{ kind: mesh, address: 10.99.0.2 }', 'online', 'handshake 40 s ago, agent ok', { transport: 'mesh', lastHandshake: nowS - 40, agent: { ok: true, failures: 0, version: '0.1.0' } }, 3 * 86400_000],
    ['web-1', '{ kind: ssh, host: web-1.example.org, user: deploy }', 'online', 'ssh ok (12 ms)', { transport: 'ssh', ssh: { ok: true, failures: 0, ms: 12 } }, 5 * 3600_000],
    ['laptop', '{ kind: mesh, address: 10.99.0.3 }', 'stale', 'last handshake 9 min ago', { transport: 'mesh', lastHandshake: nowS - 540, agent: { ok: true, failures: 0, version: '0.1.0' } }, 4 * 60_000],
    ['pi-garage', '{ kind: mesh, address: 10.99.0.4 }', 'offline', 'no handshake for 2 days', { transport: 'mesh', lastHandshake: nowS - 2 * 86400, agent: null, bot: 'running' }, 2 * 86400_000],
    ['db-1', '{ kind: ssh, host: db-1.example.org, user: deploy }', 'unreachable', 'ssh failed 3 times: connection refused', { transport: 'ssh', ssh: { ok: false, failures: 3, error: 'connection refused' } }, 20 * 60_000],
  ];
  for (const [name, transport, state, detail, extra, since] of fleet) {
    writeFileSync(path.join(env.home, 'manifests', `${name}.yaml`), manifest(name, transport));
    setHealth(name, state, detail, extra, since);
  }
  setHealth('local', 'online', 'this machine', {}, 7 * 86400_000);
  rmSync(path.join(env.home, 'manifests', 'appr.yaml'));
  await b.page.setViewportSize({ width: 1100, height: 520 });
  await b.page.goto(`${env.server.url}/`);
  await b.page.screenshot({ path: path.join(PACKAGE_ROOT, 'docs', 'dashboard-grid.png') });
  await b.page.setViewportSize({ width: 1000, height: 700 });
  await b.page.goto(`${env.server.url}/devices/local`);
  await b.page.click('#cap-proc-list summary');
  await b.page.selectOption('#cap-proc-list select[name="sort"]', 'mem');
  await b.page.fill('#cap-proc-list input[name="limit"]', '5');
  await b.page.click('#cap-proc-list button[type="submit"]');
  await b.page.waitForSelector('#result-proc-list [data-outcome]');
  await b.page.screenshot({ path: path.join(PACKAGE_ROOT, 'docs', 'dashboard-device.png'), fullPage: true });
  await phone.goto(`${env.server.url}/`);
  await phone.screenshot({ path: path.join(PACKAGE_ROOT, 'docs', 'dashboard-phone.png') });
  await b.page.setViewportSize({ width: 1280, height: 900 });
}

describe('dashboard in a browser', () => {
  it('refuses pages without a session and logs in through a one-time magic link', async () => {
    const anon = await fetch(`${env.server.url}/`);
    expect(anon.status).toBe(401);
    expect(await anon.text()).toContain('meshpilot dashboard');

    const link = env.link('cli:tester');
    // Opening the link (a preview, a prefetch) does not spend it: only "Log in" does.
    expect((await fetch(link)).status).toBe(200);
    await logIn(b.page, link);
    expect(await b.page.textContent('header .who span')).toBe('cli:tester');
    expect(await b.page.textContent('#dev-local')).toContain('local');

    const cookies = await b.context.cookies();
    const session = cookies.find((c) => c.name === 'meshpilot_session');
    expect(session?.httpOnly).toBe(true);
    expect(session?.sameSite).toBe('Strict');
    expect(await b.page.evaluate('document.cookie')).not.toContain('meshpilot_session');

    // The same link again: refused.
    const again = await b.browser.newPage();
    await again.goto(link);
    await again.click('#login');
    expect(await again.textContent('main')).toContain('already used');
    await again.close();
  }, 60_000);

  it('`meshpilot dashboard` prints a link that logs the terminal user in', async () => {
    const r = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs'), 'dashboard', '--json'], {
      encoding: 'utf8', timeout: 120_000,
      env: { ...process.env, MESHPILOT_HOME: env.home, MESHPILOT_HTTP_LISTEN: `127.0.0.1:${env.server.port}` },
    });
    expect(r.status, r.stderr).toBe(0);
    const { url, expiresAt } = JSON.parse(r.stdout.trim().split('\n').pop()!) as { url: string; expiresAt: string };
    expect(url.startsWith(`${env.server.url}/login?t=`)).toBe(true);
    expect(Date.parse(expiresAt) - Date.now()).toBeGreaterThan(4 * 60_000);
    expect(Date.parse(expiresAt) - Date.now()).toBeLessThanOrEqual(5 * 60_000);
    const ctx = await b.browser.newContext();
    const p = await ctx.newPage();
    await logIn(p, url);
    expect(await p.textContent('header .who span')).toMatch(/^cli:/);
    await ctx.close();
  }, 150_000);

  it('a health transition appears in the grid within 2 s, without a reload', async () => {
    await b.page.goto(`${env.server.url}/`);
    await b.page.waitForSelector('[sse-connect]', { state: 'attached' });
    await b.page.evaluate('window.marker = 42');
    setHealth('local', 'online', 'fine');
    await b.page.waitForSelector('#dev-local[data-state="online"]', { timeout: 2000 });
    const t0 = Date.now();
    setHealth('local', 'unreachable', 'ssh failed 3 times');
    await b.page.waitForSelector('#dev-local[data-state="unreachable"]', { timeout: 2000 });
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(await b.page.textContent('#dev-local .state')).toBe('unreachable');
    expect(await b.page.evaluate('window.marker')).toBe(42);
  }, 30_000);

  it('runs a capability from its generated form; the audit names the operator', async () => {
    await b.page.goto(`${env.server.url}/devices/local`);
    await b.page.click('#cap-fs-list summary');
    await b.page.fill('#cap-fs-list input[name="path"]', env.home);
    await b.page.fill('#cap-fs-list input[name="limit"]', '500');
    await b.page.click('#cap-fs-list button[type="submit"]');
    const result = await b.page.waitForSelector('#result-fs-list [data-outcome]', { timeout: 15_000 });
    expect(await result.getAttribute('data-outcome')).toBe('ok');
    expect(await b.page.textContent('#result-fs-list pre.stdout')).toContain('meshpilot.db');
    const last = env.rt.audit.tail(1, 'local')[0]!;
    expect(last).toMatchObject({ actor: 'cli:tester', capability: 'fs.list', outcome: 'ok', args: { path: env.home, limit: 500 } });
    expect(await b.page.textContent('#result-fs-list .notice')).toContain(`audit #${last.seq}`);
    // A field its schema refuses: denied by invoke, shown, audited.
    await b.page.fill('#cap-fs-list input[name="path"]', 'relative/path');
    await b.page.fill('#cap-fs-list input[name="limit"]', '');
    await b.page.click('#cap-fs-list button[type="submit"]');
    await b.page.waitForSelector('#result-fs-list [data-outcome="error"]', { timeout: 15_000 });
  }, 30_000);

  it('a run that needs approval waits; the operator approves it on the device page and the result follows', async () => {
    writeFileSync(path.join(env.home, 'manifests', 'appr.yaml'), [
      'device: appr', 'os: linux', 'transport: { kind: local }', 'operators: []',
      'capabilities:', '  shell.exec: { binaries: ["echo"], approval: always }', '',
    ].join('\n'));
    await b.page.goto(`${env.server.url}/devices/appr`);
    await b.page.click('#cap-shell-exec summary');
    await b.page.fill('#cap-shell-exec textarea[name="argv"]', 'echo\nhello from the dashboard');
    await b.page.click('#cap-shell-exec button[type="submit"]');
    await b.page.waitForSelector('#result-shell-exec .notice.warn', { timeout: 10_000 });
    expect(env.rt.audit.tail(5, 'appr').some((e) => e.outcome === 'ok')).toBe(false);
    // The pending list refreshes itself; approve from it.
    const item = await b.page.waitForSelector('#approvals li[data-approval]', { timeout: 5000 });
    expect(await item.textContent()).toContain('shell.exec');
    expect(await item.textContent()).toContain('asked by cli:tester');
    await b.page.click('#approvals button[value="approve"]');
    await b.page.waitForSelector('#result-shell-exec [data-outcome="ok"]', { timeout: 10_000 });
    expect(await b.page.textContent('#result-shell-exec pre.stdout')).toContain('hello from the dashboard');
    const row = env.rt.db.prepare("SELECT state, decided_by, room_id FROM approvals WHERE device = 'appr'").get() as { state: string; decided_by: string; room_id: string };
    expect(row).toEqual({ state: 'approved', decided_by: 'cli:tester', room_id: 'dashboard' });
    expect(env.rt.audit.tail(1, 'appr')[0]).toMatchObject({ capability: 'shell.exec', actor: 'cli:tester', outcome: 'ok' });
    await b.page.waitForSelector('#approvals p.muted', { timeout: 5000 });
  }, 30_000);

  it('refuses a state-changing request without the CSRF token, even with the session cookie', async () => {
    const cookie = (await b.context.cookies()).find((c) => c.name === 'meshpilot_session')!;
    const headers = { cookie: `meshpilot_session=${cookie.value}`, 'content-type': 'application/x-www-form-urlencoded' };
    const before = env.rt.audit.head('local')?.seq ?? 0;
    const none = await fetch(`${env.server.url}/devices/local/run`, { method: 'POST', headers, body: '_capability=sys.info' });
    expect(none.status).toBe(403);
    expect(await none.json()).toMatchObject({ code: 'forbidden' });
    const wrong = await fetch(`${env.server.url}/devices/local/run`, { method: 'POST', headers: { ...headers, 'x-csrf-token': 'x'.repeat(43) }, body: '_capability=sys.info' });
    expect(wrong.status).toBe(403);
    const revoke = await fetch(`${env.server.url}/devices/local/revoke`, { method: 'POST', headers, body: 'confirm=local' });
    expect(revoke.status).toBe(403);
    expect(env.rt.audit.head('local')?.seq ?? 0).toBe(before);
    // The page's own form carries the token and works (same request, through the browser).
    const csrf = await b.page.inputValue('input[name="_csrf"] >> nth=0');
    const ok = await b.context.request.post(`${env.server.url}/devices/local/run`, { form: { _capability: 'sys.info', _csrf: csrf }, headers: { 'hx-request': 'true' } });
    expect(ok.status()).toBe(200);
    expect(env.rt.audit.head('local')!.seq).toBeGreaterThan(before);
  }, 30_000);

  it('tokens page: create (shown once, works on the API), list, revoke (then refused); audited as the operator', async () => {
    await b.page.goto(`${env.server.url}/tokens`);
    await b.page.fill('input[name="name"]', 'deploy');
    await b.page.fill('input[name="device"]', 'local');
    await b.page.fill('input[name="capability"]', 'sys.*');
    await b.page.fill('input[name="expires"]', '7d');
    await b.page.click('button:has-text("Create")');
    const token = (await b.page.textContent('#new-token pre code'))!.trim();
    expect(token).toMatch(/^mp_[A-Za-z0-9_-]{43}$/);
    const use = (): Promise<Response> => fetch(`${env.server.url}/v1/devices`, { headers: { authorization: `Bearer ${token}` } });
    expect((await use()).status).toBe(200);
    await b.page.goto(`${env.server.url}/tokens`);
    expect(await b.page.$('#new-token')).toBeNull();
    expect(await b.page.content()).not.toContain(token);
    expect(await b.page.textContent('tr[data-token="deploy"]')).toContain(`mp_${token.slice(3, 11)}…`);
    await b.page.click('tr[data-token="deploy"] button:has-text("Revoke")');
    expect(await b.page.textContent('main')).toContain('Revoked deploy');
    expect((await use()).status).toBe(401);
    const api = env.rt.audit.tail(10, '_api').map((e) => [e.capability, e.actor]);
    expect(api).toEqual(expect.arrayContaining([['token.create', 'cli:tester'], ['token.revoke', 'cli:tester']]));
  }, 30_000);

  it('the audit viewer filters and verifies', async () => {
    await b.page.goto(`${env.server.url}/audit?capability=fs.list`);
    const rows = await b.page.$$eval('#audit tbody tr', (trs) => trs.map((tr) => tr.textContent ?? ''));
    expect(rows.length).toBeGreaterThan(0);
    expect(rows.every((r) => r.includes('fs.list'))).toBe(true);
    await b.page.click('text=Verify the chains');
    expect(await b.page.textContent('#verify li[data-device="local"]')).toMatch(/local: ok \d+ entries/);
    // A rewritten entry: verify names the first broken seq.
    for (let i = 1; i <= 3; i++) {
      env.rt.audit.append({ device: 'tampered', actor: 'cli:tester', request_id: null, capability: 'fs.list', args: { path: `/var/log/${i}` }, decision: 'allowed', outcome: 'ok', exit_code: 0, output_sha256: null, duration_ms: 1, error_code: null, reason: null, context: null });
    }
    env.rt.db.prepare("UPDATE audit SET body = replace(body, '/var/log/2', '/etc/shadow') WHERE device = 'tampered' AND seq = 2").run();
    await b.page.goto(`${env.server.url}/audit/verify`);
    expect(await b.page.textContent('#verify li[data-device="tampered"]')).toMatch(/tampered: BROKEN at seq 2/);
    expect(await b.page.textContent('#verify li[data-device="local"]')).toMatch(/local: ok/);
  }, 30_000);

  it('reads on a phone, and without JavaScript', async () => {
    const phone = await b.browser.newContext({ viewport: { width: 390, height: 844 }, javaScriptEnabled: false, isMobile: true });
    await phone.addCookies((await b.context.cookies()).filter((c) => c.name === 'meshpilot_session'));
    const p = await phone.newPage();
    await p.goto(`${env.server.url}/`);
    expect(await p.textContent('#dev-local')).toContain('unreachable');
    // No horizontal scrolling: the grid turns into cards.
    expect(await p.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(390);
    await p.goto(`${env.server.url}/audit`);
    expect(await p.textContent('#audit')).toContain('fs.list');
    if (process.env['MESHPILOT_SCREENSHOTS'] === '1') await screenshots(p);
    await phone.close();
  }, 30_000);

  // Last: it leaves this address limited for a while.
  it('limits failed logins per client address (http.auth_failures_per_min), then 429', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) {
      const r = await fetch(`${env.server.url}/login`, { method: 'POST', body: new URLSearchParams({ t: `guess-${i}-${'x'.repeat(30)}` }) });
      statuses.push(r.status);
      if (r.status === 429) expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(0);
    }
    // 10 per minute are allowed (one may still be spent by the reused link above).
    expect(statuses.slice(0, 9).every((s) => s === 401)).toBe(true);
    expect(statuses.slice(10)).toEqual([429, 429]);
  }, 30_000);
});
