/**
 * The arguments of an API token (name, scopes, expiry, rate), shared by `meshpilot token create`, the
 * dashboard's tokens page and the TokenStore. No other imports: the CLI loads this at start.
 */
import { z } from 'zod';

export const MAX_EXPIRY_S = 366 * 86400;

export const TokenNameSchema = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,47}$/, 'must be 1-48 characters of a-z, 0-9, . _ -, starting with a letter or digit');
const Glob = z.string().min(1).max(128).regex(/^[A-Za-z0-9.*?_{}\[\],!@-]+$/, 'must be a glob of names (a-z, 0-9, . - _ and * ? [ ] { } !)');
export const GlobListSchema = z.array(Glob).min(1).max(32);

/** `30d`, `12h`, `90m`, `1y`, `52w` → seconds; at most a year. */
export const ExpirySchema = z.string().regex(/^\d{1,4}[mhdwy]$/, 'must be a duration like 30d, 12h, 8w or 1y')
  .transform((s) => Number(s.slice(0, -1)) * { m: 60, h: 3600, d: 86400, w: 7 * 86400, y: 365 * 86400 }[s.slice(-1) as 'm' | 'h' | 'd' | 'w' | 'y'])
  .refine((s) => s >= 60 && s <= MAX_EXPIRY_S, 'must be between 1 minute and 1 year (tokens always expire)');

/** `60/min`, `10/s`, `1000/h` → count per window. */
export const RateSchema = z.string().regex(/^\d{1,6}\/(s|sec|min|m|h|hour)$/, 'must be a rate like 60/min, 5/s or 1000/h')
  .transform((s) => {
    const [n, unit] = s.split('/') as [string, string];
    return { count: Number(n), windowS: unit.startsWith('s') ? 1 : unit.startsWith('h') ? 3600 : 60 };
  })
  .refine((r) => r.count >= 1 && r.count <= 100_000, 'must allow 1 to 100000 requests per window');
