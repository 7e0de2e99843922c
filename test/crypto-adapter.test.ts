/**
 * bots/crypto-optional: the @matrix-org/matrix-sdk-crypto-nodejs stand-in. Without a native module it is
 * the WebAssembly adapter, whose store persists to <storePath>/crypto-store.v1. Real files, real child
 * processes (fake-indexeddb and wasm state live in one process, so "after a restart" means a new process).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from './helpers/tmp.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const req = createRequire(path.join(ROOT, 'package.json'));
const SNAPSHOT = 'crypto-store.v1';

// ------------------------------------------------------------------------------------------- types
// The shim is CommonJS without typings: the subset used here.

interface Req { id: string; type: number; body: string }
interface Status { hasMaster: boolean; hasSelfSigning: boolean; hasUserSigning: boolean }
interface Machine {
  identityKeys: { ed25519: { toBase64(): string }; curve25519: { toBase64(): string } };
  outgoingRequests(): Promise<Req[]>;
  markRequestAsSent(id: string, type: number, response: string): Promise<boolean>;
  receiveSyncChanges(toDevice: string, lists: unknown, otkCounts: Record<string, number>, unusedFallback: string[] | undefined): Promise<string>;
  updateTrackedUsers(users: unknown[]): Promise<void>;
  getMissingSessions(users: unknown[]): Promise<Req | null>;
  shareRoomKey(room: unknown, users: unknown[], settings: unknown): Promise<string>;
  encryptRoomEvent(room: unknown, type: string, content: string): Promise<string>;
  decryptRoomEvent(event: string, room: unknown): Promise<{ event: string; sender?: { toString(): string }; senderDevice?: { toString(): string } }>;
  sign(message: string): Promise<{ get(user: unknown): Record<string, { isValid: boolean; signature: { toBase64(): string } }> | undefined }>;
  bootstrapCrossSigning(reset: boolean): Promise<{ uploadSigningKeys: Record<string, Key>; uploadSignatures: Record<string, Record<string, Key>>; uploadKeys?: Req }>;
  crossSigningStatus(): Promise<Status>;
  exportCrossSigningKeys(): Promise<{ masterKey?: string; selfSigningKey?: string; userSigningKey?: string } | undefined>;
  importCrossSigningKeys(m?: string | null, s?: string | null, u?: string | null): Promise<Status>;
  isOwnDeviceCrossSigned(): Promise<boolean>;
  takeExtraRequests(): Array<Req & { method: string; path: string }>;
  flush(): Promise<void>;
  close(): Promise<void>;
}
interface Key { keys: Record<string, string>; signatures?: Record<string, Record<string, string>>; [k: string]: unknown }
interface CryptoModule {
  __meshpilotBackend: string;
  __meshpilotCryptoAvailable: boolean;
  UserId: new (id: string) => { toString(): string };
  DeviceId: new (id: string) => { toString(): string };
  RoomId: new (id: string) => { toString(): string };
  DeviceLists: new (changed?: unknown[], left?: unknown[]) => unknown;
  EncryptionSettings: new () => { rotationPeriod: bigint; rotationPeriodMessages: bigint; algorithm: number | undefined; historyVisibility: number };
  RequestType: Record<string, number>;
  OlmMachine: { initialize(user: unknown, device: unknown, storePath?: string, passphrase?: string, storeType?: number): Promise<Machine> };
  Attachment: { encrypt(data: Uint8Array): { encryptedData: Uint8Array; mediaEncryptionInfo: string }; decrypt(a: unknown): Uint8Array };
  EncryptedAttachment: new (data: Uint8Array, info: string) => unknown;
}

const c = req('@matrix-org/matrix-sdk-crypto-nodejs') as CryptoModule;
const open: Machine[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((m) => m.close()));
});

async function machine(user: string, device: string, dir: string, passphrase = ''): Promise<Machine> {
  const m = await c.OlmMachine.initialize(new c.UserId(user), new c.DeviceId(device), dir, passphrase, 0);
  open.push(m);
  return m;
}

async function closeMachine(m: Machine): Promise<void> {
  open.splice(open.indexOf(m), 1);
  await m.close();
}

/** Runs a CommonJS script in a fresh node process (the shim resolved from the project root, like the bots do). */
function runNode(script: string, env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const prelude = `const c = require('node:module').createRequire(${JSON.stringify(path.join(ROOT, 'package.json'))})('@matrix-org/matrix-sdk-crypto-nodejs');\n`;
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', prelude + script], { cwd: ROOT, env: { ...process.env, ...env }, timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr }),
    );
  });
}

/** Lines of JSON a child printed. */
function jsonLines(stdout: string): unknown[] {
  return stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as unknown);
}

const uploadOf = async (m: Machine): Promise<Req> => {
  const up = (await m.outgoingRequests()).find((r) => r.type === c.RequestType['KeysUpload']);
  if (!up) throw new Error('no KeysUpload request');
  return up;
};

// ------------------------------------------------------------------------------------------- tests

describe('crypto shim module', () => {
  it('is the wasm adapter when no native module is installed', () => {
    expect(c.__meshpilotBackend).toBe('wasm');
    expect(c.__meshpilotCryptoAvailable).toBe(true);
    // the nodejs binding's numbering, which matrix-bot-sdk inlines
    expect(c.RequestType).toEqual({ KeysUpload: 0, KeysQuery: 1, KeysClaim: 2, ToDevice: 3, SignatureUpload: 4, RoomMessage: 5, KeysBackup: 6 });
    const s = new c.EncryptionSettings();
    expect([s.algorithm, s.rotationPeriod, s.rotationPeriodMessages]).toEqual([1, 604_800_000n, 100n]);
  });

  it('is the throwing stub with MESHPILOT_MATRIX_E2EE=off', async () => {
    const r = await runNode(
      `console.log(JSON.stringify({ available: c.__meshpilotCryptoAvailable, backend: c.__meshpilotBackend, reason: c.__meshpilotUnavailableReason }));
       try { new c.UserId('@a:b'); console.log(JSON.stringify({ threw: false })); } catch (e) { console.log(JSON.stringify({ threw: e.message })); }`,
      { MESHPILOT_MATRIX_E2EE: 'off' },
    );
    expect(r.stderr).toBe('');
    expect(jsonLines(r.stdout)).toEqual([
      { available: false, backend: 'none', reason: 'disabled by MESHPILOT_MATRIX_E2EE=off' },
      { threw: 'Matrix end-to-end encryption is not available: disabled by MESHPILOT_MATRIX_E2EE=off' },
    ]);
  });

  it('prefers a native module that loads (MESHPILOT_MATRIX_CRYPTO_MODULE), re-exported as is', async () => {
    const fake = path.join(tempDir(), 'native.cjs');
    writeFileSync(fake, "exports.OlmMachine = { initialize: () => 'native machine' };\n");
    const r = await runNode(`console.log(JSON.stringify({ backend: c.__meshpilotBackend, available: c.__meshpilotCryptoAvailable, init: c.OlmMachine.initialize(), same: c === require(${JSON.stringify(fake)}) }));`, {
      MESHPILOT_MATRIX_CRYPTO_MODULE: fake,
    });
    expect(r.stderr).toBe('');
    expect(jsonLines(r.stdout)).toEqual([{ backend: 'native', available: true, init: 'native machine', same: true }]);
  });

  it('keeps SignatureUpload / RoomMessage / KeysBackup requests away from matrix-bot-sdk', () => {
    const wasm = req('@matrix-org/matrix-sdk-crypto-wasm') as Record<string, new (...a: string[]) => unknown>;
    const adapter = req(path.join(ROOT, 'bots/crypto-optional/wasm-adapter.cjs')) as {
      __internal: { splitRequests(r: unknown[]): { sdk: Req[]; extra: Array<Req & { method: string; path: string }> } };
    };
    const make = (cls: string, ...a: string[]): unknown => new (wasm[cls] as new (...x: string[]) => unknown)(...a);
    const { sdk, extra } = adapter.__internal.splitRequests([
      make('KeysQueryRequest', 'q1', '{"device_keys":{}}'),
      make('ToDeviceRequest', 't1', 'm.room.encrypted', 't1', '{"messages":{"@b:x":{"B":{"k":1}}}}'),
      make('SignatureUploadRequest', 's1', '{"@a:x":{}}'),
      make('RoomMessageRequest', 'r1', '!r:x', 'txn1', 'm.key.verification.ready', '{"x":1}'),
      make('KeysBackupRequest', 'b1', '{"rooms":{}}', '3'),
    ]);
    expect(sdk.map((r) => r.type)).toEqual([1, 3]);
    // matrix-bot-sdk reads txn_id / event_type / messages out of a to-device body
    expect(JSON.parse(sdk[1]!.body)).toEqual({ txn_id: 't1', event_type: 'm.room.encrypted', messages: { '@b:x': { B: { k: 1 } } } });
    expect(extra.map((r) => [r.id, r.type, r.method, r.path])).toEqual([
      ['s1', 4, 'POST', '/_matrix/client/v3/keys/signatures/upload'],
      ['r1', 5, 'PUT', '/_matrix/client/v3/rooms/!r%3Ax/send/m.key.verification.ready/txn1'],
      ['b1', 6, 'PUT', '/_matrix/client/v3/room_keys/keys?version=3'],
    ]);
  });
});

describe('persistence', () => {
  it('a machine comes back in a fresh process with the same keys and remembers its upload; file 0600, dir 0700', async () => {
    const dir = path.join(tempDir(), 'store');
    mkdirSync(dir, { mode: 0o755 }); // matrix-bot-sdk's storage provider creates it before the machine
    chmodSync(dir, 0o755);
    const m = await machine('@bot:example.org', 'DEVICEA', dir);
    const keys = { ed25519: m.identityKeys.ed25519.toBase64(), curve25519: m.identityKeys.curve25519.toBase64() };
    expect(keys.ed25519).toMatch(/^[A-Za-z0-9+/]{43}$/);
    const up = await uploadOf(m);
    const body = JSON.parse(up.body) as { device_keys: { user_id: string; device_id: string; keys: Record<string, string> }; one_time_keys: Record<string, unknown> };
    expect(body.device_keys.user_id).toBe('@bot:example.org');
    expect(body.device_keys.device_id).toBe('DEVICEA');
    expect(body.device_keys.keys['ed25519:DEVICEA']).toBe(keys.ed25519);
    expect(Object.keys(body.one_time_keys).length).toBe(50);
    expect(await m.markRequestAsSent(up.id, up.type, '{"one_time_key_counts":{"signed_curve25519":50}}')).toBe(true);
    expect((await m.outgoingRequests()).map((r) => r.type)).not.toContain(0);
    await closeMachine(m);

    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(dir, SNAPSHOT)).mode & 0o777).toBe(0o600);

    const r = await runNode(`(async () => {
      const m = await c.OlmMachine.initialize(new c.UserId('@bot:example.org'), new c.DeviceId('DEVICEA'), ${JSON.stringify(dir)}, '', 0);
      const types = (await m.outgoingRequests()).map((x) => x.type);
      console.log(JSON.stringify({ ed25519: m.identityKeys.ed25519.toBase64(), curve25519: m.identityKeys.curve25519.toBase64(), types }));
      await m.close();
    })().catch((e) => { console.error(e.message); process.exit(1); });`);
    expect(r.stderr).toBe('');
    const [out] = jsonLines(r.stdout) as Array<{ ed25519: string; curve25519: string; types: number[] }>;
    expect({ ed25519: out?.ed25519, curve25519: out?.curve25519 }).toEqual(keys);
    expect(out?.types).not.toContain(0); // the keys upload is not asked for again
    expect(out?.types).toContain(1); // the own-user keys query was never answered: still pending
  });

  it('state is on disk when a call resolves (the process is killed without close)', async () => {
    const dir = path.join(tempDir(), 'store');
    const first = await runNode(`(async () => {
      const m = await c.OlmMachine.initialize(new c.UserId('@bot:example.org'), new c.DeviceId('KILLED'), ${JSON.stringify(dir)}, '', 0);
      const up = (await m.outgoingRequests()).find((x) => x.type === 0);
      await m.markRequestAsSent(up.id, 0, '{"one_time_key_counts":{"signed_curve25519":50}}');
      console.log(JSON.stringify({ ed25519: m.identityKeys.ed25519.toBase64() }));
      process.kill(process.pid, 'SIGKILL');
    })();`);
    const [before] = jsonLines(first.stdout) as Array<{ ed25519: string }>;
    expect(before?.ed25519).toMatch(/^[A-Za-z0-9+/]{43}$/);
    const m = await machine('@bot:example.org', 'KILLED', dir);
    expect(m.identityKeys.ed25519.toBase64()).toBe(before?.ed25519);
    expect((await m.outgoingRequests()).map((r) => r.type)).not.toContain(0);
  });

  it('a corrupt or truncated snapshot makes initialize fail with a clear message', async () => {
    const dir = path.join(tempDir(), 'store');
    const m = await machine('@bot:example.org', 'DEV', dir);
    await closeMachine(m);
    const file = path.join(dir, SNAPSHOT);
    const good = readFileSync(file);

    const flipped = Buffer.from(good);
    flipped[flipped.length - 10] = (flipped[flipped.length - 10] ?? 0) ^ 0xff;
    writeFileSync(file, flipped);
    await expect(machine('@bot:example.org', 'DEV', dir)).rejects.toThrow(/crypto-store\.v1 is unreadable: checksum mismatch.*would give device DEV new keys/);

    writeFileSync(file, good.subarray(0, good.length >> 1));
    await expect(machine('@bot:example.org', 'DEV', dir)).rejects.toThrow(/is unreadable: checksum mismatch/);

    writeFileSync(file, 'garbage');
    await expect(machine('@bot:example.org', 'DEV', dir)).rejects.toThrow(/is unreadable: not a meshpilot crypto store file/);

    // the file is left alone, and the real one still opens
    expect(readFileSync(file, 'utf8')).toBe('garbage');
    writeFileSync(file, good);
    const again = await machine('@bot:example.org', 'DEV', dir);
    expect(again.identityKeys.ed25519.toBase64()).toBe(m.identityKeys.ed25519.toBase64());
  });

  it('idb-persist: restore → dump keeps schema and records; saves coalesce to one running + one queued', async () => {
    interface Snapshot { format: string; version: 1; journal?: string; databases: Array<{ suffix: string; version: number; stores: unknown[] }> }
    const persist = req(path.join(ROOT, 'bots/crypto-optional/idb-persist.cjs')) as {
      restoreDatabases(f: unknown, prefix: string, s: Snapshot): Promise<void>;
      dumpDatabases(f: unknown, prefix: string): Promise<Snapshot>;
      decodeSnapshot(b: Buffer): Snapshot;
      createSaver(o: { factory: unknown; prefix: string; file: string }): { save(): Promise<void>; close(): Promise<void> };
    };
    const { IDBFactory } = req('fake-indexeddb') as { IDBFactory: new () => unknown };
    const snap: Snapshot = {
      format: 'meshpilot-crypto-store',
      version: 1,
      databases: [
        {
          suffix: 'main',
          version: 7,
          stores: [
            { name: 'inline', keyPath: 'id', autoIncrement: false, indexes: [{ name: 'by_tag', keyPath: 'tags', unique: false, multiEntry: true }], keys: null, values: [{ id: 'a', tags: ['x', 'y'], bin: new Uint8Array([1, 2, 3]) }, { id: 'b', tags: [] }] },
            { name: 'outofline', keyPath: null, autoIncrement: true, indexes: [], keys: [1, 5], values: ['one', new Map([['k', 1]])] },
            { name: 'compound', keyPath: ['a', 'b'], autoIncrement: false, indexes: [{ name: 'uniq', keyPath: 'b', unique: true, multiEntry: false }], keys: null, values: [{ a: 1, b: 'z' }] },
          ],
        },
        { suffix: 'meta', version: 1, stores: [] },
      ],
    };
    const factory = new IDBFactory();
    await persist.restoreDatabases(factory, 'p::', snap);
    await persist.restoreDatabases(factory, 'other::', snap); // another store in the same factory is not dumped
    const dumped = await persist.dumpDatabases(factory, 'p::');
    // IndexedDB lists databases and object stores in its own order
    const byName = (x: { name: string }, y: { name: string }): number => x.name.localeCompare(y.name);
    const order = (s: Snapshot): Snapshot => ({
      ...s,
      databases: [...s.databases].sort((x, y) => x.suffix.localeCompare(y.suffix)).map((d) => ({ ...d, stores: [...(d.stores as Array<{ name: string }>)].sort(byName) })),
    });
    expect(order(dumped)).toEqual(order(snap));

    const file = path.join(tempDir(), SNAPSHOT);
    const saver = persist.createSaver({ factory, prefix: 'p::', file });
    const saves = Array.from({ length: 10 }, () => saver.save());
    expect(new Set(saves.slice(1)).size).toBe(1); // the first runs, all later callers share one queued snapshot
    expect(saves[1]).not.toBe(saves[0]);
    await Promise.all(saves);
    const saved = persist.decodeSnapshot(readFileSync(file));
    expect(saved.journal).toMatch(/^[0-9a-f]{32}$/); // the journal that continues it
    expect(order({ ...saved, journal: undefined })).toEqual(order({ ...snap, journal: undefined }));
    expect(statSync(file).mode & 0o777).toBe(0o600);
    await saver.close();
  });

  it('idb-persist journal: each save appends only what changed; replay gives the same store; torn tail dropped, damage refused, stale journal ignored', async () => {
    interface Snapshot { format: string; version: 1; journal?: string; databases: Array<{ suffix: string; version: number; stores: unknown[] }> }
    const persist = req(path.join(ROOT, 'bots/crypto-optional/idb-persist.cjs')) as {
      restoreDatabases(f: unknown, prefix: string, s: Snapshot): Promise<void>;
      dumpDatabases(f: unknown, prefix: string): Promise<Snapshot>;
      readSnapshot(file: string): Promise<Snapshot | null>;
      readJournal(file: string): Promise<{ id: string; records: unknown[]; torn: boolean } | null>;
      applyJournal(f: unknown, prefix: string, records: unknown[]): Promise<void>;
      createSaver(o: { factory: unknown; prefix: string; file: string }): { save(): Promise<void>; close(): Promise<void> };
    };
    // the bits of IndexedDB used here (the test project has no DOM typings)
    interface Store { put(v: unknown, k?: unknown): unknown; delete(k: unknown): unknown; clear(): unknown }
    interface Tx { objectStore(n: string): Store; oncomplete: (() => void) | null; onerror: (() => void) | null; onabort: (() => void) | null; error: unknown; abort(): void }
    interface Db { transaction(names: string[], mode: 'readwrite'): Tx; close(): void }
    interface Factory { open(name: string): { result: Db; error: unknown; onsuccess: (() => void) | null; onerror: (() => void) | null } }
    const { IDBFactory } = req('fake-indexeddb') as { IDBFactory: new () => Factory };
    const base: Snapshot = {
      format: 'meshpilot-crypto-store',
      version: 1,
      databases: [{
        suffix: 'main',
        version: 3,
        stores: [
          { name: 'inline', keyPath: 'id', autoIncrement: false, indexes: [{ name: 'by_tag', keyPath: 'tag', unique: false, multiEntry: false }], keys: null, values: [{ id: 'a', tag: 1 }, { id: 'b', tag: 2 }, { id: 'c', tag: 3 }] },
          { name: 'outofline', keyPath: null, autoIncrement: false, indexes: [], keys: [['x', 1], new Uint8Array([7, 7]).buffer], values: ['one', { two: 2 }] },
          { name: 'other', keyPath: null, autoIncrement: false, indexes: [], keys: ['k1', 'k2'], values: [1, 2] },
        ],
      }],
    };
    const factory = new IDBFactory();
    await persist.restoreDatabases(factory, 'j::', base);
    const file = path.join(tempDir(), SNAPSHOT);
    const journal = `${file}.journal`;
    const saver = persist.createSaver({ factory, prefix: 'j::', file });
    await saver.save(); // the first save is a snapshot with an empty journal
    const snapBytes = readFileSync(file);
    const emptyJournal = statSync(journal).size;
    expect((await persist.readJournal(journal))?.records).toEqual([]);

    const db = await new Promise<Db>((resolve, reject) => {
      const r = factory.open('j::main');
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
    const write = (fn: (tx: Tx) => void): Promise<void> => new Promise((resolve, reject) => {
      const tx = db.transaction(['inline', 'outofline', 'other'], 'readwrite');
      fn(tx);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
    // nothing written: nothing appended
    await saver.save();
    expect(statSync(journal).size).toBe(emptyJournal);

    await write((tx) => {
      tx.objectStore('inline').put({ id: 'a', tag: 10 });
      tx.objectStore('inline').delete('b');
      tx.objectStore('outofline').put('three', ['x', 2]);
    });
    await saver.save();
    const afterOne = statSync(journal).size;
    expect(afterOne).toBeGreaterThan(emptyJournal);
    expect(afterOne - emptyJournal).toBeLessThan(600); // the changed keys, not the store
    expect(readFileSync(file).equals(snapBytes)).toBe(true); // the snapshot is untouched

    // an aborted transaction leaves nothing behind; a clear() saves the whole (now empty + new) store
    await write((tx) => tx.objectStore('other').put(99, 'k1')).then(() => undefined);
    await new Promise<void>((resolve) => {
      const tx = db.transaction(['inline'], 'readwrite');
      tx.objectStore('inline').put({ id: 'zzz', tag: 0 });
      tx.onabort = () => resolve();
      tx.abort();
    });
    await write((tx) => {
      tx.objectStore('other').clear();
      tx.objectStore('other').put('fresh', 'k3');
    });
    await saver.save();
    const expected = await persist.dumpDatabases(factory, 'j::');
    db.close();
    await saver.close();

    const replay = async (): Promise<Snapshot> => {
      const f = new IDBFactory();
      const snap = await persist.readSnapshot(file);
      const j = await persist.readJournal(journal);
      expect(j?.id).toBe(snap?.journal);
      await persist.restoreDatabases(f, 'r::', snap!);
      await persist.applyJournal(f, 'r::', j!.records);
      return persist.dumpDatabases(f, 'r::');
    };
    expect(await replay()).toEqual(expected);
    const inline = expected.databases[0]!.stores.find((x) => (x as { name: string }).name === 'inline') as { values: unknown[] };
    expect(inline.values).toEqual([{ id: 'a', tag: 10 }, { id: 'c', tag: 3 }]);

    // a crash mid-append: the torn last frame is dropped (it was never acknowledged)
    const whole = readFileSync(journal);
    writeFileSync(journal, whole.subarray(0, whole.length - 5));
    const torn = await persist.readJournal(journal);
    expect(torn?.torn).toBe(true);
    expect(torn?.records.length).toBe(1);
    // damage before the last frame is refused
    const damaged = Buffer.from(whole);
    damaged[afterOne - 3] = (damaged[afterOne - 3] ?? 0) ^ 0xff;
    writeFileSync(journal, damaged);
    await expect(persist.readJournal(journal)).rejects.toThrow(/journal frame at byte \d+ is corrupted/);
    writeFileSync(journal, whole);

    // a newer snapshot of the same file names another journal: a crash between writing it and replacing
    // the journal leaves this one behind, and it must not be applied (the adapter compares the ids)
    const f2 = new IDBFactory();
    await persist.restoreDatabases(f2, 's::', expected);
    const saver2 = persist.createSaver({ factory: f2, prefix: 's::', file });
    await saver2.save();
    await saver2.close();
    writeFileSync(journal, whole);
    expect((await persist.readJournal(journal))?.id).not.toBe((await persist.readSnapshot(file))?.journal);
  });

  it('a sync with nothing for crypto is answered without the machine, but a change of key counts still reaches it', async () => {
    const dir = path.join(tempDir(), 'store');
    const m = await machine('@bot:example.org', 'IDLE', dir);
    const up = await uploadOf(m);
    await m.markRequestAsSent(up.id, up.type, '{"one_time_key_counts":{"signed_curve25519":50}}');
    const counts = { signed_curve25519: 50 };
    expect(await m.receiveSyncChanges('[]', new c.DeviceLists(), counts, ['signed_curve25519'])).toBe('[]');
    const fallback = (await m.outgoingRequests()).find((r) => r.type === c.RequestType['KeysUpload']); // the first sync brings a fallback key
    if (fallback) await m.markRequestAsSent(fallback.id, fallback.type, '{"one_time_key_counts":{"signed_curve25519":50}}');
    const journal = path.join(dir, `${SNAPSHOT}.journal`);
    const size = statSync(journal).size;
    for (let i = 0; i < 5; i++) expect(await m.receiveSyncChanges('[]', new c.DeviceLists(), counts, ['signed_curve25519'])).toBe('[]');
    expect(statSync(journal).size).toBe(size); // nothing handed over, nothing written
    expect((await m.outgoingRequests()).map((r) => r.type)).not.toContain(c.RequestType['KeysUpload']);
    // the server used up one-time keys: the machine hears of it and asks to upload new ones
    await m.receiveSyncChanges('[]', new c.DeviceLists(), { signed_curve25519: 3 }, ['signed_curve25519']);
    const again = await uploadOf(m);
    expect(Object.keys((JSON.parse(again.body) as { one_time_keys: Record<string, unknown> }).one_time_keys).length).toBeGreaterThan(0);
  });

  it('one machine per store per process; another device id does not open a store', async () => {
    const dir = path.join(tempDir(), 'store');
    await machine('@bot:example.org', 'DEV', dir);
    await expect(machine('@bot:example.org', 'DEV', dir)).rejects.toThrow(/already open in this process/);
    const m = open.pop()!;
    await m.close();
    await expect(machine('@bot:example.org', 'OTHER', dir)).rejects.toThrow(/could not be opened/);
  });

  it('a passphrase-encrypted store reopens only with its passphrase', async () => {
    const dir = path.join(tempDir(), 'store');
    const m = await machine('@bot:example.org', 'DEV', dir, 'correct horse');
    const ed = m.identityKeys.ed25519.toBase64();
    await closeMachine(m);
    expect(readFileSync(path.join(dir, SNAPSHOT)).includes(Buffer.from(ed))).toBe(false);
    await expect(machine('@bot:example.org', 'DEV', dir, 'wrong')).rejects.toThrow(/could not be opened/);
    expect((await machine('@bot:example.org', 'DEV', dir, 'correct horse')).identityKeys.ed25519.toBase64()).toBe(ed);
  });
});

describe('two machines, no server', () => {
  const A = '@alice:example.org';
  const B = '@bob:example.org';
  const ROOM = '!room:example.org';

  /** Plays the homeserver's /keys/upload, /keys/query and /keys/claim for the given machines. */
  async function introduce(alice: Machine, bob: Machine): Promise<void> {
    const uploads: Record<string, { device_keys: unknown; one_time_keys: Record<string, unknown> }> = {};
    for (const [user, m] of [[A, alice], [B, bob]] as const) {
      const up = await uploadOf(m);
      uploads[user] = JSON.parse(up.body) as (typeof uploads)[string];
      await m.markRequestAsSent(up.id, up.type, '{"one_time_key_counts":{"signed_curve25519":50}}');
    }
    const devices: Record<string, Record<string, unknown>> = { [A]: { ALICE: uploads[A]!.device_keys }, [B]: { BOB: uploads[B]!.device_keys } };
    for (const [m, other] of [[alice, B], [bob, A]] as const) {
      await m.updateTrackedUsers([new c.UserId(other)]);
      for (const r of await m.outgoingRequests()) {
        if (r.type !== c.RequestType['KeysQuery']) continue;
        const asked = Object.keys((JSON.parse(r.body) as { device_keys: Record<string, unknown> }).device_keys);
        await m.markRequestAsSent(r.id, r.type, JSON.stringify({ device_keys: Object.fromEntries(asked.map((u) => [u, devices[u] ?? {}])), failures: {} }));
      }
    }
    const claim = await alice.getMissingSessions([new c.UserId(B)]);
    expect(claim?.type).toBe(c.RequestType['KeysClaim']);
    expect(JSON.parse(claim!.body)).toMatchObject({ one_time_keys: { [B]: { BOB: 'signed_curve25519' } } });
    const [otkId, otk] = Object.entries(uploads[B]!.one_time_keys)[0]!;
    await alice.markRequestAsSent(claim!.id, claim!.type, JSON.stringify({ one_time_keys: { [B]: { BOB: { [otkId]: otk } } }, failures: {} }));
    expect(await alice.getMissingSessions([new c.UserId(B)])).toBeNull();
  }

  /** alice shares the room key; the to-device messages reach bob through his "sync". */
  async function shareRoomKey(alice: Machine, bob: Machine): Promise<string> {
    const shares = JSON.parse(await alice.shareRoomKey(new c.RoomId(ROOM), [new c.UserId(B)], new c.EncryptionSettings())) as Array<{ txn_id: string; event_type: string; messages: Record<string, Record<string, unknown>> }>;
    expect(shares.length).toBe(1);
    const events = shares.flatMap((s) => Object.values(s.messages).flatMap((devs) => Object.values(devs).map((content) => ({ sender: A, type: s.event_type, content }))));
    for (const s of shares) await alice.markRequestAsSent(s.txn_id, c.RequestType['ToDevice']!, '{}');
    return bob.receiveSyncChanges(JSON.stringify(events), new c.DeviceLists(), { signed_curve25519: 49 }, []);
  }

  async function send(alice: Machine, body: string, n: number): Promise<string> {
    const content = JSON.parse(await alice.encryptRoomEvent(new c.RoomId(ROOM), 'm.room.message', JSON.stringify({ msgtype: 'm.text', body }))) as Record<string, unknown>;
    expect(content['algorithm']).toBe('m.megolm.v1.aes-sha2');
    expect(JSON.stringify(content)).not.toContain(body);
    return JSON.stringify({ type: 'm.room.encrypted', sender: A, event_id: `$ev${n}`, room_id: ROOM, origin_server_ts: Date.now(), content });
  }

  it('alice encrypts, bob decrypts; sessions survive restarts of both', async () => {
    const tmp = tempDir();
    const dirA = path.join(tmp, 'alice');
    const dirB = path.join(tmp, 'bob');
    let alice = await machine(A, 'ALICE', dirA);
    let bob = await machine(B, 'BOB', dirB);
    await introduce(alice, bob);
    const received = JSON.parse(await shareRoomKey(alice, bob)) as Array<{ type: string; sender: string; content: { room_id: string } }>;
    expect(received.map((e) => [e.type, e.sender, e.content.room_id])).toEqual([['m.room_key', A, ROOM]]);

    const ev1 = await send(alice, 'hello bob', 1);
    const d1 = await bob.decryptRoomEvent(ev1, new c.RoomId(ROOM));
    expect(JSON.parse(d1.event)).toMatchObject({ type: 'm.room.message', content: { msgtype: 'm.text', body: 'hello bob' } });
    expect([String(d1.sender), String(d1.senderDevice)]).toEqual([A, 'ALICE']);

    // restart both from their files: alice keeps her outbound session (no new share needed), bob his inbound one
    await closeMachine(alice);
    await closeMachine(bob);
    alice = await machine(A, 'ALICE', dirA);
    bob = await machine(B, 'BOB', dirB);
    const ev2 = await send(alice, 'still there?', 2);
    expect(JSON.parse(ev2).content.session_id).toBe(JSON.parse(ev1).content.session_id);
    expect(JSON.parse((await bob.decryptRoomEvent(ev2, new c.RoomId(ROOM))).event).content.body).toBe('still there?');
    expect(JSON.parse((await bob.decryptRoomEvent(ev1, new c.RoomId(ROOM))).event).content.body).toBe('hello bob');

    // an event bob has no key for is an Error with the decryption code
    const foreign = JSON.parse(ev2) as { content: Record<string, unknown> };
    foreign.content['session_id'] = 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
    await expect(bob.decryptRoomEvent(JSON.stringify(foreign), new c.RoomId(ROOM))).rejects.toMatchObject({ decryptionErrorCode: 'MissingRoomKey' });
  });

  it('sign() has the shape CryptoClient.sign reads; attachments round-trip', async () => {
    const alice = await machine(A, 'ALICE', path.join(tempDir(), 'a'));
    const sigs = (await alice.sign('{"a":1}')).get(new c.UserId(A));
    expect(Object.keys(sigs ?? {})).toEqual(['ed25519:ALICE']);
    expect(sigs?.['ed25519:ALICE']?.isValid).toBe(true);
    expect(sigs?.['ed25519:ALICE']?.signature.toBase64()).toMatch(/^[A-Za-z0-9+/]{86}$/);

    const enc = c.Attachment.encrypt(Buffer.from('a file'));
    expect(Buffer.from(enc.encryptedData).toString()).not.toBe('a file');
    const info = JSON.parse(enc.mediaEncryptionInfo) as { key: { k: string }; hashes: { sha256: string } };
    expect(info.key.k).toMatch(/^[A-Za-z0-9_-]{43}$/); // a 256-bit key, unpadded base64url (JWK)
    expect(Buffer.from(c.Attachment.decrypt(new c.EncryptedAttachment(enc.encryptedData, enc.mediaEncryptionInfo))).toString()).toBe('a file');
    const tampered = Uint8Array.from(enc.encryptedData);
    tampered[0] = (tampered[0] ?? 0) ^ 1;
    expect(() => c.Attachment.decrypt(new c.EncryptedAttachment(tampered, enc.mediaEncryptionInfo))).toThrow();
  });

  it('cross-signing: bootstrap, the server echoes the keys, own device counts as signed; keys persist', async () => {
    const dir = path.join(tempDir(), 'a');
    let alice = await machine(A, 'ALICE', dir);
    const up = await uploadOf(alice);
    const deviceKeys = (JSON.parse(up.body) as { device_keys: Key }).device_keys;
    await alice.markRequestAsSent(up.id, up.type, '{"one_time_key_counts":{"signed_curve25519":50}}');
    expect(await alice.crossSigningStatus()).toEqual({ hasMaster: false, hasSelfSigning: false, hasUserSigning: false });
    expect(await alice.exportCrossSigningKeys()).toBeUndefined();

    const boot = await alice.bootstrapCrossSigning(true);
    expect(Object.keys(boot.uploadSigningKeys).sort()).toEqual(['master_key', 'self_signing_key', 'user_signing_key']);
    expect(await alice.crossSigningStatus()).toEqual({ hasMaster: true, hasSelfSigning: true, hasUserSigning: true });
    expect(await alice.isOwnDeviceCrossSigned()).toBe(false); // the server has not confirmed anything yet

    // what a server answers to /keys/query after /keys/device_signing/upload and /keys/signatures/upload
    const signedDevice = boot.uploadSignatures[A]!['ALICE']!;
    const merged: Key = { ...deviceKeys, signatures: { [A]: { ...deviceKeys.signatures?.[A], ...signedDevice.signatures?.[A] } } };
    await alice.receiveSyncChanges('[]', new c.DeviceLists([new c.UserId(A)]), { signed_curve25519: 50 }, []);
    const query = (await alice.outgoingRequests()).find((r) => r.type === c.RequestType['KeysQuery']);
    expect(query).toBeDefined();
    const published = JSON.stringify({
      device_keys: { [A]: { ALICE: merged } },
      master_keys: { [A]: boot.uploadSigningKeys['master_key'] },
      self_signing_keys: { [A]: boot.uploadSigningKeys['self_signing_key'] },
      user_signing_keys: { [A]: boot.uploadSigningKeys['user_signing_key'] },
      failures: {},
    });
    await alice.markRequestAsSent(query!.id, query!.type, published);
    expect(await alice.isOwnDeviceCrossSigned()).toBe(true);
    expect(alice.takeExtraRequests()).toEqual([]);

    const exported = await alice.exportCrossSigningKeys();
    expect(Object.keys(exported ?? {}).sort()).toEqual(['masterKey', 'selfSigningKey', 'userSigningKey']);
    await closeMachine(alice);
    alice = await machine(A, 'ALICE', dir);
    expect(await alice.crossSigningStatus()).toEqual({ hasMaster: true, hasSelfSigning: true, hasUserSigning: true });
    expect(await alice.isOwnDeviceCrossSigned()).toBe(true);
    expect(await alice.exportCrossSigningKeys()).toEqual(exported);

    // a replacement device imports the same identity, once it has seen the public keys (its startup keys query)
    const other = await machine(A, 'ALICE2', path.join(tempDir(), 'a2'));
    expect(await other.importCrossSigningKeys(exported?.masterKey, exported?.selfSigningKey, exported?.userSigningKey)).toEqual({ hasMaster: false, hasSelfSigning: false, hasUserSigning: false });
    const ownQuery = (await other.outgoingRequests()).find((r) => r.type === c.RequestType['KeysQuery']);
    await other.markRequestAsSent(ownQuery!.id, ownQuery!.type, published);
    expect(await other.importCrossSigningKeys(exported?.masterKey, exported?.selfSigningKey, exported?.userSigningKey)).toEqual({ hasMaster: true, hasSelfSigning: true, hasUserSigning: true });
    expect(await other.exportCrossSigningKeys()).toEqual(exported);
  });
});

/** The WebAssembly global (tsconfig has no DOM lib, which is where its value is declared). */
interface WasmApi {
  Module: { new (bytes: Uint8Array): object; customSections(m: object, name: string): ArrayBuffer[]; exports(m: object): unknown[]; imports(m: object): unknown[] };
}
const Wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

describe('WebAssembly loading', () => {
  it("drops the module's name section and nothing else", () => {
    const adapter = req(path.join(ROOT, 'bots/crypto-optional/wasm-adapter.cjs')) as {
      __internal: { withoutCustomSection(b: Buffer, name: string): Buffer; wasmFile: string };
    };
    const bytes = readFileSync(adapter.__internal.wasmFile);
    const before = new Wasm.Module(bytes);
    expect(Wasm.Module.customSections(before, 'name')).toHaveLength(1);
    const stripped = adapter.__internal.withoutCustomSection(bytes, 'name');
    const nameBytes = Wasm.Module.customSections(before, 'name')[0]!.byteLength;
    expect(stripped.length).toBeLessThan(bytes.length - nameBytes);
    const after = new Wasm.Module(stripped);
    expect(Wasm.Module.customSections(after, 'name')).toHaveLength(0);
    expect(Wasm.Module.customSections(after, 'producers')).toHaveLength(1);
    expect(Wasm.Module.exports(after)).toEqual(Wasm.Module.exports(before));
    expect(Wasm.Module.imports(after)).toEqual(Wasm.Module.imports(before));
    // no such section: the same bytes back
    expect(adapter.__internal.withoutCustomSection(stripped, 'name')).toBe(stripped);
    expect(() => adapter.__internal.withoutCustomSection(Buffer.from('not wasm at all'), 'name')).toThrow(/not a WebAssembly module/);
    expect(() => adapter.__internal.withoutCustomSection(bytes.subarray(0, 1000), 'name')).toThrow(/truncated/);
  });
});
