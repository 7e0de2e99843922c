/**
 * Cross-signing of a bot's device by its owner, so clients show the bot's messages without a "not
 * verified by its owner" warning. The keys are uploaded through the SDK client (its doRequest), since
 * the session has one; the crypto module's OlmMachine makes and signs them.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { MeshpilotError } from '../../capabilities/errors.js';
import { cryptoEngine, cryptoMachine, readyCrypto } from './crypto.js';
import { errInfo } from './errors.js';
import type { SessionClient } from './sdk-patches.js';

const savedCrossSigningSchema = z.object({ masterKey: z.string().max(256).optional(), selfSigningKey: z.string().max(256).optional(), userSigningKey: z.string().max(256).optional() }).strict();

export interface CrossSigningOptions {
  /** The device's crypto store directory (a marker there remembers that this device is signed). */
  storeDir: string;
  /** Where the cross-signing private keys are kept (0600) so a replacement device keeps the same identity. */
  crossSigningFile?: string | undefined;
  /** The account password, for user-interactive auth of the first key upload. */
  password?: string | undefined;
  userId: string | undefined;
  log: Logger;
}

/**
 * POST with user-interactive auth by password when the server asks for it (401 with a UIA session).
 * With a password at hand it goes with the first request: Synapse opens the UIA session and completes
 * its password stage in that one round trip (no 401 first to learn a session id). A server that wants
 * its session answers 401 with one, and the request is sent once more with it; a wrong password
 * (M_FORBIDDEN) is not tried again.
 */
async function postWithUia(client: SessionClient, o: CrossSigningOptions, p: string, body: Record<string, unknown>): Promise<void> {
  const auth = (session?: string): Record<string, unknown> => ({
    type: 'm.login.password', identifier: { type: 'm.id.user', user: o.userId }, password: o.password, ...(session !== undefined ? { session } : {}),
  });
  try {
    await client.doRequest('POST', p, null, o.password ? { ...body, auth: auth() } : body);
  } catch (err) {
    const i = errInfo(err);
    if (i.status !== 401 || i.errcode === 'M_UNKNOWN_TOKEN') throw err;
    if (!o.password) throw new MeshpilotError('auth', 'the homeserver asks for the bot account\'s password to publish cross-signing keys, and meshpilot has none stored for it');
    const uia = (err as { body?: { session?: unknown } }).body?.session;
    if (i.errcode === 'M_FORBIDDEN' || typeof uia !== 'string') throw err;
    await client.doRequest('POST', p, null, { ...body, auth: auth(uia) });
  }
}

/**
 * Sends the crypto engine's pending requests (our own keys query above all) now, under the SDK's sync
 * lock: otherwise they wait for the next sync and identity checks stall on the long poll.
 */
async function flushCryptoRequests(client: SessionClient): Promise<void> {
  const engine = cryptoEngine(client);
  if (engine?.lock) await engine.lock.acquire('sync', () => engine.run());
}

/**
 * /keys/signatures/upload answers 200 even when it refuses a signature (in `failures`): a refused one
 * means this device is not cross-signed, so it is an error (and the done-marker is not written).
 */
function signaturesTaken(answer: unknown): void {
  const failures = (answer as { failures?: unknown } | null)?.failures;
  if (!failures || typeof failures !== 'object') return;
  const refused = Object.values(failures as Record<string, unknown>).flatMap((byKey) =>
    byKey && typeof byKey === 'object' ? Object.entries(byKey as Record<string, { error?: unknown }>).map(([k, v]) => `${k}: ${typeof v?.error === 'string' ? v.error.slice(0, 200) : 'refused'}`) : []);
  if (refused.length > 0) throw new MeshpilotError('exec_failed', `the homeserver refused this device's cross-signing signature (${refused.slice(0, 3).join('; ')})`);
}

/**
 * Makes this device cross-signed by its owner: reuses the saved identity (a replacement device keeps
 * it), else creates one. Returns why it could not (the crypto module has no cross-signing), else undefined.
 */
export async function ensureCrossSigning(client: SessionClient, o: CrossSigningOptions): Promise<string | undefined> {
  const m = cryptoMachine(client);
  const deviceId = readyCrypto(client)?.clientDeviceId;
  if (!m?.crossSigningStatus || !m.bootstrapCrossSigning || !deviceId) return 'the native crypto module does not support cross-signing';
  // Done once per device, remembered in the store dir. (Asking the machine instead would wait on a
  // keys query of our own user, stalling every crypto call behind it for seconds.)
  const marker = path.join(o.storeDir, 'cross-signed.json');
  const done = (() => {
    try {
      return (JSON.parse(readFileSync(marker, 'utf8')) as { deviceId?: unknown }).deviceId === deviceId;
    } catch {
      return false;
    }
  })();
  let status = await m.crossSigningStatus();
  if (done && status.hasSelfSigning) return undefined;
  const file = o.crossSigningFile;
  if (!status.hasSelfSigning && file && existsSync(file) && m.importCrossSigningKeys) {
    // A replacement device: the machine must have seen the identity's public keys before importing.
    await flushCryptoRequests(client);
    const saved = savedCrossSigningSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
    if (saved.success) status = (await m.importCrossSigningKeys(saved.data.masterKey ?? null, saved.data.selfSigningKey ?? null, saved.data.userSigningKey ?? null), await m.crossSigningStatus());
  }
  if (status.hasSelfSigning && m.signOwnDevice) {
    // The identity exists (ours, imported): sign this device with it.
    const body = await m.signOwnDevice();
    if (!body) throw new MeshpilotError('exec_failed', 'the crypto module could not sign this device');
    signaturesTaken(await client.doRequest('POST', '/_matrix/client/v3/keys/signatures/upload', null, body));
  } else {
    const reqs = await m.bootstrapCrossSigning(true);
    await postWithUia(client, o, '/_matrix/client/v3/keys/device_signing/upload', reqs.uploadSigningKeys);
    signaturesTaken(await client.doRequest('POST', '/_matrix/client/v3/keys/signatures/upload', null, reqs.uploadSignatures));
    const exported = await m.exportCrossSigningKeys?.();
    if (exported && file) {
      writeFileSync(`${file}.tmp`, JSON.stringify(exported), { mode: 0o600 });
      renameSync(`${file}.tmp`, file);
    }
  }
  writeFileSync(marker, JSON.stringify({ deviceId, at: new Date().toISOString() }), { mode: 0o600 });
  o.log.info('this device is cross-signed by its owner');
  return undefined;
}
