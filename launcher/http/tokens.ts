/**
 * API tokens (`meshpilot token create|ls|revoke`, the dashboard's tokens page, `/v1` authentication).
 *
 * A token is `mp_` + 43 base64url characters (256 random bits), shown once. Stored: its SHA-256, the
 * 8 characters after `mp_` (the prefix, shown by `token ls` and used to find the row), the scopes
 * (device and capability globs, picomatch), the expiry (required, at most a year), the rate (requests
 * per window), and created / last used / revoked times. Verification finds the rows by prefix and
 * compares hashes with timingSafeEqual (and compares against a dummy when none matches, so a wrong
 * prefix costs the same).
 *
 * Audit: creating and revoking a token are entries in the `_api` chain (a name no device can have:
 * device names start with a-z/0-9), actor the person who did it. Using a token is the exec call's own
 * entry in the device's chain (actor `api:<name>`); a call refused by the token's scopes is a denied
 * entry in `_api`.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import picomatch from 'picomatch';
import type { AuditSink } from '../../capabilities/audit-sqlite.js';
import type { Statement } from 'better-sqlite3';
import { registerMigration, type Db } from '../../capabilities/db.js';
import { MeshpilotError } from '../../capabilities/errors.js';
import { GlobListSchema, MAX_EXPIRY_S, TokenNameSchema } from './token-args.js';

export { ExpirySchema, GlobListSchema, MAX_EXPIRY_S, RateSchema, TokenNameSchema } from './token-args.js';

const TOKENS_SQL = `
  CREATE TABLE IF NOT EXISTS api_tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL,
    devices TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    rate_count INTEGER NOT NULL,
    rate_window_s INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER,
    revoked_by TEXT
  );
  CREATE UNIQUE INDEX IF NOT EXISTS api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;
  CREATE INDEX IF NOT EXISTS api_tokens_prefix ON api_tokens (prefix);
`;
registerMigration('http.api_tokens.v1', TOKENS_SQL);

/** The audit chain of API events that belong to no device. */
export const API_AUDIT_DEVICE = '_api';
export interface TokenRecord {
  name: string;
  prefix: string;
  devices: string[];
  capabilities: string[];
  rate: { count: number; windowS: number };
  createdBy: string;
  createdAt: number;
  expiresAt: number;
  lastUsedAt: number | null;
  revokedAt: number | null;
}

/** A verified token, ready to check scopes against. */
export interface ApiPrincipal extends TokenRecord {
  id: number;
  /** Actor written to the audit: `api:<name>`. */
  actor: string;
  allowsDevice(device: string): boolean;
  allowsCapability(capability: string): boolean;
}

interface Row {
  id: number; name: string; prefix: string; hash: string; devices: string; capabilities: string;
  rate_count: number; rate_window_s: number; created_by: string; created_at: number; expires_at: number;
  last_used_at: number | null; revoked_at: number | null;
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();
const TOKEN_RE = /^mp_([A-Za-z0-9_-]{8})[A-Za-z0-9_-]{35}$/;
const DUMMY = sha256('meshpilot-dummy-token');

function toRecord(r: Row): TokenRecord {
  return {
    name: r.name, prefix: r.prefix, devices: JSON.parse(r.devices) as string[], capabilities: JSON.parse(r.capabilities) as string[],
    rate: { count: r.rate_count, windowS: r.rate_window_s }, createdBy: r.created_by, createdAt: r.created_at, expiresAt: r.expires_at,
    lastUsedAt: r.last_used_at, revokedAt: r.revoked_at,
  };
}

export type VerifyFailure = 'malformed' | 'unknown' | 'revoked' | 'expired';

export class TokenStore {
  /** last_used_at is written at most this often per token (not once per request). */
  private readonly touched = new Map<number, number>();
  private readonly matchers = new Map<number, { d: (s: string) => boolean; c: (s: string) => boolean }>();

  private readonly byPrefix: Statement<[string], Row>;
  private readonly touch: Statement<[number, number]>;

  constructor(private readonly db: Db, private readonly audit: AuditSink, private readonly now: () => number = Date.now) {
    // The runtime may have opened the database before this module registered its migration.
    db.exec(TOKENS_SQL);
    // Prepared once: verify runs on every API request.
    this.byPrefix = db.prepare('SELECT * FROM api_tokens WHERE prefix = ?');
    this.touch = db.prepare('UPDATE api_tokens SET last_used_at = ? WHERE id = ?');
  }

  create(input: { name: string; devices: string[]; capabilities: string[]; expiresInS: number; rate: { count: number; windowS: number }; by: string }): { token: string; record: TokenRecord } {
    const name = TokenNameSchema.parse(input.name);
    const devices = GlobListSchema.parse(input.devices);
    const capabilities = GlobListSchema.parse(input.capabilities);
    if (!(input.expiresInS >= 60 && input.expiresInS <= MAX_EXPIRY_S)) throw new MeshpilotError('usage', 'a token must expire within 1 year');
    const token = `mp_${randomBytes(32).toString('base64url')}`;
    const prefix = token.slice(3, 11);
    const now = this.now();
    const expiresAt = now + input.expiresInS * 1000;
    this.db.transaction(() => {
      if (this.db.prepare('SELECT 1 FROM api_tokens WHERE name = ? AND revoked_at IS NULL').get(name)) {
        throw new MeshpilotError('usage', `a token named ${name} exists; revoke it first or choose another name`);
      }
      this.db.prepare(`INSERT INTO api_tokens (name, prefix, hash, devices, capabilities, rate_count, rate_window_s, created_by, created_at, expires_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(name, prefix, sha256(token).toString('hex'), JSON.stringify(devices), JSON.stringify(capabilities),
        input.rate.count, input.rate.windowS, input.by.slice(0, 256), now, expiresAt);
      this.audit.append({
        device: API_AUDIT_DEVICE, actor: input.by.slice(0, 256), request_id: null, capability: 'token.create',
        args: { name, prefix, devices, capabilities, expires_at: new Date(expiresAt).toISOString(), rate: `${input.rate.count}/${input.rate.windowS}s` },
        decision: 'allowed', outcome: 'ok', exit_code: null, output_sha256: null, duration_ms: null, error_code: null, reason: null, context: null,
      });
    }).immediate();
    return { token, record: toRecord(this.db.prepare('SELECT * FROM api_tokens WHERE name = ? AND revoked_at IS NULL').get(name) as Row) };
  }

  list(opts: { includeRevoked?: boolean } = {}): TokenRecord[] {
    const rows = this.db.prepare(`SELECT * FROM api_tokens ${opts.includeRevoked ? '' : 'WHERE revoked_at IS NULL'} ORDER BY name, id`).all() as Row[];
    return rows.map(toRecord);
  }

  /** Revokes the live token of that name; false when there is none. */
  revoke(name: string, by: string): boolean {
    return this.db.transaction(() => {
      const row = this.db.prepare('SELECT * FROM api_tokens WHERE name = ? AND revoked_at IS NULL').get(name) as Row | undefined;
      if (!row) return false;
      this.db.prepare('UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE id = ?').run(this.now(), by.slice(0, 256), row.id);
      this.audit.append({
        device: API_AUDIT_DEVICE, actor: by.slice(0, 256), request_id: null, capability: 'token.revoke', args: { name, prefix: row.prefix },
        decision: 'allowed', outcome: 'ok', exit_code: null, output_sha256: null, duration_ms: null, error_code: null, reason: null, context: null,
      });
      this.matchers.delete(row.id);
      return true;
    }).immediate();
  }

  /** Checks a presented token: the hash in constant time, then revocation and expiry. */
  verify(presented: string): { ok: true; principal: ApiPrincipal } | { ok: false; reason: VerifyFailure } {
    const m = TOKEN_RE.exec(presented);
    const given = sha256(presented);
    if (!m) {
      timingSafeEqual(given, DUMMY);
      return { ok: false, reason: 'malformed' };
    }
    const rows = this.byPrefix.all(m[1]!);
    let found: Row | undefined;
    for (const r of rows) if (timingSafeEqual(given, Buffer.from(r.hash, 'hex'))) found = r;
    if (rows.length === 0) timingSafeEqual(given, DUMMY);
    if (!found) return { ok: false, reason: 'unknown' };
    if (found.revoked_at !== null) return { ok: false, reason: 'revoked' };
    const now = this.now();
    if (found.expires_at <= now) return { ok: false, reason: 'expired' };
    if ((this.touched.get(found.id) ?? 0) < now - 10_000) {
      this.touched.set(found.id, now);
      this.touch.run(now, found.id);
    }
    let match = this.matchers.get(found.id);
    const rec = toRecord(found);
    if (!match) {
      match = { d: picomatch(rec.devices), c: picomatch(rec.capabilities) };
      this.matchers.set(found.id, match);
    }
    const mm = match;
    return { ok: true, principal: { ...rec, id: found.id, actor: `api:${rec.name}`, allowsDevice: (d) => mm.d(d), allowsCapability: (c) => mm.c(c) } };
  }
}
