/**
 * The dashboard's Workspaces page in a browser (Debian's Chromium through playwright-core), on a real
 * HTTP server with a config whose Matrix is the test homeserver (Synapse when MESHPILOT_TEST_HOMESERVER
 * is set): problems of a pasted template as `file:line path: message`; a template picked as a file →
 * its plan → Apply → the steps, the summary, the tree with states, device/home/model/parent and links;
 * a preview whose org changed before Apply shows the new plan and applies nothing; a POST without the
 * CSRF token is refused; rm names the descendants and removes children first.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigSchema } from '../capabilities/config.js';
import { createLoginLink, dashboardSurface } from '../launcher/http/dashboard/index.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { roleHash, WorkspaceStore } from '../capabilities/workspace/store.js';
import { logIn, startBrowser, type BrowserEnv } from './helpers/dashboard-env.js';
import { startTestHomeserver, type TestHomeserver } from './helpers/test-homeserver.js';
import { tempDir } from './helpers/tmp.js';

let hs: TestHomeserver;
let rt: Runtime;
let root: string;
let srv: RunningHttpServer;
let b: BrowserEnv;
const suffix = randomBytes(3).toString('hex');
const operator = '@ops-dash:example.org';

const TEMPLATE = (): string => `name: dash-${suffix}
defaults: { device: server, capabilities: [fs.read], model: claude-test-model }
workspaces:
  - name: lead
    role: Leads.
    home: ${root}/w/lead
    children:
      - { name: helper, role: Helps., home: ${root}/w/helper }
`;

beforeAll(async () => {
  hs = await startTestHomeserver();
  root = tempDir('mp-dash-ws-');
  rt = openRuntime({ root: path.join(root, 'home') });
  writeFileSync(path.join(rt.home.manifests, 'server.yaml'), [
    'device: server', 'os: linux', 'transport: { kind: local }', 'capabilities:',
    ...['fs.read', 'fs.list', 'fs.stat', 'fs.write', 'fs.delete'].map((c) => `  ${c}: { paths_allowed: ["${root}/w/**"] }`), '',
  ].join('\n'));
  const config = ConfigSchema.parse({
    matrix: { homeserver_url: hs.url, server_name: hs.serverName, registration_shared_secret: hs.registrationSharedSecret, operator_bot: hs.unique(`mp-dws-${suffix}`), bot_prefix: `${hs.unique(`mpd${suffix}`)}-` },
    operators: [operator],
  });
  srv = await startHttpServer({ runtime: rt, config, http: { listen: '127.0.0.1:0', max_body_bytes: 64 * 1024, auth_failures_per_min: 10 }, logger: pino({ level: 'silent' }) }, [dashboardSurface()]);
  b = await startBrowser();
  await logIn(b.page, createLoginLink({ runtime: rt }, srv.url, operator));
}, 90_000);

afterAll(async () => {
  await b?.close();
  await srv?.close();
  await rt?.close();
  await hs?.stop();
});

const text = async (sel: string): Promise<string> => (await b.page.textContent(sel)) ?? '';

describe('the Workspaces page', () => {
  it('problems, a file → plan → apply, the tree; a changed org is planned again; CSRF; rm names the descendants', async () => {
    const page = b.page;
    await page.goto(`${srv.url}/workspaces`);
    expect(await page.getAttribute('nav a[href="/workspaces"]', 'aria-current')).toBe('page');
    expect(await text('#org-empty')).toContain('No workspaces yet');

    // Problems of a pasted template: file:line path: message.
    await page.fill('textarea[name="yaml"]', 'name: bad\nworkspaces:\n  - name: ok-one\n    role: R.\n    device: nowhere\n  - name: Bad_Name\n');
    await Promise.all([page.waitForURL(/\/workspaces\/plan$/), page.click('#import button[type="submit"]')]);
    expect(await text('#problems')).toMatch(/org\.yaml:6 workspaces\[1\]\.name: /);
    // !include cannot come with a form.
    await page.fill('textarea[name="yaml"]', 'name: inc\nworkspaces:\n  - !include a.yaml\n');
    await Promise.all([page.waitForURL(/\/workspaces\/plan$/), page.click('#import button[type="submit"]')]);
    expect(await text('#problems')).toContain('uses !include (line 3)');

    // A file: its plan, then Apply.
    await page.goto(`${srv.url}/workspaces`);
    await page.setInputFiles('input[name="file"]', { name: 'lab.yaml', mimeType: 'application/yaml', buffer: Buffer.from(TEMPLATE()) });
    await Promise.all([page.waitForURL(/\/workspaces\/plan$/), page.click('#import button[type="submit"]')]);
    expect(await page.textContent('h1')).toBe('Workspaces: plan of lab.yaml');
    const plan = await text('#plan');
    expect(plan).toContain(`org dash-${suffix} (merge): 2 create, 0 update, 0 unchanged, 0 skipped, 0 remove`);
    expect(plan).toMatch(/└─ \+ helper {2}create on server/);
    await Promise.all([page.waitForURL(/\/workspaces\/import$/), page.click('#apply button[type="submit"]')]);
    expect(await text('#result')).toContain(`dash-${suffix}: done (2 created, 0 updated, 0 skipped, 0 removed)`);
    const steps = await page.$$eval('#steps li', (lis) => lis.map((li) => li.textContent ?? ''));
    expect(steps.filter((s) => /^\[\d\/2\] create (lead|helper): done/.test(s))).toHaveLength(2);
    // The tree: helper under lead, with its device, home, model, parent and links.
    const helper = page.locator('#org li[data-workspace="lead"] li[data-workspace="helper"]');
    const h = (await helper.textContent()) ?? '';
    expect(h).toMatch(/on server · home .*\/w\/helper · model claude-test-model · reports to lead · template dash-/);
    expect(await helper.locator('a[href="/devices/helper"]').count()).toBe(1);
    expect(await helper.locator('a[href="/audit?device=helper"]').count()).toBe(1);
    expect(await helper.locator('a[href="/devices/server"]').count()).toBe(1);
    expect(existsSync(path.join(rt.home.manifests, 'helper.yaml'))).toBe(true);
    const store = new WorkspaceStore(rt.db);
    expect(store.list().map((r) => [r.name, r.parent])).toEqual([['helper', 'lead'], ['lead', null]]);

    // A preview, then the org changes underneath: Apply shows the plan as it is now and applies nothing.
    await page.goto(`${srv.url}/workspaces`);
    await page.fill('textarea[name="yaml"]', TEMPLATE().replace('Helps.', 'Helps more.'));
    await Promise.all([page.waitForURL(/\/workspaces\/plan$/), page.click('#import button[type="submit"]')]);
    expect(await text('#plan')).toContain('1 update');
    const lead = store.list().find((r) => r.name === 'lead')!;
    store.upsert({ ...lead, role_hash: roleHash('changed by someone else') });
    await Promise.all([page.waitForURL(/\/workspaces\/import$/), page.click('#apply button[type="submit"]')]);
    expect(await text('#changed')).toContain('nothing was applied');
    expect(await text('#plan')).toContain('2 update');
    expect(store.list().find((r) => r.name === 'lead')!.role_hash).toBe(roleHash('changed by someone else'));

    // Without the CSRF token: refused.
    const forged = await page.request.post(`${srv.url}/workspaces/lead/rm`, { form: { confirm: 'lead' } });
    expect(forged.status()).toBe(403);
    expect(store.list()).toHaveLength(2);

    // rm: the confirmation names the descendants; then children first.
    await page.goto(`${srv.url}/workspaces`);
    await Promise.all([page.waitForURL(/\/workspaces\/lead\/rm$/), page.click('li[data-workspace="lead"] > .ws a[href="/workspaces/lead/rm"]')]);
    expect(await text('#descendants')).toContain('This also removes its 1 descendant, first: helper.');
    await page.fill('#rm input[name="confirm"]', 'lead');
    await Promise.all([page.waitForURL(/\/workspaces\/lead\/rm$/), page.click('#rm button[type="submit"]')]);
    expect(await text('#result')).toContain('removed 2 workspaces: helper, lead');
    expect(await text('#org-empty')).toContain('No workspaces yet');
    expect(store.list()).toEqual([]);
  }, 120_000);
});
