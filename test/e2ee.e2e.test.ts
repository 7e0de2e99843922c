/**
 * End-to-end encryption, end to end: the real device bot (matrix-bot-sdk with meshpilot's crypto
 * module: matrix-sdk-crypto in WebAssembly, store persisted under keys/) and the operator's phone
 * (matrix-js-sdk with its Rust crypto), through the homeserver fixture, which only ever sees ciphertext.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as http from 'node:http';
import * as net from 'node:net';
import { readCredentials, writeCredentials } from '../bots/credentials.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, waitReady, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';
import { mediaDownloadPath } from './helpers/test-homeserver.js';

describe('device bot with end-to-end encryption', () => {
  let env: BotEnv;
  let room: string;
  let botUserId: string;
  let child: ChildProcess;
  const keysDir = (): string => path.join(env.home, 'keys', 'box');

  beforeAll(async () => {
    env = await createBotEnv({ encryption: 'auto', phoneCrypto: true, withLlm: false });
    await env.registerBot('box');
    writeFileSync(path.join(env.work, 'big.txt'), 'x'.repeat(9000) + '\nEND-OF-BIG-FILE\n');
    env.writeManifest('box', `  sys.info: {}\n  sys.health: {}\n  fs.read: { paths_allowed: ["${env.work}/**"] }\n`);
    ({ child, room, botUserId } = await env.startBotInDm('box'));
  }, 90_000);
  afterAll(async () => {
    await env?.cleanup();
  });

  const fromBot = (e: ClientEvent): boolean => e.sender === botUserId;
  const say = async (text: string): Promise<void> => {
    await env.phone.client.sendTextMessage(room, text);
  };
  const botSays = (re: RegExp, from: number, ms = 20_000): Promise<ClientEvent> =>
    env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= from && e.type === 'm.room.message' && re.test(bodyOf(e)), ms);
  const serverSide = (): Promise<ClientEvent[]> => env.hs.events(room);

  it('creates its DM encrypted and the homeserver only ever sees ciphertext from it', async () => {
    expect((await serverSide()).some((e) => e.type === 'm.room.encryption' && (e.content as { algorithm?: string }).algorithm === 'm.megolm.v1.aes-sha2')).toBe(true);
    const botMessages = (await serverSide()).filter((e) => fromBot(e) && (e.type === 'm.room.message' || e.type === 'm.room.encrypted'));
    expect(botMessages.length).toBeGreaterThan(0);
    expect(botMessages.every((e) => e.type === 'm.room.encrypted')).toBe(true);
    expect(JSON.stringify(botMessages)).not.toContain('live');
  });

  it('answers an encrypted !status, encrypted', async () => {
    const idx = env.phone.events.length;
    await say('!status');
    const reply = await botSays(/🖥 box/, idx);
    expect(bodyOf(reply)).toMatch(/uptime|load|memory/i);
    const raw = (await serverSide()).find((e) => e.event_id === reply.event_id);
    expect(raw?.type).toBe('m.room.encrypted');
    // what the phone sent was encrypted too
    expect((await serverSide()).filter((e) => e.sender === env.operator.userId && e.type === 'm.room.message')).toHaveLength(0);
  });

  it('says so when a message cannot be decrypted (keys never arrived), instead of staying silent', async () => {
    const idx = env.phone.events.length;
    const bogus = { algorithm: 'm.megolm.v1.aes-sha2', ciphertext: 'AwgAEpABnotarealmegolmmessage', device_id: env.operator.deviceId, sender_key: 'J0POn5+DdZIdDn0uKO4cbUiYwfrlJ1jzThPDZwz09E0', session_id: 'nosuchsession' };
    const res = await fetch(`${env.hs.url}/_matrix/client/v3/rooms/${encodeURIComponent(room)}/send/m.room.encrypted/bogus-${Date.now()}`, {
      method: 'PUT', headers: { Authorization: `Bearer ${env.operator.accessToken}`, 'Content-Type': 'application/json' }, body: JSON.stringify(bogus),
    });
    expect(res.status).toBe(200);
    const note = await botSays(/could not decrypt/, idx);
    expect(bodyOf(note)).toContain('Send it again');
  });

  it("its device is cross-signed by its owner (no red shield on the operator's phone)", async () => {
    const creds = readCredentials(path.join(env.home, 'keys'), 'box');
    expect(creds?.deviceId).toMatch(/^[A-Z0-9]{4,}$/);
    const crypto = env.phone.client.getCrypto();
    expect(crypto).toBeDefined();
    await crypto!.getUserDeviceInfo([botUserId], true);
    const status = await crypto!.getDeviceVerificationStatus(botUserId, creds!.deviceId!);
    expect(status?.signedByOwner).toBe(true);
    expect(JSON.stringify((await env.hs.crossSigningKeys(botUserId))?.master)).toContain('"master"');
    // the identity's private keys are kept (0600) for a replacement device
    expect(statSync(path.join(keysDir(), 'cross-signing.json')).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(keysDir(), 'crypto')).mode & 0o777).toBe(0o700);
  });

  it('sends long output as an encrypted attachment', async () => {
    const idx = env.phone.events.length;
    await say(`!cap fs.read path=${env.work}/big.txt`);
    const file = await env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= idx && (e.content as { msgtype?: string }).msgtype === 'm.file', 20_000);
    const content = file.content as { url?: string; file?: { url: string } };
    expect(content.url).toBeUndefined();
    expect(content.file?.url).toMatch(/^mxc:\/\//);
    const [, server, id] = /^mxc:\/\/([^/]+)\/(.+)$/.exec(content.file!.url)!;
    const res = await fetch(`${env.hs.url}${mediaDownloadPath(env.hs)}${server}/${id}`, { headers: { Authorization: `Bearer ${env.operator.accessToken}` } });
    const cipher = new Uint8Array(await res.arrayBuffer());
    expect(Buffer.from(cipher).toString('utf8')).not.toContain('END-OF-BIG-FILE');
    const shim = createRequire(import.meta.url)('@matrix-org/matrix-sdk-crypto-nodejs') as { Attachment: { decrypt(a: unknown): Uint8Array }; EncryptedAttachment: new (d: Uint8Array, info: string) => unknown };
    const clear = Buffer.from(shim.Attachment.decrypt(new shim.EncryptedAttachment(cipher, JSON.stringify(content.file)))).toString('utf8');
    expect(clear).toContain('END-OF-BIG-FILE');
  });

  it('keeps its device and keys across a restart', async () => {
    const before = readCredentials(path.join(env.home, 'keys'), 'box')!.deviceId;
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    child = env.startBot('box');
    await waitReady(child);
    expect(readCredentials(path.join(env.home, 'keys'), 'box')!.deviceId).toBe(before);
    const idx = env.phone.events.length;
    await say('!status');
    await botSays(/🖥 box/, idx);
  }, 60_000);

  it('after losing its crypto store it never reuses the device: new device, old one deleted, same identity', async () => {
    const keys = path.join(env.home, 'keys');
    const old = readCredentials(keys, 'box')!.deviceId!;
    const masterBefore = JSON.stringify((await env.hs.crossSigningKeys(botUserId))?.master);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    rmSync(path.join(keysDir(), 'crypto'), { recursive: true, force: true });
    child = env.startBot('box');
    await waitReady(child);
    const now = readCredentials(keys, 'box')!;
    expect(now.deviceId).toMatch(/^[A-Z0-9]{4,}$/);
    expect(now.deviceId).not.toBe(old);
    const devices = (await env.hs.devices(botUserId)).map((d) => d.deviceId);
    expect(devices).toContain(now.deviceId);
    expect(devices).not.toContain(old);
    // same cross-signing identity, and the new device is signed by it
    expect(JSON.stringify((await env.hs.crossSigningKeys(botUserId))?.master)).toBe(masterBefore);
    // the homeserver holds the new device's keys signed by the identity's self-signing key (uploaded before "ready")
    const query = await fetch(`${env.hs.url}/_matrix/client/v3/keys/query`, {
      method: 'POST', headers: { Authorization: `Bearer ${env.operator.accessToken}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ device_keys: { [botUserId]: [] } }),
    });
    const published = (await query.json()) as { device_keys?: Record<string, Record<string, { signatures?: Record<string, Record<string, string>> }>>; self_signing_keys?: Record<string, { keys: Record<string, string> }> };
    const sskId = Object.keys(published.self_signing_keys?.[botUserId]?.keys ?? {})[0];
    expect(sskId).toMatch(/^ed25519:/);
    expect(Object.keys(published.device_keys?.[botUserId]?.[now.deviceId!]?.signatures?.[botUserId] ?? {})).toContain(sskId);
    // and the phone, which learns of the change through its sync (device_lists.changed), then shows no red shield
    const crypto = env.phone.client.getCrypto()!;
    const deadline = Date.now() + 20_000;
    let status: Awaited<ReturnType<typeof crypto.getDeviceVerificationStatus>> = null;
    for (;;) {
      await crypto.getUserDeviceInfo([botUserId], true);
      status = await crypto.getDeviceVerificationStatus(botUserId, now.deviceId!);
      if (status?.signedByOwner || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(status?.signedByOwner).toBe(true);
    // and it can read what the phone sends now
    const idx = env.phone.events.length;
    await say('!status');
    await botSays(/🖥 box/, idx, 30_000);
    expect(existsSync(path.join(keysDir(), 'crypto', 'crypto-store.v1'))).toBe(true);
    expect(readFileSync(path.join(keysDir(), 'matrix.json'), 'utf8')).toContain(now.deviceId!);
  }, 90_000);

  it('a bot still waiting for an unreachable homeserver exits as soon as its launcher goes away (no orphan)', async () => {
    const user = await env.registerBot('lonely');
    env.writeManifest('lonely', '  sys.info: {}\n');
    // a homeserver that is down (503 to everything): the bot keeps retrying its encryption device check.
    // Its first request says it is loaded and in that retry loop (a fixed wait would race a slow start).
    let asked!: () => void;
    const firstRequest = new Promise<void>((r) => { asked = r; });
    const down = http.createServer((_req, res) => { asked(); res.writeHead(503).end('{"errcode":"M_UNKNOWN","error":"down"}'); });
    const port = await new Promise<number>((resolve) => down.listen(0, '127.0.0.1', () => resolve((down.address() as net.AddressInfo).port)));
    try {
      writeCredentials(path.join(env.home, 'keys'), 'lonely', { userId: user.userId, accessToken: user.accessToken, deviceId: user.deviceId, password: 'pw-lonely', homeserverUrl: `http://127.0.0.1:${port}` });
      const bot = env.startBot('lonely');
      const exited = new Promise<number | null>((resolve) => bot.once('exit', (code) => resolve(code)));
      await Promise.race([firstRequest, exited]);
      expect(bot.exitCode).toBeNull();
      const t0 = Date.now();
      bot.disconnect();
      const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), 5_000))]);
      expect(code).toBe(0);
      expect(Date.now() - t0).toBeLessThan(5_000);
    } finally {
      down.closeAllConnections();
      down.close();
    }
  }, 60_000);
});
