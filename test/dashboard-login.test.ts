/**
 * Dashboard login records in a real SQLite file (capabilities/dashboard-login.ts): only hashes are
 * stored, a link works once and for 5 minutes, sessions expire, CSRF tokens compare exactly, and a
 * second process (the CLI or a device bot writes links, the launcher reads them) sees the same rows.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openDatabase, type Db } from '../capabilities/db.js';
import { baseUrlOf, csrfMatches, DashboardLogins, LINK_TTL_MS, loginUrl, SESSION_TTL_MS } from '../capabilities/dashboard-login.js';

let dir: string;
let db: Db;
let now = 1_800_000_000_000;
const clock = (): number => now;

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'mp-dash-login-'));
  db = openDatabase(path.join(dir, 'meshpilot.db'));
});
afterEach(() => {
  db.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('magic links and sessions', () => {
  it('stores only the hash of a link and of a session id', () => {
    const logins = new DashboardLogins(db, clock);
    const t = logins.createLink('@alice:example.org');
    const r = logins.consumeLink(t);
    if (!r.ok) throw new Error(r.reason);
    db.pragma('wal_checkpoint(TRUNCATE)');
    const file = readFileSync(path.join(dir, 'meshpilot.db')).toString('latin1');
    expect(file).not.toContain(t);
    expect(file).not.toContain(r.sessionId);
    expect(r.session.actor).toBe('@alice:example.org');
  });

  it('works once: a second use and a racing use are refused', () => {
    const logins = new DashboardLogins(db, clock);
    const other = new DashboardLogins(openDatabase(path.join(dir, 'meshpilot.db')), clock);
    const t = logins.createLink('cli:alice');
    const a = logins.consumeLink(t);
    const b = other.consumeLink(t);
    expect(a.ok).toBe(true);
    expect(b).toEqual({ ok: false, reason: 'used' });
    expect(logins.consumeLink(t)).toEqual({ ok: false, reason: 'used' });
  });

  it('expires after 5 minutes; unknown and malformed tokens are refused', () => {
    const logins = new DashboardLogins(db, clock);
    const t = logins.createLink('cli:alice');
    now += LINK_TTL_MS;
    expect(logins.consumeLink(t)).toEqual({ ok: false, reason: 'expired' });
    expect(logins.consumeLink('x'.repeat(43))).toEqual({ ok: false, reason: 'unknown' });
    expect(logins.consumeLink('')).toEqual({ ok: false, reason: 'unknown' });
    const fresh = logins.createLink('cli:alice');
    now += LINK_TTL_MS - 1;
    expect(logins.consumeLink(fresh).ok).toBe(true);
  });

  it('a session belongs to one operator, carries a CSRF token, ends or expires', () => {
    const logins = new DashboardLogins(db, clock);
    const r = logins.consumeLink(logins.createLink('@bob:example.org'));
    if (!r.ok) throw new Error(r.reason);
    const s = logins.session(r.sessionId)!;
    expect(s.actor).toBe('@bob:example.org');
    expect(csrfMatches(s, s.csrf)).toBe(true);
    expect(csrfMatches(s, undefined)).toBe(false);
    const wrong = s.csrf.slice(0, -1) + (s.csrf.endsWith('A') ? 'B' : 'A');
    expect(csrfMatches(s, wrong)).toBe(false);
    expect(csrfMatches(s, s.csrf.slice(1))).toBe(false);
    expect(logins.session('nope')).toBeUndefined();
    now += SESSION_TTL_MS;
    expect(logins.session(r.sessionId)).toBeUndefined();
    now -= SESSION_TTL_MS;
    logins.endSession(r.sessionId);
    expect(logins.session(r.sessionId)).toBeUndefined();
  });

  it('refuses actors that are neither a Matrix ID nor cli:<user>', () => {
    const logins = new DashboardLogins(db, clock);
    expect(() => logins.createLink('api:token')).toThrow(/not an operator/);
    expect(() => logins.createLink('alice')).toThrow(/not an operator/);
  });

  it('builds the URL a browser on this machine opens', () => {
    expect(baseUrlOf('127.0.0.1:7400')).toBe('http://127.0.0.1:7400');
    expect(baseUrlOf('0.0.0.0:7400')).toBe('http://127.0.0.1:7400');
    expect(baseUrlOf('[::1]:7400')).toBe('http://[::1]:7400');
    expect(loginUrl('http://127.0.0.1:7400/', 'abc')).toBe('http://127.0.0.1:7400/login?t=abc');
  });
});
