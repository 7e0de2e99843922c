// @ts-check
/// <reference lib="dom" />
// File persistence for the IndexedDB crypto store of @matrix-org/matrix-sdk-crypto-wasm.
//
// In Node the wasm store lives in fake-indexeddb (in memory). This module keeps the databases of one
// store (every database whose name starts with a prefix) in two files:
//   - `<file>`: a full snapshot. dumpDatabases() reads schema (version, object stores with
//     keyPath/autoIncrement, indexes with keyPath/unique/multiEntry) and all records in one readonly
//     transaction per database; encodeSnapshot()/decodeSnapshot(): `MAGIC | sha256(payload) |
//     v8.serialize(snapshot)`, so a torn or corrupt file is detected instead of being read as an empty
//     store; written by writeFileAtomic() (tmp 0600 → fsync → rename → fsync(dir)).
//   - `<file>.journal`: what changed since that snapshot. Writes to tracked databases are noted per key
//     (hooks on fake-indexeddb's raw object store); a save reads the current value of each changed key
//     in a readonly transaction (so it sees committed state only, after every earlier write
//     transaction) and appends one checksummed frame, then fdatasync. A frame is a few hundred bytes
//     where a snapshot is the whole store: saving after every crypto call stays cheap.
//     The journal names the snapshot it belongs to (a random id in both); a stale journal is ignored.
//     When it outgrows the snapshot, or the schema changes, the next save writes a new snapshot instead.
//   - createSaver(): saves coalesced to one in flight + one pending; the first save is a snapshot.
'use strict';

const crypto = require('node:crypto');
const fsp = require('node:fs/promises');
const path = require('node:path');
const v8 = require('node:v8');

const MAGIC = Buffer.from('meshpilot-crypto-store\n');
const FORMAT = 'meshpilot-crypto-store';
const JOURNAL_MAGIC = Buffer.from('meshpilot-crypto-journal\n');
const JOURNAL_ID_BYTES = 16;
const FRAME_HEADER = 4 + 32; // u32 LE payload length, sha256(payload)
const MAX_FRAME = 256 * 1024 * 1024;
/** A journal larger than this and than the snapshot is folded into a new snapshot. */
const JOURNAL_COMPACT_MIN = 256 * 1024;

/** @typedef {{ name: string, keyPath: string | string[], unique: boolean, multiEntry: boolean }} IndexDump */
/**
 * One object store. `keys` is null for stores with in-line keys (the key is inside each value).
 * @typedef {{ name: string, keyPath: string | string[] | null, autoIncrement: boolean, indexes: IndexDump[], keys: unknown[] | null, values: unknown[] }} StoreDump
 */
/** `suffix`: the database name without the store prefix (the prefix depends on the store's path). */
/** @typedef {{ suffix: string, version: number, stores: StoreDump[] }} DatabaseDump */
/** `journal`: hex id of the journal that continues this snapshot (absent: none). */
/** @typedef {{ format: string, version: 1, databases: DatabaseDump[], journal?: string }} Snapshot */
/**
 * One journal frame: per database, per object store, either the full content (after a clear or a range
 * delete) or the keys written (with their values) and deleted.
 * @typedef {{ name: string, full: { keys: unknown[] | null, values: unknown[] } | null, puts: [unknown, unknown][], dels: unknown[] }} StoreChanges
 * @typedef {{ dbs: { suffix: string, stores: StoreChanges[] }[] }} JournalRecord
 */

/**
 * The IndexedDB factory the wasm bindings will use: they read `globalThis.indexedDB` and
 * `globalThis.IDBKeyRange`. fake-indexeddb is installed there only when no implementation is present.
 * @returns {IDBFactory}
 */
function ensureIndexedDB() {
  const g = /** @type {{ indexedDB?: IDBFactory, IDBKeyRange?: unknown }} */ (globalThis);
  if (!g.indexedDB) {
    const fake = require('fake-indexeddb');
    g.indexedDB = fake.indexedDB;
    if (!g.IDBKeyRange) g.IDBKeyRange = fake.IDBKeyRange;
  }
  installWriteTracking();
  if (!g.IDBKeyRange) throw new Error('globalThis.indexedDB is set but globalThis.IDBKeyRange is not');
  return g.indexedDB;
}

/**
 * @template T
 * @param {IDBRequest<T>} r
 * @returns {Promise<T>}
 */
function done(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** @param {IDBTransaction} tx @returns {Promise<void>} */
function committed(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

/** @param {IDBFactory} factory @param {string} prefix @returns {Promise<string[]>} */
async function databaseNames(factory, prefix) {
  return (await factory.databases()).map((d) => d.name ?? '').filter((n) => n.startsWith(prefix));
}

/**
 * Deletes every database of the store. Resolves when they are gone, or once a deletion is only waiting
 * for a connection someone else still holds (it completes when that one closes): never hangs.
 * @param {IDBFactory} factory @param {string} prefix
 */
async function deleteDatabases(factory, prefix) {
  for (const name of await databaseNames(factory, prefix)) {
    await new Promise((resolve, reject) => {
      const r = factory.deleteDatabase(name);
      r.onsuccess = resolve;
      r.onblocked = resolve;
      r.onerror = () => reject(r.error);
    });
  }
}

/** @param {IDBFactory} factory @param {string} name @returns {Promise<IDBDatabase>} */
async function openExisting(factory, name) {
  const db = await done(factory.open(name));
  db.onversionchange = () => db.close(); // never block the wasm store's upgrades or our deletes
  return db;
}

/**
 * Reads schema and records of every database whose name starts with `prefix`.
 * @param {IDBFactory} factory
 * @param {string} prefix
 * @param {boolean} [takeChanges] for a saver's snapshot: what was marked as changed is in this dump
 * @returns {Promise<Snapshot>}
 */
async function dumpDatabases(factory, prefix, takeChanges = false) {
  /** @type {DatabaseDump[]} */
  const databases = [];
  for (const name of await databaseNames(factory, prefix)) {
    const db = await openExisting(factory, name);
    try {
      const names = [...db.objectStoreNames];
      /** @type {Promise<StoreDump>[]} */
      const stores = [];
      if (names.length > 0) {
        const tx = db.transaction(names, 'readonly');
        const end = committed(tx);
        if (takeChanges) {
          // runs first, once every earlier write transaction is done; later writes stay marked
          tx.objectStore(/** @type {string} */ (names[0])).count().onsuccess = () => {
            const d = dirtyOf(db);
            if (d) (d.stores = new Map()), (d.schema = false);
          };
        }
        // issue every request synchronously: awaiting between them could let the transaction commit
        for (const storeName of names) {
          const s = tx.objectStore(storeName);
          const indexes = [...s.indexNames].map((i) => {
            const ix = s.index(i);
            return { name: i, keyPath: ix.keyPath, unique: ix.unique, multiEntry: ix.multiEntry };
          });
          const values = done(s.getAll());
          const keys = s.keyPath === null ? done(s.getAllKeys()) : Promise.resolve(null);
          stores.push(
            Promise.all([values, keys]).then(([v, k]) => ({ name: storeName, keyPath: s.keyPath, autoIncrement: s.autoIncrement, indexes, keys: k, values: v })),
          );
        }
        const dumped = await Promise.all(stores);
        await end;
        databases.push({ suffix: name.slice(prefix.length), version: db.version, stores: dumped });
      } else {
        const d = takeChanges ? dirtyOf(db) : undefined;
        if (d) (d.stores = new Map()), (d.schema = false);
        databases.push({ suffix: name.slice(prefix.length), version: db.version, stores: [] });
      }
    } finally {
      db.close();
    }
  }
  return { format: FORMAT, version: 1, databases };
}

/**
 * Creates the snapshot's databases (schema, then records) under `prefix`, which must not be in use.
 * @param {IDBFactory} factory
 * @param {string} prefix
 * @param {Snapshot} snapshot
 */
async function restoreDatabases(factory, prefix, snapshot) {
  if ((await databaseNames(factory, prefix)).length > 0) throw new Error(`IndexedDB databases ${prefix}* already exist`);
  for (const d of snapshot.databases) {
    const open = factory.open(prefix + d.suffix, d.version);
    open.onupgradeneeded = () => {
      const db = open.result;
      for (const s of d.stores) {
        /** @type {IDBObjectStoreParameters} */
        const opts = { autoIncrement: s.autoIncrement };
        if (s.keyPath !== null) opts.keyPath = s.keyPath;
        const os = db.createObjectStore(s.name, opts);
        for (const ix of s.indexes) os.createIndex(ix.name, ix.keyPath, { unique: ix.unique, multiEntry: ix.multiEntry });
      }
    };
    const db = await done(open);
    try {
      const names = d.stores.map((s) => s.name);
      if (names.length > 0) {
        const tx = db.transaction(names, 'readwrite');
        const end = committed(tx);
        for (const s of d.stores) {
          const os = tx.objectStore(s.name);
          const keys = s.keys;
          s.values.forEach((v, i) => (keys ? os.put(v, /** @type {IDBValidKey} */ (keys[i])) : os.put(v)));
        }
        await end;
      }
    } finally {
      db.close();
    }
  }
}

// ------------------------------------------------------------------------------------ write tracking

/**
 * What changed in one (raw) database since the last save. `stores`: per object store, `all` (cleared or
 * range-deleted: save its whole content) or the keys written/deleted (by an encoding of the key).
 * `active`: unfinished readwrite transactions. `schema`: object stores or indexes were created/deleted.
 * @typedef {{ name: string, stores: Map<string, { all: boolean, keys: Map<string, unknown> }>, active: number, schema: boolean }} DirtyDb
 */

/** Prefixes whose databases are tracked (a saver exists for them). */
const trackedPrefixes = new Set();
/** @type {WeakMap<object, DirtyDb>} raw fake-indexeddb Database → its changes */
const dirtyByDb = new WeakMap();
let trackingInstalled = false;
let trackingWorks = false;

/** @param {{ name: string }} rawDb @returns {DirtyDb | undefined} */
function dirtyFor(rawDb) {
  let d = dirtyByDb.get(rawDb);
  if (d) return d;
  for (const p of trackedPrefixes) {
    if (rawDb.name.startsWith(p)) {
      d = { name: rawDb.name, stores: new Map(), active: 0, schema: false };
      dirtyByDb.set(rawDb, d);
      return d;
    }
  }
  return undefined;
}

/** A string that is equal for equal IndexedDB keys (number, string, Date, binary, arrays of those). */
function keyId(/** @type {unknown} */ k) {
  if (typeof k === 'number') return `n${k}`;
  if (typeof k === 'string') return `s${k}`;
  if (k instanceof Date) return `d${k.getTime()}`;
  if (k instanceof ArrayBuffer) return `b${Buffer.from(k).toString('hex')}`;
  if (ArrayBuffer.isView(k)) return `b${Buffer.from(k.buffer, k.byteOffset, k.byteLength).toString('hex')}`;
  if (Array.isArray(k)) return `a${JSON.stringify(k.map(keyId))}`;
  return `?${String(k)}`;
}

/**
 * Hooks fake-indexeddb's raw object store (every write path goes through storeRecord / deleteRecord /
 * clear: put, add, delete, clear, cursor update/delete, transaction rollback) and IDBDatabase
 * (transactions, schema changes). Without the expected internals, savers fall back to full snapshots.
 */
function installWriteTracking() {
  if (trackingInstalled) return;
  trackingInstalled = true;
  /** @type {any} fake-indexeddb internals -- any: not part of its typed API */
  let RawObjectStore;
  /** @type {any} */
  let fake;
  try {
    fake = require('fake-indexeddb');
    RawObjectStore = require(path.join(path.dirname(require.resolve('fake-indexeddb')), 'lib', 'ObjectStore.js'));
  } catch {
    return;
  }
  const raw = RawObjectStore?.prototype;
  const dbProto = fake?.IDBDatabase?.prototype;
  const storeProto = fake?.IDBObjectStore?.prototype;
  if (!raw || !dbProto || !storeProto) return;
  if (![raw.storeRecord, raw.deleteRecord, raw.clear, dbProto.transaction, dbProto.createObjectStore, dbProto.deleteObjectStore, storeProto.createIndex, storeProto.deleteIndex].every((f) => typeof f === 'function')) return;
  const KeyRange = fake.IDBKeyRange;

  /** @param {any} store @param {unknown} key */
  const mark = (store, key) => {
    const d = store?.rawDatabase && dirtyFor(store.rawDatabase);
    if (!d) return;
    let s = d.stores.get(store.name);
    if (!s) d.stores.set(store.name, (s = { all: false, keys: new Map() }));
    if (key === undefined) s.all = true;
    else if (!s.all) s.keys.set(keyId(key), key);
  };
  const { storeRecord, deleteRecord, clear } = raw;
  raw.storeRecord = function (/** @type {any} */ record, /** @type {unknown[]} */ ...rest) {
    const out = storeRecord.call(this, record, ...rest);
    mark(this, record.key);
    return out;
  };
  raw.deleteRecord = function (/** @type {unknown} */ key, /** @type {unknown[]} */ ...rest) {
    const out = deleteRecord.call(this, key, ...rest);
    mark(this, key instanceof KeyRange ? undefined : key);
    return out;
  };
  raw.clear = function (/** @type {unknown[]} */ ...rest) {
    const out = clear.apply(this, rest);
    mark(this, undefined);
    return out;
  };
  const { transaction, createObjectStore, deleteObjectStore } = dbProto;
  dbProto.transaction = function (/** @type {unknown[]} */ ...args) {
    const tx = transaction.apply(this, args);
    const d = tx.mode !== 'readonly' && this._rawDatabase ? dirtyFor(this._rawDatabase) : undefined;
    if (d) {
      d.active += 1;
      let ended = false;
      const end = () => {
        if (!ended) (ended = true), (d.active -= 1);
      };
      tx.addEventListener('complete', end);
      tx.addEventListener('abort', end);
    }
    return tx;
  };
  /** @param {any} rawDb */
  const schemaChanged = (rawDb) => {
    const d = rawDb && dirtyFor(rawDb);
    if (d) d.schema = true;
  };
  dbProto.createObjectStore = function (/** @type {unknown[]} */ ...args) {
    schemaChanged(this._rawDatabase);
    return createObjectStore.apply(this, args);
  };
  dbProto.deleteObjectStore = function (/** @type {unknown[]} */ ...args) {
    schemaChanged(this._rawDatabase);
    return deleteObjectStore.apply(this, args);
  };
  const { createIndex, deleteIndex } = storeProto;
  storeProto.createIndex = function (/** @type {unknown[]} */ ...args) {
    schemaChanged(this._rawObjectStore?.rawDatabase);
    return createIndex.apply(this, args);
  };
  storeProto.deleteIndex = function (/** @type {unknown[]} */ ...args) {
    schemaChanged(this._rawObjectStore?.rawDatabase);
    return deleteIndex.apply(this, args);
  };
  trackingWorks = true;
}

/** @param {IDBDatabase} db @returns {DirtyDb | undefined} */
function dirtyOf(db) {
  const rawDb = /** @type {{ _rawDatabase?: { name: string } }} */ (/** @type {unknown} */ (db))._rawDatabase;
  return rawDb ? dirtyFor(rawDb) : undefined;
}

/**
 * Reads what changed in `db` since the last save, consistently: a readonly transaction over every object
 * store starts only after every earlier write transaction has finished, and the changed keys are taken
 * once it runs (later writes stay marked for the next save).
 * @param {IDBDatabase} db @param {DirtyDb} d
 * @returns {Promise<StoreChanges[]>}
 */
async function readChanges(db, d) {
  const names = [...db.objectStoreNames];
  if (names.length === 0) return [];
  const tx = db.transaction(names, 'readonly');
  const end = committed(tx);
  /** @type {Promise<StoreChanges>[]} */
  const out = [];
  await new Promise((resolve, reject) => {
    const first = tx.objectStore(/** @type {string} */ (names[0])).count();
    first.onerror = () => reject(first.error);
    first.onsuccess = () => {
      // the transaction runs now: take the changes, and read them before it can commit
      const stores = d.stores;
      d.stores = new Map();
      for (const [name, s] of stores) {
        if (!names.includes(name)) continue; // store deleted since (a schema change: snapshot next)
        const os = tx.objectStore(name);
        if (s.all) {
          const values = done(os.getAll());
          const keys = os.keyPath === null ? done(os.getAllKeys()) : Promise.resolve(null);
          out.push(Promise.all([values, keys]).then(([v, k]) => ({ name, full: { keys: k, values: v }, puts: [], dels: [] })));
        } else {
          const keys = [...s.keys.values()];
          const values = Promise.all(keys.map((k) => done(os.get(/** @type {IDBValidKey} */ (k)))));
          out.push(
            values.then((vs) => {
              /** @type {StoreChanges} */
              const c = { name, full: null, puts: [], dels: [] };
              vs.forEach((v, i) => (v === undefined ? c.dels.push(keys[i]) : c.puts.push([keys[i], v])));
              return c;
            }),
          );
        }
      }
      resolve(undefined);
    };
  });
  const changes = await Promise.all(out);
  await end;
  return changes;
}

/**
 * Applies journal records to the store's databases (just restored from the snapshot the journal continues).
 * @param {IDBFactory} factory @param {string} prefix @param {JournalRecord[]} records
 */
async function applyJournal(factory, prefix, records) {
  for (const r of records) {
    for (const d of r.dbs) {
      const db = await openExisting(factory, prefix + d.suffix);
      try {
        const names = d.stores.map((s) => s.name).filter((n) => db.objectStoreNames.contains(n));
        if (names.length !== d.stores.length) throw new Error(`the journal names an object store that ${prefix + d.suffix} does not have`);
        if (names.length === 0) continue;
        const tx = db.transaction(names, 'readwrite');
        const end = committed(tx);
        for (const s of d.stores) {
          const os = tx.objectStore(s.name);
          const inline = os.keyPath !== null;
          /** @param {unknown} k @param {unknown} v */
          const put = (k, v) => (inline ? os.put(v) : os.put(v, /** @type {IDBValidKey} */ (k)));
          if (s.full) {
            os.clear();
            const keys = s.full.keys;
            s.full.values.forEach((v, i) => put(keys ? keys[i] : undefined, v));
          }
          for (const k of s.dels) os.delete(/** @type {IDBValidKey} */ (k));
          for (const [k, v] of s.puts) put(k, v);
        }
        await end;
      } finally {
        db.close();
      }
    }
  }
}

/**
 * A file's bytes; null when it does not exist. Other errors: an Error saying it cannot be read.
 * @param {string} file @param {string} what e.g. 'the journal' ('' for the file itself)
 * @returns {Promise<Buffer | null>}
 */
async function readIfExists(file, what) {
  try {
    return await fsp.readFile(file);
  } catch (e) {
    if (/** @type {NodeJS.ErrnoException} */ (e).code === 'ENOENT') return null;
    throw new Error(`cannot read${what ? ` ${what}` : ''}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** @param {string} id hex @returns {Buffer} */
function journalHeader(id) {
  return Buffer.concat([JOURNAL_MAGIC, Buffer.from(id, 'hex')]);
}

/** @param {JournalRecord} record @returns {Buffer} */
function encodeFrame(record) {
  const payload = v8.serialize(record);
  const head = Buffer.alloc(FRAME_HEADER);
  head.writeUInt32LE(payload.length, 0);
  crypto.createHash('sha256').update(payload).digest().copy(head, 4);
  return Buffer.concat([head, payload]);
}

/**
 * Reads a journal: its id and records. A torn last frame (a crash during an append, which was therefore
 * never acknowledged) is dropped; damage before the last frame is an error. null when there is none.
 * @param {string} file
 * @returns {Promise<{ id: string, records: JournalRecord[], torn: boolean } | null>}
 */
async function readJournal(file) {
  const buf = await readIfExists(file, 'the journal');
  if (!buf) return null;
  const headLen = JOURNAL_MAGIC.length + JOURNAL_ID_BYTES;
  if (buf.length < headLen || !buf.subarray(0, JOURNAL_MAGIC.length).equals(JOURNAL_MAGIC)) throw new Error('the journal is not a meshpilot crypto journal');
  const id = buf.subarray(JOURNAL_MAGIC.length, headLen).toString('hex');
  /** @type {JournalRecord[]} */
  const records = [];
  let at = headLen;
  while (at < buf.length) {
    if (buf.length - at < FRAME_HEADER) return { id, records, torn: true };
    const len = buf.readUInt32LE(at);
    const endOfFrame = at + FRAME_HEADER + len;
    if (len > MAX_FRAME || endOfFrame > buf.length) return { id, records, torn: true };
    const payload = buf.subarray(at + FRAME_HEADER, endOfFrame);
    if (!crypto.createHash('sha256').update(payload).digest().equals(buf.subarray(at + 4, at + FRAME_HEADER))) {
      if (endOfFrame === buf.length) return { id, records, torn: true };
      throw new Error(`journal frame at byte ${at} is corrupted (checksum mismatch)`);
    }
    /** @type {any} -- checked just below */
    let r;
    try {
      r = v8.deserialize(payload);
    } catch (e) {
      throw new Error(`journal frame at byte ${at} cannot be deserialized: ${e instanceof Error ? e.message : String(e)}`);
    }
    const ok = r && Array.isArray(r.dbs) && r.dbs.every((/** @type {any} */ d) => typeof d?.suffix === 'string' && Array.isArray(d.stores) && d.stores.every((/** @type {any} */ st) => typeof st?.name === 'string' && Array.isArray(st.puts) && Array.isArray(st.dels)));
    if (!ok) throw new Error(`journal frame at byte ${at} has unexpected content`);
    records.push(r);
    at = endOfFrame;
  }
  return { id, records, torn: false };
}

/** @param {Snapshot} snapshot @returns {Buffer} */
function encodeSnapshot(snapshot) {
  const payload = v8.serialize(snapshot);
  return Buffer.concat([MAGIC, crypto.createHash('sha256').update(payload).digest(), payload]);
}

/**
 * @param {Buffer} buf
 * @returns {Snapshot} throws an Error whose message says what is wrong
 */
function decodeSnapshot(buf) {
  if (buf.length < MAGIC.length + 32 || !buf.subarray(0, MAGIC.length).equals(MAGIC)) throw new Error('not a meshpilot crypto store file');
  const digest = buf.subarray(MAGIC.length, MAGIC.length + 32);
  const payload = buf.subarray(MAGIC.length + 32);
  if (!crypto.createHash('sha256').update(payload).digest().equals(digest)) throw new Error('checksum mismatch (truncated or corrupted)');
  /** @type {unknown} */
  let v;
  try {
    v = v8.deserialize(payload);
  } catch (e) {
    throw new Error(`cannot deserialize: ${e instanceof Error ? e.message : String(e)}`);
  }
  const s = /** @type {Snapshot} */ (v);
  const ok =
    s && typeof s === 'object' && s.format === FORMAT && s.version === 1 && Array.isArray(s.databases) &&
    s.databases.every(
      (d) => d && typeof d.suffix === 'string' && Number.isInteger(d.version) && d.version > 0 && Array.isArray(d.stores) &&
        d.stores.every((st) => st && typeof st.name === 'string' && Array.isArray(st.values) && Array.isArray(st.indexes) && (st.keys === null || (Array.isArray(st.keys) && st.keys.length === st.values.length))),
    );
  if (!ok || (s.journal !== undefined && !/^[0-9a-f]{32}$/.test(String(s.journal)))) throw new Error('unexpected content (unknown format or version)');
  return s;
}

/**
 * Reads and checks a snapshot file; null when it does not exist.
 * @param {string} file
 * @returns {Promise<Snapshot | null>}
 */
async function readSnapshot(file) {
  const buf = await readIfExists(file, '');
  if (!buf) return null;
  return decodeSnapshot(buf);
}

/**
 * Writes `data` to `file` atomically and durably: `<file>.tmp` (mode 0600), fsync, rename, fsync(dir).
 * @param {string} file
 * @param {Buffer} data
 */
async function writeFileAtomic(file, data) {
  const tmp = `${file}.tmp`;
  const fh = await fsp.open(tmp, 'w', 0o600);
  try {
    await fh.chmod(0o600); // a stale tmp file may have had another mode
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
  try {
    const dh = await fsp.open(path.dirname(file), 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  } catch {
    // directories cannot be fsync'ed on every platform; the rename is still atomic
  }
}

/**
 * Persistence for one store. `save()` resolves once the state as of the call is on disk: appended to the
 * journal, or (the first time, after a schema change, when the journal has outgrown the snapshot, or after
 * a failed write) as a new snapshot. Calls are coalesced: at most one save runs and one waits; callers
 * arriving while one waits share it. `close()` releases the journal file.
 * @param {{ factory: IDBFactory, prefix: string, file: string }} opts
 * @returns {{ save(): Promise<void>, close(): Promise<void> }}
 */
function createSaver({ factory, prefix, file }) {
  installWriteTracking();
  trackedPrefixes.add(prefix);
  const journalFile = `${file}.journal`;
  /** @type {Promise<void> | null} */
  let running = null;
  /** @type {Promise<void> | null} */
  let queued = null;
  /** @type {import('node:fs/promises').FileHandle | null} the journal that continues the snapshot on disk */
  let journal = null;
  let journalBytes = 0;
  let snapshotBytes = 0;
  /** @type {Map<string, number>} database suffix → version, as in the snapshot on disk */
  let versions = new Map();
  /** @type {Buffer | null} sha256 of the snapshot on disk (without tracking: unchanged snapshots are not rewritten) */
  let written = null;

  async function closeJournal() {
    const j = journal;
    journal = null;
    await j?.close().catch(() => {});
  }

  async function snapshot() {
    await closeJournal();
    const id = crypto.randomBytes(JOURNAL_ID_BYTES).toString('hex');
    const dump = await dumpDatabases(factory, prefix, true);
    if (trackingWorks) dump.journal = id;
    const bytes = encodeSnapshot(dump);
    if (!trackingWorks) {
      const digest = crypto.createHash('sha256').update(bytes).digest();
      if (written && written.equals(digest)) return;
      await writeFileAtomic(file, bytes);
      written = digest;
      return;
    }
    await writeFileAtomic(file, bytes);
    // From here a journal left from before is stale (another id): it is ignored, then replaced.
    await writeFileAtomic(journalFile, journalHeader(id));
    journal = await fsp.open(journalFile, 'a');
    journalBytes = JOURNAL_MAGIC.length + JOURNAL_ID_BYTES;
    snapshotBytes = bytes.length;
    versions = new Map(dump.databases.map((d) => [d.suffix, d.version]));
  }

  /** @returns {Promise<boolean>} false: a snapshot is needed instead */
  async function append() {
    const names = await databaseNames(factory, prefix);
    if (names.length !== versions.size) return false; // a database appeared or went away
    /** @type {JournalRecord} */
    const record = { dbs: [] };
    for (const name of names) {
      const suffix = name.slice(prefix.length);
      const db = await openExisting(factory, name);
      try {
        const d = dirtyOf(db);
        if (!d || d.schema || versions.get(suffix) !== db.version) return false;
        if (d.stores.size === 0 && d.active === 0) continue; // nothing written, nothing being written
        const stores = await readChanges(db, d);
        if (d.schema) return false;
        if (stores.length > 0) record.dbs.push({ suffix, stores });
      } finally {
        db.close();
      }
    }
    if (record.dbs.length === 0) return true;
    const frame = encodeFrame(record);
    const j = /** @type {import('node:fs/promises').FileHandle} */ (journal);
    await j.write(frame); // the file is open for appending
    await j.datasync();
    journalBytes += frame.length;
    return true;
  }

  async function saveOnce() {
    if (!trackingWorks || !journal || journalBytes > Math.max(JOURNAL_COMPACT_MIN, snapshotBytes)) return snapshot();
    try {
      if (!(await append())) await snapshot();
    } catch (e) {
      // the changes read for a failed append are no longer marked, and the journal may end in a partial
      // frame: the next save writes a whole snapshot and a new journal
      await closeJournal();
      throw e;
    }
  }
  /** @returns {Promise<void>} */
  function start() {
    const p = saveOnce().finally(() => {
      if (running === p) running = null;
    });
    running = p;
    return p;
  }
  return {
    save() {
      if (queued) return queued;
      if (!running) return start();
      const q = running
        .catch(() => {})
        .then(() => {
          queued = null;
          return start();
        });
      queued = q;
      return q;
    },
    async close() {
      await Promise.allSettled([running, queued]);
      await closeJournal();
      trackedPrefixes.delete(prefix);
    },
  };
}

module.exports = { ensureIndexedDB, dumpDatabases, restoreDatabases, deleteDatabases, encodeSnapshot, decodeSnapshot, readSnapshot, readJournal, applyJournal, writeFileAtomic, createSaver };
