// @ts-check
/// <reference lib="dom" />
// File persistence for the IndexedDB crypto store of @matrix-org/matrix-sdk-crypto-wasm.
//
// In Node the wasm store lives in fake-indexeddb (in memory). This module copies the databases of one
// store (every database whose name starts with a prefix) to ONE file and back:
//   - dumpDatabases(): schema (version, object stores with keyPath/autoIncrement, indexes with
//     keyPath/unique/multiEntry) and all records, read in one readonly transaction per database;
//   - encodeSnapshot()/decodeSnapshot(): `MAGIC | sha256(payload) | v8.serialize(snapshot)`, so a torn or
//     corrupt file is detected instead of being read as an empty store;
//   - writeFileAtomic(): tmp file (0600) → fsync → rename → fsync(dir);
//   - createSaver(): snapshots coalesced to one in flight + one pending; unchanged bytes are not rewritten.
'use strict';

const crypto = require('node:crypto');
const fsp = require('node:fs/promises');
const path = require('node:path');
const v8 = require('node:v8');

const MAGIC = Buffer.from('meshpilot-crypto-store\n');
const FORMAT = 'meshpilot-crypto-store';

/** @typedef {{ name: string, keyPath: string | string[], unique: boolean, multiEntry: boolean }} IndexDump */
/**
 * One object store. `keys` is null for stores with in-line keys (the key is inside each value).
 * @typedef {{ name: string, keyPath: string | string[] | null, autoIncrement: boolean, indexes: IndexDump[], keys: unknown[] | null, values: unknown[] }} StoreDump
 */
/** `suffix`: the database name without the store prefix (the prefix depends on the store's path). */
/** @typedef {{ suffix: string, version: number, stores: StoreDump[] }} DatabaseDump */
/** @typedef {{ format: string, version: 1, databases: DatabaseDump[] }} Snapshot */

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
 * @returns {Promise<Snapshot>}
 */
async function dumpDatabases(factory, prefix) {
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
  if (!ok) throw new Error('unexpected content (unknown format or version)');
  return s;
}

/**
 * Reads and checks a snapshot file; null when it does not exist.
 * @param {string} file
 * @returns {Promise<Snapshot | null>}
 */
async function readSnapshot(file) {
  /** @type {Buffer} */
  let buf;
  try {
    buf = await fsp.readFile(file);
  } catch (e) {
    if (/** @type {NodeJS.ErrnoException} */ (e).code === 'ENOENT') return null;
    throw new Error(`cannot read: ${e instanceof Error ? e.message : String(e)}`);
  }
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
 * Snapshot writer for one store. `save()` resolves once a snapshot taken AFTER the call is on disk.
 * Calls are coalesced: at most one snapshot runs and one waits; callers arriving while one waits share it.
 * @param {{ factory: IDBFactory, prefix: string, file: string }} opts
 * @returns {{ save(): Promise<void> }}
 */
function createSaver({ factory, prefix, file }) {
  /** @type {Promise<void> | null} */
  let running = null;
  /** @type {Promise<void> | null} */
  let queued = null;
  /** @type {Buffer | null} sha256 of what is on disk */
  let written = null;

  async function snapshotOnce() {
    const bytes = encodeSnapshot(await dumpDatabases(factory, prefix));
    const digest = crypto.createHash('sha256').update(bytes).digest();
    if (written && written.equals(digest)) return; // nothing changed since the last write
    await writeFileAtomic(file, bytes);
    written = digest;
  }
  /** @returns {Promise<void>} */
  function start() {
    const p = snapshotOnce().finally(() => {
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
  };
}

module.exports = { ensureIndexedDB, dumpDatabases, restoreDatabases, deleteDatabases, encodeSnapshot, decodeSnapshot, readSnapshot, writeFileAtomic, createSaver };
