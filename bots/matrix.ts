/**
 * meshpilot's one wrapper over matrix-bot-sdk. Nothing else in the project imports matrix-bot-sdk or its
 * types: bots get a small typed session (normalised, zod-validated events; errors as MeshpilotError).
 *
 * - Sync: our own loop on top of the SDK's doSync/processSync (the SDK's loop cannot be stopped while
 *   a request is in flight, logs every failure with a stack, and waits a fixed 5–15 s). Ours backs off
 *   exponentially with jitter, logs one warn line per failure, honours retry_after_ms, stops at once
 *   (an in-flight long poll is abandoned and its response discarded, so nothing is lost), and persists the
 *   sync token only after a batch has been handed to the callbacks.
 * - Storage: bots/matrix-storage.ts (SQLite) under storageDir (sync token); a restart resumes from it without
 *   replaying old events. A session with no stored token does not replay room history: the timeline of
 *   its first (initial) sync is skipped; invites and account data are processed.
 * - End-to-end encryption when `encryption` is given and a crypto module loads (cryptoAvailable()): the
 *   crypto storage in the SDK's file format (FileCryptoStorage) with a per-device store dir, encrypted DMs, cross-signing
 *   bootstrapped so clients show the bot's device as verified by its owner, encrypted attachments.
 *   `checkCryptoDevice` (run before the session) makes sure a lost store never reuses its device id.
 * - Events sent by the session's own user are not delivered to onMessage/onReaction.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { createHash, createHmac, randomInt } from 'node:crypto';
import { LogLevel, LogService, MatrixClient, RustSdkCryptoStorageProvider, type ICryptoStorageProvider, type ILogger, type IStorageProvider } from 'matrix-bot-sdk';
import type { Logger } from 'pino';
import { z } from 'zod';
import { MeshpilotError, toMpError, type ErrorCode } from '../capabilities/errors.js';
import { httpFetch, type HttpResponse } from './http.js';
import { installMatrixHttp } from './matrix-http.js';
import { openSyncStateStore } from './matrix-storage.js';
installMatrixHttp(); // the SDK's HTTP on node:http instead of `request` (stubbed out of the bot bundle)

// ------------------------------------------------------------------------------------------- types

export interface MatrixSessionOptions {
  homeserverUrl: string;
  accessToken: string;
  /** Directory for the sync token store (created 0700). */
  storageDir: string;
  /** Known user id; otherwise learned from /whoami on start. */
  userId?: string;
  logger: Logger;
  /** Long-poll timeout of /sync in ms (default 30000). stop() does not wait for it. */
  syncTimeoutMs?: number;
  /** Reconnect backoff bounds in ms (default 1000 … 60000, exponential with jitter). */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** Default size limit of downloadMedia in bytes (default 25 MiB). */
  maxDownloadBytes?: number;
  /**
   * End-to-end encryption, used when a crypto module loads (cryptoAvailable()). Run checkCryptoDevice
   * first: it guarantees the store belongs to this access token's device.
   */
  encryption?: {
    /** The device's crypto store directory (created 0700; holds keys: never share or copy it). */
    storeDir: string;
    /** The account password: user-interactive auth for the first cross-signing key upload when the server asks. */
    password?: string;
    /** Where the cross-signing private keys are kept (0600) so a replacement device keeps the same identity. */
    crossSigningFile?: string;
    /**
     * Who may receive this bot's room keys (besides the bot itself): a non-operator invited into a DM
     * must not be able to decrypt what the bot says there. Default: every joined or invited member.
     */
    keyRecipients?: (userId: string) => boolean;
  };
}

export interface MediaInfo {
  mimetype?: string;
  size?: number;
  /** Milliseconds (audio/video). */
  duration?: number;
}

export interface RelatesTo {
  relType?: string;
  eventId?: string;
  /** m.in_reply_to target, for replies. */
  inReplyTo?: string;
  key?: string;
}

export interface MatrixMessage {
  roomId: string;
  eventId: string;
  sender: string;
  ts: number;
  msgtype: string;
  body: string;
  formattedBody?: string;
  /** mxc:// URI of the attachment for m.file/m.image/m.audio/m.video. */
  mxc?: string;
  filename?: string;
  info?: MediaInfo;
  /** MSC3245 voice message (org.matrix.msc3245.voice present). */
  isVoice: boolean;
  relatesTo?: RelatesTo;
}

export interface MatrixEncrypted {
  roomId: string;
  eventId: string;
  sender: string;
  /** no_crypto: this session has no encryption; undecryptable: encryption is on but the keys for it never arrived. */
  reason: 'no_crypto' | 'undecryptable';
}

export interface MatrixReaction {
  roomId: string;
  eventId: string;
  sender: string;
  key: string;
  relatesToEventId: string;
}

export interface MatrixInvite {
  roomId: string;
  sender: string;
  isDirect: boolean;
}

export interface DownloadedMedia {
  bytes: Buffer;
  contentType: string;
  /** Which endpoint served it. */
  endpoint: 'authenticated' | 'legacy';
}

export type SessionStatus = 'idle' | 'starting' | 'syncing' | 'reconnecting' | 'unauthorized' | 'stopped';

export interface MatrixSession {
  readonly userId: string | undefined;
  status(): SessionStatus;
  /**
   * Resolves once the first sync batch has been processed (retrying with backoff while the homeserver is
   * down, until stop()): anything sent to the bot after start() resolves reaches the callbacks.
   */
  start(): Promise<void>;
  /** Stops syncing now (even while the homeserver is down) and saves the sync token. */
  stop(): Promise<void>;
  onMessage(cb: (m: MatrixMessage) => void | Promise<void>): () => void;
  /** Events this session cannot decrypt (no crypto, or missing keys): the bot tells the sender. */
  onEncrypted(cb: (e: MatrixEncrypted) => void | Promise<void>): () => void;
  onReaction(cb: (r: MatrixReaction) => void | Promise<void>): () => void;
  onInvite(cb: (i: MatrixInvite) => void | Promise<void>): () => void;
  joinRoom(roomIdOrAlias: string): Promise<string>;
  leaveRoom(roomId: string): Promise<void>;
  sendText(roomId: string, text: string): Promise<string>;
  sendHtml(roomId: string, plain: string, html: string): Promise<string>;
  sendFile(roomId: string, name: string, bytes: Uint8Array, mimetype: string): Promise<{ eventId: string; mxc: string }>;
  react(roomId: string, eventId: string, key: string): Promise<string>;
  setTyping(roomId: string, typing: boolean, timeoutMs?: number): Promise<void>;
  /** The state event's content, or null when there is none. */
  getState(roomId: string, type: string, stateKey?: string): Promise<Record<string, unknown> | null>;
  setState(roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<string>;
  /** Creates a DM; encrypted (m.megolm.v1.aes-sha2) when `encrypted` and this session has encryption on. */
  createDm(userId: string, opts?: { name?: string; topic?: string; encrypted?: boolean }): Promise<string>;
  /** A DM room with userId from the bot's m.direct account data that the bot is still in, or null. */
  findDm(userId: string): Promise<string | null>;
  setDisplayName(name: string): Promise<void>;
  downloadMedia(mxc: string, opts?: { maxBytes?: number }): Promise<DownloadedMedia>;
  whoami(): Promise<{ userId: string; deviceId?: string }>;
  isEncryptedRoom(roomId: string): Promise<boolean>;
  /** The room's members with their membership (joined, invited, left…); cached until a sync brings a membership change. */
  roomMembers(roomId: string): Promise<Array<{ userId: string; membership: string }>>;
  cryptoAvailable(): boolean;
  /** True once end-to-end encryption is set up for this session (after start()). */
  encryptionEnabled(): boolean;
  /** This session's device, its cross-signing state: for doctor output and tests. */
  encryptionStatus(): Promise<EncryptionStatus>;
}

export interface EncryptionStatus {
  enabled: boolean;
  backend?: 'native' | 'wasm';
  deviceId?: string;
  crossSigned?: boolean;
  /** Why encryption is off or incomplete, for a person. */
  problem?: string;
}

// ------------------------------------------------------------------------------------------- limits & schemas

const MAX_BODY_CHARS = 64 * 1024;
const MAX_TEXT_SEND = 60_000;
const DEFAULT_MAX_DOWNLOAD = 25 * 1024 * 1024;
const VERSIONS_TTL_MS = 10 * 60_000;

const roomIdRe = /^![^\s:]+:\S+$/;
const userIdRe = /^@[^\s:]+:\S+$/;
const mxcRe = /^mxc:\/\/([A-Za-z0-9.\-:[\]]{1,255})\/([A-Za-z0-9_-]{1,255})$/;

const relatesSchema = z
  .looseObject({
    rel_type: z.string().max(255).optional(),
    event_id: z.string().max(255).optional(),
    key: z.string().max(255).optional(),
    'm.in_reply_to': z.looseObject({ event_id: z.string().max(255) }).optional(),
  })
  .optional();

/** An encrypted attachment (spec: EncryptedFile), as sent in `content.file` in encrypted rooms. */
const encryptedFileSchema = z.looseObject({
  url: z.string().regex(mxcRe).max(1024),
  key: z.looseObject({ kty: z.literal('oct'), alg: z.literal('A256CTR'), k: z.string().max(256), key_ops: z.array(z.string().max(32)).max(8), ext: z.boolean() }),
  iv: z.string().max(64),
  hashes: z.looseObject({ sha256: z.string().max(128) }),
  v: z.string().max(16),
});
export type EncryptedFile = z.infer<typeof encryptedFileSchema>;

const messageEventSchema = z.looseObject({
  event_id: z.string().min(1).max(255),
  sender: z.string().regex(userIdRe).max(255),
  origin_server_ts: z.number().optional(),
  content: z.looseObject({
    msgtype: z.string().min(1).max(255),
    body: z.string().max(MAX_BODY_CHARS),
    format: z.string().max(255).optional(),
    formatted_body: z.string().max(MAX_BODY_CHARS * 2).optional(),
    url: z.string().max(1024).optional(),
    file: encryptedFileSchema.optional(),
    filename: z.string().max(1024).optional(),
    info: z
      .looseObject({
        mimetype: z.string().max(255).optional(),
        size: z.number().int().nonnegative().optional(),
        duration: z.number().nonnegative().optional(),
      })
      .optional(),
    'org.matrix.msc3245.voice': z.unknown().optional(),
    'm.relates_to': relatesSchema,
  }),
});

const reactionEventSchema = z.looseObject({
  event_id: z.string().min(1).max(255),
  sender: z.string().regex(userIdRe).max(255),
  content: z.looseObject({
    'm.relates_to': z.looseObject({ rel_type: z.literal('m.annotation'), event_id: z.string().min(1).max(255), key: z.string().min(1).max(255) }),
  }),
});

const inviteEventSchema = z.looseObject({
  sender: z.string().regex(userIdRe).max(255),
  content: z.looseObject({ membership: z.literal('invite'), is_direct: z.boolean().optional() }),
});

const mDirectSchema = z.record(z.string().max(255), z.array(z.string().max(255)).max(1000));

// ------------------------------------------------------------------------------------------- errors & logging

interface MatrixErrorLike {
  statusCode?: number;
  errcode?: string;
  body?: { errcode?: string; error?: string; retry_after_ms?: number };
  retryAfterMs?: number;
}

function errInfo(err: unknown): { status?: number; errcode?: string; error?: string; retryAfterMs?: number; code?: string; message: string } {
  if (err && typeof err === 'object') {
    const e = err as MatrixErrorLike & { code?: unknown; message?: unknown };
    const status = typeof e.statusCode === 'number' ? e.statusCode : undefined;
    const errcode = e.errcode ?? e.body?.errcode;
    const error = e.body?.error;
    const retryAfterMs = e.retryAfterMs ?? e.body?.retry_after_ms;
    const code = typeof e.code === 'string' ? e.code : undefined;
    const message =
      errcode !== undefined
        ? `${errcode}${error ? `: ${error}` : ''}`
        : status !== undefined
          ? `HTTP ${status}`
          : typeof e.message === 'string'
            ? e.message
            : 'unknown error';
    const out: ReturnType<typeof errInfo> = { message };
    if (status !== undefined) out.status = status;
    if (errcode !== undefined) out.errcode = errcode;
    if (error !== undefined) out.error = error;
    if (typeof retryAfterMs === 'number') out.retryAfterMs = retryAfterMs;
    if (code !== undefined) out.code = code;
    return out;
  }
  return { message: String(err) };
}

function toMeshpilot(err: unknown, what: string): MeshpilotError {
  if (err instanceof MeshpilotError) return err;
  const i = errInfo(err);
  let code: ErrorCode;
  if (i.errcode === 'M_UNKNOWN_TOKEN' || i.errcode === 'M_MISSING_TOKEN' || i.status === 401) code = 'auth';
  else if (i.errcode === 'M_FORBIDDEN' || i.status === 403) code = 'permission';
  else if (i.errcode === 'M_NOT_FOUND' || i.status === 404) code = 'not_found';
  else if (i.errcode === 'M_LIMIT_EXCEEDED' || i.status === 429) code = 'unreachable';
  else if (i.status !== undefined && i.status >= 500) code = 'unreachable';
  else if (i.status === undefined && i.errcode === undefined) code = toMpError(err, 'unreachable').code;
  else code = 'exec_failed';
  return new MeshpilotError(code, `Matrix ${what} failed: ${i.message}`);
}

let sdkLog: Logger | undefined;

/** Routes matrix-bot-sdk's global LogService into pino: one line per call, no stacks, failed requests at debug. */
function installSdkLogger(log: Logger): void {
  sdkLog = log.child({ component: 'matrix-bot-sdk' });
  const fmt = (parts: unknown[]): string =>
    parts
      .map((p) => (typeof p === 'string' ? p : p instanceof Error || (p && typeof p === 'object') ? errInfo(p).message : String(p)))
      .join(' ')
      .slice(0, 500);
  const adapter: ILogger = {
    trace: () => {},
    debug: (mod: string, ...m: unknown[]) => sdkLog?.debug({ module: mod }, fmt(m)),
    info: (mod: string, ...m: unknown[]) => sdkLog?.debug({ module: mod }, fmt(m)),
    warn: (mod: string, ...m: unknown[]) => sdkLog?.warn({ module: mod }, fmt(m)),
    // the HTTP layer logs every failed request; the caller gets the error as a value, so keep these at debug
    error: (mod: string, ...m: unknown[]) =>
      mod === 'MatrixHttpClient' ? sdkLog?.debug({ module: mod }, fmt(m)) : sdkLog?.warn({ module: mod }, fmt(m)),
  };
  LogService.setLogger(adapter);
  LogService.setLevel(log.isLevelEnabled('debug') ? LogLevel.DEBUG : LogLevel.WARN);
}

// ------------------------------------------------------------------------------------------- crypto probe

/** True when the native Matrix crypto module (not meshpilot's stub) is installed and loads. */
export function cryptoAvailable(): boolean {
  try {
    const req = createRequire(import.meta.url);
    const mod = req('@matrix-org/matrix-sdk-crypto-nodejs') as { __meshpilotCryptoAvailable?: unknown };
    return mod.__meshpilotCryptoAvailable === true;
  } catch {
    return false;
  }
}

/** Which crypto module loaded, in words (doctor). */
export function cryptoBackendName(): string {
  const b = cryptoBackend();
  return b === 'wasm' ? 'WebAssembly matrix-sdk-crypto' : b === 'native' ? 'native matrix-sdk-crypto' : 'none';
}

/** Which crypto module loaded: the native binding or meshpilot's WebAssembly adapter. */
function cryptoBackend(): 'native' | 'wasm' | undefined {
  try {
    const mod = createRequire(import.meta.url)('@matrix-org/matrix-sdk-crypto-nodejs') as { __meshpilotBackend?: unknown };
    return mod.__meshpilotBackend === 'wasm' ? 'wasm' : mod.__meshpilotBackend === 'native' ? 'native' : undefined;
  } catch {
    return undefined;
  }
}

/** The shim's additions to the OlmMachine (wasm backend); the native binding has none of the optional ones. */
interface CryptoMachine {
  markRequestAsSent(id: string, type: number, response: string): Promise<unknown>;
  crossSigningStatus?(): Promise<{ hasMaster: boolean; hasSelfSigning: boolean; hasUserSigning: boolean }>;
  bootstrapCrossSigning?(reset: boolean): Promise<{ uploadSigningKeys: Record<string, unknown>; uploadSignatures: Record<string, unknown> }>;
  exportCrossSigningKeys?(): Promise<{ masterKey?: string; selfSigningKey?: string; userSigningKey?: string } | undefined>;
  importCrossSigningKeys?(master?: string | null, selfSigning?: string | null, userSigning?: string | null): Promise<unknown>;
  isOwnDeviceCrossSigned?(): Promise<boolean>;
  signOwnDevice?(): Promise<Record<string, unknown> | undefined>;
  takeExtraRequests?(): Array<{ id: string; type: number; body: string }>;
}

interface CryptoClientLike {
  isReady: boolean;
  clientDeviceId: string;
  encryptMedia(file: Buffer): Promise<{ buffer: Buffer; file: Record<string, unknown> }>;
  decryptMedia(file: Record<string, unknown>): Promise<Buffer>;
}

/** Decrypts (and checks the hash of) an encrypted attachment with the crypto module's Attachment API. */
function decryptAttachment(bytes: Buffer, file: EncryptedFile): Buffer {
  const mod = createRequire(import.meta.url)('@matrix-org/matrix-sdk-crypto-nodejs') as {
    Attachment: { decrypt(a: unknown): Uint8Array };
    EncryptedAttachment: new (data: Uint8Array, info: string) => unknown;
  };
  try {
    return Buffer.from(mod.Attachment.decrypt(new mod.EncryptedAttachment(new Uint8Array(bytes), JSON.stringify(file))));
  } catch (err) {
    throw new MeshpilotError('exec_failed', `the encrypted attachment could not be decrypted: ${errInfo(err).message}`);
  }
}

const savedCrossSigningSchema = z.object({ masterKey: z.string().max(256).optional(), selfSigningKey: z.string().max(256).optional(), userSigningKey: z.string().max(256).optional() }).strict();

// ------------------------------------------------------------------------------------------- SDK subclass

/** Exposes the SDK's single-sync primitives and replaces its sync loop with ours. */
/** `bot-sdk.json` as the SDK's RustSdkCryptoStorageProvider writes it (lowdb): our provider reads and writes the same file. */
const cryptoStorageFileSchema = z.object({
  deviceId: z.string().max(255).nullable().optional(),
  rooms: z.record(z.string().regex(/^[0-9a-f]{128}$/), z.looseObject({ algorithm: z.string().max(255) })).optional(),
}).loose();
type CryptoRoom = Parameters<ICryptoStorageProvider['storeRoom']>[1];

/**
 * matrix-bot-sdk's crypto storage (the Matrix device id, each encrypted room's settings), in the file
 * format of its RustSdkCryptoStorageProvider (`bot-sdk.json`: deviceId, rooms by sha512 of the room id),
 * so stores written by earlier versions keep working. Ours because the SDK's loads lowdb, and with it
 * the whole of lodash, into every bot, and hashes the room id in JavaScript (hash.js) on each of the
 * several lookups per message. Here lookups come from memory and each change replaces the file atomically.
 */
export class FileCryptoStorage implements ICryptoStorageProvider {
  /** What CryptoClient hands to OlmMachine.initialize: the store dir and RustSdkCryptoStoreType.Sled (0). */
  readonly storagePath: string;
  readonly storageType = 0;
  private readonly file: string;
  private readonly state: { deviceId: string | null; rooms: Record<string, CryptoRoom> };

  constructor(storageDir: string) {
    this.storagePath = path.resolve(storageDir);
    mkdirSync(this.storagePath, { recursive: true, mode: 0o700 });
    this.file = path.join(this.storagePath, 'bot-sdk.json');
    this.state = { deviceId: null, rooms: {} };
    if (!existsSync(this.file)) return;
    let parsed: z.infer<typeof cryptoStorageFileSchema>;
    try {
      parsed = cryptoStorageFileSchema.parse(JSON.parse(readFileSync(this.file, 'utf8')));
    } catch (err) {
      throw new MeshpilotError('internal', `the crypto storage file ${this.file} is unreadable (${errInfo(err).message.slice(0, 200)}); move it away to start this device's encryption afresh`);
    }
    this.state = { deviceId: parsed.deviceId ?? null, rooms: (parsed.rooms ?? {}) as Record<string, CryptoRoom> };
  }

  private static key(roomId: string): string {
    return createHash('sha512').update(roomId).digest('hex');
  }

  private save(): void {
    const tmp = `${this.file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.state), { mode: 0o600 });
    renameSync(tmp, this.file);
  }

  async getDeviceId(): Promise<string> {
    return this.state.deviceId ?? ''; // the SDK takes a falsy id as none stored yet
  }

  async setDeviceId(deviceId: string): Promise<void> {
    this.state.deviceId = deviceId;
    this.save();
  }

  async getRoom(roomId: string): Promise<CryptoRoom> {
    return this.state.rooms[FileCryptoStorage.key(roomId)] as CryptoRoom;
  }

  async storeRoom(roomId: string, config: CryptoRoom): Promise<void> {
    this.state.rooms[FileCryptoStorage.key(roomId)] = config;
    this.save();
  }
}
// MatrixClient accepts only `instanceof RustSdkCryptoStorageProvider`. Inheriting its prototype (not its
// constructor, which would open the lowdb file) passes that check; every method it has is overridden above.
Object.setPrototypeOf(FileCryptoStorage.prototype, RustSdkCryptoStorageProvider.prototype);

/** The parts of matrix-bot-sdk's (internal) RustEngine that SessionClient.fixCryptoEngine touches. */
interface RustEngineInternals {
  machine: { updateTrackedUsers(users: unknown[]): Promise<void>; getMissingSessions(users: unknown[]): Promise<unknown> };
  lock: { acquire<T>(key: string, fn: () => Promise<T>): Promise<T> };
  runOnly(...types: number[]): Promise<void>;
  processKeysClaimRequest(request: unknown): Promise<void>;
  addTrackedUsers(userIds: string[]): Promise<void>;
  meshpilotFixed?: boolean;
  /** Set by the session's stop(): the machine is being closed, late membership events track nobody. */
  meshpilotClosed?: boolean;
}

class SessionClient extends MatrixClient {
  loopStarter: (() => void) | undefined;
  /** Who besides this account gets room keys (MatrixSessionOptions.encryption.keyRecipients). */
  keyRecipients: ((userId: string) => boolean) | undefined;
  /**
   * The SDK's CryptoClient.prepare opens the crypto store, then uploads keys; when that upload fails
   * (homeserver busy or restarting) the store stays open while the client is not ready, and every
   * retry fails with "store already open". Close the half-prepared machine so the next start opens it
   * afresh (nothing is lost: the store saves on close).
   */
  override async start(filter?: unknown): Promise<unknown> {
    try {
      return await super.start(filter);
    } catch (err) {
      const crypto = (this as unknown as { crypto?: { isReady: boolean; engine?: { machine?: { close?(): unknown } } } }).crypto;
      if (crypto && !crypto.isReady && crypto.engine) {
        const machine = crypto.engine.machine;
        crypto.engine = undefined;
        await Promise.resolve(machine?.close?.()).catch(() => undefined);
      }
      throw err;
    }
  }
  protected override startSyncInternal(): Promise<void> {
    this.fixCryptoEngine(); // the SDK calls this after preparing crypto, before the first sync
    this.loopStarter?.();
    return Promise.resolve();
  }
  /**
   * The SDK's RustEngine.addTrackedUsers (run for every join and invite it sees) marks the users for a
   * keys query, then asks for missing Olm sessions without sending that query: the crypto machine waits
   * 5 s for it, holding the engine's sync lock, so every crypto call (and the bot's first message in a
   * new DM) stalls. This one sends the query first, as the SDK's own prepareEncrypt does.
   */
  private fixCryptoEngine(): void {
    const engine = (this as unknown as { crypto?: { engine?: RustEngineInternals } }).crypto?.engine;
    if (!engine || engine.meshpilotFixed) return;
    const { UserId } = createRequire(import.meta.url)('@matrix-org/matrix-sdk-crypto-nodejs') as { UserId: new (id: string) => unknown };
    engine.meshpilotFixed = true;
    engine.addTrackedUsers = (userIds) =>
      engine.lock.acquire('sync', async () => {
        if (engine.meshpilotClosed) return;
        const users = userIds.map((u) => new UserId(u));
        await engine.machine.updateTrackedUsers(users);
        await engine.runOnly(1); // RequestType.KeysQuery
        const claim = await engine.machine.getMissingSessions(users);
        if (claim) await engine.processKeysClaimRequest(claim);
      });
  }
  syncOnce(token: string | null): Promise<unknown> {
    return this.doSync(token ?? '');
  }
  processRaw(raw: unknown): Promise<unknown> {
    return this.processSync(raw);
  }
  /**
   * Only the SDK's crypto engine calls this, to pick who gets a room's keys. It shares with joined
   * members only, so an operator who has not accepted the DM invite yet could never read the bot's
   * first message; invited members get the keys too (as Element does). One /members answer, filtered
   * here: asking for joined and invited members in two requests missed an operator whose phone
   * accepted the invite between them (in neither list), and the bot's first message stayed unreadable.
   * With `keyRecipients` (the bots pass "is an operator"), only those members (and this account) get
   * keys: a stranger invited into a DM sees ciphertext.
   */
  override async getJoinedRoomMembers(roomId: string): Promise<string[]> {
    const members = await this.getAllRoomMembers(roomId);
    const self = await this.getUserId();
    const may = this.keyRecipients;
    return members
      .filter((m) => m.membership === 'join' || m.membership === 'invite')
      .map((m) => m.membershipFor)
      .filter((u) => !may || u === self || may(u));
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Strips joined rooms' timelines from an initial sync so a fresh session does not replay history. */
function withoutInitialTimelines(raw: unknown): unknown {
  if (!raw || typeof raw !== 'object') return raw;
  const r = raw as { rooms?: { join?: Record<string, { timeline?: { events?: unknown[] } }> } };
  for (const room of Object.values(r.rooms?.join ?? {})) if (room.timeline) room.timeline.events = [];
  return raw;
}

// ------------------------------------------------------------------------------------------- session

export function createMatrixSession(opts: MatrixSessionOptions): MatrixSession {
  const homeserverUrl = opts.homeserverUrl.replace(/\/+$/, '');
  if (!/^https?:\/\//.test(homeserverUrl)) throw new MeshpilotError('config', `Matrix homeserver URL must start with http:// or https:// (got ${homeserverUrl.slice(0, 100)})`);
  const log = opts.logger.child({ component: 'matrix' });
  installSdkLogger(opts.logger);
  mkdirSync(opts.storageDir, { recursive: true, mode: 0o700 });
  const storage = openSyncStateStore(opts.storageDir);
  const e2ee = opts.encryption && cryptoAvailable() ? opts.encryption : undefined;
  if (e2ee) {
    // The store lives in the device's keys dir; if that is gone the device is being removed: don't re-create it.
    if (!existsSync(path.dirname(e2ee.storeDir))) throw new MeshpilotError('config', `${path.dirname(e2ee.storeDir)} does not exist (was the device removed?)`);
    mkdirSync(e2ee.storeDir, { recursive: true, mode: 0o700 });
  }
  const client = new SessionClient(homeserverUrl, opts.accessToken, storage satisfies IStorageProvider, e2ee ? new FileCryptoStorage(e2ee.storeDir) : undefined);
  client.keyRecipients = e2ee?.keyRecipients;
  // roomId → its members, until a sync shows a membership change there (the bot checks them before every post).
  const memberCache = new Map<string, Promise<Array<{ userId: string; membership: string }>>>();
  const cryptoClient = (): CryptoClientLike | undefined => {
    const c = (client as unknown as { crypto?: CryptoClientLike }).crypto;
    return c?.isReady ? c : undefined;
  };
  // matrix-bot-sdk keeps its OlmMachine private (CryptoClient.engine.machine); cross-signing needs it.
  const machine = (): CryptoMachine | undefined => (client as unknown as { crypto?: { engine?: { machine?: CryptoMachine } } }).crypto?.engine?.machine;
  let crossSignProblem: string | undefined;
  // mxc → key material of encrypted attachments seen in messages, so downloadMedia can decrypt them (bounded).
  const encryptedFiles = new Map<string, EncryptedFile>();
  function rememberEncryptedFile(f: EncryptedFile): void {
    encryptedFiles.delete(f.url);
    encryptedFiles.set(f.url, f);
    if (encryptedFiles.size > 256) encryptedFiles.delete(encryptedFiles.keys().next().value as string);
  }
  const syncTimeout = opts.syncTimeoutMs ?? 30_000;
  client.syncingTimeout = syncTimeout;
  const backoffMin = opts.backoffMinMs ?? 1_000;
  const backoffMax = Math.max(backoffMin, opts.backoffMaxMs ?? 60_000);
  const maxDownloadDefault = opts.maxDownloadBytes ?? DEFAULT_MAX_DOWNLOAD;

  let userId = opts.userId;
  let state: SessionStatus = 'idle';
  let abort = new AbortController();
  let loopDone: Promise<void> | undefined;
  let lastToken: string | null = null;
  let versionsCache: { at: number; authenticated: boolean } | undefined;

  const messageCbs = new Set<(m: MatrixMessage) => void | Promise<void>>();
  const reactionCbs = new Set<(r: MatrixReaction) => void | Promise<void>>();
  const inviteCbs = new Set<(i: MatrixInvite) => void | Promise<void>>();
  const encryptedCbs = new Set<(e: MatrixEncrypted) => void | Promise<void>>();

  function dispatch<T>(cbs: Set<(v: T) => void | Promise<void>>, v: T, what: string): void {
    for (const cb of cbs) {
      Promise.resolve()
        .then(() => cb(v))
        .catch((err: unknown) => log.warn({ err: errInfo(err).message, what }, 'matrix callback failed'));
    }
  }

  client.on('room.message', (roomId: string, ev: unknown) => {
    if (state === 'stopped') return;
    const p = messageEventSchema.safeParse(ev);
    if (!p.success) {
      log.debug({ roomId }, 'ignoring malformed or redacted m.room.message');
      return;
    }
    const e = p.data;
    if (e.sender === userId) return;
    const c = e.content;
    const m: MatrixMessage = { roomId, eventId: e.event_id, sender: e.sender, ts: e.origin_server_ts ?? Date.now(), msgtype: c.msgtype, body: c.body, isVoice: c['org.matrix.msc3245.voice'] !== undefined };
    if (c.format === 'org.matrix.custom.html' && c.formatted_body !== undefined) m.formattedBody = c.formatted_body;
    if (c.url !== undefined && mxcRe.test(c.url)) m.mxc = c.url;
    else if (c.file) {
      m.mxc = c.file.url;
      rememberEncryptedFile(c.file);
    }
    if (c.filename !== undefined) m.filename = c.filename;
    if (c.info) {
      const info: MediaInfo = {};
      if (c.info.mimetype !== undefined) info.mimetype = c.info.mimetype;
      if (c.info.size !== undefined) info.size = c.info.size;
      if (c.info.duration !== undefined) info.duration = c.info.duration;
      m.info = info;
    }
    const rel = c['m.relates_to'];
    if (rel) {
      const r: RelatesTo = {};
      if (rel.rel_type !== undefined) r.relType = rel.rel_type;
      if (rel.event_id !== undefined) r.eventId = rel.event_id;
      if (rel.key !== undefined) r.key = rel.key;
      if (rel['m.in_reply_to']) r.inReplyTo = rel['m.in_reply_to'].event_id;
      m.relatesTo = r;
    }
    dispatch(messageCbs, m, 'onMessage');
  });

  client.on('room.event', (roomId: string, ev: { type?: unknown; sender?: unknown; event_id?: unknown }) => {
    // An event still m.room.encrypted here could not be decrypted (no crypto, or its keys never came):
    // the bot must say it can't read it, never ignore it silently.
    if (state !== 'stopped' && ev?.type === 'm.room.encrypted' && typeof ev.sender === 'string' && typeof ev.event_id === 'string' && ev.sender !== userId) {
      dispatch(encryptedCbs, { roomId, eventId: ev.event_id, sender: ev.sender, reason: cryptoClient() ? 'undecryptable' : 'no_crypto' }, 'onEncrypted');
      return;
    }
    if (state === 'stopped' || ev?.type !== 'm.reaction') return;
    const p = reactionEventSchema.safeParse(ev);
    if (!p.success || p.data.sender === userId) return;
    const rel = p.data.content['m.relates_to'];
    dispatch(reactionCbs, { roomId, eventId: p.data.event_id, sender: p.data.sender, key: rel.key, relatesToEventId: rel.event_id }, 'onReaction');
  });

  client.on('room.invite', (roomId: string, ev: unknown) => {
    if (state === 'stopped') return;
    const p = inviteEventSchema.safeParse(ev);
    if (!p.success) return;
    dispatch(inviteCbs, { roomId, sender: p.data.sender, isDirect: p.data.content.is_direct === true }, 'onInvite');
  });

  function backoff(attempt: number): number {
    const exp = Math.min(backoffMax, backoffMin * 2 ** Math.min(20, attempt - 1));
    return Math.round(exp / 2 + Math.random() * (exp / 2));
  }

  let firstBatch: { promise: Promise<void>; resolve: () => void } | undefined;
  function newFirstBatch(): { promise: Promise<void>; resolve: () => void } {
    let resolve = (): void => {};
    const promise = new Promise<void>((r) => {
      resolve = r;
    });
    return { promise, resolve };
  }

  async function syncLoop(signal: AbortSignal): Promise<void> {
    try {
      await syncLoopInner(signal);
    } finally {
      firstBatch?.resolve();
    }
  }

  async function syncLoopInner(signal: AbortSignal): Promise<void> {
    let token = (await Promise.resolve(storage.getSyncToken())) ?? null;
    lastToken = token;
    let failures = 0;
    const stopped = new Promise<'stopped'>((resolve) => signal.addEventListener('abort', () => resolve('stopped'), { once: true }));
    let caughtUp = false;
    while (!signal.aborted) {
      let raw: unknown;
      // The first sync after (re)start must not long-poll: start() waits for it, and with nothing new
      // a long poll would hold a restarted bot back for the whole timeout.
      // An initial sync (no token) returns at once whatever the timeout, and Synapse caches /sync answers for
      // 2 min keyed by (user, device, since, filter, timeout): a session that lost its store and starts
      // again on the same token would get the earlier initial sync's old next_batch and replay every
      // message since. A random timeout makes that key its own.
      client.syncingTimeout = caughtUp ? syncTimeout : token === null ? randomInt(1, 5000) : 0;
      try {
        raw = await Promise.race([client.syncOnce(token), stopped]);
      } catch (err) {
        if (signal.aborted) break;
        const i = errInfo(err);
        if (i.errcode === 'M_UNKNOWN_TOKEN' || i.errcode === 'M_MISSING_TOKEN') {
          state = 'unauthorized';
          log.error({ errcode: i.errcode }, 'Matrix homeserver rejected the access token; syncing stopped');
          return;
        }
        failures += 1;
        state = 'reconnecting';
        const delay = i.retryAfterMs !== undefined ? Math.min(backoffMax, Math.max(i.retryAfterMs, 50)) : backoff(failures);
        log.warn({ error: i.message, attempt: failures, retryInMs: delay }, 'Matrix sync failed; retrying');
        await sleep(delay, signal);
        continue;
      }
      // stopped while the request was in flight: drop the response unprocessed, the token stays where it was
      if (raw === 'stopped' || signal.aborted) break;
      if (failures > 0) log.info({ attempts: failures }, 'Matrix sync reconnected');
      failures = 0;
      state = 'syncing';
      const next = (raw as { next_batch?: unknown } | null)?.next_batch;
      forgetChangedMembers(raw);
      try {
        await client.processRaw(token === null ? withoutInitialTimelines(raw) : raw);
      } catch (err) {
        log.warn({ error: errInfo(err).message }, 'Matrix sync batch could not be processed');
      }
      if (typeof next === 'string' && next.length > 0 && next.length < 1024) {
        token = next;
        lastToken = next;
        await Promise.resolve(storage.setSyncToken(next));
      }
      caughtUp = true;
      firstBatch?.resolve();
    }
  }

  /** Drops cached member lists of rooms where this sync shows a membership event (timeline or state) or a gap. */
  function forgetChangedMembers(raw: unknown): void {
    if (memberCache.size === 0) return;
    const rooms = (raw as { rooms?: { join?: Record<string, unknown>; leave?: Record<string, unknown> } } | null)?.rooms;
    for (const roomId of Object.keys(rooms?.leave ?? {})) memberCache.delete(roomId);
    for (const [roomId, room] of Object.entries(rooms?.join ?? {})) {
      const r = room as { timeline?: { limited?: unknown; events?: unknown }; state?: { events?: unknown } };
      const events = [...(Array.isArray(r.timeline?.events) ? r.timeline.events : []), ...(Array.isArray(r.state?.events) ? r.state.events : [])] as Array<{ type?: unknown }>;
      if (r.timeline?.limited === true || events.some((e) => e?.type === 'm.room.member')) memberCache.delete(roomId);
    }
  }

  async function call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw toMeshpilot(err, what);
    }
  }

  function checkRoom(roomId: string): void {
    if (!roomIdRe.test(roomId) || roomId.length > 255) throw new MeshpilotError('usage', `Not a Matrix room id: ${roomId.slice(0, 80)}`);
  }
  function checkUser(u: string): void {
    if (!userIdRe.test(u) || u.length > 255) throw new MeshpilotError('usage', `Not a Matrix user id: ${u.slice(0, 80)}`);
  }
  function checkText(t: string): void {
    if (t.length > MAX_TEXT_SEND) throw new MeshpilotError('output_limit', `Message too long for Matrix (${t.length} characters, limit ${MAX_TEXT_SEND})`);
  }

  async function readDirect(): Promise<Record<string, string[]>> {
    try {
      const raw = await client.getAccountData<unknown>('m.direct');
      const p = mDirectSchema.safeParse(raw);
      return p.success ? p.data : {};
    } catch (err) {
      const i = errInfo(err);
      if (i.errcode === 'M_NOT_FOUND' || i.status === 404) return {};
      throw err;
    }
  }

  async function authenticatedMediaSupported(): Promise<boolean> {
    if (versionsCache && Date.now() - versionsCache.at < VERSIONS_TTL_MS) return versionsCache.authenticated;
    const v = await client.getServerVersions();
    const authenticated = (v.versions ?? []).includes('v1.11') || v.unstable_features?.['org.matrix.msc3916.stable'] === true;
    versionsCache = { at: Date.now(), authenticated };
    return authenticated;
  }

  /** POST with user-interactive auth by password when the server asks for it (401 with a UIA session). */
  async function postWithUia(p: string, body: Record<string, unknown>): Promise<void> {
    try {
      await client.doRequest('POST', p, null, body);
    } catch (err) {
      const i = errInfo(err);
      if (i.status !== 401 || i.errcode === 'M_UNKNOWN_TOKEN') throw err;
      if (!e2ee?.password) throw new MeshpilotError('auth', 'the homeserver asks for the bot account\'s password to publish cross-signing keys, and meshpilot has none stored for it');
      const uia = (err as { body?: { session?: unknown } }).body?.session;
      await client.doRequest('POST', p, null, {
        ...body,
        auth: { type: 'm.login.password', identifier: { type: 'm.id.user', user: userId }, password: e2ee.password, ...(typeof uia === 'string' ? { session: uia } : {}) },
      });
    }
  }

  /**
   * Makes this device cross-signed by its owner: reuses the saved identity (a replacement device keeps
   * it), else creates one. Clients then show the bot's messages without a "not verified by its owner" warning.
   */
  /**
   * Sends the crypto engine's pending requests (our own keys query above all) now, under the SDK's sync
   * lock: otherwise they wait for the next sync and identity checks stall on the long poll.
   */
  async function flushCryptoRequests(): Promise<void> {
    const engine = (client as unknown as { crypto?: { engine?: { run(): Promise<void>; lock?: { acquire<T>(key: string, fn: () => Promise<T>): Promise<T> } } } }).crypto?.engine;
    if (engine?.lock) await engine.lock.acquire('sync', () => engine.run());
  }

  async function ensureCrossSigning(): Promise<void> {
    const m = machine();
    const deviceId = cryptoClient()?.clientDeviceId;
    if (!m?.crossSigningStatus || !m.bootstrapCrossSigning || !e2ee || !deviceId) {
      crossSignProblem = 'the native crypto module does not support cross-signing';
      return;
    }
    // Done once per device, remembered in the store dir. (Asking the machine instead would wait on a
    // keys query of our own user, stalling every crypto call behind it for seconds.)
    const marker = path.join(e2ee.storeDir, 'cross-signed.json');
    const done = (() => {
      try {
        return (JSON.parse(readFileSync(marker, 'utf8')) as { deviceId?: unknown }).deviceId === deviceId;
      } catch {
        return false;
      }
    })();
    let status = await m.crossSigningStatus();
    if (done && status.hasSelfSigning) return;
    const file = e2ee.crossSigningFile;
    if (!status.hasSelfSigning && file && existsSync(file) && m.importCrossSigningKeys) {
      // A replacement device: the machine must have seen the identity's public keys before importing.
      await flushCryptoRequests();
      const saved = savedCrossSigningSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
      if (saved.success) status = (await m.importCrossSigningKeys(saved.data.masterKey ?? null, saved.data.selfSigningKey ?? null, saved.data.userSigningKey ?? null), await m.crossSigningStatus());
    }
    if (status.hasSelfSigning && m.signOwnDevice) {
      // The identity exists (ours, imported): sign this device with it.
      const body = await m.signOwnDevice();
      if (!body) throw new MeshpilotError('exec_failed', 'the crypto module could not sign this device');
      await client.doRequest('POST', '/_matrix/client/v3/keys/signatures/upload', null, body);
    } else {
      const reqs = await m.bootstrapCrossSigning(true);
      await postWithUia('/_matrix/client/v3/keys/device_signing/upload', reqs.uploadSigningKeys);
      await client.doRequest('POST', '/_matrix/client/v3/keys/signatures/upload', null, reqs.uploadSignatures);
      const exported = await m.exportCrossSigningKeys?.();
      if (exported && file) {
        writeFileSync(`${file}.tmp`, JSON.stringify(exported), { mode: 0o600 });
        renameSync(`${file}.tmp`, file);
      }
    }
    writeFileSync(marker, JSON.stringify({ deviceId, at: new Date().toISOString() }), { mode: 0o600 });
    crossSignProblem = undefined;
    log.info('this device is cross-signed by its owner');
  }

  const session: MatrixSession = {
    get userId() {
      return userId;
    },
    status: () => state,

    async start() {
      if (state === 'starting' || state === 'syncing' || state === 'reconnecting') return;
      abort = new AbortController();
      const signal = abort.signal;
      state = 'starting';
      firstBatch = newFirstBatch();
      client.loopStarter = () => {
        loopDone = syncLoop(signal).catch((err: unknown) => log.warn({ error: errInfo(err).message }, 'Matrix sync loop ended with an error'));
      };
      let attempt = 0;
      while (!signal.aborted) {
        try {
          if (!userId) userId = (await client.getWhoAmI()).user_id;
          await client.start();
          // resolve once the first batch is in: a message sent after start() returns is always delivered
          await firstBatch.promise;
          if (!signal.aborted && state === 'starting') state = 'syncing';
          if (cryptoClient()) {
            await ensureCrossSigning().catch((err: unknown) => {
              crossSignProblem = errInfo(err).message;
              log.warn({ error: crossSignProblem }, 'cross-signing could not be set up: clients will show this bot\'s device as not verified by its owner');
            });
          } else if (e2ee) log.warn('end-to-end encryption did not start; running without it');
          log.info({ userId, encryption: cryptoClient() ? `on (${cryptoClient()?.clientDeviceId})` : 'off' }, 'Matrix session started');
          return;
        } catch (err) {
          const i = errInfo(err);
          if (i.errcode === 'M_UNKNOWN_TOKEN' || i.errcode === 'M_MISSING_TOKEN') {
            state = 'unauthorized';
            throw new MeshpilotError('auth', 'The Matrix homeserver rejected the bot\'s access token');
          }
          attempt += 1;
          const delay = backoff(attempt);
          log.warn({ error: i.message, attempt, retryInMs: delay }, 'Matrix session could not start; retrying');
          await sleep(delay, signal);
        }
      }
    },

    async stop() {
      abort.abort();
      client.stop();
      if (state !== 'unauthorized') state = 'stopped';
      await loopDone;
      loopDone = undefined;
      if (lastToken !== null) await Promise.resolve(storage.setSyncToken(lastToken));
      // Release the crypto store (saved, and free to be opened again in this process: the launcher's
      // operator bot), under the engine's sync lock so no key tracking the SDK started is cut off.
      const engine = (client as unknown as { crypto?: { engine?: RustEngineInternals } }).crypto?.engine;
      const m = machine() as (CryptoMachine & { close?(): unknown }) | undefined;
      if (engine && m?.close) {
        engine.meshpilotClosed = true;
        await engine.lock.acquire('sync', async () => { await m.close?.(); }).catch(() => undefined);
      }
      log.info('Matrix session stopped');
    },

    onMessage(cb) {
      messageCbs.add(cb);
      return () => void messageCbs.delete(cb);
    },
    onEncrypted(cb) {
      encryptedCbs.add(cb);
      return () => void encryptedCbs.delete(cb);
    },
    onReaction(cb) {
      reactionCbs.add(cb);
      return () => void reactionCbs.delete(cb);
    },
    onInvite(cb) {
      inviteCbs.add(cb);
      return () => void inviteCbs.delete(cb);
    },

    joinRoom: async (roomIdOrAlias) => {
      if (roomIdOrAlias.length > 255 || !/^[!#]\S+:\S+$/.test(roomIdOrAlias)) throw new MeshpilotError('usage', `Not a Matrix room id or alias: ${roomIdOrAlias.slice(0, 80)}`);
      return call('join', () => client.joinRoom(roomIdOrAlias));
    },
    leaveRoom: async (roomId) => {
      checkRoom(roomId);
      return call('leave', async () => {
        await client.leaveRoom(roomId);
      });
    },
    sendText: async (roomId, text) => {
      checkRoom(roomId);
      checkText(text);
      return call('send', () => client.sendMessage(roomId, { msgtype: 'm.text', body: text }));
    },
    sendHtml: async (roomId, plain, html) => {
      checkRoom(roomId);
      checkText(plain);
      checkText(html);
      return call('send', () => client.sendMessage(roomId, { msgtype: 'm.text', body: plain, format: 'org.matrix.custom.html', formatted_body: html }));
    },
    sendFile: async (roomId, name, bytes, mimetype) => {
      checkRoom(roomId);
      if (name.length === 0 || name.length > 255) throw new MeshpilotError('usage', 'File name must be 1–255 characters');
      if (!/^[\w.+-]+\/[\w.+-]+$/.test(mimetype)) throw new MeshpilotError('usage', `Not a MIME type: ${mimetype.slice(0, 80)}`);
      return call('file upload', async () => {
        const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        const crypto = cryptoClient();
        if (crypto && (await session.isEncryptedRoom(roomId))) {
          // Encrypted room: upload the ciphertext, the key travels inside the (encrypted) event.
          const enc = await crypto.encryptMedia(buf);
          const mxc = await client.uploadContent(enc.buffer, 'application/octet-stream', name);
          const eventId = await client.sendMessage(roomId, { msgtype: 'm.file', body: name, filename: name, file: { ...enc.file, url: mxc }, info: { mimetype, size: buf.length } });
          return { eventId, mxc };
        }
        const mxc = await client.uploadContent(buf, mimetype, name);
        const eventId = await client.sendMessage(roomId, { msgtype: 'm.file', body: name, filename: name, url: mxc, info: { mimetype, size: buf.length } });
        return { eventId, mxc };
      });
    },
    react: async (roomId, eventId, key) => {
      checkRoom(roomId);
      if (key.length === 0 || key.length > 64) throw new MeshpilotError('usage', 'Reaction key must be 1–64 characters');
      return call('reaction', () => client.sendEvent(roomId, 'm.reaction', { 'm.relates_to': { rel_type: 'm.annotation', event_id: eventId, key } }));
    },
    setTyping: async (roomId, typing, timeoutMs = 30_000) => {
      checkRoom(roomId);
      return call('typing', async () => {
        await client.setTyping(roomId, typing, Math.max(1_000, Math.min(120_000, timeoutMs)));
      });
    },
    getState: async (roomId, type, stateKey = '') => {
      checkRoom(roomId);
      return call('state read', async () => {
        try {
          const c = (await client.getRoomStateEvent(roomId, type, stateKey)) as unknown;
          return c && typeof c === 'object' ? (c as Record<string, unknown>) : null;
        } catch (err) {
          const i = errInfo(err);
          if (i.errcode === 'M_NOT_FOUND' || i.status === 404) return null;
          throw err;
        }
      });
    },
    setState: async (roomId, type, stateKey, content) => {
      checkRoom(roomId);
      if (type.length === 0 || type.length > 255 || stateKey.length > 255) throw new MeshpilotError('usage', 'State type and key must be at most 255 characters');
      return call('state write', () => client.sendStateEvent(roomId, type, stateKey, content));
    },
    createDm: async (target, o = {}) => {
      checkUser(target);
      return call('DM creation', async () => {
        const roomId = await client.createRoom({
          invite: [target],
          is_direct: true,
          preset: 'trusted_private_chat',
          ...(o.name !== undefined ? { name: o.name } : {}),
          ...(o.topic !== undefined ? { topic: o.topic } : {}),
          ...(o.encrypted && cryptoClient() ? { initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }] } : {}),
        });
        const direct = await readDirect();
        direct[target] = [roomId, ...(direct[target] ?? []).filter((r) => r !== roomId)];
        await client.setAccountData('m.direct', direct);
        return roomId;
      });
    },
    findDm: async (target) => {
      checkUser(target);
      return call('DM lookup', async () => {
        const rooms = (await readDirect())[target] ?? [];
        if (rooms.length === 0) return null;
        const joined = new Set(await client.getJoinedRooms());
        return rooms.find((r) => joined.has(r)) ?? null;
      });
    },
    setDisplayName: async (name) => {
      if (name.length === 0 || name.length > 256) throw new MeshpilotError('usage', 'Display name must be 1–256 characters');
      return call('display name', async () => {
        await client.setDisplayName(name);
      });
    },
    async downloadMedia(mxc, o = {}) {
      const m = mxcRe.exec(mxc);
      if (!m) throw new MeshpilotError('usage', `Not an mxc:// media URI: ${mxc.slice(0, 120)}`);
      const maxBytes = o.maxBytes ?? maxDownloadDefault;
      const authenticated = await call('versions', authenticatedMediaSupported);
      const server = encodeURIComponent(m[1]!);
      const id = encodeURIComponent(m[2]!);
      const url = authenticated ? `${homeserverUrl}/_matrix/client/v1/media/download/${server}/${id}` : `${homeserverUrl}/_matrix/media/v3/download/${server}/${id}`;
      let res: HttpResponse;
      try {
        res = await httpFetch(url, { headers: { Authorization: `Bearer ${opts.accessToken}` }, timeoutMs: 60_000 });
      } catch (err) {
        throw new MeshpilotError('unreachable', `Matrix media download failed: ${errInfo(err).message}`);
      }
      if (!res.ok) {
        const text = (await readBounded(res, 64 * 1024).catch(() => Buffer.alloc(0))).toString('utf8');
        let errcode: string | undefined;
        try {
          errcode = (JSON.parse(text) as { errcode?: string }).errcode;
        } catch {
          errcode = undefined;
        }
        throw toMeshpilot({ statusCode: res.status, body: errcode ? { errcode } : undefined }, 'media download');
      }
      const declared = Number(res.headers.get('content-length') ?? 'NaN');
      if (Number.isFinite(declared) && declared > maxBytes) {
        res.cancel();
        throw new MeshpilotError('output_limit', `Matrix media is ${declared} bytes, over the ${maxBytes}-byte limit`);
      }
      const bytes = await readBounded(res, maxBytes);
      const file = encryptedFiles.get(mxc);
      if (file) {
        const crypto = cryptoClient();
        if (!crypto) throw new MeshpilotError('unreachable', 'this attachment is end-to-end encrypted and encryption is off in this session');
        const clear = decryptAttachment(bytes, file);
        return { bytes: clear, contentType: 'application/octet-stream', endpoint: authenticated ? 'authenticated' : 'legacy' };
      }
      return { bytes, contentType: res.headers.get('content-type') ?? 'application/octet-stream', endpoint: authenticated ? 'authenticated' : 'legacy' };
    },
    whoami: () =>
      call('whoami', async () => {
        const w = await client.getWhoAmI();
        userId = w.user_id;
        return w.device_id ? { userId: w.user_id, deviceId: w.device_id } : { userId: w.user_id };
      }),
    isEncryptedRoom: async (roomId) => (await session.getState(roomId, 'm.room.encryption', '')) !== null,
    roomMembers: async (roomId) => {
      checkRoom(roomId);
      let members = memberCache.get(roomId);
      if (!members) {
        const fetched = call('member list', async () => (await client.getAllRoomMembers(roomId)).map((m) => ({ userId: m.membershipFor, membership: m.membership })));
        memberCache.set(roomId, fetched);
        fetched.catch(() => {
          if (memberCache.get(roomId) === fetched) memberCache.delete(roomId);
        });
        members = fetched;
      }
      return members;
    },
    cryptoAvailable,
    encryptionEnabled: () => cryptoClient() !== undefined,
    async encryptionStatus() {
      const c = cryptoClient();
      const backend = cryptoBackend();
      if (!c) return { enabled: false, ...(backend ? { backend } : {}), problem: !opts.encryption ? 'encryption is turned off' : !cryptoAvailable() ? 'no Matrix crypto module loads' : 'encryption did not start' };
      const m = machine();
      const crossSigned = m?.isOwnDeviceCrossSigned ? await m.isOwnDeviceCrossSigned() : false;
      return { enabled: true, ...(backend ? { backend } : {}), deviceId: c.clientDeviceId, crossSigned, ...(crossSignProblem ? { problem: crossSignProblem } : {}) };
    },
  };
  return session;
}

async function readBounded(res: HttpResponse, maxBytes: number): Promise<Buffer> {
  try {
    return await res.bytes(maxBytes);
  } catch (err) {
    if ((err as { code?: unknown }).code === 'E2BIG') throw new MeshpilotError('output_limit', `Matrix media is over the ${maxBytes}-byte limit`);
    throw new MeshpilotError('unreachable', `Matrix download failed: ${errInfo(err).message}`);
  }
}

// ------------------------------------------------------------------------------------------- registration (Synapse admin)

const nonceSchema = z.object({ nonce: z.string().min(1).max(255) });
const registerResponseSchema = z.looseObject({ user_id: z.string().regex(userIdRe), access_token: z.string().min(1).max(4096), device_id: z.string().max(255).optional() });
const errorBodySchema = z.looseObject({ errcode: z.string().max(255), error: z.string().max(2000).optional() });

async function adminRequest(url: string, init: { method: string; token?: string; body?: unknown }, what: string): Promise<unknown> {
  let res: HttpResponse;
  try {
    const headers: Record<string, string> = { 'Content-Type': 'application/json' };
    if (init.token) headers['Authorization'] = `Bearer ${init.token}`;
    res = await httpFetch(url, {
      method: init.method,
      headers,
      body: init.body === undefined ? null : JSON.stringify(init.body),
      timeoutMs: 20_000,
    });
  } catch (err) {
    throw new MeshpilotError('unreachable', `Matrix ${what} failed: cannot reach the homeserver (${errInfo(err).message})`);
  }
  const text = (await readBounded(res, 64 * 1024)).toString('utf8');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const e = errorBodySchema.safeParse(json);
    const body = e.success ? { errcode: e.data.errcode, ...(e.data.error !== undefined ? { error: e.data.error } : {}) } : undefined;
    throw Object.assign(new Error(`HTTP ${res.status}`), { statusCode: res.status, body });
  }
  return json;
}

function validLocalpart(localpart: string): void {
  if (!/^[a-z0-9._=\-/+]{1,200}$/.test(localpart)) {
    throw new MeshpilotError('usage', `Matrix user names may only contain a-z, 0-9 and . _ = - / + (got ${localpart.slice(0, 80)})`);
  }
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
  if (o.password.length === 0 || o.password.length > 512) throw new MeshpilotError('usage', 'Password must be 1–512 characters');
  const base = o.homeserverUrl.replace(/\/+$/, '');
  const url = `${base}/_synapse/admin/v1/register`;
  const admin = o.admin === true;
  try {
    const n = nonceSchema.safeParse(await adminRequest(url, { method: 'GET' }, 'registration'));
    if (!n.success) throw new MeshpilotError('unreachable', 'Matrix registration failed: the homeserver sent no nonce (is it Synapse with shared-secret registration enabled?)');
    const mac = createHmac('sha1', o.sharedSecret)
      .update(n.data.nonce)
      .update('\x00')
      .update(o.localpart)
      .update('\x00')
      .update(o.password)
      .update('\x00')
      .update(admin ? 'admin' : 'notadmin')
      .digest('hex');
    const body: Record<string, unknown> = { nonce: n.data.nonce, username: o.localpart, password: o.password, admin, mac };
    if (o.displayname !== undefined) body['displayname'] = o.displayname;
    const r = registerResponseSchema.safeParse(await adminRequest(url, { method: 'POST', body }, 'registration'));
    if (!r.success) throw new MeshpilotError('unreachable', 'Matrix registration failed: unexpected response from the homeserver');
    return { userId: r.data.user_id, accessToken: r.data.access_token, deviceId: r.data.device_id ?? '' };
  } catch (err) {
    if (err instanceof MeshpilotError) throw err;
    const i = errInfo(err);
    if (i.errcode === 'M_USER_IN_USE') {
      throw new MeshpilotError('config', `The Matrix user name "${o.localpart}" is already taken on ${base}; pick another name or reuse that account's access token`, { cause: USER_IN_USE });
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
  if (!userIdRe.test(o.userId) || o.userId.length > 255) throw new MeshpilotError('usage', `Not a Matrix user id: ${o.userId.slice(0, 80)}`);
  const base = o.homeserverUrl.replace(/\/+$/, '');
  try {
    await adminRequest(`${base}/_synapse/admin/v1/deactivate/${encodeURIComponent(o.userId)}`, { method: 'POST', token: o.adminToken, body: { erase: o.erase === true } }, 'deactivation');
  } catch (err) {
    if (err instanceof MeshpilotError) throw err;
    const i = errInfo(err);
    if (i.errcode === 'M_FORBIDDEN') throw new MeshpilotError('permission', 'Deactivating a Matrix user needs a server admin\'s access token');
    throw toMeshpilot(err, 'deactivation');
  }
}

// ------------------------------------------------------------------------------------------- account helpers

async function clientApi(homeserverUrl: string, method: string, p: string, body?: unknown, token?: string): Promise<Record<string, unknown>> {
  const base = homeserverUrl.replace(/\/+$/, '');
  let res: HttpResponse;
  try {
    res = await httpFetch(`${base}${p}`, {
      method,
      headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      timeoutMs: 15_000,
      maxBodyBytes: 1024 * 1024,
    });
  } catch (err) {
    throw new MeshpilotError('unreachable', `Matrix homeserver ${base} cannot be reached: ${(err as Error).message}`);
  }
  const json = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  if (!res.ok) {
    const errcode = typeof json['errcode'] === 'string' ? json['errcode'] : `HTTP ${res.status}`;
    const error = typeof json['error'] === 'string' ? json['error'] : '';
    const code = errcode === 'M_FORBIDDEN' || errcode === 'M_UNKNOWN_TOKEN' || errcode === 'M_MISSING_TOKEN' ? 'auth' : res.status >= 500 ? 'unreachable' : 'usage';
    throw new MeshpilotError(code, `${errcode}${error ? `: ${error}` : ''}`);
  }
  return json;
}

/** Checks an access token and returns who it belongs to. */
export async function whoamiWithToken(o: { homeserverUrl: string; accessToken: string }): Promise<{ userId: string; deviceId?: string }> {
  const j = await clientApi(o.homeserverUrl, 'GET', '/_matrix/client/v3/account/whoami', undefined, o.accessToken);
  if (typeof j['user_id'] !== 'string') throw new MeshpilotError('auth', 'whoami returned no user_id');
  return { userId: j['user_id'], ...(typeof j['device_id'] === 'string' ? { deviceId: j['device_id'] } : {}) };
}

/** m.login.password; returns a fresh access token (a new Matrix device). */
export async function loginWithPassword(o: { homeserverUrl: string; user: string; password: string; deviceName?: string }): Promise<{ userId: string; accessToken: string; deviceId: string }> {
  const j = await clientApi(o.homeserverUrl, 'POST', '/_matrix/client/v3/login', {
    type: 'm.login.password',
    identifier: { type: 'm.id.user', user: o.user },
    password: o.password,
    initial_device_display_name: o.deviceName ?? 'meshpilot',
  });
  if (typeof j['access_token'] !== 'string' || typeof j['user_id'] !== 'string') throw new MeshpilotError('auth', 'login returned no access token');
  return { userId: j['user_id'], accessToken: j['access_token'], deviceId: typeof j['device_id'] === 'string' ? j['device_id'] : '' };
}

// ------------------------------------------------------------------------------------------- encryption device

/** Name of the crypto shim's store snapshot inside a store dir (bots/crypto-optional). */
const CRYPTO_STORE_FILE = 'crypto-store.v1';

async function uiaFetch(base: string, method: string, p: string, token: string, body: Record<string, unknown>, auth?: Record<string, unknown>): Promise<{ status: number; json: Record<string, unknown> }> {
  let res: HttpResponse;
  try {
    res = await httpFetch(`${base}${p}`, {
      method,
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify(auth ? { ...body, auth } : body),
      timeoutMs: 15_000,
      maxBodyBytes: 4 * 1024 * 1024,
    });
  } catch (err) {
    throw new MeshpilotError('unreachable', `Matrix homeserver ${base} cannot be reached: ${errInfo(err).message}`);
  }
  const json = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  return { status: res.status, json };
}

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
}): Promise<{ accessToken: string; deviceId: string; replacedDeviceId?: string }> {
  const base = o.homeserverUrl.replace(/\/+$/, '');
  const who = await whoamiWithToken({ homeserverUrl: base, accessToken: o.accessToken });
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
  if (storeOwner === deviceId && storeComplete) return { accessToken: o.accessToken, deviceId };

  const archive = (): void => {
    if (existsSync(o.storeDir)) renameSync(o.storeDir, `${o.storeDir}.replaced-${Date.now()}`);
  };
  const q = await uiaFetch(base, 'POST', '/_matrix/client/v3/keys/query', o.accessToken, { device_keys: { [who.userId]: [deviceId] } });
  const known = (q.json['device_keys'] as Record<string, Record<string, unknown>> | undefined)?.[who.userId]?.[deviceId] !== undefined;
  if (q.status !== 200) throw new MeshpilotError(q.status === 401 ? 'auth' : 'unreachable', `Matrix key query failed (HTTP ${q.status})`);
  if (!known) {
    // A device that never published keys: a fresh store is right (set aside whatever store was there).
    if (existsSync(o.storeDir)) {
      o.logger.warn({ deviceId, storeOwner }, 'the crypto store belongs to another Matrix device: setting it aside and starting a fresh one');
      archive();
    }
    return { accessToken: o.accessToken, deviceId };
  }
  // The server knows this device's keys but the store is gone (or belongs to another device): lost.
  if (!o.password) {
    throw new MeshpilotError('config', `the encryption keys of Matrix device ${deviceId} (${who.userId}) are lost, and a device is never reused after that; meshpilot has no password to log in as a new device: run \`${o.fixHint}\``);
  }
  const login = await loginWithPassword({ homeserverUrl: base, user: who.userId, password: o.password, deviceName: o.deviceName });
  archive();
  o.save({ accessToken: login.accessToken, deviceId: login.deviceId });
  o.logger.warn({ oldDeviceId: deviceId, newDeviceId: login.deviceId }, 'the crypto store was lost: logged in as a new Matrix device; deleting the old one');
  // Delete the old device (user-interactive auth by password); a failure leaves a dead device behind, not a broken bot.
  const first = await uiaFetch(base, 'POST', '/_matrix/client/v3/delete_devices', login.accessToken, { devices: [deviceId] });
  if (first.status === 401) {
    const session = typeof first.json['session'] === 'string' ? { session: first.json['session'] } : {};
    const second = await uiaFetch(base, 'POST', '/_matrix/client/v3/delete_devices', login.accessToken, { devices: [deviceId] }, { type: 'm.login.password', identifier: { type: 'm.id.user', user: who.userId }, password: o.password, ...session });
    if (second.status !== 200) o.logger.warn({ status: second.status, deviceId }, 'the old Matrix device could not be deleted; remove it from the account by hand');
  } else if (first.status !== 200) o.logger.warn({ status: first.status, deviceId }, 'the old Matrix device could not be deleted; remove it from the account by hand');
  return { accessToken: login.accessToken, deviceId: login.deviceId, replacedDeviceId: deviceId };
}

/** `/versions`, for doctor checks. */
export async function homeserverVersions(homeserverUrl: string): Promise<string[]> {
  const j = await clientApi(homeserverUrl, 'GET', '/_matrix/client/versions');
  return Array.isArray(j['versions']) ? (j['versions'] as unknown[]).filter((v): v is string => typeof v === 'string') : [];
}

/** Sets a user's display name with their own token. */
export async function setDisplayNameWithToken(o: { homeserverUrl: string; accessToken: string; userId: string; displayname: string }): Promise<void> {
  await clientApi(o.homeserverUrl, 'PUT', `/_matrix/client/v3/profile/${encodeURIComponent(o.userId)}/displayname`, { displayname: o.displayname }, o.accessToken);
}
