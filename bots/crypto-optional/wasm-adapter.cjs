// @ts-check
// The part of the @matrix-org/matrix-sdk-crypto-nodejs API (0.1.0-beta.6) that matrix-bot-sdk 0.7.1 uses,
// implemented on @matrix-org/matrix-sdk-crypto-wasm (pure WebAssembly: installs and runs offline).
//
// Boundary rules (what callers can rely on):
// - Identifier, DeviceLists and EncryptionSettings objects are plain JS (no wasm needed to build them);
//   they become wasm objects only inside OlmMachine calls.
// - OlmMachine.initialize(userId, deviceId, storePath, passphrase) keeps the store in IndexedDB
//   (fake-indexeddb) and persists it to `<storePath>/crypto-store.v1` and its `.journal` (dir 0700, files
//   0600; see idb-persist.cjs). Every call that can change crypto state is on disk BEFORE it resolves, so
//   nothing is sent or acted upon whose keys/ratchets are not. An unreadable snapshot makes initialize reject (never a silent
//   fresh start: that would give the same device id new keys). One machine per storePath per process.
// - outgoingRequests() returns only KeysUpload/KeysQuery/KeysClaim/ToDevice (matrix-bot-sdk throws on the
//   others); SignatureUpload/RoomMessage/KeysBackup requests are kept for meshpilot: takeExtraRequests().
// - EncryptionSettings.rotationPeriod is in MILLISECONDS (what matrix-bot-sdk passes; the native binding
//   reads it as microseconds).
// - Room events are decrypted with TrustRequirement.Untrusted (unverified senders' messages decrypt;
//   trust decisions are meshpilot's, by sender id).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const idb = require('./idb-persist.cjs');

const WASM_PKG = path.join(path.dirname(require.resolve('@matrix-org/matrix-sdk-crypto-wasm')), 'pkg');
const BINDINGS = path.join(WASM_PKG, 'matrix_sdk_crypto_wasm_bg.cjs');
/** The wasm-bindgen bindings (JS side); the module behind them is instantiated by loadWasm. */
const wasm = require(BINDINGS);
// Ours alone: the package's entry (node.cjs), if anything in this process loads it, requires the same
// file and would point it at a module instance of its own, under our machines' feet.
delete require.cache[BINDINGS];
let wasmLoaded = false;

/**
 * Compiles and instantiates the WebAssembly module, once, synchronously. This replaces the package's own
 * loader (its node.cjs), for memory (measured per bot process):
 * - the package reads the 5 MB file and compiles it asynchronously; the Buffer survives the garbage
 *   collections during the compile, lands in the old generation and stayed for the process's life.
 *   Here it is dropped before any collection, so the next young-generation collection frees it.
 * - the custom "name" section (function names for wasm stack frames, 1.2 MB) is left out: V8 keeps a
 *   copy of the module's bytes as long as the module lives. Frames then read `wasm-function[N]`.
 */
function loadWasm() {
  if (wasmLoaded) return;
  const bytes = withoutCustomSection(fs.readFileSync(path.join(WASM_PKG, 'matrix_sdk_crypto_wasm_bg.wasm')), 'name');
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { './matrix_sdk_crypto_wasm_bg.js': wasm });
  wasm.__wbg_set_wasm(instance.exports);
  /** @type {{ __wbindgen_start(): void }} */ (/** @type {unknown} */ (instance.exports)).__wbindgen_start();
  wasmLoaded = true;
}

/**
 * The module's bytes without the custom section `name` (the bytes themselves when there is none).
 * @param {Buffer} bytes @param {string} name @returns {Buffer}
 */
function withoutCustomSection(bytes, name) {
  if (bytes.length < 8 || bytes.readUInt32LE(0) !== 0x6d736100) throw new Error('not a WebAssembly module');
  /** @param {number} at @returns {[number, number]} value, position after it */
  const leb = (at) => {
    let value = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      const b = bytes[at++];
      if (b === undefined) throw new Error('truncated WebAssembly module');
      value += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return [value, at];
    }
    throw new Error('malformed WebAssembly module');
  };
  /** @type {Buffer[]} */
  const kept = [bytes.subarray(0, 8)];
  let dropped = false;
  for (let at = 8; at < bytes.length; ) {
    const [size, body] = leb(at + 1);
    const end = body + size;
    if (end > bytes.length) throw new Error('truncated WebAssembly module');
    let drop = false;
    if (bytes[at] === 0) {
      const [len, str] = leb(body);
      drop = bytes.toString('utf8', str, str + len) === name;
    }
    if (drop) dropped = true;
    else kept.push(bytes.subarray(at, end));
    at = end;
  }
  return dropped ? Buffer.concat(kept) : bytes;
}

// The nodejs binding's enum numbering (matrix-bot-sdk inlines these values).
const RequestType = Object.freeze({ KeysUpload: 0, KeysQuery: 1, KeysClaim: 2, ToDevice: 3, SignatureUpload: 4, RoomMessage: 5, KeysBackup: 6 });
const HistoryVisibility = Object.freeze({ Invited: 0, Joined: 1, Shared: 2, WorldReadable: 3 });
const EncryptionAlgorithm = Object.freeze({ OlmV1Curve25519AesSha2: 0, MegolmV1AesSha2: 1 });
const StoreType = Object.freeze({ Sled: 0, Sqlite: 1 }); // accepted and ignored: the store is IndexedDB + file

// wasm uses the same numbers today; values are passed through unmapped, so refuse to load if that changes.
for (const [ours, theirs] of /** @type {[Record<string, number>, Record<string, unknown>][]} */ ([
  [RequestType, wasm.RequestType],
  [HistoryVisibility, wasm.HistoryVisibility],
  [EncryptionAlgorithm, wasm.EncryptionAlgorithm],
])) {
  for (const [k, v] of Object.entries(ours)) if (theirs[k] !== v) throw new Error(`matrix-sdk-crypto-wasm enum ${k} is ${String(theirs[k])}, expected ${v}`);
}

const SNAPSHOT = 'crypto-store.v1';
const WEEK_MS = 7 * 24 * 3600 * 1000;
const SYNC_MAINTENANCE_MS = 5 * 60 * 1000;

// ------------------------------------------------------------------------------------------ values

class UserId {
  #id;
  /** @param {string} id */
  constructor(id) {
    if (typeof id !== 'string' || !/^@[^:]+:.+$/.test(id) || id.length > 255) throw new TypeError(`Invalid Matrix user id: ${String(id).slice(0, 100)}`);
    this.#id = id;
  }
  get localpart() {
    return this.#id.slice(1, this.#id.indexOf(':'));
  }
  clone() {
    return new UserId(this.#id);
  }
  toString() {
    return this.#id;
  }
}

class DeviceId {
  #id;
  /** @param {string} id */
  constructor(id) {
    if (typeof id !== 'string' || id.length === 0 || id.length > 255) throw new TypeError(`Invalid Matrix device id: ${String(id).slice(0, 100)}`);
    this.#id = id;
  }
  toString() {
    return this.#id;
  }
}

class RoomId {
  #id;
  /** @param {string} id */
  constructor(id) {
    if (typeof id !== 'string' || !id.startsWith('!') || id.length > 255) throw new TypeError(`Invalid Matrix room id: ${String(id).slice(0, 100)}`);
    this.#id = id;
  }
  toString() {
    return this.#id;
  }
}

class DeviceLists {
  /** @param {UserId[] | null} [changed] @param {UserId[] | null} [left] */
  constructor(changed, left) {
    /** @type {UserId[]} */
    this.changed = [...(changed ?? [])];
    /** @type {UserId[]} */
    this.left = [...(left ?? [])];
  }
  isEmpty() {
    return this.changed.length === 0 && this.left.length === 0;
  }
}

class EncryptionSettings {
  constructor() {
    /** @type {number | undefined} */
    this.algorithm = EncryptionAlgorithm.MegolmV1AesSha2;
    /** Milliseconds (matrix-bot-sdk's unit). */
    this.rotationPeriod = BigInt(WEEK_MS);
    this.rotationPeriodMessages = 100n;
    this.historyVisibility = HistoryVisibility.Shared;
  }
}

/** An attachment encrypted by Attachment.encrypt, or built from downloaded data + its `file` info. */
class EncryptedAttachment {
  #consumed = false;
  /** @param {Uint8Array} encryptedData @param {string} mediaEncryptionInfo JSON */
  constructor(encryptedData, mediaEncryptionInfo) {
    this.encryptedData = encryptedData;
    this.mediaEncryptionInfo = mediaEncryptionInfo;
  }
  get hasMediaEncryptionInfoBeenConsumed() {
    return this.#consumed;
  }
  /** @internal */
  consume() {
    this.#consumed = true;
  }
}

class Attachment {
  constructor() {
    throw new Error('Attachment has only static methods');
  }
  /** @param {Uint8Array} data @returns {EncryptedAttachment} */
  static encrypt(data) {
    loadWasm();
    const e = wasm.Attachment.encrypt(data);
    try {
      return new EncryptedAttachment(e.encryptedData, /** @type {string} */ (e.mediaEncryptionInfo));
    } finally {
      e.free();
    }
  }
  /** Checks the hash and decrypts. @param {EncryptedAttachment} att @returns {Uint8Array} */
  static decrypt(att) {
    loadWasm();
    const e = new wasm.EncryptedAttachment(att.encryptedData, att.mediaEncryptionInfo);
    try {
      const out = wasm.Attachment.decrypt(e);
      att.consume();
      return out;
    } finally {
      e.free();
    }
  }
}

// ------------------------------------------------------------------------------------------ conversions

/** @param {UserId | string} u */
const wUser = (u) => new wasm.UserId(String(u));
/** @param {RoomId | string} r */
const wRoom = (r) => new wasm.RoomId(String(r));
/** @param {(UserId | string)[] | null | undefined} us */
const wUsers = (us) => (us ?? []).map(wUser);

/** @param {EncryptionSettings} s */
function wSettings(s) {
  if (s.algorithm !== EncryptionAlgorithm.MegolmV1AesSha2) throw new Error('Room encryption algorithm is not supported (only m.megolm.v1.aes-sha2)');
  const w = new wasm.EncryptionSettings();
  w.algorithm = wasm.EncryptionAlgorithm.MegolmV1AesSha2;
  w.rotationPeriod = BigInt(s.rotationPeriod) * 1000n; // ms → µs
  w.rotationPeriodMessages = BigInt(s.rotationPeriodMessages);
  w.historyVisibility = s.historyVisibility;
  return w;
}

/**
 * An outgoing request as matrix-bot-sdk reads it. ToDevice bodies carry txn_id/event_type/messages
 * (the nodejs binding's shape), wasm keeps the first two outside the body.
 * @typedef {{ id: string, type: number, body: string, txn_id?: string, event_type?: string }} PlainRequest
 * @param {any} r a wasm request object  -- any: the wasm union type has no common fields in its typings
 * @returns {PlainRequest}
 */
function plainRequest(r) {
  if (r.type === RequestType.ToDevice) {
    const messages = JSON.parse(r.body).messages;
    return { id: r.id, type: r.type, txn_id: r.txn_id, event_type: r.event_type, body: JSON.stringify({ txn_id: r.txn_id, event_type: r.event_type, messages }) };
  }
  return { id: r.id, type: r.type, body: r.body };
}

/**
 * A request matrix-bot-sdk cannot send, with the HTTP method and path to send it to (derived here: wasm
 * does not provide them). `id` is '' when wasm gave none (then there is nothing to mark as sent).
 * @typedef {{ id: string, type: number, body: string, method: 'POST' | 'PUT', path: string, room_id?: string, txn_id?: string, event_type?: string, version?: string }} ExtraRequest
 * @param {any} r -- any: see plainRequest
 * @returns {ExtraRequest}
 */
function extraRequest(r) {
  const e = encodeURIComponent;
  switch (r.type) {
    case RequestType.SignatureUpload:
      return { id: r.id ?? '', type: r.type, body: r.body, method: 'POST', path: '/_matrix/client/v3/keys/signatures/upload' };
    case RequestType.RoomMessage:
      return { id: r.id, type: r.type, body: r.body, method: 'PUT', path: `/_matrix/client/v3/rooms/${e(r.room_id)}/send/${e(r.event_type)}/${e(r.txn_id)}`, room_id: r.room_id, txn_id: r.txn_id, event_type: r.event_type };
    default:
      return { id: r.id, type: r.type, body: r.body, method: 'PUT', path: `/_matrix/client/v3/room_keys/keys?version=${e(r.version)}`, version: r.version };
  }
}

/**
 * Splits wasm's outgoing requests into those matrix-bot-sdk can send and the rest.
 * @param {any[]} reqs -- any: see plainRequest
 * @returns {{ sdk: PlainRequest[], extra: ExtraRequest[] }}
 */
function splitRequests(reqs) {
  /** @type {{ sdk: PlainRequest[], extra: ExtraRequest[] }} */
  const out = { sdk: [], extra: [] };
  for (const r of reqs) {
    if (r.type <= RequestType.ToDevice) out.sdk.push(plainRequest(r));
    else out.extra.push(extraRequest(r));
  }
  return out;
}

/** wasm rejects with strings or MegolmDecryptionError objects; callers get Errors. @param {unknown} e */
function toError(e) {
  if (e instanceof Error) return e;
  if (e instanceof wasm.MegolmDecryptionError) {
    const name = /** @type {Record<number, string>} */ (/** @type {unknown} */ (wasm.DecryptionErrorCode))[e.code] ?? String(e.code);
    return Object.assign(new Error(`Could not decrypt the event: ${e.description}`), { decryptionErrorCode: name, withheld: e.maybe_withheld });
  }
  return new Error(typeof e === 'string' ? e : `matrix-sdk-crypto-wasm: ${String(e)}`);
}

// ------------------------------------------------------------------------------------------ machine

/** Absolute store paths with an open (or opening/closing) machine in this process. */
const openStores = new Set();
let generation = 0;
const BUILD = Symbol('build');

/**
 * @typedef {{ hasMaster: boolean, hasSelfSigning: boolean, hasUserSigning: boolean }} CrossSigningStatus
 * @typedef {{ masterKey?: string, selfSigningKey?: string, userSigningKey?: string }} CrossSigningKeys
 */

class OlmMachine {
  /** @type {any} the wasm OlmMachine -- any: its methods are typed loosely (Promise<any>) anyway */
  #m;
  /** @type {{ save(): Promise<void>, close(): Promise<void> } | null} null for a memory-only machine */
  #saver = null;
  /** @type {{ factory: IDBFactory, prefix: string, dir: string } | null} */
  #store = null;
  #userId = '';
  #deviceId = '';
  /** @type {{ ed25519: string, curve25519: string }} */
  #keys = { ed25519: '', curve25519: '' };
  /** @type {Map<string, ExtraRequest>} */
  #extra = new Map();
  /** @type {Set<Promise<unknown>>} */
  #inflight = new Set();
  /** @type {Promise<void> | null} */
  #closing = null;
  /** The key counts of the last sync handed to the machine, and when (receiveSyncChanges). */
  #lastSync = { fingerprint: '', at: 0 };

  /** @param {symbol} [token] */
  constructor(token) {
    if (token !== BUILD) throw new Error('To build an OlmMachine, please use the `initialize` method');
  }

  /**
   * @param {UserId} userId
   * @param {DeviceId} deviceId
   * @param {string | null} [storePath] directory for the store; none: keys live in memory only
   * @param {string | null} [passphrase] encrypts the store's values ('' or none: not encrypted)
   * @param {number} [_storeType] ignored (nodejs binding: Sled/Sqlite)
   * @returns {Promise<OlmMachine>}
   */
  static async initialize(userId, deviceId, storePath, passphrase, _storeType) {
    const machine = new OlmMachine(BUILD);
    machine.#userId = String(userId);
    machine.#deviceId = String(deviceId);
    loadWasm();
    if (!storePath) {
      machine.#m = await wasm.OlmMachine.initialize(wUser(userId), new wasm.DeviceId(String(deviceId)));
    } else {
      const dir = path.resolve(storePath);
      if (openStores.has(dir)) throw new Error(`The Matrix crypto store ${dir} is already open in this process`);
      openStores.add(dir);
      try {
        await machine.#open(dir, passphrase || null);
      } catch (e) {
        openStores.delete(dir);
        throw toError(e);
      }
    }
    const ik = machine.#m.identityKeys;
    machine.#keys = { ed25519: ik.ed25519.toBase64(), curve25519: ik.curve25519.toBase64() };
    ik.free();
    return machine;
  }

  /** @param {string} dir @param {string | null} passphrase */
  async #open(dir, passphrase) {
    // Never re-create a parent that was removed (a device being revoked): only the store dir itself.
    if (!fs.existsSync(path.dirname(dir))) throw new Error(`The Matrix crypto store's directory ${path.dirname(dir)} does not exist (was the device removed?)`);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(dir, 0o700); // matrix-bot-sdk's storage provider creates it with the default mode first
    const file = path.join(dir, SNAPSHOT);
    const where = `The Matrix crypto store ${file}`;
    /** @type {import('./idb-persist.cjs').Snapshot | null} */
    let snapshot;
    /** @type {import('./idb-persist.cjs').JournalRecord[]} */
    let journal = [];
    try {
      snapshot = await idb.readSnapshot(file);
      // the journal holds the changes since the snapshot it names; one naming another snapshot is stale
      const j = snapshot?.journal ? await idb.readJournal(`${file}.journal`) : null;
      if (j && j.id === snapshot?.journal) journal = j.records;
    } catch (e) {
      throw new Error(
        `${where} is unreadable: ${e instanceof Error ? e.message : String(e)}. Not starting with an empty store, which would give device ${this.#deviceId} new keys. Restore the file from a backup, or remove ${dir} and sign in as a new device.`,
      );
    }
    if (!snapshot) {
      const native = ['matrix-sdk-crypto.sqlite3', 'db', 'conf'].find((n) => fs.existsSync(path.join(dir, n)));
      if (native) throw new Error(`${dir} holds a store of the native crypto module (${native}), which the WebAssembly backend cannot read. Use a new store directory and a new device.`);
    }
    const factory = idb.ensureIndexedDB();
    // A fresh set of database names for every open: a failed open can leave a connection behind in
    // wasm (its databases are then merely leaked, never reused). The snapshot keeps only name suffixes.
    const storeName = `meshpilot-crypto-${crypto.createHash('sha256').update(dir).digest('hex').slice(0, 16)}-${++generation}`;
    const prefix = `${storeName}::`; // wasm names its databases `${storeName}::matrix-sdk-crypto[-meta]`
    this.#store = { factory, prefix, dir };
    try {
      if (snapshot) {
        await idb.restoreDatabases(factory, prefix, snapshot);
        await idb.applyJournal(factory, prefix, journal);
      }
      this.#m = await wasm.OlmMachine.initialize(wUser(this.#userId), new wasm.DeviceId(this.#deviceId), storeName, passphrase);
      this.#saver = idb.createSaver({ factory, prefix, file });
      // a new account (identity keys) is on disk before anyone sees it; a replayed journal is folded in
      await this.#saver.save();
    } catch (e) {
      try {
        this.#m?.close();
      } catch {
        // already unusable
      }
      await this.#saver?.close();
      this.#saver = null;
      await idb.deleteDatabases(factory, prefix).catch(() => {});
      const msg = toError(e).message;
      throw new Error(snapshot ? `${where} could not be opened: ${msg}` : `Could not create the Matrix crypto store in ${dir}: ${msg}`);
    }
  }

  /**
   * Runs one wasm call; calls that can change state are persisted before they resolve.
   * @template T
   * @param {(m: any) => Promise<T>} fn -- any: the wasm machine
   * @param {boolean} changesState
   * @returns {Promise<T>}
   */
  async #call(fn, changesState) {
    if (this.#closing || !this.#m) throw new Error('The OlmMachine has been closed');
    const run = (async () => {
      /** @type {T} */
      let result;
      try {
        result = await fn(this.#m);
      } catch (e) {
        if (changesState) await this.#saver?.save().catch(() => {}); // a failed call may still have changed state
        throw toError(e);
      }
      if (changesState) await this.#saver?.save();
      return result;
    })();
    this.#inflight.add(run);
    try {
      return await run;
    } finally {
      this.#inflight.delete(run);
    }
  }

  get userId() {
    return new UserId(this.#userId);
  }
  get deviceId() {
    return new DeviceId(this.#deviceId);
  }
  /** The device's public identity keys. */
  get identityKeys() {
    const { ed25519, curve25519 } = this.#keys;
    return { ed25519: { toBase64: () => ed25519 }, curve25519: { toBase64: () => curve25519 } };
  }

  /**
   * @param {string} toDeviceEvents JSON array of the sync's to-device events
   * @param {DeviceLists} deviceLists
   * @param {Record<string, number>} otkCounts
   * @param {string[] | null} [unusedFallbackKeys]
   * @returns {Promise<string>} JSON array of the decrypted to-device events
   */
  receiveSyncChanges(toDeviceEvents, deviceLists, otkCounts, unusedFallbackKeys) {
    // Most syncs carry nothing for crypto (the bot's own echo, typing, receipts), but the wasm machine
    // handles each one in a store transaction that unpickles the whole Olm account (public keys
    // recomputed for every one-time key: ~20 ms of curve25519 per sync). A sync with no to-device
    // events, no device-list changes and the same key counts as the last one handled changes nothing,
    // so it is answered here; one is still handed over every SYNC_MAINTENANCE_MS (fallback-key rotation
    // is checked there).
    const fingerprint = JSON.stringify([otkCounts ?? {}, Array.isArray(unusedFallbackKeys) ? [...unusedFallbackKeys].sort() : null]);
    const idle =
      (toDeviceEvents === '[]' || toDeviceEvents === '') &&
      (deviceLists?.changed?.length ?? 0) === 0 &&
      (deviceLists?.left?.length ?? 0) === 0 &&
      fingerprint === this.#lastSync.fingerprint &&
      Date.now() - this.#lastSync.at < SYNC_MAINTENANCE_MS;
    if (idle) return Promise.resolve('[]');
    return this.#call(async (m) => {
      const lists = new wasm.DeviceLists(wUsers(deviceLists?.changed), wUsers(deviceLists?.left));
      const counts = new Map(Object.entries(otkCounts ?? {}));
      const fallback = Array.isArray(unusedFallbackKeys) ? new Set(unusedFallbackKeys) : null;
      const out = await m.receiveSyncChanges(toDeviceEvents, lists, counts, fallback);
      this.#lastSync = { fingerprint, at: Date.now() };
      return typeof out === 'string' ? out : JSON.stringify(out);
    }, true);
  }

  /**
   * KeysUpload/KeysQuery/KeysClaim/ToDevice requests; the other kinds go to takeExtraRequests().
   * Persisted: building a keys upload generates one-time keys.
   * @returns {Promise<PlainRequest[]>}
   */
  async outgoingRequests() {
    const { sdk, extra } = splitRequests(await this.#call((m) => m.outgoingRequests(), true));
    for (const x of extra) this.#extra.set(x.id || `${x.type}:${x.body}`, x);
    return sdk;
  }

  /**
   * SignatureUpload/RoomMessage/KeysBackup requests seen by outgoingRequests() since the last call, then
   * forgotten. One not marked as sent comes back with a later outgoingRequests() (a retry; all three
   * are idempotent).
   * @returns {ExtraRequest[]}
   */
  takeExtraRequests() {
    const out = [...this.#extra.values()];
    this.#extra.clear();
    return out;
  }

  /**
   * @param {string} id @param {number} type @param {string} response JSON of the server's response
   * @returns {Promise<boolean>}
   */
  markRequestAsSent(id, type, response) {
    if (!Number.isInteger(type) || type < 0 || type > RequestType.KeysBackup) return Promise.reject(new TypeError(`Unknown request type ${type}`));
    this.#extra.delete(String(id));
    return this.#call(async (m) => Boolean(await m.markRequestAsSent(String(id), type, response)), true);
  }

  /** @param {UserId[]} users @returns {Promise<void>} */
  updateTrackedUsers(users) {
    return this.#call(async (m) => void (await m.updateTrackedUsers(wUsers(users))), true);
  }

  /** @param {UserId[] | null} [users] @returns {Promise<PlainRequest | null>} a KeysClaim request, or null */
  getMissingSessions(users) {
    return this.#call(async (m) => {
      const r = await m.getMissingSessions(wUsers(users));
      return r ? plainRequest(r) : null;
    }, true);
  }

  /**
   * @param {RoomId} roomId @param {UserId[]} users @param {EncryptionSettings} settings
   * @returns {Promise<string>} JSON array of `{ txn_id, event_type, messages }` to-device requests
   */
  shareRoomKey(roomId, users, settings) {
    return this.#call(async (m) => {
      /** @type {any[]} */
      const reqs = await m.shareRoomKey(wRoom(roomId), wUsers(users), wSettings(settings));
      return JSON.stringify(reqs.map((r) => JSON.parse(plainRequest(r).body)));
    }, true);
  }

  /** @param {RoomId} roomId @param {string} eventType @param {string} content JSON @returns {Promise<string>} JSON content of the m.room.encrypted event */
  encryptRoomEvent(roomId, eventType, content) {
    return this.#call((m) => m.encryptRoomEvent(wRoom(roomId), eventType, content), true);
  }

  /**
   * Decrypts with TrustRequirement.Untrusted. Rejects with an Error (`decryptionErrorCode` set) when it cannot.
   * @param {string} event JSON of the m.room.encrypted event
   * @param {RoomId} roomId
   */
  decryptRoomEvent(event, roomId) {
    return this.#call(async (m) => {
      const d = await m.decryptRoomEvent(event, wRoom(roomId), new wasm.DecryptionSettings(wasm.TrustRequirement.Untrusted));
      const sender = d.sender?.toString();
      const senderDevice = d.senderDevice?.toString();
      return {
        /** JSON of the clear event ({ type, content, ... }) */
        event: /** @type {string} */ (d.event),
        sender: sender ? new UserId(sender) : undefined,
        senderDevice: senderDevice ? new DeviceId(senderDevice) : undefined,
        senderCurve25519Key: /** @type {string | undefined} */ (d.senderCurve25519Key),
        senderClaimedEd25519Key: /** @type {string | undefined} */ (d.senderClaimedEd25519Key),
        forwardingCurve25519KeyChain: /** @type {string[]} */ ([]),
        /** @param {boolean} strict */
        shieldState: (strict) => {
          const s = d.shieldState(strict);
          return s ? { color: s.color, code: s.code, message: s.message } : null;
        },
      };
    }, true);
  }

  /**
   * Signs canonical JSON with the device key (and the master key when cross-signing is set up).
   * The result is read like the nodejs binding's Signatures: `get(userId)` → `{ [keyId]: { isValid, signature: { toBase64() } } }`.
   * @param {string} message
   */
  async sign(message) {
    /** @type {Record<string, Record<string, string>>} */
    const all = await this.#call(async (m) => {
      const s = await m.sign(message);
      try {
        return JSON.parse(s.asJSON());
      } finally {
        s.free();
      }
    }, false);
    return {
      count: Object.values(all).reduce((n, u) => n + Object.keys(u).length, 0),
      asJSON: () => JSON.stringify(all),
      /** @param {UserId | string} user */
      get: (user) => {
        const u = all[String(user)];
        if (!u) return undefined;
        /** @type {Record<string, { isValid: boolean, isInvalid: boolean, signature: { toBase64(): string } }>} */
        const out = {};
        for (const [keyId, sig] of Object.entries(u)) out[keyId] = { isValid: true, isInvalid: false, signature: { toBase64: () => sig } };
        return out;
      },
    };
  }

  /** @param {RoomId} roomId @returns {Promise<boolean>} */
  invalidateGroupSession(roomId) {
    return this.#call(async (m) => Boolean(await m.invalidateGroupSession(wRoom(roomId))), true);
  }

  // ---------------------------------------------------------------------- meshpilot's additions

  /**
   * Creates (reset) or re-uses the cross-signing identity. Bodies to send, in this order: uploadKeys (then
   * markRequestAsSent), uploadSigningKeys (POST /keys/device_signing/upload, add `auth` when asked),
   * uploadSignatures (POST /keys/signatures/upload).
   * @param {boolean} reset
   * @returns {Promise<{ uploadSigningKeys: Record<string, unknown>, uploadSignatures: Record<string, unknown>, uploadKeys?: PlainRequest }>}
   */
  bootstrapCrossSigning(reset) {
    return this.#call(async (m) => {
      const r = await m.bootstrapCrossSigning(Boolean(reset));
      /** @type {{ uploadSigningKeys: Record<string, unknown>, uploadSignatures: Record<string, unknown>, uploadKeys?: PlainRequest }} */
      const out = { uploadSigningKeys: JSON.parse(r.uploadSigningKeysRequest.body), uploadSignatures: JSON.parse(r.uploadSignaturesRequest.body) };
      if (r.uploadKeysRequest) out.uploadKeys = plainRequest(r.uploadKeysRequest);
      return out;
    }, true);
  }

  /** Which private cross-signing keys this machine holds. @returns {Promise<CrossSigningStatus>} */
  crossSigningStatus() {
    return this.#call(async (m) => plainStatus(await m.crossSigningStatus()), false);
  }

  /** The private cross-signing keys (unpadded base64 seeds), or undefined when there are none. @returns {Promise<CrossSigningKeys | undefined>} */
  exportCrossSigningKeys() {
    return this.#call(async (m) => {
      const e = await m.exportCrossSigningKeys();
      if (!e) return undefined;
      /** @type {CrossSigningKeys} */
      const out = {};
      if (e.masterKey) out.masterKey = e.masterKey;
      if (e.self_signing_key) out.selfSigningKey = e.self_signing_key; // sic: wasm's name
      if (e.userSigningKey) out.userSigningKey = e.userSigningKey;
      return out;
    }, false);
  }

  /**
   * @param {string | null} [master] @param {string | null} [selfSigning] @param {string | null} [userSigning]
   * @returns {Promise<CrossSigningStatus>}
   */
  importCrossSigningKeys(master, selfSigning, userSigning) {
    return this.#call(async (m) => plainStatus(await m.importCrossSigningKeys(master ?? null, selfSigning ?? null, userSigning ?? null)), true);
  }

  /** Is this device signed by our self-signing key, as far as this machine knows (after a keys query)? @returns {Promise<boolean>} */
  isOwnDeviceCrossSigned() {
    return this.#call(async (m) => {
      const id = await m.getIdentity(wUser(this.#userId));
      if (!id || typeof id.trustsOurOwnDevice !== 'function') return false;
      return Boolean(await id.trustsOurOwnDevice());
    }, false);
  }

  /**
   * Signs this device with our self-signing key: the body for POST /keys/signatures/upload, or undefined
   * when the machine lacks the key or does not know its own device yet.
   * @returns {Promise<Record<string, unknown> | undefined>}
   */
  signOwnDevice() {
    return this.#call(async (m) => {
      if (!(await m.crossSigningStatus()).hasSelfSigning) return undefined;
      const dev = await m.getDevice(wUser(this.#userId), new wasm.DeviceId(this.#deviceId));
      if (!dev) return undefined;
      const r = await dev.verify();
      return r ? JSON.parse(r.body) : undefined;
    }, true);
  }

  /** Resolves once the current state is on disk. @returns {Promise<void>} */
  async flush() {
    await this.#saver?.save();
  }

  /**
   * Waits for calls in flight, writes a last snapshot, closes the store and frees its memory. Later calls
   * reject. The store path can be opened again once this resolves.
   * @returns {Promise<void>}
   */
  close() {
    if (!this.#closing) {
      this.#closing = (async () => {
        await Promise.allSettled([...this.#inflight]);
        try {
          await this.#saver?.save();
        } finally {
          await this.#saver?.close();
          this.#m.close();
          if (this.#store) {
            await idb.deleteDatabases(this.#store.factory, this.#store.prefix).catch(() => {});
            openStores.delete(this.#store.dir);
          }
        }
      })();
    }
    return this.#closing;
  }
}

/** @param {any} s a wasm CrossSigningStatus @returns {CrossSigningStatus} */
function plainStatus(s) {
  return { hasMaster: Boolean(s.hasMaster), hasSelfSigning: Boolean(s.hasSelfSigning), hasUserSigning: Boolean(s.hasUserSigning) };
}

module.exports = {
  UserId,
  DeviceId,
  RoomId,
  DeviceLists,
  EncryptionSettings,
  EncryptionAlgorithm,
  HistoryVisibility,
  RequestType,
  StoreType,
  OlmMachine,
  Attachment,
  EncryptedAttachment,
  /** For tests only; index.cjs does not export it. */
  __internal: { splitRequests, withoutCustomSection, wasmFile: path.join(WASM_PKG, 'matrix_sdk_crypto_wasm_bg.wasm') },
};
