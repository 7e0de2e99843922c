import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  buildEntry, canonicalBody, canonicalJson, entryHash, GENESIS_HASH, JsonlAuditLog, redactArgs, verifyEntries,
  type AuditInput,
} from '../capabilities/audit.js';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { tempDir } from './helpers/tmp.js';

function input(i: number, device = 'dev'): AuditInput {
  return {
    device, actor: '@op:example.org', request_id: `r${i}`, capability: 'fs.list', args: { path: `/var/log/${i}`, z: 1, a: [1, 'x'] },
    decision: 'allowed', outcome: 'ok', exit_code: 0, output_sha256: null, duration_ms: i, error_code: null, reason: null, context: null,
  };
}

function freshLog() {
  const dir = tempDir('mp-audit-');
  const db = openDatabase(path.join(dir, 'meshpilot.db'));
  return { db, log: new SqliteAuditLog(db), dir };
}

describe('canonical JSON and hashing', () => {
  it('sorts keys at every level, drops undefined, no whitespace', () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { y: 1, x: 2 }], c: null }, u: undefined })).toBe('{"a":{"c":null,"d":[3,{"x":2,"y":1}]},"b":1}');
  });

  it('the fast body writer equals canonicalJson of the entry without hash', () => {
    const e = buildEntry({ ...input(7), context: { transcript: 'check disk', engine: 'pocketsphinx' }, reason: 'a "quoted" reason\n' }, undefined);
    const { hash, ...rest } = e;
    expect(canonicalBody(rest)).toBe(canonicalJson(rest));
    expect(hash).toBe(entryHash(e));
  });

  it('chains from 64 zeros', () => {
    const first = buildEntry(input(1), undefined);
    expect(first.prev_hash).toBe(GENESIS_HASH);
    expect(first.seq).toBe(1);
    const second = buildEntry(input(2), first);
    expect(second.prev_hash).toBe(first.hash);
    expect(second.seq).toBe(2);
  });

  it('redacts secret-looking keys and bounds large strings', () => {
    const r = redactArgs({ token: 'abc', nested: { api_key: 'k', path: '/x' }, content: 'x'.repeat(5000) }) as Record<string, unknown>;
    expect(r['token']).toBe('[redacted]');
    expect((r['nested'] as Record<string, unknown>)['api_key']).toBe('[redacted]');
    expect((r['nested'] as Record<string, unknown>)['path']).toBe('/x');
    expect(r['content']).toMatch(/^\[sha256:[0-9a-f]{64} len=5000\]$/);
  });
});

describe('SQLite audit log', () => {
  it('appends per-device chains and verifies them', () => {
    const { log } = freshLog();
    for (let i = 0; i < 10; i++) log.append(input(i, 'a'));
    for (let i = 0; i < 3; i++) log.append(input(i, 'b'));
    const a = log.verify('a');
    expect(a).toMatchObject({ ok: true, count: 10, head: { seq: 10 } });
    expect(log.verify('b')).toMatchObject({ ok: true, count: 3 });
    expect(log.head('a')?.hash).toBe(a.head?.hash);
    const all = log.verifyAll();
    expect([...all.keys()]).toEqual(['a', 'b']);
    expect(log.tail(2, 'a').map((e) => e.seq)).toEqual([9, 10]);
    expect(log.tail(2, 'a')[0]?.args).toEqual(input(8).args);
  });

  it('verifies incrementally from a trusted seq + hash', () => {
    const { log } = freshLog();
    for (let i = 0; i < 5; i++) log.append(input(i));
    const trusted = log.head('dev')!;
    for (let i = 5; i < 8; i++) log.append(input(i));
    expect(log.verify('dev', trusted)).toMatchObject({ ok: true, count: 3, head: { seq: 8 } });
    expect(log.verify('dev', { seq: 5, hash: 'f'.repeat(64) })).toMatchObject({ ok: false, badSeq: 5 });
  });

  it('detects an edited row at its seq', () => {
    const { db, log } = freshLog();
    for (let i = 0; i < 6; i++) log.append(input(i));
    db.prepare("UPDATE audit SET body = replace(body, '/var/log/3', '/etc/shadow') WHERE seq = 4").run();
    expect(log.verify('dev')).toMatchObject({ ok: false, badSeq: 4, count: 3, reason: expect.stringContaining('edited') });
  });

  it('detects a deleted row', () => {
    const { db, log } = freshLog();
    for (let i = 0; i < 6; i++) log.append(input(i));
    db.prepare('DELETE FROM audit WHERE seq = 3').run();
    expect(log.verify('dev')).toMatchObject({ ok: false, badSeq: 3, reason: expect.stringContaining('missing') });
  });

  it('detects reordered rows', () => {
    const { db, log } = freshLog();
    for (let i = 0; i < 6; i++) log.append(input(i));
    const r3 = db.prepare('SELECT body, hash FROM audit WHERE seq = 3').get() as { body: string; hash: string };
    const r4 = db.prepare('SELECT body, hash FROM audit WHERE seq = 4').get() as { body: string; hash: string };
    db.prepare('UPDATE audit SET body = ?, hash = ?, seq = -3 WHERE seq = 3').run(r4.body, r4.hash);
    db.prepare('UPDATE audit SET body = ?, hash = ?, seq = 3 WHERE seq = 4').run(r3.body, r3.hash);
    db.prepare('UPDATE audit SET seq = 4 WHERE seq = -3').run();
    expect(log.verify('dev')).toMatchObject({ ok: false, badSeq: 3, reason: expect.stringContaining('reordered') });
  });

  it('detects a forged hash (entry edited and re-hashed) at the next entry', () => {
    const { db, log } = freshLog();
    for (let i = 0; i < 6; i++) log.append(input(i));
    const row = db.prepare('SELECT body FROM audit WHERE seq = 2').get() as { body: string };
    const forgedBody = row.body.replace('/var/log/1', '/root/.ssh/id_rsa');
    expect(forgedBody).not.toBe(row.body);
    // The forger recomputes entry 2's hash so that entry 2 alone looks fine…
    const newHash = entryHash(JSON.parse(forgedBody) as ReturnType<typeof buildEntry>);
    db.prepare('UPDATE audit SET body = ?, hash = ? WHERE seq = 2').run(forgedBody, newHash);
    // …but entry 3 still points at the original hash of entry 2.
    expect(log.verify('dev')).toMatchObject({ ok: false, badSeq: 3, count: 2, reason: expect.stringContaining('prev_hash') });
  });

  it('two connections (processes) appending never fork the chain', () => {
    const { dir, log } = freshLog();
    const other = new SqliteAuditLog(openDatabase(path.join(dir, 'meshpilot.db')));
    for (let i = 0; i < 20; i++) (i % 2 ? log : other).append(input(i));
    expect(log.verify('dev')).toMatchObject({ ok: true, count: 20 });
  });
});

describe('JSONL audit log (device agent)', () => {
  it('appends fsynced lines the shared verifier accepts, resumes its head after reopen', () => {
    const dir = tempDir('mp-jsonl-');
    const file = path.join(dir, 'audit.jsonl');
    const log = new JsonlAuditLog(file, 'dev');
    for (let i = 0; i < 4; i++) log.append(input(i));
    log.close();
    const reopened = new JsonlAuditLog(file, 'dev');
    expect(reopened.getHead()?.seq).toBe(4);
    reopened.append(input(4));
    expect(reopened.verify()).toMatchObject({ ok: true, count: 5 });
    expect(reopened.readAfter(3, 10).map((e) => e.seq)).toEqual([4, 5]);
    reopened.close();
    // Entries written by the agent verify with the same function the controller uses.
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as ReturnType<typeof buildEntry>);
    expect(verifyEntries(lines)).toMatchObject({ ok: true, count: 5 });
  });

  it('detects an edited line', () => {
    const dir = tempDir('mp-jsonl-');
    const file = path.join(dir, 'audit.jsonl');
    const log = new JsonlAuditLog(file, 'dev');
    for (let i = 0; i < 4; i++) log.append(input(i));
    log.close();
    writeFileSync(file, readFileSync(file, 'utf8').replace('/var/log/2', '/var/log/9'));
    const v = new JsonlAuditLog(file, 'dev').verify();
    expect(v).toMatchObject({ ok: false, badSeq: 3 });
  });
});

describe('audit table migration', () => {
  it('moves a v1 table (unique index layout) to the rowid layout with every chain intact', async () => {
    const dir = tempDir('mp-mig-');
    const file = path.join(dir, 'old.db');
    const { default: Database } = await import('better-sqlite3');
    const old = new Database(file);
    old.exec(`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE audit (id INTEGER PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (device, seq));
      INSERT INTO meta VALUES ('migration:audit-v1', 'x');`);
    old.pragma('user_version = 1');
    const ins = old.prepare('INSERT INTO audit (device, seq, body, hash) VALUES (?, ?, ?, ?)');
    for (const device of ['b', 'a']) {
      let prev: ReturnType<typeof buildEntry> | undefined;
      for (let i = 0; i < 4; i++) {
        const e = buildEntry(input(i, device), prev);
        const { hash, ...rest } = e;
        ins.run(device, e.seq, canonicalBody(rest), hash);
        prev = e;
      }
    }
    old.close();
    const log = new SqliteAuditLog(openDatabase(file));
    expect([...log.verifyAll()].map(([d, v]) => [d, v.ok, v.count])).toEqual([['a', true, 4], ['b', true, 4]]);
    expect(log.append(input(9, 'a')).seq).toBe(5);
    expect(log.verify('a')).toMatchObject({ ok: true, count: 5 });
  });
});
