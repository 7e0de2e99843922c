/**
 * The audit entry format, its canonical JSON and hash chain, verification, and the append-only
 * JSONL log the device agent writes. No native modules here: the agent bundle imports this file.
 * The controller's SQLite log lives in audit-sqlite.ts and writes exactly the same entries.
 *
 * Canonical JSON: object keys sorted by UTF-16 code unit order at every level, no whitespace,
 * strings and numbers as JSON.stringify writes them, `null` kept, `undefined` members omitted.
 * hash = sha256_hex(prev_hash + canonical_json(entry without `hash`)); the first prev_hash is 64 zeros.
 */
import * as nodeCrypto from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import { z } from 'zod';

export const GENESIS_HASH = '0'.repeat(64);

export const DecisionSchema = z.enum(['allowed', 'denied', 'approved', 'rejected']);
export type Decision = z.infer<typeof DecisionSchema>;
/** `started` is written before a call runs, so a crash mid-call still leaves a trace. */
export const OutcomeSchema = z.enum(['started', 'ok', 'error', 'timeout', 'not_run']);
export type Outcome = z.infer<typeof OutcomeSchema>;

const Hex64 = z.string().regex(/^[0-9a-f]{64}$/);

export const AuditEntrySchema = z.object({
  seq: z.number().int().min(1),
  ts: z.string().max(40),
  device: z.string().max(64),
  actor: z.string().max(256),
  request_id: z.string().max(128).nullable(),
  capability: z.string().max(64),
  args: z.unknown(),
  decision: DecisionSchema,
  outcome: OutcomeSchema,
  exit_code: z.number().int().nullable(),
  output_sha256: Hex64.nullable(),
  duration_ms: z.number().int().nullable(),
  error_code: z.string().max(64).nullable(),
  reason: z.string().max(2000).nullable(),
  context: z.record(z.string(), z.unknown()).nullable(),
  prev_hash: Hex64,
  hash: Hex64,
});
export type AuditEntry = z.infer<typeof AuditEntrySchema>;
export type AuditEntryUnhashed = Omit<AuditEntry, 'hash'>;
/** What a caller supplies; the log fills seq, ts, prev_hash and hash. */
export type AuditInput = Omit<AuditEntry, 'seq' | 'ts' | 'prev_hash' | 'hash'> & { ts?: string };

export interface AuditHead {
  seq: number;
  hash: string;
}

export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    if (value === undefined) return 'null';
    if (typeof value === 'number' && !Number.isFinite(value)) return 'null';
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
}

// crypto.hash (Node >= 20.12) is a one-shot digest, noticeably cheaper than createHash per entry.
const oneShot = (nodeCrypto as { hash?: (alg: string, data: string | Buffer, enc: 'hex') => string }).hash;

export function sha256Hex(text: string | Buffer): string {
  return oneShot ? oneShot('sha256', text, 'hex') : nodeCrypto.createHash('sha256').update(text).digest('hex');
}

const str = (v: string | null): string => (v === null ? 'null' : JSON.stringify(v));
const num = (v: number | null): string => (v === null || !Number.isFinite(v) ? 'null' : JSON.stringify(v));

/**
 * canonical_json(entry without hash), written out with the keys already in sorted order.
 * Equal to canonicalJson(entry) (a test holds it to that) but several times faster, which is
 * what keeps verifying a million entries within seconds.
 */
export function canonicalBody(e: AuditEntryUnhashed): string {
  return '{"actor":' + JSON.stringify(e.actor)
    + ',"args":' + canonicalJson(e.args)
    + ',"capability":' + JSON.stringify(e.capability)
    + ',"context":' + (e.context === null ? 'null' : canonicalJson(e.context))
    + ',"decision":' + JSON.stringify(e.decision)
    + ',"device":' + JSON.stringify(e.device)
    + ',"duration_ms":' + num(e.duration_ms)
    + ',"error_code":' + str(e.error_code)
    + ',"exit_code":' + num(e.exit_code)
    + ',"outcome":' + JSON.stringify(e.outcome)
    + ',"output_sha256":' + str(e.output_sha256)
    + ',"prev_hash":' + JSON.stringify(e.prev_hash)
    + ',"reason":' + str(e.reason)
    + ',"request_id":' + str(e.request_id)
    + ',"seq":' + String(e.seq)
    + ',"ts":' + JSON.stringify(e.ts) + '}';
}

export function hashBody(prevHash: string, body: string): string {
  return sha256Hex(prevHash + body);
}

export function entryHash(entry: AuditEntryUnhashed | AuditEntry): string {
  return hashBody(entry.prev_hash, canonicalBody(entry));
}

/** Keys whose values never reach the audit log. */
const SECRET_KEY = /(secret|token|password|passwd|passphrase|private_?key|api_?key|authorization|cookie)/i;
const MAX_AUDIT_STRING = 1024;

/** Redacts secrets and bounds large values (a 5 MB fs.write body is recorded as its hash and length). */
export function redactArgs(value: unknown, depth = 0): unknown {
  if (depth > 8) return '[too deep]';
  if (typeof value === 'string') {
    return value.length > MAX_AUDIT_STRING ? `[sha256:${sha256Hex(value)} len=${value.length}]` : value;
  }
  if (Array.isArray(value)) return value.slice(0, 256).map((v) => redactArgs(v, depth + 1));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      out[k] = SECRET_KEY.test(k) ? '[redacted]' : redactArgs(v, depth + 1);
    }
    return out;
  }
  return value;
}

export function buildEntry(input: AuditInput, prev: AuditHead | undefined): AuditEntry {
  return buildEntryWithBody(input, prev).entry;
}

/** The entry and its canonical body (what the hash covers), computed once. */
export function buildEntryWithBody(input: AuditInput, prev: AuditHead | undefined | null): { entry: AuditEntry; body: string } {
  const unhashed: AuditEntryUnhashed = {
    seq: (prev?.seq ?? 0) + 1,
    ts: input.ts ?? new Date().toISOString(),
    device: input.device,
    actor: input.actor,
    request_id: input.request_id,
    capability: input.capability,
    args: input.args ?? null,
    decision: input.decision,
    outcome: input.outcome,
    exit_code: input.exit_code,
    output_sha256: input.output_sha256,
    duration_ms: input.duration_ms,
    error_code: input.error_code,
    reason: input.reason,
    context: input.context,
    prev_hash: prev?.hash ?? GENESIS_HASH,
  };
  const body = canonicalBody(unhashed);
  return { entry: { ...unhashed, hash: hashBody(unhashed.prev_hash, body) }, body };
}

// ---- verification ---------------------------------------------------------------------------

export type VerifyResult =
  | { ok: true; count: number; head: AuditHead | null }
  | { ok: false; count: number; badSeq: number; reason: string; head: AuditHead | null };

/**
 * Walks entries in stored order. `from` is a trusted starting point (seq + hash of an entry
 * already verified); without it the chain must start at seq 1 from the genesis hash.
 * `count` is the number of entries that verified.
 */
export function verifyEntries(entries: Iterable<AuditEntry>, from?: AuditHead): VerifyResult {
  let prev: AuditHead | null = from ?? null;
  let count = 0;
  for (const e of entries) {
    const expectedSeq = (prev?.seq ?? 0) + 1;
    if (e.seq !== expectedSeq) {
      const why = e.seq > expectedSeq
        ? `entry ${expectedSeq} is missing (found ${e.seq} next): a row was deleted or rows were reordered`
        : `entry ${e.seq} appears where ${expectedSeq} was expected: rows were reordered or duplicated`;
      return { ok: false, count, badSeq: expectedSeq, reason: why, head: prev };
    }
    const expectedPrev = prev?.hash ?? GENESIS_HASH;
    if (e.prev_hash !== expectedPrev) {
      return { ok: false, count, badSeq: e.seq, reason: `prev_hash does not match the hash of entry ${e.seq - 1}: an earlier entry was changed and re-hashed, or this one was forged`, head: prev };
    }
    if (entryHash(e) !== e.hash) {
      return { ok: false, count, badSeq: e.seq, reason: `hash does not match the entry's content: entry ${e.seq} was edited`, head: prev };
    }
    prev = { seq: e.seq, hash: e.hash };
    count++;
  }
  return { ok: true, count, head: prev };
}

// ---- JSONL log (device agent) ----------------------------------------------------------------

/**
 * Append-only JSONL file, one canonical entry per line, fsync'd after every append so an
 * acknowledged entry survives a power cut. Single writer (the agent process).
 */
export class JsonlAuditLog {
  private head: AuditHead | undefined;
  private readonly fd: number;

  constructor(readonly file: string, readonly device: string) {
    if (existsSync(file)) {
      const last = lastLine(file);
      if (last) {
        // A corrupt last line must stop the writer: appending after it would start a second chain.
        let raw: unknown;
        try { raw = JSON.parse(last); } catch { raw = undefined; }
        const parsed = AuditEntrySchema.safeParse(raw);
        if (!parsed.success) throw new Error(`${file}: the last line is not a valid audit entry; refusing to append after it (inspect and repair the log first)`);
        this.head = { seq: parsed.data.seq, hash: parsed.data.hash };
      }
    }
    this.fd = openSync(file, 'a', 0o600);
  }

  append(input: AuditInput): AuditEntry {
    const entry = buildEntry(input, this.head);
    writeSync(this.fd, canonicalJson(entry) + '\n');
    fsyncSync(this.fd);
    this.head = { seq: entry.seq, hash: entry.hash };
    return entry;
  }

  getHead(): AuditHead | null {
    return this.head ?? null;
  }

  /** Entries with seq > after, at most `limit`, in file order. */
  readAfter(after: number, limit: number): AuditEntry[] {
    const out: AuditEntry[] = [];
    for (const entry of readJsonlEntries(this.file)) {
      if (entry.seq > after) out.push(entry);
      if (out.length >= limit) break;
    }
    return out;
  }

  verify(from?: AuditHead): VerifyResult {
    const entries = [...readJsonlEntries(this.file)].filter((e) => !from || e.seq > from.seq);
    return verifyEntries(entries, from);
  }

  close(): void {
    closeSync(this.fd);
  }
}

export function* readJsonlEntries(file: string): Generator<AuditEntry> {
  if (!existsSync(file)) return;
  const text = readFileSync(file, 'utf8');
  let lineNo = 0;
  for (const line of text.split('\n')) {
    lineNo++;
    if (!line) continue;
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      throw new Error(`${file}:${lineNo}: not valid JSON`);
    }
    const parsed = AuditEntrySchema.safeParse(raw);
    if (!parsed.success) throw new Error(`${file}:${lineNo}: not an audit entry`);
    yield parsed.data;
  }
}

function lastLine(file: string): string | undefined {
  const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
  return lines[lines.length - 1];
}
