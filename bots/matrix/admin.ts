/**
 * Accounts, without a session: Synapse's admin API (shared-secret registration, deactivation, lookup,
 * reactivation) and the account calls setup and enrollment make before a bot runs (whoami, login,
 * display name, /versions). The HTTP is http.ts's; here is what each answer means for meshpilot.
 */
import { createHmac } from 'node:crypto';
import { MeshpilotError } from '../../capabilities/errors.js';
import { errInfo, toMeshpilot } from './errors.js';
import { userIdRe } from './events.js';
import { HomeserverApi } from './http.js';

function validLocalpart(localpart: string): void {
  if (!/^[a-z0-9._=\-/+]{1,200}$/.test(localpart)) {
    throw new MeshpilotError('usage', `Matrix user names may only contain a-z, 0-9 and . _ = - / + (got ${localpart.slice(0, 80)})`);
  }
}

function validUserId(userId: string): void {
  if (!userIdRe.test(userId) || userId.length > 255) throw new MeshpilotError('usage', `Not a Matrix user id: ${userId.slice(0, 80)}`);
}

const USER_IN_USE = 'M_USER_IN_USE';

/** True when registerWithSharedSecret failed because the account exists already (an earlier install, say). */
export function isUserInUse(err: unknown): boolean {
  return err instanceof MeshpilotError && err.cause === USER_IN_USE;
}

/** Registers a user through Synapse's shared-secret admin API (nonce + HMAC-SHA1). */
export async function registerWithSharedSecret(o: {
  homeserverUrl: string;
  sharedSecret: string;
  localpart: string;
  password: string;
  admin?: boolean;
  displayname?: string;
}): Promise<{ userId: string; accessToken: string; deviceId: string }> {
  validLocalpart(o.localpart);
  if (o.password.length === 0 || o.password.length > 512) throw new MeshpilotError('usage', 'Password must be 1\u2013512 characters');
  const api = new HomeserverApi(o.homeserverUrl);
  const admin = o.admin === true;
  try {
    const nonce = await api.sharedSecretNonce();
    if (!nonce) throw new MeshpilotError('unreachable', 'Matrix registration failed: the homeserver sent no nonce (is it Synapse with shared-secret registration enabled?)');
    const mac = createHmac('sha1', o.sharedSecret)
      .update(nonce)
      .update('\x00')
      .update(o.localpart)
      .update('\x00')
      .update(o.password)
      .update('\x00')
      .update(admin ? 'admin' : 'notadmin')
      .digest('hex');
    const body: Record<string, unknown> = { nonce, username: o.localpart, password: o.password, admin, mac };
    if (o.displayname !== undefined) body['displayname'] = o.displayname;
    const r = await api.sharedSecretRegister(body);
    if (!r) throw new MeshpilotError('unreachable', 'Matrix registration failed: unexpected response from the homeserver');
    return r;
  } catch (err) {
    if (err instanceof MeshpilotError) throw err;
    const i = errInfo(err);
    if (i.errcode === 'M_USER_IN_USE') {
      throw new MeshpilotError('config', `The Matrix user name "${o.localpart}" is already taken on ${api.url}; pick another name or reuse that account's access token`, { cause: USER_IN_USE });
    }
    if (i.errcode === 'M_FORBIDDEN' || i.status === 403) {
      throw new MeshpilotError('auth', 'The homeserver rejected the registration shared secret (check registration_shared_secret in homeserver.yaml)');
    }
    if (i.status === 404 || i.errcode === 'M_UNRECOGNIZED') {
      throw new MeshpilotError('config', 'This homeserver has no shared-secret registration endpoint (Synapse with registration_shared_secret is required)');
    }
    throw toMeshpilot(err, 'registration');
  }
}

/** Deactivates a user with Synapse's admin API (the token must belong to a server admin). */
export async function deactivateUser(o: { homeserverUrl: string; adminToken: string; userId: string; erase?: boolean }): Promise<void> {
  validUserId(o.userId);
  try {
    await new HomeserverApi(o.homeserverUrl, o.adminToken).adminDeactivate(o.userId, o.erase === true);
  } catch (err) {
    if (err instanceof MeshpilotError) throw err;
    if (errInfo(err).errcode === 'M_FORBIDDEN') throw new MeshpilotError('permission', 'Deactivating a Matrix user needs a server admin\'s access token');
    throw toMeshpilot(err, 'deactivation');
  }
}

/** A user as Synapse's admin API sees it (null: no such user). */
export function adminLookupUser(o: { homeserverUrl: string; adminToken: string; userId: string }): Promise<{ deactivated: boolean } | null> {
  validUserId(o.userId);
  return new HomeserverApi(o.homeserverUrl, o.adminToken).adminUser(o.userId);
}

/** Reactivates a deactivated user (Synapse never frees a deactivated name), with a new password. */
export async function reactivateUser(o: { homeserverUrl: string; adminToken: string; userId: string; password: string; displayname?: string }): Promise<void> {
  validUserId(o.userId);
  await new HomeserverApi(o.homeserverUrl, o.adminToken).adminPutUser(o.userId, { deactivated: false, password: o.password, ...(o.displayname !== undefined ? { displayname: o.displayname } : {}) });
}

/** Checks an access token and returns who it belongs to. */
export function whoamiWithToken(o: { homeserverUrl: string; accessToken: string }): Promise<{ userId: string; deviceId?: string }> {
  return new HomeserverApi(o.homeserverUrl, o.accessToken).whoami();
}

/** m.login.password; returns a fresh access token (a new Matrix device). */
export function loginWithPassword(o: { homeserverUrl: string; user: string; password: string; deviceName?: string }): Promise<{ userId: string; accessToken: string; deviceId: string }> {
  return new HomeserverApi(o.homeserverUrl).login({ user: o.user, password: o.password, deviceName: o.deviceName ?? 'meshpilot' });
}

/** `/versions`, for doctor checks. */
export async function homeserverVersions(homeserverUrl: string): Promise<string[]> {
  return (await new HomeserverApi(homeserverUrl).versions()).versions;
}

/** Sets a user's display name with their own token. */
export async function setDisplayNameWithToken(o: { homeserverUrl: string; accessToken: string; userId: string; displayname: string }): Promise<void> {
  await new HomeserverApi(o.homeserverUrl, o.accessToken).setDisplayName(o.userId, o.displayname);
}
