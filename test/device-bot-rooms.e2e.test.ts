/**
 * A device DM stops being private when the operator invites someone else into it. The real bot
 * process must then post no result, approval request or room key there: it says once why, and goes
 * on in a room that holds only operators. Plain and with end-to-end encryption (where the stranger
 * runs a crypto phone and must not be able to decrypt anything the bot says after joining).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { textReply, toolReply } from './fixtures/anthropic.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';

const WHY = /not an operator of box/;
const isMember = (room: string, user: string, membership: string) => (e: ClientEvent): boolean =>
  e.room_id === room && e.type === 'm.room.member' && e.state_key === user && (e.content as { membership?: string }).membership === membership;

async function inviteStranger(env: BotEnv, room: string, crypto: boolean): Promise<{ stranger: PhoneHandle; strangerId: string }> {
  const user = await env.hs.registerUser('mallory', 'pw-mallory');
  const stranger = await startPhone(env.hs, user, crypto ? { crypto: true } : {});
  await env.phone.client.invite(room, user.userId);
  // The stranger's phone accepts the invite; the operator sees the join.
  await env.phone.waitFor(isMember(room, user.userId, 'join'), 20_000);
  return { stranger, strangerId: user.userId };
}

describe('a non-operator in the device DM (no encryption)', () => {
  let env: BotEnv;
  let room: string;
  let botUserId: string;
  let stranger: PhoneHandle;
  let joinedAt = 0;
  const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';

  beforeAll(async () => {
    env = await createBotEnv({ approvalTimeoutS: 60 });
    await env.registerBot('box');
    env.writeManifest('box', '  sys.info: {}\n  sys.health: {}\n  shell.exec: { binaries: ["echo"], approval: always }\n');
    ({ room, botUserId } = await env.startBotInDm('box'));
    ({ stranger } = await inviteStranger(env, room, false));
    joinedAt = env.phone.events.length;
  }, 90_000);
  afterAll(async () => {
    stranger?.stop();
    await env?.cleanup();
  });

  let other = '';

  it('!status in that room: no result there, the reason once, the result in an operators-only room', async () => {
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, '!status');
    const result = await env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= idx && /🖥 box/.test(bodyOf(e)), 20_000);
    other = result.room_id;
    expect(other).not.toBe(room);
    const why = env.phone.events.filter((e) => fromBot(e) && e.room_id === room && WHY.test(bodyOf(e)));
    expect(why).toHaveLength(1);
    // The room it went on in holds the operator and the bot, nobody else.
    const members = (await env.hs.events(other)).filter((e) => e.type === 'm.room.member' && ['join', 'invite'].includes(String((e.content as { membership?: string }).membership)));
    expect(new Set(members.map((e) => e.state_key))).toEqual(new Set([env.operator.userId, botUserId]));
    // It says there why it moved.
    expect(env.phone.events.some((e) => fromBot(e) && e.room_id === other && /invited into our other room/.test(bodyOf(e)))).toBe(true);
  });

  it('a second request: again nowhere near the stranger, and the reason is not repeated', async () => {
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, '!status');
    await env.phone.waitFor((e) => fromBot(e) && e.room_id === other && env.phone.events.indexOf(e) >= idx && /🖥 box/.test(bodyOf(e)), 20_000);
    expect(env.phone.events.filter((e) => fromBot(e) && e.room_id === room && WHY.test(bodyOf(e)))).toHaveLength(1);
  });

  it('an approval request goes to the operators-only room too', async () => {
    env.llm.enqueue(toolReply([{ name: 'shell_exec', input: { argv: ['echo', 'hi'] } }]), textReply('It was not approved, so nothing ran.'));
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, 'run echo hi');
    const ask = await env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= idx && /Approval needed \[(\w+)\]/.test(bodyOf(e)), 20_000);
    expect(ask.room_id).toBe(other);
    await env.phone.client.sendTextMessage(other, '!reject');
    await env.phone.waitFor((e) => fromBot(e) && e.room_id === other && env.phone.events.indexOf(e) >= idx && /nothing ran/.test(bodyOf(e)), 20_000);
  });

  it('the stranger saw nothing from the bot after joining but the reason', async () => {
    await new Promise((r) => setTimeout(r, 500));
    const seen = stranger.events.filter((e) => e.sender === botUserId && e.type === 'm.room.message' && e.room_id === room);
    const afterJoin = seen.filter((e) => env.phone.events.findIndex((p) => p.event_id === e.event_id) >= joinedAt);
    expect(afterJoin.map(bodyOf).every((b) => WHY.test(b))).toBe(true);
    expect(stranger.events.some((e) => /🖥 box|Approval needed|🧾/.test(bodyOf(e)))).toBe(false);
  });
});

describe('a non-operator in an encrypted device DM', () => {
  let env: BotEnv;
  let room: string;
  let botUserId: string;
  let stranger: PhoneHandle;

  beforeAll(async () => {
    env = await createBotEnv({ encryption: 'auto', phoneCrypto: true, withLlm: false });
    await env.registerBot('box');
    env.writeManifest('box', '  sys.info: {}\n  sys.health: {}\n');
    ({ room, botUserId } = await env.startBotInDm('box'));
    ({ stranger } = await inviteStranger(env, room, true));
  }, 120_000);
  afterAll(async () => {
    stranger?.stop();
    await env?.cleanup();
  });

  it('the stranger\'s device gets no room key: it cannot decrypt what the bot says there', async () => {
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, '!status');
    // The operator reads the reason in the room, and the result elsewhere.
    const why = await env.phone.waitFor((e) => e.sender === botUserId && e.room_id === room && env.phone.events.indexOf(e) >= idx && WHY.test(bodyOf(e)), 30_000);
    const result = await env.phone.waitFor((e) => e.sender === botUserId && env.phone.events.indexOf(e) >= idx && /🖥 box/.test(bodyOf(e)), 30_000);
    expect(result.room_id).not.toBe(room);
    // The stranger received the bot's message, encrypted, and never gets to read it.
    await stranger.waitFor(() => stranger.raw.some((e) => e.event_id === why.event_id), 15_000);
    expect(stranger.raw.find((e) => e.event_id === why.event_id)?.type).toBe('m.room.encrypted');
    await new Promise((r) => setTimeout(r, 3_000)); // room keys travel as to-device messages: give them time to arrive
    expect(stranger.events.some((e) => e.event_id === why.event_id)).toBe(false);
    expect(stranger.events.some((e) => e.sender === botUserId && e.type === 'm.room.message')).toBe(false);
  });
});
