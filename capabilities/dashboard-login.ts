/**
 * Logging in to the web dashboard (launcher/http/dashboard/): one-time magic links and the sessions
 * they open, in meshpilot.db. Here, in capabilities/, because three processes make links: the CLI
 * (`meshpilot dashboard`), the launcher (printed at start) and a device bot (`!dashboard`, DMed to the
 * operator who asked); the launcher's server consumes them.
 *
 * A link carries 32 random bytes; only their SHA-256 is stored. It expires after 5 minutes and works
 * once (the consuming UPDATE is conditional, so two clicks race safely). A session id is stored hashed
 * too, with its operator (Matrix ID or `cli:<user>`) and its CSRF token; it expires after 12 hours.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { registerMigration, type Db } from './db.js';

const LOGIN_SQL = `
  CREATE TABLE IF NOT EXISTS dashboard_links (
    hash TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    used_ms INTEGER
  );
  CREATE TABLE IF NOT EXISTS dashboard_sessions (
    hash TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
  );
`;
registerMigration('dashboard.login.v1', LOGIN_SQL);

export const LINK_TTL_MS = 5 * 60_000;
export const SESSION_TTL_MS = 12 * 3600_000;
/** The actor of a session: a Matrix ID or `cli:<user>`, as the audit log writes actors. */
export const ACTOR = /^(@[^\s:]{1,255}:[^\s]{1,255}|cli:[^\s]{1,64})$/;

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');
const token = (): string => randomBytes(32).toString('base64url');

export interface DashboardSession {
  actor: string;
  csrf: string;
  expiresMs: number;
}

export type Consumed = { ok: true; sessionId: string; session: DashboardSession } | { ok: false; reason: 'unknown' | 'used' | 'expired' };

/** The URL a link opens: `<base>/login?t=<token>`. */
export function loginUrl(baseUrl: string, linkToken: string): string {
  return `${baseUrl.replace(/\/+$/, '')}/login?t=${linkToken}`;
}

/** `http.listen` (host:port) as the base URL a browser on this machine opens. */
export function baseUrlOf(listen: string): string {
  const [host, port] = [listen.slice(0, listen.lastIndexOf(':')), listen.slice(listen.lastIndexOf(':') + 1)];
  const h = host === '0.0.0.0' || host === '::' || host === '[::]' ? '127.0.0.1' : host;
  return `http://${h}:${port}`;
}

export class DashboardLogins {
  constructor(private readonly db: Db, private readonly now: () => number = Date.now) {
    // The database may have been opened before this module registered its migration.
    db.exec(LOGIN_SQL);
  }

  /** A new one-time link token for this operator (shown once; only its hash is kept). */
  createLink(actor: string): string {
    if (!ACTOR.test(actor)) throw new Error(`not an operator id: ${actor.slice(0, 80)}`);
    const t = token();
    const now = this.now();
    this.db.prepare('DELETE FROM dashboard_links WHERE expires_ms < ?').run(now - 24 * 3600_000);
    this.db.prepare('INSERT INTO dashboard_links (hash, actor, created_ms, expires_ms) VALUES (?, ?, ?, ?)').run(sha256(t), actor, now, now + LINK_TTL_MS);
    return t;
  }

  /** Spends a link: a session for its operator, or why not. */
  consumeLink(linkToken: string): Consumed {
    if (linkToken.length < 16 || linkToken.length > 128) return { ok: false, reason: 'unknown' };
    const hash = sha256(linkToken);
    const now = this.now();
    return this.db.transaction((): Consumed => {
      const row = this.db.prepare('SELECT actor, expires_ms, used_ms FROM dashboard_links WHERE hash = ?').get(hash) as { actor: string; expires_ms: number; used_ms: number | null } | undefined;
      if (!row) return { ok: false, reason: 'unknown' };
      if (row.used_ms !== null) return { ok: false, reason: 'used' };
      if (row.expires_ms <= now) return { ok: false, reason: 'expired' };
      const spent = this.db.prepare('UPDATE dashboard_links SET used_ms = ? WHERE hash = ? AND used_ms IS NULL').run(now, hash);
      if (spent.changes !== 1) return { ok: false, reason: 'used' };
      const sessionId = token();
      const session: DashboardSession = { actor: row.actor, csrf: token(), expiresMs: now + SESSION_TTL_MS };
      this.db.prepare('DELETE FROM dashboard_sessions WHERE expires_ms < ?').run(now);
      this.db.prepare('INSERT INTO dashboard_sessions (hash, actor, csrf, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?)').run(sha256(sessionId), session.actor, session.csrf, now, session.expiresMs);
      return { ok: true, sessionId, session };
    }).immediate();
  }

  session(sessionId: string | undefined): DashboardSession | undefined {
    if (!sessionId || sessionId.length > 128) return undefined;
    const row = this.db.prepare('SELECT actor, csrf, expires_ms FROM dashboard_sessions WHERE hash = ?').get(sha256(sessionId)) as { actor: string; csrf: string; expires_ms: number } | undefined;
    if (!row || row.expires_ms <= this.now()) return undefined;
    return { actor: row.actor, csrf: row.csrf, expiresMs: row.expires_ms };
  }

  endSession(sessionId: string): void {
    this.db.prepare('DELETE FROM dashboard_sessions WHERE hash = ?').run(sha256(sessionId));
  }
}

/** Compares a submitted CSRF token with the session's in constant time. */
export function csrfMatches(session: DashboardSession, submitted: string | undefined): boolean {
  if (!submitted) return false;
  const a = Buffer.from(session.csrf);
  const b = Buffer.from(submitted);
  return a.length === b.length && timingSafeEqual(a, b);
}
