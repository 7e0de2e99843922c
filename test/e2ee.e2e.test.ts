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
    const crypto = env.phone.client.getCrypto()!;
    await crypto.getUserDeviceInfo([botUserId], true);
    const status = await crypto.getDeviceVerificationStatus(botUserId, now.deviceId!);
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
    // a port nothing listens on: the bot keeps retrying its encryption device check
    const closed = await new Promise<number>((resolve) => {
      const srv = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = srv.address() as net.AddressInfo;
        srv.close(() => resolve(port));
      });
    });
    writeCredentials(path.join(env.home, 'keys'), 'lonely', { userId: user.userId, accessToken: user.accessToken, deviceId: user.deviceId, password: 'pw-lonely', homeserverUrl: `http://127.0.0.1:${closed}` });
    const bot = env.startBot('lonely');
    const exited = new Promise<number | null>((resolve) => bot.once('exit', (code) => resolve(code)));
    await new Promise((r) => setTimeout(r, 3_000)); // loaded, and retrying
    expect(bot.exitCode).toBeNull();
    const t0 = Date.now();
    bot.disconnect();
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), 5_000))]);
    expect(code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(5_000);
  }, 30_000);
});
