/**
 * Request authentication between the controller and a device agent, shared by both sides.
 *
 * Each device has its own secret: 32 random bytes, stored base64 in a 0600 file
 * (controller: MESHPILOT_HOME/keys/<device>/agent.secret; device: the agent config's secret_file).
 * Every authenticated request carries:
 *   x-meshpilot-device     the device name the request is meant for
 *   x-meshpilot-timestamp  unix milliseconds (rejected when more than 60 s away from the agent's clock)
 *   x-meshpilot-nonce      16-64 url-safe characters, never accepted twice within the skew window
 *   x-meshpilot-signature  hex HMAC-SHA256(secret, canonical string)
 * canonical string = "MP1\n" + device + "\n" + METHOD + "\n" + path-with-query + "\n" + timestamp
 *                    + "\n" + nonce + "\n" + sha256_hex(body)
 * No dependencies beyond node:crypto and node:fs: the agent bundle imports this file.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { MeshpilotError } from '../errors.js';

export const SECRET_BYTES = 32;
export const AUTH_HEADERS = {
  device: 'x-meshpilot-device',
  timestamp: 'x-meshpilot-timestamp',
  nonce: 'x-meshpilot-nonce',
  signature: 'x-meshpilot-signature',
} as const;

const NONCE_RE = /^[A-Za-z0-9_-]{16,64}$/;
const TIMESTAMP_RE = /^\d{1,16}$/;
const SIGNATURE_RE = /^[0-9a-f]{64}$/;
const EMPTY_SHA256 = createHash('sha256').update('').digest('hex');

export interface SignInput {
  device: string;
  method: string;
  /** Path with query string, exactly as sent on the request line (`/v1/audit?after=3&limit=10`). */
  path: string;
  body?: string | Buffer;
}

export function bodySha256(body: string | Buffer | undefined): string {
  if (body === undefined || body.length === 0) return EMPTY_SHA256;
  return createHash('sha256').update(body).digest('hex');
}

export function canonicalRequest(p: { device: string; method: string; path: string; timestamp: string; nonce: string; bodySha256: string }): string {
  return ['MP1', p.device, p.method.toUpperCase(), p.path, p.timestamp, p.nonce, p.bodySha256].join('\n');
}

export function hmacHex(secret: Buffer, text: string): string {
  return createHmac('sha256', secret).update(text).digest('hex');
}

/** Headers for one request; a fresh timestamp and nonce each call (so a retry is signed anew). */
export function signRequest(secret: Buffer, input: SignInput, now: number = Date.now(), nonce: string = randomBytes(16).toString('base64url')): Record<string, string> {
  const timestamp = String(Math.floor(now));
  const sig = hmacHex(secret, canonicalRequest({ device: input.device, method: input.method, path: input.path, timestamp, nonce, bodySha256: bodySha256(input.body) }));
  return {
    [AUTH_HEADERS.device]: input.device,
    [AUTH_HEADERS.timestamp]: timestamp,
    [AUTH_HEADERS.nonce]: nonce,
    [AUTH_HEADERS.signature]: sig,
  };
}

export type AuthFailure =
  | 'missing_headers' | 'malformed_headers' | 'wrong_device' | 'clock_skew' | 'bad_signature' | 'replayed_nonce' | 'nonce_cache_full';

export type VerifyOutcome = { ok: true; device: string; nonce: string; timestamp: number } | { ok: false; why: AuthFailure; message: string };

type HeaderBag = Record<string, string | string[] | undefined>;

function header(h: HeaderBag, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? undefined : v; // a repeated auth header is malformed, never "pick one"
}

/**
 * Checks the signature headers of one request (not the nonce cache: call NonceCache.admit after
 * this succeeds, so forged requests cannot fill the cache).
 */
export function verifyRequest(
  secret: Buffer,
  expectedDevice: string,
  req: { method: string; path: string; headers: HeaderBag; body: Buffer },
  opts: { now?: number; maxSkewMs: number },
): VerifyOutcome {
  const device = header(req.headers, AUTH_HEADERS.device);
  const timestamp = header(req.headers, AUTH_HEADERS.timestamp);
  const nonce = header(req.headers, AUTH_HEADERS.nonce);
  const signature = header(req.headers, AUTH_HEADERS.signature);
  if (device === undefined || timestamp === undefined || nonce === undefined || signature === undefined) {
    return { ok: false, why: 'missing_headers', message: 'authentication required: signed x-meshpilot-* headers are missing' };
  }
  if (!TIMESTAMP_RE.test(timestamp) || !NONCE_RE.test(nonce) || !SIGNATURE_RE.test(signature) || device.length > 64) {
    return { ok: false, why: 'malformed_headers', message: 'malformed authentication headers' };
  }
  if (device !== expectedDevice) {
    return { ok: false, why: 'wrong_device', message: `this agent serves device ${expectedDevice}, not ${device.slice(0, 64)}` };
  }
  const now = opts.now ?? Date.now();
  const ts = Number(timestamp);
  if (Math.abs(now - ts) > opts.maxSkewMs) {
    return { ok: false, why: 'clock_skew', message: `request timestamp is ${Math.round((ts - now) / 1000)} s away from the agent's clock (more than ${Math.round(opts.maxSkewMs / 1000)} s): check both clocks` };
  }
  const expected = Buffer.from(hmacHex(secret, canonicalRequest({ device, method: req.method, path: req.path, timestamp, nonce, bodySha256: bodySha256(req.body) })), 'hex');
  const given = Buffer.from(signature, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    return { ok: false, why: 'bad_signature', message: 'bad signature: the request was altered or signed with another key' };
  }
  return { ok: true, device, nonce, timestamp: ts };
}

/**
 * Nonces seen within the skew window. Bounded: when full of still-valid nonces it refuses new
 * ones (never evicts a live one, which would re-open a replay window).
 */
export class NonceCache {
  private readonly seen = new Map<string, number>();
  constructor(private readonly max: number, private readonly ttlMs: number) {}

  admit(nonce: string, now: number = Date.now()): 'ok' | 'replay' | 'full' {
    const exp = this.seen.get(nonce);
    if (exp !== undefined && exp > now) return 'replay';
    if (this.seen.size >= this.max) this.prune(now);
    if (this.seen.size >= this.max) return 'full';
    // Re-inserted at the end, so the map stays ordered by expiry (prune relies on it).
    this.seen.delete(nonce);
    this.seen.set(nonce, now + this.ttlMs);
    return 'ok';
  }

  /** Maps iterate in insertion order and every entry gets the same TTL: expired ones are at the front. */
  prune(now: number = Date.now()): void {
    for (const [nonce, exp] of this.seen) {
      if (exp > now) break;
      this.seen.delete(nonce);
    }
  }

  get size(): number {
    return this.seen.size;
  }
}

/** Token bucket per key (the device): `ratePerS` tokens a second, at most `burst` saved up. */
export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  constructor(private readonly ratePerS: number, private readonly burst: number) {}

  take(key: string, now: number = Date.now()): boolean {
    let b = this.buckets.get(key);
    if (!b) {
      if (this.buckets.size > 1024) this.buckets.clear(); // keys are authenticated devices; this is a backstop
      b = { tokens: this.burst, at: now };
      this.buckets.set(key, b);
    }
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.ratePerS);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}

// ---- secret files ----------------------------------------------------------------------------

export function generateSecret(): Buffer {
  return randomBytes(SECRET_BYTES);
}

/** Writes base64 + newline with mode 0600 (the directory 0700 when created here). */
export function writeSecretFile(file: string, secret: Buffer): void {
  if (secret.length !== SECRET_BYTES) throw new MeshpilotError('config', `a device secret is ${SECRET_BYTES} bytes`);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeFileSync(file, secret.toString('base64') + '\n', { mode: 0o600, flag: 'wx' });
  if (process.platform !== 'win32') chmodSync(file, 0o600);
}

/** Reads a secret file (base64 or hex text, or 32 raw bytes); refuses one others can read. */
export function loadSecretFile(file: string): Buffer {
  let raw: Buffer;
  try {
    if (process.platform !== 'win32') {
      const st = statSync(file);
      if ((st.mode & 0o077) !== 0) {
        throw new MeshpilotError('config', `${file} is readable by other users (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`);
      }
    }
    raw = readFileSync(file);
  } catch (err) {
    if (err instanceof MeshpilotError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new MeshpilotError('config', code === 'ENOENT' ? `secret file ${file} not found` : `cannot read secret file ${file}: ${(err as Error).message}`);
  }
  return parseSecret(raw, file);
}

export function parseSecret(raw: Buffer, file = 'secret'): Buffer {
  const text = raw.toString('utf8').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/]{43}=?$/.test(text)) {
    const b = Buffer.from(text, 'base64');
    if (b.length === SECRET_BYTES) return b;
  }
  if (raw.length === SECRET_BYTES) return raw;
  throw new MeshpilotError('config', `${file} does not hold a ${SECRET_BYTES}-byte secret (base64 or hex)`);
}
