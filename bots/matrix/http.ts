/**
 * The one module for raw homeserver HTTP: calls made without a matrix-bot-sdk client (before a bot has
 * one, from the launcher, Synapse's admin API, media downloads). One method per endpoint, as
 * matrix-bot-sdk's MatrixClient has; every body is bounded and zod-validated; every failure is a
 * MeshpilotError through errors.ts's one mapping. A bot's session (session.ts) talks through the SDK;
 * the SDK's own transport is sdk-http.ts.
 */
import { z } from 'zod';
import { MeshpilotError } from '../../capabilities/errors.js';
import { httpFetch, type HttpResponse } from '../http.js';
import { errInfo, toMeshpilot } from './errors.js';
import { userIdRe } from './events.js';

const DEFAULT_TIMEOUT_MS = 15_000;
const DEFAULT_MAX_BYTES = 1024 * 1024;

const errorBodySchema = z.looseObject({
  errcode: z.string().max(255).optional(),
  error: z.string().max(2000).optional(),
  retry_after_ms: z.number().optional(),
  /** A user-interactive auth session (401 answers of endpoints that need one). */
  session: z.string().max(1024).optional(),
});
type ErrorBody = z.infer<typeof errorBodySchema>;

/** A homeserver's non-2xx answer; errInfo reads it as it reads the SDK's MatrixError. */
export class HomeserverError extends Error {
  constructor(
    readonly statusCode: number,
    readonly body: ErrorBody | undefined,
  ) {
    super(`HTTP ${statusCode}`);
    this.name = 'HomeserverError';
  }
}

interface CallOptions {
  token?: string | undefined;
  body?: unknown;
  timeoutMs?: number;
  maxBytes?: number;
}

const whoamiSchema = z.looseObject({ user_id: z.string().regex(userIdRe).max(255), device_id: z.string().max(255).optional() });
const loginSchema = z.looseObject({ user_id: z.string().max(255), access_token: z.string().min(1).max(4096), device_id: z.string().max(255).optional() });
const versionsSchema = z.looseObject({
  versions: z.array(z.unknown()).max(1000).optional(),
  unstable_features: z.record(z.string(), z.unknown()).optional(),
});
const nonceSchema = z.looseObject({ nonce: z.string().min(1).max(255) });
const registerSchema = z.looseObject({ user_id: z.string().regex(userIdRe), access_token: z.string().min(1).max(4096), device_id: z.string().max(255).optional() });
// Synapse before 1.7x answers `deactivated` as 0/1 (its database column), later ones as a boolean.
const adminUserSchema = z.looseObject({ deactivated: z.union([z.boolean(), z.number().int().min(0).max(1)]).transform(Boolean) });
const joinedRoomsSchema = z.looseObject({ joined_rooms: z.array(z.string().max(255)).max(100_000) });
const keysQuerySchema = z.looseObject({ device_keys: z.record(z.string(), z.record(z.string(), z.unknown())).optional() });
const contentSchema = z.record(z.string(), z.unknown());

/**
 * The Client-Server and Synapse admin endpoints meshpilot calls without an SDK client. `accessToken`:
 * the account the calls are made as (none for /versions, /login and shared-secret registration).
 */
export class HomeserverApi {
  readonly url: string;

  constructor(
    homeserverUrl: string,
    private readonly accessToken?: string,
  ) {
    this.url = homeserverUrl.replace(/\/+$/, '');
  }

  /** The same homeserver as another account. */
  as(accessToken: string): HomeserverApi {
    return new HomeserverApi(this.url, accessToken);
  }

  // ---- the one request ------------------------------------------------------------------------------

  /** Sends one request; answers the parsed JSON of a 2xx, throws HomeserverError for any other status. */
  private async raw(method: string, p: string, what: string, o: CallOptions = {}): Promise<unknown> {
    const token = o.token ?? this.accessToken;
    const maxBytes = o.maxBytes ?? DEFAULT_MAX_BYTES;
    let res: HttpResponse;
    let bytes: Buffer;
    try {
      res = await httpFetch(`${this.url}${p}`, {
        method,
        headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
        ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}),
        timeoutMs: o.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      });
      bytes = await res.bytes(maxBytes);
    } catch (err) {
      if ((err as { code?: unknown }).code === 'E2BIG') throw new MeshpilotError('output_limit', `Matrix ${what} failed: the homeserver answered with more than ${maxBytes} bytes`);
      throw this.unreachable(what, err);
    }
    let json: unknown;
    try {
      json = bytes.length > 0 ? JSON.parse(bytes.toString('utf8')) : undefined;
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const e = errorBodySchema.safeParse(json);
      throw new HomeserverError(res.status, e.success ? e.data : undefined);
    }
    return json;
  }

  /** raw() with every failure as a MeshpilotError (errors.ts's mapping). */
  private async call(method: string, p: string, what: string, o: CallOptions = {}): Promise<unknown> {
    try {
      return await this.raw(method, p, what, o);
    } catch (err) {
      throw toMeshpilot(err, what);
    }
  }

  /** A 2xx answer parsed with `schema`, or a MeshpilotError. */
  private async parsed<T extends z.ZodType>(schema: T, method: string, p: string, what: string, o: CallOptions = {}): Promise<z.output<T>> {
    const r = schema.safeParse(await this.call(method, p, what, o));
    if (!r.success) throw new MeshpilotError('unreachable', `Matrix ${what} failed: unexpected answer from the homeserver ${this.url}`);
    return r.data;
  }

  /** null when the homeserver answers 404 (nothing there). */
  private async orNull<T>(f: () => Promise<T>): Promise<T | null> {
    try {
      return await f();
    } catch (err) {
      if (err instanceof MeshpilotError && err.code === 'not_found') return null;
      throw err;
    }
  }

  private unreachable(what: string, err: unknown): MeshpilotError {
    return new MeshpilotError('unreachable', `Matrix ${what} failed: cannot reach the homeserver ${this.url} (${errInfo(err).message})`);
  }

  // ---- account ----------------------------------------------------------------------------------

  /** GET /versions: the spec versions (and unstable features) the homeserver speaks. */
  async versions(): Promise<{ versions: string[]; unstableFeatures: Record<string, unknown> }> {
    const v = await this.parsed(versionsSchema, 'GET', '/_matrix/client/versions', 'versions');
    return { versions: (v.versions ?? []).filter((x): x is string => typeof x === 'string'), unstableFeatures: v.unstable_features ?? {} };
  }

  /** GET /account/whoami: who this token belongs to. */
  async whoami(): Promise<{ userId: string; deviceId?: string }> {
    const w = await this.parsed(whoamiSchema, 'GET', '/_matrix/client/v3/account/whoami', 'whoami');
    return { userId: w.user_id, ...(w.device_id !== undefined ? { deviceId: w.device_id } : {}) };
  }

  /** POST /login (m.login.password): a fresh access token, a new Matrix device. */
  async login(o: { user: string; password: string; deviceName: string }): Promise<{ userId: string; accessToken: string; deviceId: string }> {
    let j: z.infer<typeof loginSchema>;
    try {
      j = await this.parsed(loginSchema, 'POST', '/_matrix/client/v3/login', 'login', {
        token: '',
        body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: o.user }, password: o.password, initial_device_display_name: o.deviceName },
      });
    } catch (err) {
      // At /login a refusal (wrong password, deactivated user) is bad credentials, not a missing permission.
      if (err instanceof MeshpilotError && (err.code === 'permission' || err.code === 'exec_failed' || err.code === 'not_found')) throw new MeshpilotError('auth', err.message);
      throw err;
    }
    return { userId: j.user_id, accessToken: j.access_token, deviceId: j.device_id ?? '' };
  }

  /** PUT /profile/{userId}/displayname. */
  async setDisplayName(userId: string, displayname: string): Promise<void> {
    await this.call('PUT', `/_matrix/client/v3/profile/${encodeURIComponent(userId)}/displayname`, 'display name', { body: { displayname } });
  }

  /** POST /keys/query for some of one user's devices: the device keys the homeserver has, by device id. */
  async deviceKeys(userId: string, deviceIds: string[]): Promise<Record<string, unknown>> {
    const j = await this.parsed(keysQuerySchema, 'POST', '/_matrix/client/v3/keys/query', 'key query', { body: { device_keys: { [userId]: deviceIds } }, maxBytes: 4 * 1024 * 1024 });
    return j.device_keys?.[userId] ?? {};
  }

  /**
   * POST /delete_devices, with user-interactive auth by password when the homeserver asks for it (a
   * 401 with a UIA session).
   */
  async deleteDevices(deviceIds: string[], uia: { user: string; password: string }): Promise<void> {
    const p = '/_matrix/client/v3/delete_devices';
    try {
      await this.raw('POST', p, 'device deletion', { body: { devices: deviceIds } });
    } catch (err) {
      if (!(err instanceof HomeserverError) || err.statusCode !== 401) throw toMeshpilot(err, 'device deletion');
      const session = err.body?.session !== undefined ? { session: err.body.session } : {};
      await this.call('POST', p, 'device deletion', { body: { devices: deviceIds, auth: { type: 'm.login.password', identifier: { type: 'm.id.user', user: uia.user }, password: uia.password, ...session } } });
    }
  }

  // ---- rooms and account data, as this account ---------------------------------------------------

  /** GET /joined_rooms. */
  async joinedRooms(o: { timeoutMs?: number } = {}): Promise<string[]> {
    return (await this.parsed(joinedRoomsSchema, 'GET', '/_matrix/client/v3/joined_rooms', 'joined rooms', o)).joined_rooms;
  }

  /** GET /rooms/{roomId}/state/{type}/{stateKey}: the content, or null when there is none. */
  stateEvent(roomId: string, type: string, stateKey: string, o: { timeoutMs?: number } = {}): Promise<Record<string, unknown> | null> {
    const p = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/${encodeURIComponent(type)}/${encodeURIComponent(stateKey)}`;
    return this.orNull(() => this.parsed(contentSchema, 'GET', p, 'state read', o));
  }

  /** GET /user/{userId}/account_data/{type}: the content, or null when there is none. */
  accountData(userId: string, type: string): Promise<Record<string, unknown> | null> {
    return this.orNull(() => this.parsed(contentSchema, 'GET', `/_matrix/client/v3/user/${encodeURIComponent(userId)}/account_data/${encodeURIComponent(type)}`, 'account data read'));
  }

  /** GET /rooms/{roomId}/event/{eventId}: the event as the homeserver has it (encrypted events stay encrypted). */
  async event(roomId: string, eventId: string): Promise<Record<string, unknown>> {
    return this.parsed(contentSchema, 'GET', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`, 'event read');
  }

  // ---- media ----------------------------------------------------------------------------------------

  /**
   * GET a media file: the authenticated endpoint (/client/v1/media, spec v1.11) or the legacy one. The
   * response is returned unread: the caller bounds it.
   */
  async mediaDownload(serverName: string, mediaId: string, authenticated: boolean): Promise<HttpResponse> {
    const path = authenticated ? '/_matrix/client/v1/media/download' : '/_matrix/media/v3/download';
    let res: HttpResponse;
    try {
      res = await httpFetch(`${this.url}${path}/${encodeURIComponent(serverName)}/${encodeURIComponent(mediaId)}`, {
        headers: this.accessToken ? { Authorization: `Bearer ${this.accessToken}` } : {},
        timeoutMs: 60_000,
      });
    } catch (err) {
      throw this.unreachable('media download', err);
    }
    if (!res.ok) {
      let body: ErrorBody | undefined;
      try {
        const e = errorBodySchema.safeParse(JSON.parse((await res.bytes(64 * 1024)).toString('utf8')));
        body = e.success ? e.data : undefined;
      } catch {
        body = undefined;
      }
      throw toMeshpilot(new HomeserverError(res.status, body), 'media download');
    }
    return res;
  }

  // ---- Synapse admin API ---------------------------------------------------------------------------

  /**
   * Shared-secret registration (Synapse's /_synapse/admin/v1/register): the nonce, then the registration.
   * Failures are HomeserverError (unmapped): what a refusal means depends on the step (admin.ts).
   */
  async sharedSecretNonce(): Promise<string | undefined> {
    const n = nonceSchema.safeParse(await this.raw('GET', '/_synapse/admin/v1/register', 'registration', { token: '', timeoutMs: 20_000, maxBytes: 64 * 1024 }));
    return n.success ? n.data.nonce : undefined;
  }

  async sharedSecretRegister(body: Record<string, unknown>): Promise<{ userId: string; accessToken: string; deviceId: string } | undefined> {
    const r = registerSchema.safeParse(await this.raw('POST', '/_synapse/admin/v1/register', 'registration', { token: '', body, timeoutMs: 20_000, maxBytes: 64 * 1024 }));
    return r.success ? { userId: r.data.user_id, accessToken: r.data.access_token, deviceId: r.data.device_id ?? '' } : undefined;
  }

  /** POST /_synapse/admin/v1/deactivate/{userId} (a server admin's token). Failures are HomeserverError. */
  async adminDeactivate(userId: string, erase: boolean): Promise<void> {
    await this.raw('POST', `/_synapse/admin/v1/deactivate/${encodeURIComponent(userId)}`, 'deactivation', { body: { erase }, timeoutMs: 20_000, maxBytes: 64 * 1024 });
  }

  /** GET /_synapse/admin/v2/users/{userId}: whether the user exists (null: no such user) and is deactivated. */
  adminUser(userId: string): Promise<{ deactivated: boolean } | null> {
    return this.orNull(async () => ({ deactivated: (await this.parsed(adminUserSchema, 'GET', `/_synapse/admin/v2/users/${encodeURIComponent(userId)}`, `admin lookup of ${userId}`)).deactivated }));
  }

  /** PUT /_synapse/admin/v2/users/{userId}: changes (here: reactivates) a user. */
  async adminPutUser(userId: string, body: { deactivated?: boolean; password?: string; displayname?: string }): Promise<void> {
    await this.call('PUT', `/_synapse/admin/v2/users/${encodeURIComponent(userId)}`, `admin update of ${userId}`, { body });
  }
}
