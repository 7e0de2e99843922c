/**
 * The homeserver fixture against the real clients: matrix-bot-sdk (the bots' library) and matrix-js-sdk
 * (standing in for the operator's Element on a phone), plus raw HTTP for error shapes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  AutojoinRoomsMixin,
  LogService,
  MatrixClient,
  MemoryStorageProvider,
  SimpleFsStorageProvider,
  type ILogger,
} from 'matrix-bot-sdk';
import { startHomeserver, type ClientEvent, type Homeserver } from './fixtures/homeserver.js';

type JsSdk = typeof import('matrix-js-sdk');
type JsClient = import('matrix-js-sdk').MatrixClient;

const quiet: ILogger = { info() {}, warn() {}, error() {}, debug() {}, trace() {} };
type JsLogger = NonNullable<Parameters<JsSdk['createClient']>[0]['logger']>;
const silentJs: JsLogger = { ...quiet, getChild: () => silentJs };

let hs: Homeserver;
let sdk: JsSdk;
const tmpDirs: string[] = [];
const botClients: MatrixClient[] = [];
const jsClients: JsClient[] = [];

async function api(
  method: string,
  p: string,
  opts: { token?: string; body?: unknown; raw?: Buffer; contentType?: string } = {},
): Promise<{ status: number; json: Record<string, unknown>; bytes: Buffer; headers: Headers }> {
  const headers: Record<string, string> = {};
  if (opts.token) headers['Authorization'] = `Bearer ${opts.token}`;
  let body: string | Buffer | undefined;
  if (opts.raw) {
    body = opts.raw;
    headers['Content-Type'] = opts.contentType ?? 'application/octet-stream';
  } else if (opts.body !== undefined) {
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
    headers['Content-Type'] = 'application/json';
  }
  let res: Response;
  try {
    res = await fetch(hs.url + p, { method, headers, body });
  } catch {
    // a pooled keep-alive connection that the fixture dropped on restart(): one retry on a new one
    res = await fetch(hs.url + p, { method, headers, body });
  }
  const bytes = Buffer.from(await res.arrayBuffer());
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    json = {};
  }
  return { status: res.status, json, bytes, headers: res.headers };
}

function mac(secret: string, nonce: string, user: string, password: string, admin: boolean): string {
  return createHmac('sha1', secret).update(`${nonce}\0${user}\0${password}\0${admin ? 'admin' : 'notadmin'}`).digest('hex');
}

async function startPhone(user: { userId: string; accessToken: string; deviceId: string }): Promise<JsClient> {
  const client = sdk.createClient({
    baseUrl: hs.url,
    accessToken: user.accessToken,
    userId: user.userId,
    deviceId: user.deviceId,
    logger: silentJs,
  });
  jsClients.push(client);
  const prepared = new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('js-sdk did not reach PREPARED')), 15_000);
    client.on(sdk.ClientEvent.Sync, (state: string) => {
      if (state === 'PREPARED') {
        clearTimeout(t);
        resolve();
      }
    });
  });
  await client.startClient({ initialSyncLimit: 10 });
  await prepared;
  return client;
}

/** Collects every timeline event the phone sees, by room, so tests can wait for and count them. */
function recordTimeline(client: JsClient): { events: ClientEvent[]; waitFor: (pred: (e: ClientEvent) => boolean, ms?: number) => Promise<ClientEvent> } {
  const events: ClientEvent[] = [];
  const listeners = new Set<() => void>();
  client.on(sdk.RoomEvent.Timeline, (ev: import('matrix-js-sdk').MatrixEvent) => {
    events.push(ev.event as ClientEvent);
    for (const l of listeners) l();
  });
  const waitFor = (pred: (e: ClientEvent) => boolean, ms = 10_000): Promise<ClientEvent> =>
    new Promise((resolve, reject) => {
      const check = (): boolean => {
        const hit = events.find(pred);
        if (hit) {
          listeners.delete(onNew);
          clearTimeout(t);
          resolve(hit);
          return true;
        }
        return false;
      };
      const onNew = (): void => void check();
      const t = setTimeout(() => {
        listeners.delete(onNew);
        reject(new Error('phone did not see the expected event'));
      }, ms);
      listeners.add(onNew);
      check();
    });
  return { events, waitFor };
}

function botEvents(client: MatrixClient): { events: ClientEvent[]; waitFor: (pred: (e: ClientEvent) => boolean, ms?: number) => Promise<ClientEvent> } {
  const events: ClientEvent[] = [];
  const listeners = new Set<() => void>();
  client.on('room.event', (roomId: string, ev: ClientEvent) => {
    events.push({ ...ev, room_id: roomId });
    for (const l of listeners) l();
  });
  const waitFor = (pred: (e: ClientEvent) => boolean, ms = 10_000): Promise<ClientEvent> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = events.find(pred);
        if (hit) {
          listeners.delete(check);
          clearTimeout(t);
          resolve(hit);
        }
      };
      const t = setTimeout(() => {
        listeners.delete(check);
        reject(new Error('bot did not see the expected event'));
      }, ms);
      listeners.add(check);
      check();
    });
  return { events, waitFor };
}

function newBot(token: string, storage: MemoryStorageProvider | SimpleFsStorageProvider): MatrixClient {
  const c = new MatrixClient(hs.url, token, storage);
  c.syncingTimeout = 1_000; // keep stop() quick: the long poll ends within a second
  botClients.push(c);
  return c;
}

beforeAll(async () => {
  LogService.setLogger(quiet);
  sdk = await import('matrix-js-sdk');
  // js-sdk's global logger is loglevel underneath; its type does not declare setLevel
  const jsLog = (await import('matrix-js-sdk/lib/logger.js')).logger as unknown as { setLevel(l: string): void };
  jsLog.setLevel(process.env['MESHPILOT_TEST_MATRIX_DEBUG'] ? 'debug' : 'silent');
  hs = await startHomeserver();
});

afterAll(async () => {
  for (const c of botClients) c.stop();
  for (const c of jsClients) c.stopClient();
  await hs?.stop();
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

describe('homeserver fixture: protocol basics', () => {
  it('answers /versions, 404 M_UNRECOGNIZED for unknown endpoints, and token errors', async () => {
    const v = await api('GET', '/_matrix/client/versions');
    expect(v.status).toBe(200);
    expect(v.json['versions']).toContain('v1.11');

    const alice = hs.registerUser('basics', 'pw');
    const unknown = await api('GET', '/_matrix/client/v3/nope/nothing', { token: alice.accessToken });
    expect(unknown.status).toBe(404);
    expect(unknown.json['errcode']).toBe('M_UNRECOGNIZED');

    const missing = await api('GET', '/_matrix/client/v3/account/whoami');
    expect(missing.status).toBe(401);
    expect(missing.json['errcode']).toBe('M_MISSING_TOKEN');
    const bad = await api('GET', '/_matrix/client/v3/account/whoami', { token: 'syt_nope' });
    expect(bad.status).toBe(401);
    expect(bad.json['errcode']).toBe('M_UNKNOWN_TOKEN');
    const who = await api('GET', '/_matrix/client/v3/account/whoami', { token: alice.accessToken });
    expect(who.json['user_id']).toBe(alice.userId);
    expect(who.json['device_id']).toBe(alice.deviceId);

    const notJson = await api('POST', '/_matrix/client/v3/createRoom', { token: alice.accessToken, body: '{nope' });
    expect(notJson.json['errcode']).toBe('M_NOT_JSON');
    const badShape = await api('POST', '/_matrix/client/v3/createRoom', { token: alice.accessToken, body: { invite: 'not-a-list' } });
    expect(badShape.status).toBe(400);
    expect(badShape.json['errcode']).toBe('M_BAD_JSON');
    const huge = await api('PUT', '/_matrix/client/v3/user/' + encodeURIComponent(alice.userId) + '/account_data/x', {
      token: alice.accessToken,
      body: { blob: 'x'.repeat(400_000) },
    });
    expect(huge.status).toBe(413);

    hs.rateLimitNext(1, '/_matrix/client/v3/account/whoami');
    const limited = await api('GET', '/_matrix/client/v3/account/whoami', { token: alice.accessToken });
    expect(limited.status).toBe(429);
    expect(limited.json['errcode']).toBe('M_LIMIT_EXCEEDED');
    expect((await api('GET', '/_matrix/client/v3/account/whoami', { token: alice.accessToken })).status).toBe(200);

    hs.setDown(true);
    expect((await api('GET', '/_matrix/client/versions')).status).toBe(502);
    hs.setDown(false);
    expect((await api('GET', '/_matrix/client/versions')).status).toBe(200);
  });

  it('logs in with m.login.password and rejects a wrong password with M_FORBIDDEN', async () => {
    const u = hs.registerUser('loginuser', 'secret-pw');
    const good = await api('POST', '/_matrix/client/v3/login', {
      body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'loginuser' }, password: 'secret-pw' },
    });
    expect(good.status).toBe(200);
    expect(good.json['user_id']).toBe(u.userId);
    const bad = await api('POST', '/_matrix/client/v3/login', {
      body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'loginuser' }, password: 'wrong' },
    });
    expect(bad.status).toBe(403);
    expect(bad.json['errcode']).toBe('M_FORBIDDEN');
  });

  it('does Synapse shared-secret registration: right MAC, wrong MAC, reused nonce, taken name, admin APIs', async () => {
    const n1 = (await api('GET', '/_synapse/admin/v1/register')).json['nonce'] as string;
    const wrong = await api('POST', '/_synapse/admin/v1/register', {
      body: { nonce: n1, username: 'reg1', password: 'pw1', admin: false, mac: mac('not-the-secret', n1, 'reg1', 'pw1', false) },
    });
    expect(wrong.status).toBe(403);
    expect(wrong.json['errcode']).toBe('M_FORBIDDEN');
    // the nonce is spent even by a failed attempt
    const reused = await api('POST', '/_synapse/admin/v1/register', {
      body: { nonce: n1, username: 'reg1', password: 'pw1', admin: false, mac: mac(hs.registrationSharedSecret, n1, 'reg1', 'pw1', false) },
    });
    expect(reused.status).toBe(400);

    const n2 = (await api('GET', '/_synapse/admin/v1/register')).json['nonce'] as string;
    // admin flag is covered by the MAC: a notadmin MAC does not register an admin
    const flipped = await api('POST', '/_synapse/admin/v1/register', {
      body: { nonce: n2, username: 'reg1', password: 'pw1', admin: true, mac: mac(hs.registrationSharedSecret, n2, 'reg1', 'pw1', false) },
    });
    expect(flipped.status).toBe(403);

    const n3 = (await api('GET', '/_synapse/admin/v1/register')).json['nonce'] as string;
    const ok = await api('POST', '/_synapse/admin/v1/register', {
      body: { nonce: n3, username: 'reg1', password: 'pw1', admin: true, mac: mac(hs.registrationSharedSecret, n3, 'reg1', 'pw1', true) },
    });
    expect(ok.status).toBe(200);
    expect(ok.json['user_id']).toBe(`@reg1:${hs.serverName}`);
    const adminToken = ok.json['access_token'] as string;
    expect((await api('GET', '/_matrix/client/v3/account/whoami', { token: adminToken })).json['user_id']).toBe(`@reg1:${hs.serverName}`);

    const n4 = (await api('GET', '/_synapse/admin/v1/register')).json['nonce'] as string;
    const taken = await api('POST', '/_synapse/admin/v1/register', {
      body: { nonce: n4, username: 'reg1', password: 'pw1', admin: false, mac: mac(hs.registrationSharedSecret, n4, 'reg1', 'pw1', false) },
    });
    expect(taken.status).toBe(400);
    expect(taken.json['errcode']).toBe('M_USER_IN_USE');

    const victim = hs.registerUser('victim', 'pw');
    const info = await api('GET', `/_synapse/admin/v2/users/${encodeURIComponent(victim.userId)}`, { token: adminToken });
    expect(info.json['deactivated']).toBe(false);
    const notAdmin = await api('POST', `/_synapse/admin/v1/deactivate/${encodeURIComponent(adminToken ? `@reg1:${hs.serverName}` : '')}`, {
      token: victim.accessToken,
      body: {},
    });
    expect(notAdmin.status).toBe(403);
    expect(notAdmin.json['errcode']).toBe('M_FORBIDDEN');
    const deact = await api('POST', `/_synapse/admin/v1/deactivate/${encodeURIComponent(victim.userId)}`, { token: adminToken, body: { erase: false } });
    expect(deact.status).toBe(200);
    expect((await api('GET', '/_matrix/client/v3/account/whoami', { token: victim.accessToken })).json['errcode']).toBe('M_UNKNOWN_TOKEN');
    const info2 = await api('GET', `/_synapse/admin/v2/users/${encodeURIComponent(victim.userId)}`, { token: adminToken });
    expect(info2.json['deactivated']).toBe(true);
    const none = await api('GET', `/_synapse/admin/v2/users/${encodeURIComponent('@ghost:' + hs.serverName)}`, { token: adminToken });
    expect(none.json['errcode']).toBe('M_NOT_FOUND');
  });

  it('long-polls /sync: returns at once when an event arrives, otherwise after the timeout', async () => {
    const u = hs.registerUser('poller', 'pw');
    const room = (await api('POST', '/_matrix/client/v3/createRoom', { token: u.accessToken, body: { name: 'poll' } })).json['room_id'] as string;
    const first = await api('GET', '/_matrix/client/v3/sync?timeout=0', { token: u.accessToken });
    const join = (first.json['rooms'] as { join: Record<string, { state: { events: ClientEvent[] }; timeline: { events: ClientEvent[] } }> }).join[room]!;
    const allState = [...join.state.events, ...join.timeline.events].map((e) => e.type);
    expect(allState).toContain('m.room.create');
    expect(allState).toContain('m.room.name');
    const since = first.json['next_batch'] as string;

    let t0 = Date.now();
    const idle = await api('GET', `/_matrix/client/v3/sync?since=${since}&timeout=400`, { token: u.accessToken });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
    expect(idle.json['rooms']).toEqual({});

    t0 = Date.now();
    const pending = api('GET', `/_matrix/client/v3/sync?since=${since}&timeout=20000`, { token: u.accessToken });
    await new Promise((r) => setTimeout(r, 100));
    const sent = await api('PUT', `/_matrix/client/v3/rooms/${encodeURIComponent(room)}/send/m.room.message/t1`, {
      token: u.accessToken,
      body: { msgtype: 'm.text', body: 'wake up' },
    });
    const woke = await pending;
    expect(Date.now() - t0).toBeLessThan(5_000);
    const tl = (woke.json['rooms'] as { join: Record<string, { timeline: { events: ClientEvent[] } }> }).join[room]!.timeline.events;
    expect(tl.map((e) => e.event_id)).toEqual([sent.json['event_id']]);
    expect(tl[0]!.unsigned?.['transaction_id']).toBe('t1');
    expect(tl[0]!.event_id.startsWith('$')).toBe(true);
    expect(typeof tl[0]!.origin_server_ts).toBe('number');

    // same txnId, same token: idempotent
    const again = await api('PUT', `/_matrix/client/v3/rooms/${encodeURIComponent(room)}/send/m.room.message/t1`, {
      token: u.accessToken,
      body: { msgtype: 'm.text', body: 'wake up' },
    });
    expect(again.json['event_id']).toBe(sent.json['event_id']);
    expect(hs.events(room).filter((e) => e.type === 'm.room.message')).toHaveLength(1);

    const msgs = await api('GET', `/_matrix/client/v3/rooms/${encodeURIComponent(room)}/messages?dir=b&limit=2`, { token: u.accessToken });
    expect((msgs.json['chunk'] as ClientEvent[])[0]!.event_id).toBe(sent.json['event_id']);
    expect(msgs.json['chunk'] as ClientEvent[]).toHaveLength(2);
  });
});

describe('homeserver fixture with matrix-js-sdk (phone) and matrix-bot-sdk (bot)', () => {
  let op: ReturnType<Homeserver['registerUser']>;
  let botUser: ReturnType<Homeserver['registerUser']>;
  let phone: JsClient;
  let phoneTl: ReturnType<typeof recordTimeline>;
  let bot: MatrixClient;
  let botSeen: ReturnType<typeof botEvents>;
  let dm: string;
  let botStorePath: string;

  beforeAll(async () => {
    op = hs.registerUser('operator', 'op-pw', { displayname: 'Operator' });
    botUser = hs.registerUser('bot-one', 'bot-pw');
    phone = await startPhone(op);
    phoneTl = recordTimeline(phone);
    const dir = mkdtempSync(path.join(tmpdir(), 'mp-hs-'));
    tmpDirs.push(dir);
    botStorePath = path.join(dir, 'bot.json');
    bot = newBot(botUser.accessToken, new SimpleFsStorageProvider(botStorePath));
    AutojoinRoomsMixin.setupOnClient(bot);
    botSeen = botEvents(bot);
    await bot.start();
  });

  it('phone creates a DM (invite, is_direct); the bot autojoins via sync; messages flow both ways', async () => {
    const created = await phone.createRoom({ invite: [botUser.userId], is_direct: true, preset: sdk.Preset.TrustedPrivateChat, name: 'ops' });
    dm = created.room_id;
    const invite = await hs.waitFor((e) => e.room_id === dm && e.type === 'm.room.member' && e.state_key === botUser.userId);
    expect(invite.content['is_direct']).toBe(true);
    await hs.waitFor((e) => e.room_id === dm && e.type === 'm.room.member' && e.state_key === botUser.userId && e.content['membership'] === 'join');
    expect(await bot.getJoinedRooms()).toContain(dm);

    await phone.sendTextMessage(dm, 'hello bot');
    const atBot = await botSeen.waitFor((e) => e.room_id === dm && e.type === 'm.room.message' && e.content['body'] === 'hello bot');
    expect(atBot.sender).toBe(op.userId);

    const replyId = await bot.sendText(dm, 'hello operator');
    const atPhone = await phoneTl.waitFor((e) => e.event_id === replyId);
    expect(atPhone.sender).toBe(botUser.userId);
    expect(atPhone.content['body']).toBe('hello operator');
    // the bot sees its own message echoed with its transaction id
    const echo = await botSeen.waitFor((e) => e.event_id === replyId);
    expect(echo.unsigned?.['transaction_id']).toBeTypeOf('string');
  });

  it('delivers reactions (m.reaction annotations) from the phone to the bot', async () => {
    const target = await bot.sendText(dm, 'react to me');
    await phoneTl.waitFor((e) => e.event_id === target);
    await phone.sendEvent(dm, sdk.EventType.Reaction, { 'm.relates_to': { rel_type: sdk.RelationType.Annotation, event_id: target, key: '👍' } });
    const r = await botSeen.waitFor((e) => e.type === 'm.reaction');
    expect(r.content['m.relates_to']).toEqual({ rel_type: 'm.annotation', event_id: target, key: '👍' });
  });

  it('sets and reads state events with a power-level check', async () => {
    // the operator created the room with trusted_private_chat: the invited bot has PL 100 too
    await bot.sendStateEvent(dm, 'org.meshpilot.device', '', { name: 'laptop' });
    expect(await bot.getRoomStateEvent(dm, 'org.meshpilot.device', '')).toEqual({ name: 'laptop' });
    const seen = await phoneTl.waitFor((e) => e.type === 'org.meshpilot.device');
    expect(seen.state_key).toBe('');
    const state = await bot.getRoomState(dm);
    expect(state.map((e: ClientEvent) => e.type)).toContain('org.meshpilot.device');
    await expect(bot.getRoomStateEvent(dm, 'org.meshpilot.absent', '')).rejects.toMatchObject({ statusCode: 404 });

    // a plain private room: a PL 0 member may not set state
    const stranger = hs.registerUser('stranger', 'pw');
    const room = await phone.createRoom({ invite: [stranger.userId], preset: sdk.Preset.PrivateChat });
    const s = newBot(stranger.accessToken, new MemoryStorageProvider());
    await s.joinRoom(room.room_id);
    await expect(s.sendStateEvent(room.room_id, 'm.room.topic', '', { topic: 'hijack' })).rejects.toMatchObject({
      statusCode: 403,
      body: { errcode: 'M_FORBIDDEN' },
    });
    // but may send messages
    expect(await s.sendText(room.room_id, 'hi')).toMatch(/^\$/);
  });

  it('uploads media and serves it on both /_matrix/media/v3 and authenticated /_matrix/client/v1', async () => {
    const bytes = Buffer.from('%PDF-1.4 fake pdf bytes \u0000\u0001\u0002', 'binary');
    const mxc = await bot.uploadContent(bytes, 'application/pdf', 'report.pdf');
    expect(mxc).toMatch(new RegExp(`^mxc://${hs.serverName.replace('.', '\\.')}/`));
    const dl = await bot.downloadContent(mxc);
    expect(Buffer.compare(dl.data, bytes)).toBe(0);
    expect(dl.contentType).toBe('application/pdf');

    const [, server, id] = /^mxc:\/\/([^/]+)\/(.+)$/.exec(mxc)!;
    const v1 = await api('GET', `/_matrix/client/v1/media/download/${server}/${id}`, { token: op.accessToken });
    expect(v1.status).toBe(200);
    expect(Buffer.compare(v1.bytes, bytes)).toBe(0);
    const v1anon = await api('GET', `/_matrix/client/v1/media/download/${server}/${id}`);
    expect(v1anon.json['errcode']).toBe('M_MISSING_TOKEN');
    const cfg = await api('GET', '/_matrix/client/v1/media/config', { token: op.accessToken });
    expect(cfg.json['m.upload.size']).toBeGreaterThan(0);
    const missing = await api('GET', `/_matrix/media/v3/download/${server}/doesnotexist`);
    expect(missing.json['errcode']).toBe('M_NOT_FOUND');

    // js-sdk sees an m.file with the mxc url
    await bot.sendMessage(dm, { msgtype: 'm.file', body: 'report.pdf', url: mxc, info: { mimetype: 'application/pdf', size: bytes.length } });
    const f = await phoneTl.waitFor((e) => e.content['msgtype'] === 'm.file');
    expect(f.content['url']).toBe(mxc);
  });

  it('typing notifications reach the phone; redactions strip content', async () => {
    await bot.setTyping(dm, true, 5_000);
    const room = phone.getRoom(dm)!;
    const deadline = Date.now() + 5_000;
    while (!room.getMember(botUser.userId)?.typing && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(room.getMember(botUser.userId)?.typing).toBe(true);
    await bot.setTyping(dm, false);

    const id = await bot.sendText(dm, 'oops secret');
    await bot.redactEvent(dm, id, 'mistake');
    const stored = hs.events(dm).find((e) => e.event_id === id)!;
    expect(stored.content).toEqual({});
    expect((stored.unsigned?.['redacted_because'] as ClientEvent).type).toBe('m.room.redaction');
  });

  it('restart keeps state; clients resume from their since token without seeing old events again', async () => {
    const before = await bot.sendText(dm, 'before restart');
    await phoneTl.waitFor((e) => e.event_id === before);
    await botSeen.waitFor((e) => e.event_id === before);
    bot.stop();
    // let the bot's last long poll (1 s) finish so its token is stored
    await new Promise((r) => setTimeout(r, 1_300));
    const port = hs.port;
    await hs.restart();
    expect(hs.port).toBe(port);

    // state survived
    const who = await api('GET', '/_matrix/client/v3/account/whoami', { token: botUser.accessToken });
    expect(who.json['user_id']).toBe(botUser.userId);
    expect(hs.events(dm).some((e) => e.event_id === before)).toBe(true);

    const whileDown = (await phone.sendTextMessage(dm, 'while the bot was away')).event_id;

    // a fresh bot process with the same storage file resumes from its stored token
    const bot2 = newBot(botUser.accessToken, new SimpleFsStorageProvider(botStorePath));
    const seen2 = botEvents(bot2);
    await bot2.start();
    const got = await seen2.waitFor((e) => e.event_id === whileDown);
    expect(got.content['body']).toBe('while the bot was away');
    expect(seen2.events.some((e) => e.event_id === before)).toBe(false);
    expect(seen2.events.some((e) => e.content['body'] === 'hello bot')).toBe(false);

    // the phone's sync loop reconnects by itself and sees new events once
    const after = await bot2.sendText(dm, 'after restart');
    await phoneTl.waitFor((e) => e.event_id === after, 25_000);
    const ids = phoneTl.events.map((e) => e.event_id);
    expect(ids.filter((i) => i === before)).toHaveLength(1);
    expect(new Set(ids).size).toBe(ids.length);
    bot2.stop();
  }, 40_000);
});
