/**
 * A bot's Matrix session: meshpilot's one wrapper over matrix-bot-sdk's client. Bots get a small typed
 * session (types.ts): normalised, zod-validated events (events.ts); errors as MeshpilotError (errors.ts).
 *
 * - Sync: our own loop (sync.ts) on the SDK's single-sync primitives (sdk-patches.ts).
 * - Storage: sync-store.ts (SQLite) under storageDir (sync token); a restart resumes from it without
 *   replaying old events.
 * - End-to-end encryption when `encryption` is given and a crypto module loads (cryptoAvailable()): the
 *   crypto storage in the SDK's file format (crypto-storage.ts) with a per-device store dir, encrypted
 *   DMs, cross-signing (cross-signing.ts) so clients show the bot's device as verified by its owner,
 *   encrypted attachments (media.ts). `checkCryptoDevice` (crypto-device.ts, run before the session)
 *   makes sure a lost store never reuses its device id.
 * - Events sent by the session's own user are not delivered to onMessage/onReaction.
 */
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import type { IStorageProvider } from 'matrix-bot-sdk';
import { MeshpilotError } from '../../capabilities/errors.js';
import { cryptoAvailable, cryptoBackend, cryptoEngine, cryptoMachine, readyCrypto } from './crypto.js';
import { FileCryptoStorage } from './crypto-storage.js';
import { ensureCrossSigning } from './cross-signing.js';
import { errInfo, isUnknownToken, toMeshpilot } from './errors.js';
import { checkRoom, checkText, checkUser, mDirectSchema, stateListSchema, toInvite, toMessage, toReaction } from './events.js';
import { HomeserverApi } from './http.js';
import { createMediaDownloader } from './media.js';
import { SessionClient } from './sdk-patches.js';
import { installMatrixHttp } from './sdk-http.js';
import { installSdkLogger } from './sdk-log.js';
import { backoffDelay, roomsWithMemberChanges, runSyncLoop, sleep } from './sync.js';
import { openSyncStateStore } from './sync-store.js';
import type { MatrixEncrypted, MatrixInvite, MatrixMessage, MatrixReaction, MatrixSession, MatrixSessionOptions, SessionStatus } from './types.js';
installMatrixHttp(); // the SDK's HTTP on node:http instead of `request` (stubbed out of the bot bundle)

const DEFAULT_MAX_DOWNLOAD = 25 * 1024 * 1024;
const MEGOLM = 'm.megolm.v1.aes-sha2';

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
  const cryptoStore = e2ee ? new FileCryptoStorage(e2ee.storeDir) : undefined;
  const client = new SessionClient(homeserverUrl, opts.accessToken, storage satisfies IStorageProvider, cryptoStore);
  if (e2ee?.account) {
    // checkCryptoDevice asked /whoami for this token just now: the SDK need not ask again (user id at
    // start, device id when its store has none yet).
    client.knownUserId(e2ee.account.userId);
    if (cryptoStore && !cryptoStore.deviceIdNow()) void cryptoStore.setDeviceId(e2ee.account.deviceId);
  }
  client.keyRecipients = e2ee?.keyRecipients;
  client.membersOf = (roomId) => session.roomMembers(roomId);
  // roomId → its members, until a sync shows a membership change there (the bot checks them before every post).
  const memberCache = new Map<string, Promise<Array<{ userId: string; membership: string }>>>();
  const cryptoClient = () => readyCrypto(client);
  let crossSignProblem: string | undefined;
  /** The cross-signing start() leaves running (it needs neither the first sync nor the bot's first message). */
  let crossSigning: Promise<void> = Promise.resolve();
  /** Set once start() has returned: until then a room created encrypted is encrypted if e2ee is configured (crypto is being set up). */
  let started = false;
  /** Rooms are created encrypted when the crypto client is ready, or is being set up by start(). */
  const encryptsRooms = (): boolean => cryptoClient() !== undefined || (e2ee !== undefined && !started);
  const media = createMediaDownloader({
    api: new HomeserverApi(homeserverUrl, opts.accessToken),
    versions: () => client.getServerVersions(),
    canDecrypt: () => cryptoClient() !== undefined,
  });
  const syncTimeout = opts.syncTimeoutMs ?? 30_000;
  client.syncingTimeout = syncTimeout;
  const backoffMin = opts.backoffMinMs ?? 1_000;
  const backoff = { minMs: backoffMin, maxMs: Math.max(backoffMin, opts.backoffMaxMs ?? 60_000) };
  const maxDownloadDefault = opts.maxDownloadBytes ?? DEFAULT_MAX_DOWNLOAD;

  let userId = opts.userId;
  let state: SessionStatus = 'idle';
  let abort = new AbortController();
  let loopDone: Promise<void> | undefined;
  let lastToken: string | null = null;

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
    const p = toMessage(roomId, ev);
    if (!p) {
      log.debug({ roomId }, 'ignoring malformed or redacted m.room.message');
      return;
    }
    if (p.message.sender === userId) return;
    if (p.file) media.remember(p.file);
    dispatch(messageCbs, p.message, 'onMessage');
  });

  client.on('room.event', (roomId: string, ev: { type?: unknown; sender?: unknown; event_id?: unknown }) => {
    // An event still m.room.encrypted here could not be decrypted (no crypto, or its keys never came):
    // the bot must say it can't read it, never ignore it silently.
    if (state !== 'stopped' && ev?.type === 'm.room.encrypted' && typeof ev.sender === 'string' && typeof ev.event_id === 'string' && ev.sender !== userId) {
      dispatch(encryptedCbs, { roomId, eventId: ev.event_id, sender: ev.sender, reason: cryptoClient() ? 'undecryptable' : 'no_crypto' }, 'onEncrypted');
      return;
    }
    if (state === 'stopped' || ev?.type !== 'm.reaction') return;
    const r = toReaction(roomId, ev);
    if (!r || r.sender === userId) return;
    dispatch(reactionCbs, r, 'onReaction');
  });

  client.on('room.invite', (roomId: string, ev: unknown) => {
    if (state === 'stopped') return;
    const i = toInvite(roomId, ev);
    if (i) dispatch(inviteCbs, i, 'onInvite');
  });

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
      await runSyncLoop(
        {
          client,
          storage,
          log,
          syncTimeoutMs: syncTimeout,
          backoff,
          setStatus: (s) => {
            state = s;
          },
          beforeBatch: (raw) => {
            if (memberCache.size > 0) for (const roomId of roomsWithMemberChanges(raw)) memberCache.delete(roomId);
          },
          afterBatch: () => firstBatch?.resolve(),
          onToken: (t) => {
            lastToken = t;
          },
        },
        signal,
      );
    } finally {
      firstBatch?.resolve();
    }
  }

  async function call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw toMeshpilot(err, what);
    }
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
          if (cryptoClient() && e2ee) {
            // In the background: the bot's first message does not wait for it (startupDone() does).
            const csUserId = userId;
            crossSigning = ensureCrossSigning(client, { storeDir: e2ee.storeDir, crossSigningFile: e2ee.crossSigningFile, password: e2ee.password, userId: csUserId, log }).then(
              (problem) => { crossSignProblem = problem; },
              (err: unknown) => {
                crossSignProblem = errInfo(err).message;
                log.warn({ error: crossSignProblem }, 'cross-signing could not be set up: clients will show this bot\'s device as not verified by its owner');
              },
            );
          } else if (e2ee) log.warn('end-to-end encryption did not start; running without it');
          started = true;
          log.info({ userId, encryption: cryptoClient() ? `on (${cryptoClient()?.clientDeviceId})` : 'off' }, 'Matrix session started');
          return;
        } catch (err) {
          const i = errInfo(err);
          if (isUnknownToken(i)) {
            state = 'unauthorized';
            throw new MeshpilotError('auth', 'The Matrix homeserver rejected the bot\'s access token');
          }
          attempt += 1;
          const delay = backoffDelay(backoff, attempt);
          log.warn({ error: i.message, attempt, retryInMs: delay }, 'Matrix session could not start; retrying');
          await sleep(delay, signal);
        }
      }
    },

    startupDone: () => crossSigning,

    async stop() {
      abort.abort();
      // Cross-signing still running (a stop right after start) finishes first, briefly: it saves its keys.
      await Promise.race([crossSigning, new Promise((r) => setTimeout(r, 5_000).unref())]);
      client.stop();
      if (state !== 'unauthorized') state = 'stopped';
      await loopDone;
      loopDone = undefined;
      if (lastToken !== null) await Promise.resolve(storage.setSyncToken(lastToken));
      // Release the crypto store (saved, and free to be opened again in this process: the launcher's
      // operator bot), under the engine's sync lock so no key tracking the SDK started is cut off.
      const engine = cryptoEngine(client);
      const m = engine?.machine;
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
          ...(o.encrypted && encryptsRooms() ? { initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: MEGOLM } }] } : {}),
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
    createRoom: async (o) => {
      for (const u of o.invite ?? []) checkUser(u);
      return call('room creation', () =>
        client.createRoom({
          ...(o.preset !== undefined ? { preset: o.preset } : {}),
          ...(o.name !== undefined ? { name: o.name } : {}),
          ...(o.topic !== undefined ? { topic: o.topic } : {}),
          ...(o.invite !== undefined ? { invite: o.invite } : {}),
          ...(o.userPowerLevels !== undefined ? { power_level_content_override: { users: o.userPowerLevels } } : {}),
          ...(o.encrypted && encryptsRooms() ? { initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: MEGOLM } }] } : {}),
        }),
      );
    },
    invite: async (roomId, target) => {
      checkRoom(roomId);
      checkUser(target);
      return call('invite', async () => {
        await client.inviteUser(target, roomId);
      });
    },
    roomState: async (roomId) => {
      checkRoom(roomId);
      return call('state read', async () => {
        const list = stateListSchema.safeParse(await client.getRoomState(roomId));
        return list.success ? list.data.map((e) => ({ type: e.type, stateKey: e.state_key ?? '', content: e.content })) : [];
      });
    },
    downloadMedia: (mxc, o = {}) => media.download(mxc, o.maxBytes ?? maxDownloadDefault),
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
      const m = cryptoMachine(client);
      await crossSigning;
      const crossSigned = m?.isOwnDeviceCrossSigned ? await m.isOwnDeviceCrossSigned() : false;
      return { enabled: true, ...(backend ? { backend } : {}), deviceId: c.clientDeviceId, crossSigned, ...(crossSignProblem ? { problem: crossSignProblem } : {}) };
    },
  };
  return session;
}
