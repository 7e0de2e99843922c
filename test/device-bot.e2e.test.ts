/**
 * End to end: the operator's phone (matrix-js-sdk) DMs the real device bot process, which talks to
 * the homeserver fixture through matrix-bot-sdk and to the Anthropic fixture through the real SDK.
 */
import { readdirSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { textReply, toolReply } from './fixtures/anthropic.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, waitReady, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';

let env: BotEnv;
let room: string;
let bot: ReturnType<BotEnv['startBot']>;
let botUserId: string;

const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';

async function say(text: string): Promise<string> {
  const r = await env.phone.client.sendTextMessage(room, text);
  return r.event_id;
}

/** The next bot message after `sinceIdx` whose body matches. */
async function botSays(match: RegExp, sinceIdx: number): Promise<ClientEvent> {
  return env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= sinceIdx && match.test(bodyOf(e)), 20_000);
}

function audit() {
  const db = openDatabase(path.join(env.home, 'meshpilot.db'));
  return { log: new SqliteAuditLog(db), close: () => db.close() };
}

beforeAll(async () => {
  env = await createBotEnv({ approvalTimeoutS: 4 });
  botUserId = (await env.registerBot('box')).userId;
  env.writeManifest('box', [
    '  sys.info: {}',
    '  sys.health: {}',
    `  fs.list: { paths_allowed: ["${env.work}/**"] }`,
    '  shell.exec: { binaries: ["echo"], approval: always }',
    '',
  ].join('\n'));
  // The phone accepts the DM the bot creates (the helper auto-accepts invites).
  ({ child: bot, room } = await env.startBotInDm('box'));
}, 60_000);

afterAll(async () => {
  await env?.cleanup();
});

describe('device bot end to end', () => {
  it('created the DM as a direct chat named after the device', async () => {
    const created = (await env.hs.events(room)).find((e) => e.type === 'm.room.name');
    expect((created?.content as { name?: string }).name).toBe('🖥 box');
  });

  it('LLM asks for fs.list → the real listing goes back → reply with the audit footer and head anchor', async () => {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(path.join(env.work, 'report.txt'), 'x');
    env.llm.enqueue(toolReply([{ name: 'fs_list', input: { path: env.work } }]), textReply('There is one file: report.txt'));
    const idx = env.phone.events.length;
    await say('what is in the work dir?');
    const reply = await botSays(/There is one file/, idx);
    const footer = /🧾 #(\d+) fs\.list ok/.exec(bodyOf(reply));
    expect(footer).not.toBeNull();
    // The tool result the model received holds the real listing.
    const second = env.llm.accepted[env.llm.accepted.length - 1];
    expect(JSON.stringify(second?.body)).toContain('report.txt');
    const a = audit();
    const entry = a.log.get('box', Number(footer?.[1]));
    expect(entry).toMatchObject({ capability: 'fs.list', outcome: 'ok', actor: `llm:${env.operator.userId}` });
    expect(a.log.verify('box').ok).toBe(true);
    a.close();
    const anchor = await env.hs.waitFor((e) => e.room_id === room && e.type === 'dev.meshpilot.audit_head');
    expect((anchor.content as { seq: number }).seq).toBeGreaterThanOrEqual(Number(footer?.[1]));
  });

  it('command mode: !cap and !status run without the LLM, with audit refs', async () => {
    const llmCalls = env.llm.requests.length;
    let idx = env.phone.events.length;
    await say(`!cap fs.list path=${env.work}`);
    const listing = await botSays(/fs\.list/, idx);
    expect(bodyOf(listing)).toContain('report.txt');
    expect(bodyOf(listing)).toMatch(/🧾 #\d+ fs\.list ok/);
    idx = env.phone.events.length;
    await say('!status');
    const status = await botSays(/🖥 box/, idx);
    expect(bodyOf(status)).toMatch(/🧾 #\d+ sys\.info ok · 🧾 #\d+ sys\.health ok/);
    idx = env.phone.events.length;
    await say('!help');
    const help = await botSays(/Commands:/, idx);
    expect(bodyOf(help)).toContain('!cap <capability> key=value');
    expect(bodyOf(help)).toContain('fs.list');
    expect(env.llm.requests.length).toBe(llmCalls);
  });

  it('approval: ✅ from the operator runs the call; ❌ rejects it; silence expires it', async () => {
    let idx = env.phone.events.length;
    await say('!cap shell.exec argv=echo,approved-run');
    const ask = await botSays(/Approval needed/, idx);
    expect(bodyOf(ask)).toContain('shell.exec on box');
    await env.phone.client.sendEvent(room, 'm.reaction' as never, { 'm.relates_to': { rel_type: 'm.annotation', event_id: ask.event_id, key: '✅' } } as never);
    const done = await botSays(/shell\.exec on box/, env.phone.events.indexOf(ask) + 1);
    expect(bodyOf(done)).toContain('approved-run');

    idx = env.phone.events.length;
    await say('!cap shell.exec argv=echo,rejected-run');
    const ask2 = await botSays(/Approval needed/, idx);
    await env.phone.client.sendEvent(room, 'm.reaction' as never, { 'm.relates_to': { rel_type: 'm.annotation', event_id: ask2.event_id, key: '❌' } } as never);
    const no = await botSays(/not approved/, env.phone.events.indexOf(ask2) + 1);
    expect(bodyOf(no)).not.toContain('rejected-run\n');

    idx = env.phone.events.length;
    await say('!cap shell.exec argv=echo,expired-run');
    await botSays(/Approval needed/, idx);
    const expired = await botSays(/not approved \(timeout/, idx);
    expect(bodyOf(expired)).toContain('expired');

    const a = audit();
    const tail = a.log.tail(20, 'box').filter((e) => e.capability === 'shell.exec' && e.outcome !== 'started');
    a.close();
    expect(tail.map((e) => e.decision)).toEqual(['approved', 'rejected', 'rejected']);
    expect(tail[0]?.reason).toContain(`approved by ${env.operator.userId}`);
    expect(tail[2]?.reason).toContain('timeout');
  }, 40_000);

  it('an encrypted message it cannot read gets one plain explanation, not silence', async () => {
    const encrypted = { algorithm: 'm.megolm.v1.aes-sha2', ciphertext: 'AwgAEpAB…', device_id: 'PHONE', sender_key: 'k', session_id: 's' };
    const idx = env.phone.events.length;
    await env.phone.client.sendEvent(room, 'm.room.encrypted' as never, encrypted as never);
    const note = await botSays(/end-to-end encrypted/, idx);
    expect(bodyOf(note)).toContain('cannot read your messages here');
    await env.phone.client.sendEvent(room, 'm.room.encrypted' as never, encrypted as never);
    await new Promise((r) => setTimeout(r, 1500));
    expect(env.phone.events.filter((e) => fromBot(e) && /end-to-end encrypted/.test(bodyOf(e)))).toHaveLength(1);
  });

  it("a stranger's invite is ignored and audited as denied", async () => {
    const stranger = await env.hs.registerUser('mallory', 'pw-m');
    const res = await fetch(`${env.hs.url}/_matrix/client/v3/createRoom`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${stranger.accessToken}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ invite: [botUserId], is_direct: true, preset: 'trusted_private_chat' }),
    });
    const { room_id: strangerRoom } = (await res.json()) as { room_id: string };
    await new Promise((r) => setTimeout(r, 3000));
    const joined = (await env.hs.events(strangerRoom)).some((e) => e.type === 'm.room.member' && e.state_key === botUserId && (e.content as { membership?: string }).membership === 'join');
    expect(joined).toBe(false);
    const a = audit();
    const denied = a.log.tail(50, 'box').find((e) => e.capability === 'chat.invite' && e.actor === stranger.userId);
    a.close();
    expect(denied).toMatchObject({ decision: 'denied', outcome: 'not_run' });
  });

  it('bot killed and restarted: answers again and does not re-run old commands', async () => {
    const before = env.phone.events.filter((e) => fromBot(e) && /report\.txt/.test(bodyOf(e))).length;
    bot.kill('SIGKILL');
    await new Promise((r) => bot.once('exit', r));
    bot = env.startBot('box');
    await waitReady(bot);
    const idx = env.phone.events.length;
    await say('!status');
    await botSays(/🖥 box/, idx);
    await new Promise((r) => setTimeout(r, 1500));
    const after = env.phone.events.filter((e) => fromBot(e) && /report\.txt/.test(bodyOf(e))).length;
    expect(after).toBe(before);
    // The DM was not created again and "live" was not re-announced.
    expect(env.phone.events.filter((e) => fromBot(e) && /✓ box live/.test(bodyOf(e)))).toHaveLength(1);
  }, 40_000);

  it('homeserver restarted: the bot resumes and answers new messages only', async () => {
    const before = env.phone.events.filter(fromBot).length;
    await env.hs.restart();
    await new Promise((r) => setTimeout(r, 1500));
    const idx = env.phone.events.length;
    await say(`!cap fs.list path=${env.work}`);
    await botSays(/fs\.list/, idx);
    await new Promise((r) => setTimeout(r, 1500));
    // Exactly one new bot message: the answer (no replays of earlier commands).
    expect(env.phone.events.filter(fromBot).length).toBe(before + 1);
    expect(readdirSync(env.work)).toContain('report.txt');
  }, 40_000);
});
