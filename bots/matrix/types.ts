/**
 * The types of meshpilot's Matrix session: what a bot gets instead of matrix-bot-sdk's client
 * (normalised events, a small set of calls, errors as MeshpilotError). Nothing here names the SDK.
 */
import type { Logger } from 'pino';

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
    /**
     * The account and device checkCryptoDevice found for this access token: the SDK then does not ask
     * /whoami for them again at start (two round trips per start).
     */
    account?: { userId: string; deviceId: string };
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
  /**
   * Resolves when the work start() leaves running in the background is done (this device's
   * cross-signing), failed or not: what a process waits for before it calls itself ready.
   */
  startupDone(): Promise<void>;
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
  /**
   * Creates a DM; encrypted (m.megolm.v1.aes-sha2) when `encrypted` and this session has encryption on
   * (or, before start() has returned, is setting it up: a DM can be created while the session starts).
   */
  createDm(userId: string, opts?: { name?: string; topic?: string; encrypted?: boolean }): Promise<string>;
  /** A DM room with userId from the bot's m.direct account data that the bot is still in, or null. */
  findDm(userId: string): Promise<string | null>;
  /** Creates a (non-DM) room; encrypted (m.megolm.v1.aes-sha2) when `encrypted` and this session has encryption on (as createDm). */
  createRoom(opts: CreateRoomOptions): Promise<string>;
  invite(roomId: string, userId: string): Promise<void>;
  /** Every state event of the room (type, state key, content). */
  roomState(roomId: string): Promise<StateEvent[]>;
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

export interface CreateRoomOptions {
  name?: string;
  topic?: string;
  preset?: 'private_chat' | 'trusted_private_chat';
  invite?: string[];
  /** Power levels of users (m.room.power_levels `users`); it must include the creator (Synapse refuses it otherwise). */
  userPowerLevels?: Record<string, number>;
  encrypted?: boolean;
}

export interface StateEvent {
  type: string;
  stateKey: string;
  content: Record<string, unknown>;
}
