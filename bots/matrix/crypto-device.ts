/**
 * The Matrix device behind an encrypted session: run before the session starts, makes sure the crypto
 * store belongs to the access token's device, and replaces a device whose keys were lost.
 */
import { existsSync, readFileSync, renameSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { MeshpilotError } from '../../capabilities/errors.js';
import { HomeserverApi } from './http.js';

/** Name of the crypto shim's store snapshot inside a store dir (bots/crypto-optional). */
const CRYPTO_STORE_FILE = 'crypto-store.v1';

/**
 * Run before an encrypted session starts. Makes sure the crypto store in `storeDir` belongs to the
 * access token's Matrix device. A device whose keys the server already has but whose store is gone must
 * never be used again (its private keys are lost: it could never decrypt anything sent to it), so this
 * logs in as a new device with the password, hands the new credentials to `save`, then deletes the old
 * device. Without a password it fails with what to run instead.
 */
export async function checkCryptoDevice(o: {
  homeserverUrl: string;
  accessToken: string;
  storeDir: string;
  password?: string;
  deviceName: string;
  /** Command that fixes a lost store without a password, for the error message. */
  fixHint: string;
  save: (c: { accessToken: string; deviceId: string }) => void;
  logger: Logger;
}): Promise<{ userId: string; accessToken: string; deviceId: string; replacedDeviceId?: string }> {
  const api = new HomeserverApi(o.homeserverUrl, o.accessToken);
  const who = await api.whoami();
  const deviceId = who.deviceId;
  if (!deviceId) throw new MeshpilotError('config', 'the homeserver does not say which device the bot\'s access token belongs to, so encryption cannot be used');
  const storeOwner = (() => {
    try {
      const j = JSON.parse(readFileSync(path.join(o.storeDir, 'bot-sdk.json'), 'utf8')) as { deviceId?: unknown };
      return typeof j.deviceId === 'string' ? j.deviceId : undefined;
    } catch {
      return undefined;
    }
  })();
  const storeComplete = existsSync(path.join(o.storeDir, CRYPTO_STORE_FILE));
  if (storeOwner === deviceId && storeComplete) return { userId: who.userId, accessToken: o.accessToken, deviceId };

  const archive = (): void => {
    if (existsSync(o.storeDir)) renameSync(o.storeDir, `${o.storeDir}.replaced-${Date.now()}`);
  };
  const known = (await api.deviceKeys(who.userId, [deviceId]))[deviceId] !== undefined;
  if (!known) {
    // A device that never published keys: a fresh store is right (set aside whatever store was there).
    if (existsSync(o.storeDir)) {
      o.logger.warn({ deviceId, storeOwner }, 'the crypto store belongs to another Matrix device: setting it aside and starting a fresh one');
      archive();
    }
    return { userId: who.userId, accessToken: o.accessToken, deviceId };
  }
  // The server knows this device's keys but the store is gone (or belongs to another device): lost.
  if (!o.password) {
    throw new MeshpilotError('config', `the encryption keys of Matrix device ${deviceId} (${who.userId}) are lost, and a device is never reused after that; meshpilot has no password to log in as a new device: run \`${o.fixHint}\``);
  }
  const login = await api.login({ user: who.userId, password: o.password, deviceName: o.deviceName });
  archive();
  o.save({ accessToken: login.accessToken, deviceId: login.deviceId });
  o.logger.warn({ oldDeviceId: deviceId, newDeviceId: login.deviceId }, 'the crypto store was lost: logged in as a new Matrix device; deleting the old one');
  // Delete the old device (user-interactive auth by password); a failure leaves a dead device behind, not a broken bot.
  try {
    await api.as(login.accessToken).deleteDevices([deviceId], { user: who.userId, password: o.password });
  } catch (err) {
    o.logger.warn({ error: (err as Error).message, deviceId }, 'the old Matrix device could not be deleted; remove it from the account by hand');
  }
  return { userId: who.userId, accessToken: login.accessToken, deviceId: login.deviceId, replacedDeviceId: deviceId };
}
