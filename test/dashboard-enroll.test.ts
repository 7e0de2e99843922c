/**
 * Adding and revoking a device from the dashboard, in a browser, with the real add-pc engine against a
 * real sshd (test/fixtures/sshd.ts) and the test homeserver (Synapse when MESHPILOT_TEST_HOMESERVER is
 * set, else the fixture): the steps appear as they happen; a failure injected after the Matrix step
 * (MESHPILOT_ENROLL_FAULT, as for the CLI) shows what was rolled back and leaves nothing; a clean add
 * registers the device; revoke refuses a mistyped name and then takes the device away.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeConfig } from '../capabilities/config.js';
import { ensureHome } from '../capabilities/home.js';
import { startSshd, type SshdFixture } from './fixtures/sshd.js';
import { uniqueBotNames } from './helpers/bot-env.js';
import { logIn, startBrowser, startDashboard, type BrowserEnv, type DashboardEnv } from './helpers/dashboard-env.js';
import { startTestHomeserver, type TestHomeserver } from './helpers/test-homeserver.js';

let env: DashboardEnv;
let b: BrowserEnv;
let sshd: SshdFixture;
let hs: TestHomeserver;
let dir: string;
const saved = { home: process.env['MESHPILOT_HOME'], sshConfig: process.env['MESHPILOT_SSH_CONFIG'], fault: process.env['MESHPILOT_ENROLL_FAULT'] };

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'mp-dash-enroll-'));
  const home = path.join(dir, 'home');
  const { home: l } = ensureHome(home);
  hs = await startTestHomeserver();
  sshd = await startSshd();
  const operator = await hs.registerUser(hs.unique('lucas'), 'pw-lucas');
  writeConfig(l.config, {
    matrix: { homeserver_url: hs.url, server_name: hs.serverName, registration_shared_secret: hs.registrationSharedSecret, ...uniqueBotNames(hs) },
    operators: [operator.userId],
  });
  process.env['MESHPILOT_HOME'] = home;
  process.env['MESHPILOT_SSH_CONFIG'] = path.join(dir, 'no-ssh-config');
  env = await startDashboard({ home });
  b = await startBrowser();
  await logIn(b.page, env.link(operator.userId));
}, 90_000);

afterAll(async () => {
  for (const [k, v] of [['MESHPILOT_HOME', saved.home], ['MESHPILOT_SSH_CONFIG', saved.sshConfig], ['MESHPILOT_ENROLL_FAULT', saved.fault]] as const) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  await b?.close();
  await env?.stop();
  await sshd?.stop();
  await hs?.stop();
  rmSync(dir, { recursive: true, force: true });
}, 60_000);

async function submitAdd(name: string): Promise<void> {
  await b.page.goto(`${env.server.url}/add`);
  await b.page.fill('input[name="name"]', name);
  await b.page.selectOption('select[name="via"]', 'ssh');
  await b.page.fill('input[name="ssh"]', `${sshd.user}@127.0.0.1:${sshd.port}`);
  await b.page.fill('input[name="sshKey"]', sshd.keyPath);
  await b.page.fill('input[name="acceptHostKey"]', sshd.hostKeyFingerprint);
  await Promise.all([b.page.waitForURL(/\/jobs\//), b.page.click('button[type="submit"]:has-text("Add")')]);
  await b.page.evaluate('window.marker = 7');
}

/** The steps arrived over SSE into the same page: it was not reloaded. */
const notReloaded = async (): Promise<boolean> => (await b.page.evaluate('window.marker')) === 7;

describe('add and revoke a device from the dashboard', () => {
  it('shows the steps as they run, and on an injected failure what was rolled back', async () => {
    process.env['MESHPILOT_ENROLL_FAULT'] = 'fail:matrix';
    try {
      await submitAdd('dashpc');
      const result = await b.page.waitForSelector('#steps li[data-result]', { timeout: 60_000 });
      expect(await result.getAttribute('data-result')).toBe('failed');
      const steps = await b.page.$$eval('#steps li', (lis) => lis.map((li) => li.textContent ?? ''));
      expect(steps.some((s) => /^\[1\/4\] checking ssh access and the machine … [\d.]+ s/.test(s))).toBe(true);
      expect(steps.some((s) => /^\[3\/4\] .*FAILED: injected fault after step matrix/.test(s))).toBe(true);
      const undone = await b.page.$$eval('#steps li[data-undone]', (lis) => lis.map((li) => li.getAttribute('data-undone')));
      expect(undone).toEqual(expect.arrayContaining(['matrix', 'manifest']));
      expect(await result.textContent()).toContain('Rolled back:');
      expect(await notReloaded()).toBe(true);
    } finally {
      delete process.env['MESHPILOT_ENROLL_FAULT'];
    }
    expect(existsSync(path.join(env.home, 'manifests', 'dashpc.yaml'))).toBe(false);
    const last = env.rt.audit.tail(1)[0]!;
    expect(last).toMatchObject({ capability: 'device.enroll', outcome: 'error' });
    expect(last.actor).toMatch(/^@lucas/);
  }, 90_000);

  it('adds a device (registered: no launcher runs), which then shows in the grid', async () => {
    await submitAdd('dashpc');
    const result = await b.page.waitForSelector('#steps li[data-result]', { timeout: 60_000 });
    expect(await result.getAttribute('data-result')).toBe('ok');
    expect(existsSync(path.join(env.home, 'manifests', 'dashpc.yaml'))).toBe(true);
    await b.page.goto(`${env.server.url}/`);
    expect(await b.page.textContent('#dev-dashpc')).toContain('ssh');
  }, 90_000);

  it('revoke asks for the name to be typed, then takes the device away', async () => {
    await b.page.goto(`${env.server.url}/devices/dashpc/revoke`);
    await b.page.fill('input[name="confirm"]', 'dashp');
    await b.page.click('button:has-text("Revoke dashpc")');
    expect(await b.page.textContent('main')).toContain('does not match');
    expect(existsSync(path.join(env.home, 'manifests', 'dashpc.yaml'))).toBe(true);

    await b.page.goto(`${env.server.url}/devices/dashpc/revoke`);
    await b.page.fill('input[name="confirm"]', 'dashpc');
    await Promise.all([b.page.waitForURL(/\/jobs\//), b.page.click('button:has-text("Revoke dashpc")')]);
    const result = await b.page.waitForSelector('#steps li[data-result]', { timeout: 60_000 });
    expect(await result.getAttribute('data-result')).toBe('ok');
    expect(existsSync(path.join(env.home, 'manifests', 'dashpc.yaml'))).toBe(false);
    const last = env.rt.audit.tail(1)[0]!;
    expect(last).toMatchObject({ capability: 'device.revoke' });
    expect(last.actor).toMatch(/^@lucas/);
    await b.page.goto(`${env.server.url}/`);
    expect(await b.page.$('#dev-dashpc')).toBeNull();
  }, 90_000);
});
