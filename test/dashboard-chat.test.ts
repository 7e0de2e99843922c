/**
 * `!dashboard` in chat: the operator's phone asks the real device bot process (test homeserver), the
 * bot writes a one-time link to meshpilot.db and sends it in the operator's DM; the launcher's
 * dashboard server (a real HTTP server on the same MESHPILOT_HOME) accepts it once, for a session of
 * that operator's Matrix ID.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { startDashboard, type DashboardEnv } from './helpers/dashboard-env.js';
import { bodyOf } from './helpers/phone.js';

let env: BotEnv;
let dash: DashboardEnv;
let room: string;
let botUserId: string;

beforeAll(async () => {
  env = await createBotEnv({ withLlm: false });
  botUserId = (await env.registerBot('box')).userId;
  env.writeManifest('box', '  sys.info: {}\n');
  ({ room } = await env.startBotInDm('box'));
  dash = await startDashboard({ home: env.home });
}, 90_000);

afterAll(async () => {
  await dash?.stop();
  await env?.cleanup();
}, 30_000);

describe('!dashboard', () => {
  it('DMs the operator a one-time link that opens a session as them', async () => {
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, '!dashboard');
    const reply = await env.phone.waitFor((e: ClientEvent) => e.sender === botUserId && e.type === 'm.room.message' && env.phone.events.indexOf(e) >= idx && /dashboard login/.test(bodyOf(e)), 20_000);
    expect(reply.room_id).toBe(room);
    const m = /(http:\/\/127\.0\.0\.1:7400)\/login\?t=([A-Za-z0-9_-]{43})/.exec(bodyOf(reply));
    expect(m, bodyOf(reply)).not.toBeNull();
    // The link names the config's http.listen (default 127.0.0.1:7400); this test's server listens elsewhere.
    const t = m![2]!;
    const login = await fetch(`${dash.server.url}/login`, { method: 'POST', body: new URLSearchParams({ t }), redirect: 'manual' });
    expect(login.status).toBe(303);
    const cookie = login.headers.get('set-cookie')!.split(';')[0]!;
    const page = await (await fetch(`${dash.server.url}/`, { headers: { cookie } })).text();
    expect(page).toContain(`<span>${env.operator.userId}</span>`);
    expect(page).toContain('id="dev-box"');
    const again = await fetch(`${dash.server.url}/login`, { method: 'POST', body: new URLSearchParams({ t }), redirect: 'manual' });
    expect(again.status).toBe(401);
  }, 60_000);

  it('is listed by !help', async () => {
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, '!help');
    const help = await env.phone.waitFor((e: ClientEvent) => e.sender === botUserId && env.phone.events.indexOf(e) >= idx && /!dashboard/.test(bodyOf(e)), 20_000);
    expect(bodyOf(help)).toMatch(/!dashboard — a one-time login link for the web dashboard/);
  }, 30_000);
});
