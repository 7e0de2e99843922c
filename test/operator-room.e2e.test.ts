/**
 * The operator room as users run it: the launcher's operator services against the real Synapse when
 * MESHPILOT_TEST_HOMESERVER / MESHPILOT_TEST_REGISTRATION_SECRET are set (the fixture otherwise), and
 * the operator's phone with matrix-js-sdk's Rust crypto, like Element.
 *
 * Issue 14 §2.1: Synapse refused the room's power-level override (it lacked the creator), so no
 * operator room and no health monitor existed on a real server; and the room was not encrypted.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startOperatorServices, type OperatorServices } from '../launcher/operator-room.js';
import { ConfigSchema, type Config } from '../capabilities/config.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import type { ClientEvent, RegisteredUser } from './fixtures/homeserver.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';
import { startTestHomeserver, type TestHomeserver } from './helpers/test-homeserver.js';
import { tempDir } from './helpers/tmp.js';

const MEGOLM = 'm.megolm.v1.aes-sha2';

let hs: TestHomeserver;
let operator: RegisteredUser;
let phone: PhoneHandle;
/** Services started by a test; stopped after it. */
const running: Array<{ svc: OperatorServices; rt: Runtime }> = [];

beforeAll(async () => {
  hs = await startTestHomeserver();
  operator = await hs.registerUser('lucas', 'pw-lucas');
  phone = await startPhone(hs, operator, { crypto: true });
}, 60_000);

afterEach(async () => {
  for (const r of running.splice(0)) {
    await r.svc.stop();
    await r.rt.close();
  }
});

afterAll(async () => {
  phone?.stop();
  await hs?.stop();
});

function makeConfig(extra: { operatorBot: string; encryption?: 'auto' | 'off'; operatorRoom?: string }): Config {
  return ConfigSchema.parse({
    matrix: {
      homeserver_url: hs.url, server_name: hs.serverName, registration_shared_secret: hs.registrationSharedSecret,
      operator_bot: extra.operatorBot,
      ...(extra.encryption ? { encryption: extra.encryption } : {}),
      ...(extra.operatorRoom ? { operator_room: extra.operatorRoom } : {}),
    },
    operators: [operator.userId],
  });
}

/** A unique operator bot account per start (accounts outlive runs on the real server). */
const botName = (): string => hs.unique(`mp-ops-${randomBytes(3).toString('hex')}`);

let botState = 'running';
async function start(config: Config, root = tempDir('mp-oproom-')): Promise<{ svc: OperatorServices; rt: Runtime; root: string }> {
  const rt = openRuntime({ root });
  const svc = await startOperatorServices({
    runtime: rt, config, noSchedule: true,
    supervisor: { status: () => [{ device: 'local', state: botState }] },
  });
  running.push({ svc, rt });
  return { svc, rt, root };
}

async function stopLast(): Promise<void> {
  const r = running.pop();
  await r?.svc.stop();
  await r?.rt.close();
}

const joined = (roomId: string, userId: string) => (e: ClientEvent): boolean =>
  e.room_id === roomId && e.type === 'm.room.member' && e.state_key === userId && e.content['membership'] === 'join';

/** The first message of `sender` in `roomId` the phone could read (decrypted), seen at index `from` or later. */
const phoneSaw = (roomId: string, sender: string, pred: (text: string) => boolean, from = 0, ms = 20_000): Promise<ClientEvent> =>
  phone.waitFor((e) => e.room_id === roomId && e.sender === sender && e.type === 'm.room.message' && pred(bodyOf(e)) && phone.events.indexOf(e) >= from, ms);

/** How `eventId` went over the wire to the phone. */
const wire = (eventId: string): ClientEvent | undefined => phone.raw.find((e) => e.event_id === eventId);

describe(`operator room (${process.env['MESHPILOT_TEST_HOMESERVER'] ? 'real Synapse' : 'fixture homeserver'})`, () => {
  it('is created, encrypted, with the operator invited; commands and alerts go both ways encrypted', async () => {
    const { svc } = await start(makeConfig({ operatorBot: botName() }));
    const room = svc.roomId;
    // The creator keeps 100 and operators get 50 (what the override was for).
    const state = await hs.events(room);
    const pl = state.filter((e) => e.type === 'm.room.power_levels').pop();
    expect((pl?.content['users'] as Record<string, number>)[svc.userId]).toBe(100);
    expect((pl?.content['users'] as Record<string, number>)[operator.userId]).toBe(50);
    expect(state.some((e) => e.type === 'm.room.encryption' && e.content['algorithm'] === MEGOLM)).toBe(true);

    // The phone accepts the invite like a person would.
    await phone.waitFor(joined(room, operator.userId), 20_000);

    // An encrypted !devices from the phone is read and answered, encrypted.
    let from = phone.events.length;
    await phone.client.sendTextMessage(room, '!devices');
    const table = await phoneSaw(room, svc.userId, (t) => t.startsWith('DEVICE'), from);
    expect(bodyOf(table)).toMatch(/^local\s+/m);
    expect(wire(table.event_id)?.type).toBe('m.room.encrypted');
    const mine = phone.raw.filter((e) => e.room_id === room && e.sender === operator.userId && (e.type === 'm.room.message' || e.type === 'm.room.encrypted'));
    expect(mine.length).toBeGreaterThan(0);
    expect(mine.every((e) => e.type === 'm.room.encrypted')).toBe(true);

    // Someone who is not an operator, let into the room by the operator, gets no room keys from the bot.
    const stranger = await hs.registerUser('mallory', 'pw-mallory');
    const strangerPhone = await startPhone(hs, stranger, { crypto: true });
    try {
      await phone.client.invite(room, stranger.userId);
      await strangerPhone.waitFor(joined(room, stranger.userId), 20_000);

      // A health alert reaches the phone, readable, and encrypted on the wire.
      from = phone.events.length;
      botState = 'crash-looping';
      try {
        await svc.monitor.runCycle();
      } finally {
        botState = 'running';
      }
      await svc.monitor.flush();
      const alert = await phoneSaw(room, svc.userId, (t) => t.startsWith('[ALERT] device_id=local bot=crash-looping'), from);
      expect(wire(alert.event_id)?.type).toBe('m.room.encrypted');
      // The stranger's client received it, and cannot read it.
      const deadline = Date.now() + 10_000;
      while (!strangerPhone.raw.some((e) => e.event_id === alert.event_id) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(strangerPhone.raw.find((e) => e.event_id === alert.event_id)?.type).toBe('m.room.encrypted');
      await new Promise((r) => setTimeout(r, 1_000)); // time for a decryption that should not happen
      expect(strangerPhone.events.some((e) => e.event_id === alert.event_id)).toBe(false);
    } finally {
      strangerPhone.stop();
    }
    // Nothing the bot said in the room went out in clear.
    const botWire = phone.raw.filter((e) => e.room_id === room && e.sender === svc.userId && (e.type === 'm.room.message' || e.type === 'm.room.encrypted'));
    expect(botWire.length).toBeGreaterThanOrEqual(2);
    expect(botWire.every((e) => e.type === 'm.room.encrypted')).toBe(true);
  }, 90_000);

  it('turns encryption on in an existing plain room when it may, else says once why it cannot', async () => {
    // First run: the bot's account (and crypto store) exists; then the operator pins rooms of their own.
    const name = botName();
    const first = await start(makeConfig({ operatorBot: name }));
    const botId = first.svc.userId;
    await stopLast();

    // A plain room where the operator gives the bot 100: the bot may send m.room.encryption.
    const mayRoom = (await phone.client.createRoom({ name: 'ops (bot may encrypt)', invite: [botId], power_level_content_override: { users: { [operator.userId]: 100, [botId]: 100 } } })).room_id;
    const may = await start(makeConfig({ operatorBot: name, operatorRoom: mayRoom }), first.root);
    expect(may.svc.roomId).toBe(mayRoom);
    const enc = await hs.waitFor((e) => e.room_id === mayRoom && e.type === 'm.room.encryption' && e.sender === botId, 20_000);
    expect(enc.content['algorithm']).toBe(MEGOLM);
    let from = phone.events.length;
    await phone.client.sendTextMessage(mayRoom, '!help');
    const help = await phoneSaw(mayRoom, botId, (t) => t.startsWith('Operator commands'), from);
    expect(wire(help.event_id)?.type).toBe('m.room.encrypted');
    await stopLast();

    // A plain room where the bot has no power over state: it cannot, and says so once (not on every start).
    const mayNotRoom = (await phone.client.createRoom({ name: 'ops (bot may not)', invite: [botId] })).room_id;
    await start(makeConfig({ operatorBot: name, operatorRoom: mayNotRoom }), first.root);
    const why = await phoneSaw(mayNotRoom, botId, (t) => /not end-to-end encrypted/.test(t), 0);
    expect(bodyOf(why)).toMatch(/power level|permission/i);
    expect(bodyOf(why)).toContain('m.room.encryption');
    expect(wire(why.event_id)?.type).toBe('m.room.message');
    await stopLast();
    from = phone.events.length;
    const again = await start(makeConfig({ operatorBot: name, operatorRoom: mayNotRoom }), first.root);
    await phone.client.sendTextMessage(mayNotRoom, '!help');
    await phoneSaw(mayNotRoom, botId, (t) => t.startsWith('Operator commands'), from);
    const notices = phone.events.filter((e) => e.room_id === mayNotRoom && e.sender === again.svc.userId && /not end-to-end encrypted/.test(bodyOf(e)));
    expect(notices).toHaveLength(1);
    expect((await hs.events(mayNotRoom)).some((e) => e.type === 'm.room.encryption')).toBe(false);
  }, 120_000);

  it('matrix.encryption: off keeps the room plain', async () => {
    const { svc } = await start(makeConfig({ operatorBot: botName(), encryption: 'off' }));
    await phone.waitFor(joined(svc.roomId, operator.userId), 20_000);
    expect((await hs.events(svc.roomId)).some((e) => e.type === 'm.room.encryption')).toBe(false);
    const from = phone.events.length;
    await phone.client.sendTextMessage(svc.roomId, '!help');
    const help = await phoneSaw(svc.roomId, svc.userId, (t) => t.startsWith('Operator commands'), from);
    expect(wire(help.event_id)?.type).toBe('m.room.message');
  }, 60_000);
});
