/**
 * Approvals on the dashboard with a real device bot under the real supervisor (test homeserver:
 * Synapse when MESHPILOT_TEST_HOMESERVER is set, else the fixture), in a headless Chromium:
 * - a run from the device page that needs approval is asked in the operator's DM exactly like a chat
 *   request (same id, same row), and the operator approves it from the page: the result follows;
 * - a request asked in chat (`!cap …`) shows on the device page, and rejecting it there rejects it in
 *   chat: the bot says so and nothing runs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpConfigSchema, type Config } from '../capabilities/config.js';
import { dashboardSurface, createLoginLink } from '../launcher/http/dashboard/index.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import type { Runtime } from '../launcher/runtime.js';
import type { Supervisor } from '../launcher/supervisor.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { silentLogger as silent, startSupervisedBot } from './helpers/supervised-bot.js';
import { logIn, startBrowser, type BrowserEnv } from './helpers/dashboard-env.js';
import { bodyOf } from './helpers/phone.js';

let env: BotEnv;
let rt: Runtime;
let sup: Supervisor;
let config: Config;
let srv: RunningHttpServer;
let b: BrowserEnv;
let room: string;
let botUser: string;

function askFor(marker: string, sinceIdx: number): Promise<ClientEvent> {
  return env.phone.waitFor((e) => e.sender === botUser && env.phone.events.indexOf(e) >= sinceIdx && /Approval needed/.test(bodyOf(e)) && bodyOf(e).includes(marker), 30_000);
}

beforeAll(async () => {
  env = await createBotEnv({ approvalTimeoutS: 60, withLlm: false });
  const bot = await startSupervisedBot(env, 'dashbox', '  sys.info: {}\n  shell.exec: { binaries: ["echo"], approval: always }\n');
  ({ rt, sup, config, botUser, room } = bot);
  srv = await startHttpServer({ runtime: rt, config, supervisor: sup, http: HttpConfigSchema.parse({ listen: '127.0.0.1:0' }), logger: silent }, [dashboardSurface()]);
  b = await startBrowser();
  await logIn(b.page, createLoginLink({ runtime: rt }, srv.url, env.operator.userId));
}, 120_000);

afterAll(async () => {
  await b?.close();
  await srv?.close();
  await sup?.stop();
  await rt?.close();
  await env?.cleanup();
}, 60_000);

describe('dashboard approvals through the device bot', () => {
  it('a dashboard run is asked in the operator\'s DM like a chat request, and approved from the page', async () => {
    await b.page.goto(`${srv.url}/devices/dashbox`);
    expect(await b.page.textContent('main h1')).toContain('dashbox');
    const idx = env.phone.events.length;
    await b.page.click('#cap-shell-exec summary');
    await b.page.fill('#cap-shell-exec textarea[name="argv"]', 'echo\ndash-approved');
    await b.page.click('#cap-shell-exec button[type="submit"]');
    await b.page.waitForSelector('#result-shell-exec .notice.warn', { timeout: 10_000 });
    const ask = await askFor('dash-approved', idx);
    expect(ask.room_id).toBe(room);
    expect(bodyOf(ask)).toContain(`asked by ${env.operator.userId}`);
    const id = /\[([0-9a-f]{6})\]/.exec(bodyOf(ask))![1]!;
    // The same request, on the page: the bot's row, decidable here.
    const item = await b.page.waitForSelector(`#approvals li[data-approval="${id}"]`, { timeout: 5000 });
    expect(await item.textContent()).toContain('dash-approved');
    await b.page.click(`#approvals li[data-approval="${id}"] button[value="approve"]`);
    await b.page.waitForSelector('#result-shell-exec [data-outcome="ok"]', { timeout: 20_000 });
    expect(await b.page.textContent('#result-shell-exec pre.stdout')).toContain('dash-approved');
    const row = rt.db.prepare('SELECT state, decided_by FROM approvals WHERE id = ?').get(id);
    expect(row).toEqual({ state: 'approved', decided_by: env.operator.userId });
    const entry = rt.audit.tail(1, 'dashbox')[0]!;
    expect(entry).toMatchObject({ actor: env.operator.userId, capability: 'shell.exec', decision: 'approved', outcome: 'ok' });
  }, 60_000);

  it('a request asked in chat shows on the device page; rejecting it there rejects it in chat', async () => {
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, '!cap shell.exec argv=echo,chat-rejected');
    const ask = await askFor('chat-rejected', idx);
    const id = /\[([0-9a-f]{6})\]/.exec(bodyOf(ask))![1]!;
    await b.page.goto(`${srv.url}/devices/dashbox`);
    await b.page.waitForSelector(`#approvals li[data-approval="${id}"]`, { timeout: 5000 });
    await b.page.click(`#approvals li[data-approval="${id}"] button[value="reject"]`);
    await env.phone.waitFor((e) => e.sender === botUser && env.phone.events.indexOf(e) > env.phone.events.indexOf(ask) && /reject/i.test(bodyOf(e)), 20_000);
    const row = rt.db.prepare('SELECT state, decided_by FROM approvals WHERE id = ?').get(id);
    expect(row).toEqual({ state: 'rejected', decided_by: env.operator.userId });
    expect(rt.audit.tail(20, 'dashbox').some((e) => e.outcome === 'ok' && JSON.stringify(e.args).includes('chat-rejected'))).toBe(false);
    await b.page.waitForSelector(`#approvals li[data-approval="${id}"]`, { state: 'detached', timeout: 5000 });
  }, 60_000);
});
