/**
 * Defect 2.3 of issue 14: a controller chain rewritten with every later hash recomputed verifies by
 * itself; only the heads anchored in Matrix give it away. Unit tests of the comparison, and of reading
 * a bot's anchors from the homeserver.
 */
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeCredentials } from '../bots/credentials.js';
import { compareWithAnchors } from '../capabilities/audit-anchor.js';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import type { AuditInput } from '../capabilities/audit.js';
import { openDatabase } from '../capabilities/db.js';
import { ensureHome } from '../capabilities/home.js';
import { writeConfig } from '../capabilities/config.js';
import { AUDIT_HEAD_EVENT, readDeviceAnchor, type AnchorRead } from '../launcher/audit-anchors.js';
import { HealthMonitor } from '../launcher/health/monitor.js';
import { openRuntime } from '../launcher/runtime.js';
import { forgeAuditEntry } from './helpers/forge-audit.js';
import { startTestHomeserver, type TestHomeserver } from './helpers/test-homeserver.js';
import { tempDir } from './helpers/tmp.js';

function input(i: number, device = 'box'): AuditInput {
  return {
    device, actor: '@op:example.org', request_id: `r${i}`, capability: 'fs.list', args: { path: `/srv/${i}` },
    decision: 'allowed', outcome: 'ok', exit_code: 0, output_sha256: null, duration_ms: i, error_code: null, reason: null, context: null,
  };
}

/** A chain of n entries in a fresh meshpilot.db; the db is closed before forging (as with a stopped launcher). */
function chain(n: number): { file: string; open(): { log: SqliteAuditLog; close(): void } } {
  const file = path.join(tempDir('mp-anchor-'), 'meshpilot.db');
  const open = (): { log: SqliteAuditLog; close(): void } => {
    const db = openDatabase(file);
    return { log: new SqliteAuditLog(db), close: () => db.close() };
  };
  const c = open();
  for (let i = 1; i <= n; i++) c.log.append(input(i));
  c.close();
  return { file, open };
}

describe('compareWithAnchors', () => {
  it('a rewritten entry with every later hash recomputed: the chain verifies, the anchor names the anchored seq', () => {
    const c = chain(6);
    let db = c.open();
    const anchor = db.log.head('box')!;
    expect(anchor.seq).toBe(6);
    expect(compareWithAnchors(db.log, 'box', [anchor])).toEqual({ ok: true, anchor });
    db.close();

    forgeAuditEntry(c.file, 'box', 3, (e) => { e.args = { path: '/srv/innocent' }; });
    db = c.open();
    // The forgery is self-consistent: verification alone says ok.
    expect(db.log.verify('box').ok).toBe(true);
    expect(db.log.get('box', 3)?.args).toEqual({ path: '/srv/innocent' });
    const r = compareWithAnchors(db.log, 'box', [anchor]);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.badSeq).toBe(6);
      expect(r.anchor).toEqual(anchor);
      expect(r.reason).toContain('entry 6');
    }
    db.close();
  });

  it('with several anchors, the earliest that disagrees is named', () => {
    const c = chain(8);
    let db = c.open();
    const at = (s: number) => ({ seq: s, hash: db.log.get('box', s)!.hash });
    const anchors = [at(7), at(2), at(5)];
    db.close();
    forgeAuditEntry(c.file, 'box', 4, (e) => { e.actor = '@someone-else:example.org'; });
    db = c.open();
    const r = compareWithAnchors(db.log, 'box', anchors);
    expect(r.ok).toBe(false);
    if (!r.ok) expect([r.badSeq, r.anchor.seq]).toEqual([5, 5]);
    // Anchors before the rewrite still match.
    expect(compareWithAnchors(db.log, 'box', [anchors[1]!])).toEqual({ ok: true, anchor: anchors[1] });
    db.close();
  });

  it('a chain that ends before the anchored seq: the first entry it lacks', () => {
    const c = chain(5);
    const db = c.open();
    const r = compareWithAnchors(db.log, 'box', [{ seq: 9, hash: 'a'.repeat(64) }]);
    expect(r).toMatchObject({ ok: false, badSeq: 6, anchor: { seq: 9 } });
    // A device with no chain at all and an anchor: entry 1 is the first missing.
    expect(compareWithAnchors(db.log, 'ghost', [{ seq: 2, hash: 'b'.repeat(64) }])).toMatchObject({ ok: false, badSeq: 1 });
    // No anchors: nothing to contradict.
    expect(compareWithAnchors(db.log, 'box', [])).toEqual({ ok: true, anchor: null });
    db.close();
  });

  it('an anchored hash the chain never had (another chain replaced it) is caught at that seq', () => {
    const c = chain(3);
    const db = c.open();
    expect(compareWithAnchors(db.log, 'box', [{ seq: 3, hash: 'c'.repeat(64) }])).toMatchObject({ ok: false, badSeq: 3 });
    db.close();
  });
});

describe('the health monitor checks controller chains against their anchors', () => {
  it('online while the chain holds the anchor; corrupted with the seq once it was rewritten and re-hashed; the anchor is cached', async () => {
    const root = tempDir('mp-anchor-health-');
    let rt = openRuntime({ root });
    expect(rt.devices.get('local')).toBeDefined();
    for (let i = 1; i <= 5; i++) rt.audit.append(input(i, 'local'));
    const anchor = rt.audit.head('local')!;
    const reads: string[] = [];
    let answer: AnchorRead = { status: 'read', anchor: { ...anchor, roomId: '!dm:example.org' }, rooms: 1 };
    const settings = { schedule: '* * * * *', stale_after_s: 600, unreachable_after: 2, remind_after_s: 21600 };
    const monitor = (): HealthMonitor => new HealthMonitor({
      db: rt.db, audit: rt.audit, devices: rt.devices, settings, home: root, anchorEvery: 60,
      controllerAnchors: async (d) => { reads.push(d); return d === 'local' ? answer : { status: 'no_account', message: 'none' }; },
    });
    let m = monitor();
    let r = await m.runCycle();
    let local = r.devices.find((d) => d.device === 'local');
    expect(local).toMatchObject({ state: 'online', controllerChain: { ok: true, seq: 5 } });
    await m.stop();
    await rt.close();

    forgeAuditEntry(path.join(root, 'meshpilot.db'), 'local', 2, (e) => { e.reason = 'nothing to see'; });
    rt = openRuntime({ root });
    expect(rt.audit.verify('local').ok).toBe(true);
    m = monitor();
    reads.length = 0;
    r = await m.runCycle();
    local = r.devices.find((d) => d.device === 'local');
    expect(local?.state).toBe('corrupted');
    expect(local?.detail).toContain('controller audit chain: first bad seq 5');
    expect(local?.controllerChain).toMatchObject({ ok: false, badSeq: 5 });
    expect(r.queued).toEqual([expect.stringMatching(/^\[ALERT\] device_id=local status=corrupted/)]);
    // The next cycle uses the cached anchor (not due for a re-read), and a homeserver that cannot be read keeps it.
    answer = { status: 'unreadable', message: 'homeserver down' };
    r = await m.runCycle();
    expect(r.devices.find((d) => d.device === 'local')?.state).toBe('corrupted');
    expect(reads.filter((d) => d === 'local')).toEqual(['local']);
    await m.stop();
    await rt.close();
  });

  it('an entry after the anchor edited without re-hashing is corrupted too (verified from the anchor)', async () => {
    const root = tempDir('mp-anchor-health-');
    const rt = openRuntime({ root });
    for (let i = 1; i <= 3; i++) rt.audit.append(input(i, 'local'));
    const anchor = rt.audit.head('local')!;
    for (let i = 4; i <= 6; i++) rt.audit.append(input(i, 'local'));
    rt.db.prepare("UPDATE audit SET body = replace(body, '/srv/5', '/srv/X') WHERE device = 'local' AND seq = 5").run();
    const m = new HealthMonitor({
      db: rt.db, audit: rt.audit, devices: rt.devices, home: root,
      settings: { schedule: '* * * * *', stale_after_s: 600, unreachable_after: 2, remind_after_s: 21600 },
      controllerAnchors: async () => ({ status: 'read', anchor: { ...anchor, roomId: '!dm:example.org' }, rooms: 1 }),
    });
    const r = await m.runCycle();
    expect(r.devices.find((d) => d.device === 'local')?.controllerChain).toMatchObject({ ok: false, badSeq: 5 });
    await m.stop();
    await rt.close();
  });
});

describe('readDeviceAnchor (from the bot account\'s rooms)', () => {
  let hs: TestHomeserver;
  beforeAll(async () => { hs = await startTestHomeserver(); });
  afterAll(async () => { await hs?.stop(); });

  async function call(token: string, method: string, p: string, body?: unknown): Promise<Record<string, unknown>> {
    const res = await fetch(`${hs.url}/_matrix/client/v3${p}`, { method, headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, ...(body ? { body: JSON.stringify(body) } : {}) });
    expect(res.status).toBe(200);
    return (await res.json()) as Record<string, unknown>;
  }

  it('newest by seq over every joined room; malformed and other devices\' anchors are ignored', async () => {
    const home = tempDir('mp-anchor-home-');
    const { home: dirs } = ensureHome(home);
    writeConfig(dirs.config, { matrix: { homeserver_url: hs.url, server_name: hs.serverName }, operators: ['@op:example.org'] });
    const bot = await hs.registerUser(`anchor-reader-${randomBytes(4).toString('hex')}`, 'pw');
    writeCredentials(dirs.keys, 'box', { userId: bot.userId, accessToken: bot.accessToken, deviceId: bot.deviceId });
    expect(await readDeviceAnchor(home, 'box')).toEqual({ status: 'read', anchor: null, rooms: 0 });

    const rooms: string[] = [];
    for (let i = 0; i < 4; i++) rooms.push(String((await call(bot.accessToken, 'POST', '/createRoom', { preset: 'private_chat' }))['room_id']));
    const put = (room: string, key: string, content: unknown) => call(bot.accessToken, 'PUT', `/rooms/${encodeURIComponent(room)}/state/${AUDIT_HEAD_EVENT}/${encodeURIComponent(key)}`, content);
    await put(rooms[0]!, 'box', { device: 'box', seq: 3, hash: '3'.repeat(64), ts: '2026-12-02T10:00:00Z' });
    await put(rooms[1]!, 'box', { device: 'box', seq: 7, hash: '7'.repeat(64), actions: [7] });
    await put(rooms[2]!, 'box', { device: 'box', seq: 99, hash: 'not a hash' });
    await put(rooms[2]!, 'other', { device: 'other', seq: 50, hash: '5'.repeat(64) });
    await put(rooms[3]!, 'box', { device: 'other', seq: 60, hash: '6'.repeat(64) });
    const r = await readDeviceAnchor(home, 'box');
    expect(r).toEqual({ status: 'read', rooms: 4, anchor: { seq: 7, hash: '7'.repeat(64), roomId: rooms[1] } });
  });

  it('says why it could not read: no account, homeserver down, token refused', async () => {
    const home = tempDir('mp-anchor-home-');
    const { home: dirs } = ensureHome(home);
    expect(await readDeviceAnchor(home, 'box')).toMatchObject({ status: 'no_account' });
    writeCredentials(dirs.keys, 'box', { userId: '@b:x', accessToken: 'nope', homeserverUrl: 'http://127.0.0.1:9' });
    const down = await readDeviceAnchor(home, 'box');
    expect(down).toMatchObject({ status: 'unreadable' });
    if (down.status === 'unreadable') expect(down.message).toContain('cannot reach the homeserver');
    writeCredentials(dirs.keys, 'box', { userId: '@b:x', accessToken: 'nope', homeserverUrl: hs.url });
    const refused = await readDeviceAnchor(home, 'box');
    expect(refused).toMatchObject({ status: 'unreadable' });
    if (refused.status === 'unreadable') expect(refused.message).toContain('refused');
  });
});
