/**
 * Trust levels over Matrix, with the real device bot process: a citizen DMs the bot and sees only their
 * own tools (!help, the LLM's tool list); their risky call is approved by the operator in the
 * operator's own DM; a capability not granted to citizens is denied and audited; a stranger gets nothing.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { writeConfig } from '../capabilities/config.js';
import { openDatabase } from '../capabilities/db.js';
import { layout } from '../capabilities/home.js';
import { textReply } from './fixtures/anthropic.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';
import type { RegisteredUser } from './helpers/test-homeserver.js';

let env: BotEnv;
let botUserId: string;
let opRoom: string;
let ann: RegisteredUser;
let annPhone: PhoneHandle;
let annRoom: string;

const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';

async function dmBot(user: RegisteredUser): Promise<string> {
  const res = await fetch(`${env.hs.url}/_matrix/client/v3/createRoom`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${user.accessToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ invite: [botUserId], is_direct: true, preset: 'trusted_private_chat' }),
  });
  return ((await res.json()) as { room_id: string }).room_id;
}

function auditTail(n: number) {
  const db = openDatabase(path.join(env.home, 'meshpilot.db'));
  try {
    return new SqliteAuditLog(db).tail(n, 'box');
  } finally {
    db.close();
  }
}

beforeAll(async () => {
  env = await createBotEnv({ approvalTimeoutS: 30 });
  botUserId = (await env.registerBot('box')).userId;
  ann = await env.hs.registerUser('ann', 'pw-ann');
  // The config names ann a citizen (users:); the operator stays the config's operator.
  const file = layout(env.home).config;
  const config = parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  writeConfig(file, { ...config, users: { [ann.userId]: 'citizen' } });
  env.writeManifest('box', [
    '  sys.info: {}',
    `  fs.list: { paths_allowed: ["${env.work}/**"], tiers: [citizen, operator] }`,
    '  shell.exec: { binaries: ["echo"], approval: always, tiers: [citizen, operator] }',
    '',
  ].join('\n'));
  ({ room: opRoom } = await env.startBotInDm('box'));
  annPhone = await startPhone(env.hs, ann);
  annRoom = await dmBot(ann);
  await annPhone.waitFor((e) => e.room_id === annRoom && e.type === 'm.room.member' && e.state_key === botUserId && (e.content as { membership?: string }).membership === 'join', 20_000);
}, 90_000);

afterAll(async () => {
  annPhone?.stop();
  await env?.cleanup();
});

async function annSays(text: string): Promise<number> {
  const idx = annPhone.events.length;
  await annPhone.client.sendTextMessage(annRoom, text);
  return idx;
}
const botSaysTo = (phone: PhoneHandle, room: string, match: RegExp, since: number) =>
  phone.waitFor((e) => fromBot(e) && e.room_id === room && phone.events.indexOf(e) >= since && match.test(bodyOf(e)), 20_000);

describe('a citizen over Matrix', () => {
  it('the bot joins the DM of a citizen the device grants something; !help lists only their commands and capabilities', async () => {
    const since = await annSays('!help');
    const help = bodyOf(await botSaysTo(annPhone, annRoom, /Commands:/, since));
    expect(help).toContain('!help');
    expect(help).toContain('!cap <capability> key=value');
    expect(help).not.toContain('!status');
    expect(help).not.toContain('!audit');
    expect(help).not.toContain('!dashboard');
    expect(help).toMatch(/Capabilities here: fs\.list, shell\.exec\n/);
    expect(help).not.toContain('sys.info');
    expect(help).not.toContain('!vm'); // the vm commands run capabilities this device does not grant them
  });

  it('an operator-only command and a capability not granted to citizens are refused (audited)', async () => {
    let since = await annSays('!status');
    expect(bodyOf(await botSaysTo(annPhone, annRoom, /needs the operator permission/, since))).toBe('!status needs the operator permission.');
    since = await annSays('!cap sys.info');
    const denied = await botSaysTo(annPhone, annRoom, /sys\.info/, since);
    expect(bodyOf(denied)).toContain('sys.info is not granted to citizens on box (tiers [operator, admin])');
    expect(auditTail(1)[0]).toMatchObject({ actor: ann.userId, capability: 'sys.info', decision: 'denied', error_code: 'policy_denied' });
  });

  it("the LLM's tool list holds only the citizen's capabilities", async () => {
    env.llm.reset();
    env.llm.enqueue(textReply('Hello Ann.'));
    const since = await annSays('what can you do?');
    await botSaysTo(annPhone, annRoom, /Hello Ann/, since);
    const body = env.llm.accepted[0]?.body as { tools?: Array<{ name: string }>; system?: unknown };
    expect((body.tools ?? []).map((t) => t.name).sort()).toEqual(['fs_list', 'shell_exec']);
    expect(JSON.stringify(body.system)).not.toContain('sys.info');
  });

  it("the citizen's risky call is approved by the operator in the operator's DM, never in the citizen's", async () => {
    const opSince = env.phone.events.length;
    const since = await annSays('!cap shell.exec argv=echo,citizen-run');
    await botSaysTo(annPhone, annRoom, /waits for an operator's approval/, since);
    const ask = await botSaysTo(env.phone, opRoom, /Approval needed/, opSince);
    expect(bodyOf(ask)).toContain(`asked by ${ann.userId}`);
    // The citizen cannot approve their own request, and it was not posted where they read.
    expect(annPhone.events.some((e) => fromBot(e) && /Approval needed/.test(bodyOf(e)))).toBe(false);
    await env.phone.client.sendEvent(opRoom, 'm.reaction' as never, { 'm.relates_to': { rel_type: 'm.annotation', event_id: ask.event_id, key: '✅' } } as never);
    const done = await botSaysTo(annPhone, annRoom, /citizen-run/, since);
    expect(bodyOf(done)).toContain('shell.exec on box');
    const last = auditTail(1)[0]!;
    expect(last).toMatchObject({ actor: ann.userId, capability: 'shell.exec', decision: 'approved', outcome: 'ok' });
    expect(last.reason).toContain(`approved by ${env.operator.userId}`);
  });

  it('a stranger gets nothing: the invite is refused and audited', async () => {
    const eve = await env.hs.registerUser('eve', 'pw-eve');
    const room = await dmBot(eve);
    await new Promise((r) => setTimeout(r, 3000));
    const joined = (await env.hs.events(room)).some((e) => e.type === 'm.room.member' && e.state_key === botUserId && (e.content as { membership?: string }).membership === 'join');
    expect(joined).toBe(false);
    expect(auditTail(5).find((e) => e.actor === eve.userId)).toMatchObject({ capability: 'chat.invite', decision: 'denied', outcome: 'not_run' });
  });
});
