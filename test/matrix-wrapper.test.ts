/**
 * bots/matrix/ (our only matrix-bot-sdk wrapper: the session, its sync, crypto and account helpers) against the in-memory homeserver fixture.
 * The "operator" talks raw Client-Server API so every assertion is about the wrapper.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import {
  createMatrixSession,
  cryptoAvailable,
  deactivateUser,
  registerWithSharedSecret,
  type MatrixInvite,
  type MatrixMessage,
  type MatrixReaction,
  type MatrixSession,
} from '../bots/matrix/index.js';
import { MeshpilotError } from '../capabilities/errors.js';
import { startHomeserver, type Homeserver } from './fixtures/homeserver.js';
import { startTestHomeserver, type RegisteredUser, type TestHomeserver } from './helpers/test-homeserver.js';

/** The real Synapse (behind the fault proxy) when MESHPILOT_TEST_HOMESERVER is set, else the fixture. */
let hs: TestHomeserver;
const dirs: string[] = [];
const sessions: MatrixSession[] = [];
const logLines: string[] = [];
const log = pino({ level: 'debug' }, { write: (s: string) => void logLines.push(s) });

function tmp(): string {
  const d = mkdtempSync(path.join(tmpdir(), 'mp-matrix-'));
  dirs.push(d);
  return d;
}

function session(user: RegisteredUser, storageDir = tmp(), extra: Partial<Parameters<typeof createMatrixSession>[0]> = {}): MatrixSession {
  const s = createMatrixSession({
    homeserverUrl: hs.url,
    accessToken: user.accessToken,
    storageDir,
    userId: user.userId,
    logger: log,
    syncTimeoutMs: 1_000,
    backoffMinMs: 100,
    backoffMaxMs: 400,
    ...extra,
  });
  sessions.push(s);
  return s;
}

function collector<T>(): { items: T[]; push: (v: T) => void; waitFor: (pred: (v: T) => boolean, ms?: number) => Promise<T> } {
  const items: T[] = [];
  const listeners = new Set<() => void>();
  return {
    items,
    push(v) {
      items.push(v);
      for (const l of [...listeners]) l();
    },
    waitFor(pred, ms = 8_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = items.find(pred);
          if (hit !== undefined) {
            listeners.delete(check);
            clearTimeout(t);
            resolve(hit);
          }
        };
        const t = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`expected callback did not happen (${items.length} seen)`));
        }, ms);
        listeners.add(check);
        check();
      });
    },
  };
}

let txn = 0;
async function op(user: RegisteredUser, method: string, p: string, body?: unknown): Promise<Record<string, unknown>> {
  const init: RequestInit = { method, headers: { Authorization: `Bearer ${user.accessToken}`, 'Content-Type': 'application/json' } };
  if (body !== undefined) init.body = JSON.stringify(body);
  let res: Response;
  try {
    res = await fetch(hs.url + p, init);
  } catch {
    res = await fetch(hs.url + p, init); // pooled connection dropped by a fixture restart
  }
  const json = (await res.json()) as Record<string, unknown>;
  if (!res.ok) throw new Error(`${method} ${p} -> ${res.status} ${JSON.stringify(json)}`);
  return json;
}
const enc = encodeURIComponent;
async function opSend(user: RegisteredUser, roomId: string, content: Record<string, unknown>, type = 'm.room.message'): Promise<string> {
  txn += 1;
  return (await op(user, 'PUT', `/_matrix/client/v3/rooms/${enc(roomId)}/send/${type}/w${txn}`, content))['event_id'] as string;
}

async function until(cond: () => boolean, ms = 8_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

beforeAll(async () => {
  hs = await startTestHomeserver();
});

afterEach(async () => {
  for (const s of sessions.splice(0)) await s.stop();
});

afterAll(async () => {
  await hs?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('bots/matrix session', () => {
  it('creates a DM with is_direct and records it in m.direct; findDm finds it; invites reach onInvite', async () => {
    const operator = await hs.registerUser('op-dm', 'pw');
    const botUser = await hs.registerUser('bot-dm', 'pw');
    const bot = session(botUser);
    const invites = collector<MatrixInvite>();
    bot.onInvite(invites.push);
    await bot.start();

    const roomId = await bot.createDm(operator.userId, { name: 'laptop', topic: 'meshpilot', encrypted: false });
    const invite = await hs.waitFor((e) => e.room_id === roomId && e.type === 'm.room.member' && e.state_key === operator.userId);
    expect(invite.content['membership']).toBe('invite');
    expect(invite.content['is_direct']).toBe(true);
    expect((await hs.events(roomId)).find((e) => e.type === 'm.room.name')?.content['name']).toBe('laptop');
    const direct = await op(botUser, 'GET', `/_matrix/client/v3/user/${enc(botUser.userId)}/account_data/m.direct`);
    expect(direct[operator.userId]).toEqual([roomId]);
    expect(await bot.findDm(operator.userId)).toBe(roomId);
    expect(await bot.findDm('@nobody:' + hs.serverName)).toBeNull();

    // the operator opens a DM to the bot: onInvite(isDirect) and, after joining, findDm via SDK's m.direct upkeep
    const other = await hs.registerUser('op-dm2', 'pw');
    const created = (await op(other, 'POST', '/_matrix/client/v3/createRoom', { invite: [botUser.userId], is_direct: true, preset: 'trusted_private_chat' }))[
      'room_id'
    ] as string;
    const inv = await invites.waitFor((i) => i.roomId === created);
    expect(inv).toEqual({ roomId: created, sender: other.userId, isDirect: true });
    expect(await bot.joinRoom(created)).toBe(created);
    const deadline = Date.now() + 5_000;
    let found: string | null = null;
    while (Date.now() < deadline && found === null) {
      found = await bot.findDm(other.userId);
      if (found === null) await new Promise((r) => setTimeout(r, 50));
    }
    expect(found).toBe(created);

    await bot.leaveRoom(created);
    expect(await bot.findDm(other.userId)).toBeNull();
  });

  it('normalises messages (text, html, file, voice, reply) and reactions; ignores its own events', async () => {
    const operator = await hs.registerUser('op-msg', 'pw');
    const botUser = await hs.registerUser('bot-msg', 'pw');
    const bot = session(botUser);
    const msgs = collector<MatrixMessage>();
    const reactions = collector<MatrixReaction>();
    bot.onMessage(msgs.push);
    bot.onReaction(reactions.push);
    await bot.start();
    const roomId = await bot.createDm(operator.userId, {});
    await op(operator, 'POST', `/_matrix/client/v3/join/${enc(roomId)}`, {});

    const textId = await opSend(operator, roomId, { msgtype: 'm.text', body: 'uptime please' });
    const text = await msgs.waitFor((m) => m.eventId === textId);
    expect(text).toMatchObject({ roomId, sender: operator.userId, msgtype: 'm.text', body: 'uptime please', isVoice: false });
    expect(text.formattedBody).toBeUndefined();

    const htmlId = await opSend(operator, roomId, { msgtype: 'm.text', body: 'bold', format: 'org.matrix.custom.html', formatted_body: '<b>bold</b>' });
    expect((await msgs.waitFor((m) => m.eventId === htmlId)).formattedBody).toBe('<b>bold</b>');

    const fileId = await opSend(operator, roomId, {
      msgtype: 'm.file',
      body: 'notes.txt',
      url: `mxc://${hs.serverName}/abc123`,
      info: { mimetype: 'text/plain', size: 42 },
    });
    const file = await msgs.waitFor((m) => m.eventId === fileId);
    expect(file.mxc).toBe(`mxc://${hs.serverName}/abc123`);
    expect(file.info).toEqual({ mimetype: 'text/plain', size: 42 });

    const voiceId = await opSend(operator, roomId, {
      msgtype: 'm.audio',
      body: 'Voice message',
      url: `mxc://${hs.serverName}/voice1`,
      info: { mimetype: 'audio/ogg', size: 1000, duration: 2500 },
      'org.matrix.msc3245.voice': {},
    });
    const voice = await msgs.waitFor((m) => m.eventId === voiceId);
    expect(voice.isVoice).toBe(true);
    expect(voice.info?.duration).toBe(2500);

    const replyId = await opSend(operator, roomId, { msgtype: 'm.text', body: '> x\n\nyes', 'm.relates_to': { 'm.in_reply_to': { event_id: textId } } });
    expect((await msgs.waitFor((m) => m.eventId === replyId)).relatesTo).toEqual({ inReplyTo: textId });

    const mine = await bot.sendText(roomId, 'bot says hi');
    const reactId = await opSend(operator, roomId, { 'm.relates_to': { rel_type: 'm.annotation', event_id: mine, key: '✅' } }, 'm.reaction');
    const r = await reactions.waitFor((x) => x.eventId === reactId);
    expect(r).toEqual({ roomId, eventId: reactId, sender: operator.userId, key: '✅', relatesToEventId: mine });

    // the bot's own message and reaction never come back through the callbacks
    await bot.react(roomId, textId, '👀');
    const marker = await opSend(operator, roomId, { msgtype: 'm.text', body: 'marker' });
    await msgs.waitFor((m) => m.eventId === marker);
    expect(msgs.items.some((m) => m.eventId === mine)).toBe(false);
    expect(reactions.items.some((x) => x.sender === botUser.userId)).toBe(false);
    expect((await hs.events(roomId)).find((e) => e.type === 'm.reaction' && e.sender === botUser.userId)?.content['m.relates_to']).toEqual({
      rel_type: 'm.annotation',
      event_id: textId,
      key: '👀',
    });
  });

  it('sends html, files, typing and state; reads state; isEncryptedRoom; cryptoAvailable matches the shim', async () => {
    const operator = await hs.registerUser('op-send', 'pw');
    const botUser = await hs.registerUser('bot-send', 'pw');
    const bot = session(botUser);
    await bot.start();
    const roomId = await bot.createDm(operator.userId, {});
    await op(operator, 'POST', `/_matrix/client/v3/join/${enc(roomId)}`, {});

    const htmlId = await bot.sendHtml(roomId, 'plain', '<i>plain</i>');
    const html = (await hs.events(roomId)).find((e) => e.event_id === htmlId)!;
    expect(html.content).toEqual({ msgtype: 'm.text', body: 'plain', format: 'org.matrix.custom.html', formatted_body: '<i>plain</i>' });

    const bytes = Buffer.from('log line 1\nlog line 2\n');
    const { eventId, mxc } = await bot.sendFile(roomId, 'syslog.txt', bytes, 'text/plain');
    const f = (await hs.events(roomId)).find((e) => e.event_id === eventId)!;
    expect(f.content).toMatchObject({ msgtype: 'm.file', body: 'syslog.txt', url: mxc, info: { mimetype: 'text/plain', size: bytes.length } });
    expect((await bot.downloadMedia(mxc)).bytes.toString()).toBe(bytes.toString());

    await bot.setTyping(roomId, true, 5_000);
    const sync = await op(operator, 'GET', '/_matrix/client/v3/sync?timeout=0');
    const eph = ((sync['rooms'] as Record<string, Record<string, { ephemeral: { events: { content: { user_ids: string[] } }[] } }>>)['join']![roomId]!).ephemeral
      .events[0]!;
    expect(eph.content.user_ids).toEqual([botUser.userId]);
    await bot.setTyping(roomId, false);

    expect(await bot.getState(roomId, 'org.meshpilot.device', 'laptop')).toBeNull();
    const sid = await bot.setState(roomId, 'org.meshpilot.device', 'laptop', { os: 'linux' });
    expect(sid).toMatch(/^\$/);
    expect(await bot.getState(roomId, 'org.meshpilot.device', 'laptop')).toEqual({ os: 'linux' });

    expect(await bot.isEncryptedRoom(roomId)).toBe(false);
    await op(operator, 'PUT', `/_matrix/client/v3/rooms/${enc(roomId)}/state/m.room.encryption/`, { algorithm: 'm.megolm.v1.aes-sha2' });
    expect(await bot.isEncryptedRoom(roomId)).toBe(true);

    await bot.setDisplayName('Laptop bot');
    expect((await op(operator, 'GET', `/_matrix/client/v3/profile/${enc(botUser.userId)}`))['displayname']).toBe('Laptop bot');
    expect(await bot.whoami()).toEqual({ userId: botUser.userId, deviceId: botUser.deviceId });

    const shim = createRequire(import.meta.url)('@matrix-org/matrix-sdk-crypto-nodejs') as { __meshpilotCryptoAvailable: boolean; __meshpilotBackend?: string };
    expect(bot.cryptoAvailable()).toBe(shim.__meshpilotCryptoAvailable);
    // this checkout has no native module: the shim serves the WebAssembly crypto
    expect(cryptoAvailable()).toBe(true);
    expect(shim.__meshpilotBackend).toBe('wasm');
    // a session without `encryption` never turns it on
    expect(bot.encryptionEnabled()).toBe(false);
    expect((await bot.encryptionStatus()).problem).toMatch(/turned off/);

    // errors are values with person-readable messages
    const stranger = await hs.registerUser('stranger-send', 'pw');
    const s2 = session(stranger);
    await expect(s2.sendText(roomId, 'let me in')).rejects.toMatchObject({ code: 'permission' });
    await expect(bot.sendText('not-a-room', 'x')).rejects.toBeInstanceOf(MeshpilotError);
  });

  it('downloads media via authenticated v1 when /versions advertises v1.11, else via v3; enforces the size limit', async () => {
    // Switching the media endpoints on and off is the fixture's: a real server is what it is (below).
    const hs = await startHomeserver({ authenticatedMedia: true, freezeLegacyMedia: true });
    try {
    const botUser = hs.registerUser('bot-media', 'pw');
    const payload = Buffer.alloc(50_000, 7);
    const up = await fetch(`${hs.url}/_matrix/media/v3/upload?filename=blob.bin`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${botUser.accessToken}`, 'Content-Type': 'application/x-test' },
      body: payload,
    });
    const mxc = ((await up.json()) as { content_uri: string }).content_uri;

    // this fixture advertises v1.11 and freezes legacy downloads: only the authenticated endpoint works
    const a = session(botUser, tmp(), { homeserverUrl: hs.url });
    const got = await a.downloadMedia(mxc);
    expect(got.endpoint).toBe('authenticated');
    expect(got.contentType).toBe('application/x-test');
    expect(Buffer.compare(got.bytes, payload)).toBe(0);
    expect(hs.requests.some((r) => r.path.startsWith('/_matrix/client/v1/media/download/') && r.status === 200)).toBe(true);
    await expect(a.downloadMedia(mxc, { maxBytes: 1_000 })).rejects.toMatchObject({ code: 'output_limit' });
    await expect(a.downloadMedia(`mxc://${hs.serverName}/missing`)).rejects.toMatchObject({ code: 'not_found' });
    await expect(a.downloadMedia('https://example.org/x')).rejects.toMatchObject({ code: 'usage' });

    // an older homeserver: no v1.11, no /client/v1/media; a new session falls back to /_matrix/media/v3
    hs.setMediaOptions({ authenticatedMedia: false, freezeLegacyMedia: false });
    try {
      const b = session(botUser, tmp(), { homeserverUrl: hs.url });
      const got2 = await b.downloadMedia(mxc);
      expect(got2.endpoint).toBe('legacy');
      expect(Buffer.compare(got2.bytes, payload)).toBe(0);
      expect(hs.requests.some((r) => r.path.startsWith('/_matrix/media/v3/download/') && r.status === 200)).toBe(true);
    } finally {
      hs.setMediaOptions({ authenticatedMedia: true, freezeLegacyMedia: true });
    }
    } finally {
      await hs.stop();
    }
  });

  it('downloads media from the test homeserver through the endpoint it advertises', async () => {
    const botUser = await hs.registerUser('bot-media', 'pw');
    const payload = Buffer.alloc(20_000, 9);
    const up = await fetch(`${hs.url}/_matrix/media/v3/upload?filename=blob.bin`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${botUser.accessToken}`, 'Content-Type': 'application/x-test' },
      body: payload,
    });
    const mxc = ((await up.json()) as { content_uri: string }).content_uri;
    const got = await session(botUser).downloadMedia(mxc);
    expect(got.endpoint).toBe(hs.kind === 'fixture' ? 'authenticated' : 'legacy'); // Synapse 1.67 predates v1.11
    expect(Buffer.compare(got.bytes, payload)).toBe(0);
    await expect(session(botUser).downloadMedia(`mxc://${hs.serverName}/missing`)).rejects.toMatchObject({ code: 'not_found' });
  });

  it('resumes from the stored sync token after a restart without replaying; a fresh store does not replay history', async () => {
    const operator = await hs.registerUser('op-resume', 'pw');
    const botUser = await hs.registerUser('bot-resume', 'pw');
    const store = tmp();
    const a = session(botUser, store);
    const seenA = collector<MatrixMessage>();
    a.onMessage(seenA.push);
    await a.start();
    const roomId = await a.createDm(operator.userId, {});
    await op(operator, 'POST', `/_matrix/client/v3/join/${enc(roomId)}`, {});
    const first = await opSend(operator, roomId, { msgtype: 'm.text', body: 'first' });
    await seenA.waitFor((m) => m.eventId === first);
    await a.stop();
    expect(a.status()).toBe('stopped');

    const whileOff = await opSend(operator, roomId, { msgtype: 'm.text', body: 'while the bot was off' });
    await hs.restart();

    const b = session(botUser, store);
    const seenB = collector<MatrixMessage>();
    b.onMessage(seenB.push);
    await b.start();
    await seenB.waitFor((m) => m.eventId === whileOff);
    const later = await opSend(operator, roomId, { msgtype: 'm.text', body: 'later' });
    await seenB.waitFor((m) => m.eventId === later);
    expect(seenB.items.map((m) => m.eventId)).toEqual([whileOff, later]);
    await b.stop();

    // a brand-new store (first run of a bot on this account) does not act on old room history
    const c = session(botUser, tmp());
    const seenC = collector<MatrixMessage>();
    c.onMessage(seenC.push);
    await c.start();
    const fresh = await opSend(operator, roomId, { msgtype: 'm.text', body: 'fresh' });
    await seenC.waitFor((m) => m.eventId === fresh);
    expect(seenC.items.map((m) => m.eventId)).toEqual([fresh]);
  });

  it('survives the homeserver going down (warn logs without stacks), reconnects, and stop() works while down', async () => {
    const operator = await hs.registerUser('op-down', 'pw');
    const botUser = await hs.registerUser('bot-down', 'pw');
    const bot = session(botUser);
    const seen = collector<MatrixMessage>();
    bot.onMessage(seen.push);
    await bot.start();
    const roomId = await bot.createDm(operator.userId, {});
    await op(operator, 'POST', `/_matrix/client/v3/join/${enc(roomId)}`, {});
    const before = await opSend(operator, roomId, { msgtype: 'm.text', body: 'before outage' });
    await seen.waitFor((m) => m.eventId === before);

    logLines.length = 0;
    hs.setDown(true);
    await until(() => bot.status() === 'reconnecting');
    await until(() => logLines.filter((l) => l.includes('Matrix sync failed')).length >= 2);
    const warns = logLines.map((l) => JSON.parse(l) as { level: number; msg: string; error?: string }).filter((l) => l.msg === 'Matrix sync failed; retrying');
    expect(warns[0]!.level).toBe(40); // pino warn
    expect(warns[0]!.error).toBe('HTTP 502');
    expect(logLines.join('')).not.toMatch(/\n\s+at |\\n\s+at /); // no stack traces
    expect(logLines.join('')).not.toContain(botUser.accessToken);

    hs.setDown(false);
    await until(() => bot.status() === 'syncing');
    const after = await opSend(operator, roomId, { msgtype: 'm.text', body: 'after outage' });
    await seen.waitFor((m) => m.eventId === after);

    // a real restart (connections dropped, same port) in the middle of a long poll
    await hs.restart();
    const afterRestart = await opSend(operator, roomId, { msgtype: 'm.text', body: 'after restart' });
    await seen.waitFor((m) => m.eventId === afterRestart);
    const ids = seen.items.map((m) => m.eventId);
    expect(ids).toEqual([before, after, afterRestart]);

    // stop() while the homeserver is down returns promptly
    hs.setDown(true);
    await until(() => bot.status() === 'reconnecting');
    const t0 = Date.now();
    await bot.stop();
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(bot.status()).toBe('stopped');
    hs.setDown(false);

    // start() while down keeps retrying and is cancelled by stop()
    hs.setDown(true);
    const d = session(botUser);
    const starting = d.start();
    await new Promise((r) => setTimeout(r, 300));
    await d.stop();
    await starting;
    expect(d.status()).toBe('stopped');
    hs.setDown(false);
  });
});

/**
 * An HTTP proxy in front of the fixture. `intercept` sees each request first: it may answer it itself
 * (return true) or do something before it is forwarded (return a promise of false).
 */
async function startProxy(intercept: (req: http.IncomingMessage, res: http.ServerResponse) => boolean | Promise<boolean>): Promise<{ url: string; close: () => void }> {
  const proxy = http.createServer((req, res) => {
    void Promise.resolve(intercept(req, res)).then((handled) => {
      if (handled) return;
      const up = http.request(hs.url + req.url, { method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, close: () => proxy.close() };
}

function encryptedSession(user: RegisteredUser, homeserverUrl = hs.url): MatrixSession {
  const storageDir = tmp();
  return session(user, storageDir, { homeserverUrl, encryption: { storeDir: path.join(storageDir, 'crypto'), password: 'pw' } });
}

describe('bots/matrix session with end-to-end encryption', () => {
  it('retries a start whose first key upload failed (the crypto store is reopened, not reported as already open)', async () => {
    expect(cryptoAvailable()).toBe(true);
    // the first keys upload is answered 502, as a busy or restarting homeserver does
    let failedUploads = 0;
    const proxy = await startProxy((req, res) => {
      if (req.method === 'POST' && req.url?.startsWith('/_matrix/client/v3/keys/upload') && failedUploads === 0) {
        failedUploads += 1;
        req.resume();
        res.writeHead(502, { 'content-type': 'application/json' }).end('{"errcode":"M_UNKNOWN","error":"bad gateway"}');
        return true;
      }
      return false;
    });
    try {
      const botUser = await hs.registerUser('bot-e2ee-retry', 'pw');
      const s = encryptedSession(botUser, proxy.url);
      logLines.length = 0;
      await Promise.race([s.start(), new Promise((_, reject) => setTimeout(() => reject(new Error(`start did not finish: ${logLines.filter((l) => l.includes('retrying')).join('')}`)), 10_000))]);
      expect(failedUploads).toBe(1);
      expect(logLines.filter((l) => l.includes('could not start; retrying'))).toHaveLength(1);
      expect(logLines.join('')).not.toContain('already open');
      expect(s.encryptionEnabled()).toBe(true);
      expect((await s.encryptionStatus()).deviceId).toBe(botUser.deviceId);
      // the keys the retry uploaded are on the server
      expect((await hs.devices(botUser.userId)).find((d) => d.deviceId === botUser.deviceId)?.keys).not.toBeNull();
    } finally {
      proxy.close();
    }
  });

  it('shares the room key with an operator who accepts the DM invite while the bot looks up the members', async () => {
    const operatorUser = await hs.registerUser('op-e2ee-race', 'pw');
    const botUser = await hs.registerUser('bot-e2ee-race', 'pw');
    const operator = encryptedSession(operatorUser);
    const seen = collector<MatrixMessage>();
    operator.onMessage(seen.push);
    await operator.start();
    let roomId = '';
    let joined = false;
    // The operator's phone accepts the invite at the worst moment: after any joined-members answer
    // the bot got, before its members answer (the bot then knew the operator neither as joined nor
    // as invited, and shared the key with nobody).
    const proxy = await startProxy(async (req) => {
      if (!joined && roomId && req.method === 'GET' && new RegExp(`/rooms/${enc(roomId)}/members([?]|$)`).test(req.url ?? '')) {
        joined = true;
        await operator.joinRoom(roomId);
      }
      return false;
    });
    try {
      const bot = encryptedSession(botUser, proxy.url);
      await bot.start();
      roomId = await bot.createDm(operatorUser.userId, { encrypted: true });
      await bot.sendText(roomId, 'first words');
      expect(joined).toBe(true);
      const m = await seen.waitFor((x) => x.roomId === roomId && x.sender === botUser.userId, 15_000);
      expect(m.body).toBe('first words');
    } finally {
      proxy.close();
    }
  });
});

describe('bots/matrix registration helpers', () => {
  it('registers with the shared secret, maps M_USER_IN_USE and a wrong secret, and deactivates users', async () => {
    const admin = await registerWithSharedSecret({
      homeserverUrl: hs.url,
      sharedSecret: hs.registrationSharedSecret,
      localpart: hs.unique('meshpilot-admin'),
      password: 'admin-pw',
      admin: true,
      displayname: 'meshpilot admin',
    });
    expect(admin.userId).toBe(`@${hs.unique('meshpilot-admin')}:${hs.serverName}`);
    expect(admin.accessToken.length).toBeGreaterThan(10);
    expect(admin.deviceId.length).toBeGreaterThan(0);

    const dup = registerWithSharedSecret({ homeserverUrl: hs.url, sharedSecret: hs.registrationSharedSecret, localpart: hs.unique('meshpilot-admin'), password: 'x' });
    await expect(dup).rejects.toMatchObject({ code: 'config' });
    await expect(dup).rejects.toThrow(/already taken/);

    await expect(
      registerWithSharedSecret({ homeserverUrl: hs.url, sharedSecret: 'wrong-secret', localpart: 'someone', password: 'x' }),
    ).rejects.toMatchObject({ code: 'auth' });
    await expect(registerWithSharedSecret({ homeserverUrl: hs.url, sharedSecret: 's', localpart: 'Bad Name', password: 'x' })).rejects.toMatchObject({
      code: 'usage',
    });

    const victim = await registerWithSharedSecret({ homeserverUrl: hs.url, sharedSecret: hs.registrationSharedSecret, localpart: hs.unique('victim-bot'), password: 'pw' });
    const vs = session(victim);
    expect((await vs.whoami()).userId).toBe(victim.userId);
    await expect(deactivateUser({ homeserverUrl: hs.url, adminToken: victim.accessToken, userId: admin.userId })).rejects.toMatchObject({
      code: 'permission',
    });
    await deactivateUser({ homeserverUrl: hs.url, adminToken: admin.accessToken, userId: victim.userId });
    await expect(vs.whoami()).rejects.toMatchObject({ code: 'auth' });

    await expect(
      registerWithSharedSecret({ homeserverUrl: 'http://127.0.0.1:1', sharedSecret: 's', localpart: 'x', password: 'y' }),
    ).rejects.toMatchObject({ code: 'unreachable' });
  });
});
