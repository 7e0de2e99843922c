/**
 * An API call that needs approval, end to end with a real device bot under the real supervisor and a
 * homeserver (Synapse when MESHPILOT_TEST_HOMESERVER is set): POST /v1/exec answers 202 → the request
 * appears in the operator's DM with that device's bot, as a chat request does → ✅ (or ❌) from the
 * phone → GET /v1/approvals/<id> says approved and carries the result (or the rejection), audited with
 * actor api:<token>. The dashboard's way (IPC approval-decide) decides the same approval.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpConfigSchema, type Config } from '../capabilities/config.js';
import type { Runtime } from '../launcher/runtime.js';
import type { Supervisor } from '../launcher/supervisor.js';
import { apiSurface } from '../launcher/http/api/index.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { TokenStore } from '../launcher/http/tokens.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { silentLogger as silent, startSupervisedBot } from './helpers/supervised-bot.js';
import { bodyOf } from './helpers/phone.js';

let env: BotEnv;
let rt: Runtime;
let sup: Supervisor;
let config: Config;
let srv: RunningHttpServer;
let token: string;
let room: string;
let botUser: string;

async function post(body: unknown): Promise<{ status: number; json: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any -- shapes are checked in api.test.ts
  const r = await fetch(`${srv.url}/v1/exec`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.status, json: await r.json() };
}
async function get(url: string): Promise<{ status: number; json: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any -- as above
  const r = await fetch(`${srv.url}${url}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: r.status, json: await r.json() };
}
function askFor(marker: string, sinceIdx: number): Promise<ClientEvent> {
  return env.phone.waitFor((e) => e.sender === botUser && env.phone.events.indexOf(e) >= sinceIdx && /Approval needed/.test(bodyOf(e)) && bodyOf(e).includes(marker), 30_000);
}
async function react(ev: ClientEvent, key: string): Promise<void> {
  await env.phone.client.sendEvent(room, 'm.reaction' as never, { 'm.relates_to': { rel_type: 'm.annotation', event_id: ev.event_id, key } } as never);
}

beforeAll(async () => {
  env = await createBotEnv({ approvalTimeoutS: 60 });
  const bot = await startSupervisedBot(env, 'apibox', '  sys.info: {}\n  shell.exec: { binaries: ["echo"], approval: always }\n');
  ({ rt, sup, config, botUser, room } = bot);
  srv = await startHttpServer({ runtime: rt, config, supervisor: sup, http: HttpConfigSchema.parse({ listen: '127.0.0.1:0' }), logger: silent }, [apiSurface()]);
  token = new TokenStore(rt.db, rt.audit).create({ name: 'ci', devices: ['apibox'], capabilities: ['*'], expiresInS: 86400, rate: { count: 100, windowS: 60 }, by: 'test' }).token;
}, 120_000);

afterAll(async () => {
  await srv?.close();
  await sup?.stop();
  await rt?.close();
  await env?.cleanup();
});

describe('API approvals through the device bot', () => {
  it('202 → the request is in the operator\'s DM → ✅ from the phone → the poll says approved and has the result', async () => {
    const idx = env.phone.events.length;
    const r = await post({ device: 'apibox', capability: 'shell.exec', args: { argv: ['echo', 'api-approved'] } });
    expect(r.status).toBe(202);
    expect(r.json.approval).toMatchObject({ state: 'pending', device: 'apibox', capability: 'shell.exec', actor: 'api:ci', result: null });
    const ask = await askFor('api-approved', idx);
    expect(ask.room_id).toBe(room);
    expect(bodyOf(ask)).toContain('shell.exec on apibox');
    expect(bodyOf(ask)).toContain('asked by api:ci');
    const pending = await get(r.json.poll);
    expect(pending.json.state).toBe('pending');
    expect(bodyOf(ask)).toContain(`[${pending.json.chat_id}]`);
    await react(ask, '✅');
    const done = await get(`${r.json.poll}?wait=20`);
    expect(done.json).toMatchObject({ state: 'approved', decided_by: env.operator.userId });
    expect(done.json.result).toMatchObject({ ok: true, decision: 'approved' });
    expect(done.json.result.result.stdout).toContain('api-approved');
    const entry = rt.audit.get('apibox', done.json.result.audit.seq);
    expect(entry).toMatchObject({ actor: 'api:ci', decision: 'approved', outcome: 'ok', hash: done.json.result.audit.hash });
    expect(entry?.reason).toContain(`approved by ${env.operator.userId}`);
  }, 60_000);

  it('❌ from the phone rejects it: nothing runs, the poll says rejected', async () => {
    const idx = env.phone.events.length;
    const r = await post({ device: 'apibox', capability: 'shell.exec', args: { argv: ['echo', 'api-rejected'] } });
    expect(r.status).toBe(202);
    await react(await askFor('api-rejected', idx), '❌');
    const done = await get(`${r.json.poll}?wait=20`);
    expect(done.json).toMatchObject({ state: 'rejected', decided_by: env.operator.userId, result: { ok: false, decision: 'rejected', code: 'approval_rejected' } });
    expect(rt.audit.entriesAfter('apibox', 0, 1000).some((e) => e.outcome === 'ok' && JSON.stringify(e.args).includes('api-rejected'))).toBe(false);
  }, 60_000);

  it('"wait" in the exec body waits for the verdict; an operator deciding outside chat (dashboard IPC) decides the same approval', async () => {
    const idx = env.phone.events.length;
    const answer = post({ device: 'apibox', capability: 'shell.exec', args: { argv: ['echo', 'api-waited'] }, wait: 30 });
    const ask = await askFor('api-waited', idx);
    const id = /\[([0-9a-f]{6})\]/.exec(bodyOf(ask))?.[1];
    expect(sup.sendTo('apibox', { type: 'approval-decide', id: id!, approve: true, by: env.operator.userId })).toBe(true);
    const r = await answer;
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ ok: true, decision: 'approved' });
    expect(r.json.result.stdout).toContain('api-waited');
  }, 60_000);

  it('a token cannot approve: there is no such endpoint, and a reaction from the bot\'s own side counts for nothing', async () => {
    const r = await post({ device: 'apibox', capability: 'shell.exec', args: { argv: ['echo', 'never'] } });
    expect(r.status).toBe(202);
    for (const path of [`/v1/approvals/${r.json.approval.id}`, `/v1/approvals/${r.json.approval.id}/approve`]) {
      const res = await fetch(`${srv.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{"approve":true}' });
      expect(res.status).toBe(404);
    }
    expect((await get(r.json.poll)).json.state).toBe('pending');
  }, 30_000);
});
