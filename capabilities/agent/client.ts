/**
 * The one client of a device agent (capabilities/agent/server.ts), controller side: its read-only
 * endpoints. The mesh transport (transports/mesh.ts MeshRunner) extends it with invocations; the
 * health monitor (launcher/health/) uses it as it is, so it can read a device but never act on it.
 *
 *   health()     GET /health                      unauthenticated
 *   auditPage()  GET /v1/audit?after=SEQ&limit=N  signed
 *   pullAudit()  the audit pages after a verified head, verified page by page
 *
 * The secret is MESHPILOT_HOME/keys/<device>/agent.secret (the same 32 bytes as the agent's
 * secret_file). Only idempotent exchanges are retried, on connection failures and 503.
 */
import * as path from 'node:path';
import { Pool, type Dispatcher } from 'undici';
import { verifyEntries, type AuditEntry, type AuditHead } from '../audit.js';
import { MeshpilotError, type ErrorCode } from '../errors.js';
import { resolveHome } from '../home.js';
import { loadSecretFile, signRequest } from './auth.js';
import { AuditPageSchema, ErrorResponseSchema, HealthResponseSchema, type AuditPage, type HealthResponse } from './protocol.js';

export const DEFAULT_AGENT_PORT = 7420;
const MAX_RESPONSE_BYTES = 48 * 1024 * 1024;
const MAX_HEALTH_BYTES = 64 * 1024;
const RETRY_DELAYS_MS = [100, 400];

export function agentSecretPath(device: string, home: string = resolveHome()): string {
  return path.join(home, 'keys', device, 'agent.secret');
}

export interface AgentClientOptions {
  device: string;
  address: string;
  port?: number;
  /** MESHPILOT_HOME (for the secret file); default resolveHome(). */
  home?: string;
  /** The device secret (or a function that loads it); otherwise read from the secret file when first needed. */
  secret?: Buffer | (() => Buffer);
  /**
   * A dispatcher shared with other clients (the health monitor probes every device through one);
   * default: a keep-alive Pool of this client's own, closed by close().
   */
  dispatcher?: Dispatcher;
  connectTimeoutMs?: number;
  connections?: number;
  /** Deadline of a /health exchange (default 10 s) and of an audit page (default 30 s). */
  healthTimeoutMs?: number;
  auditTimeoutMs?: number;
  /** Pauses before the retries of an idempotent exchange (default 100 ms, 400 ms; [] never retries). */
  retryDelaysMs?: readonly number[];
}

export interface RawResponse {
  status: number;
  body: unknown;
}

export interface RequestOptions {
  body?: string;
  signed: boolean;
  idempotent: boolean;
  /** Headers and idle-body timeout. */
  timeoutMs: number;
  /** Deadline of the whole exchange (read-only probes: a slow trickle must not hold the caller). */
  deadlineMs?: number;
  maxBytes?: number;
}

function isIdempotentFailure(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && [
    'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN',
    'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED',
  ].includes(code);
}

function isTimeout(err: unknown): boolean {
  const code = String((err as { code?: unknown }).code ?? '');
  const name = (err as { name?: unknown }).name;
  return code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || name === 'TimeoutError' || name === 'AbortError';
}

const KNOWN_CODES = new Set<string>([
  'usage', 'invalid_args', 'unknown_device', 'unknown_capability', 'manifest_invalid', 'policy_denied',
  'approval_rejected', 'tool_missing', 'timeout', 'output_limit', 'not_found', 'permission', 'unreachable',
  'host_key', 'auth', 'exec_failed', 'audit_broken', 'config', 'internal', 'quota',
]);
/** A code the agent sent, if it is one of ours (anything else becomes `fallback`). */
export function asErrorCode(code: string | undefined, fallback: ErrorCode): ErrorCode {
  return code && KNOWN_CODES.has(code) ? (code as ErrorCode) : fallback;
}

/**
 * A short why for an exchange that failed on the network ('connection refused', 'connect timed out',
 * 'timed out', or the system code): the health monitor shows it as is. For an error this client
 * threw, the network cause it wraps.
 */
export function networkReason(err: unknown): string | undefined {
  const cause = err instanceof MeshpilotError && (err.code === 'unreachable' || err.code === 'timeout') ? err.cause : err;
  if (cause === undefined || cause instanceof MeshpilotError) return undefined;
  const code = String((cause as { code?: unknown }).code ?? '');
  if (code === 'ECONNREFUSED') return 'connection refused';
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return 'connect timed out';
  if (isTimeout(cause)) return 'timed out';
  return code || undefined;
}

export type AgentAuditSync =
  | { ok: true; entries: AuditEntry[]; head: AuditHead | null; agentHead: AuditHead | null }
  | {
    ok: false; entries: AuditEntry[]; head: AuditHead | null; agentHead: AuditHead | null; badSeq: number; reason: string;
    /**
     * foreign: an entry of another device; broken: an entry does not verify; diverged: the first entry
     * after `from` does not follow it (an entry at or before `from` was changed); truncated: the chain
     * ends before `from`; head: the agent's reported head contradicts its entries.
     */
    kind: 'foreign' | 'broken' | 'diverged' | 'truncated' | 'head';
  };

export class AgentClient {
  readonly device: string;
  readonly address: string;
  readonly port: number;
  protected readonly home: string;
  protected cachedHome: string | undefined;
  private readonly dispatcher: Dispatcher;
  private readonly ownsDispatcher: boolean;
  private readonly origin: string;
  private secret: Buffer | (() => Buffer) | undefined;
  private readonly healthTimeoutMs: number;
  private readonly auditTimeoutMs: number;
  private readonly retryDelaysMs: readonly number[];

  constructor(opts: AgentClientOptions) {
    this.device = opts.device;
    this.address = opts.address;
    this.port = opts.port ?? DEFAULT_AGENT_PORT;
    this.home = opts.home ?? resolveHome();
    this.secret = opts.secret;
    this.healthTimeoutMs = opts.healthTimeoutMs ?? 10_000;
    this.auditTimeoutMs = opts.auditTimeoutMs ?? 30_000;
    this.retryDelaysMs = opts.retryDelaysMs ?? RETRY_DELAYS_MS;
    const host = this.address.includes(':') ? `[${this.address}]` : this.address;
    this.origin = `http://${host}:${this.port}`;
    this.ownsDispatcher = !opts.dispatcher;
    this.dispatcher = opts.dispatcher ?? new Pool(this.origin, {
      connections: opts.connections ?? 8,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 60_000,
      connectTimeout: opts.connectTimeoutMs ?? 5_000,
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
  }

  protected where(): string {
    return `${this.address}:${this.port}`;
  }

  private key(): Buffer {
    if (typeof this.secret === 'function') this.secret = this.secret();
    this.secret ??= loadSecretFile(agentSecretPath(this.device, this.home));
    return this.secret;
  }

  /** One HTTP exchange, signed when `signed`; retried only when `idempotent`. */
  protected async request(method: 'GET' | 'POST', pathWithQuery: string, opts: RequestOptions): Promise<RawResponse> {
    const attempts = opts.idempotent ? this.retryDelaysMs.length + 1 : 1;
    let lastErr: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, this.retryDelaysMs[attempt - 1]));
      try {
        const headers: Record<string, string> = { accept: 'application/json' };
        if (opts.body !== undefined) headers['content-type'] = 'application/json';
        if (opts.signed) Object.assign(headers, signRequest(this.key(), { device: this.device, method, path: pathWithQuery, ...(opts.body !== undefined ? { body: opts.body } : {}) }));
        const res = await this.dispatcher.request({
          origin: this.origin, method, path: pathWithQuery, headers,
          ...(opts.body !== undefined ? { body: opts.body } : {}),
          ...(opts.deadlineMs !== undefined ? { signal: AbortSignal.timeout(opts.deadlineMs) } : {}),
          headersTimeout: opts.timeoutMs, bodyTimeout: opts.timeoutMs,
        });
        const text = await readCapped(res.body, opts.maxBytes ?? MAX_RESPONSE_BYTES, this.device);
        let body: unknown = null;
        try { body = text ? JSON.parse(text) : null; } catch { body = null; }
        if (res.statusCode === 503 && opts.idempotent && attempt + 1 < attempts) {
          lastErr = new MeshpilotError('unreachable', `the agent of ${this.device} is busy`);
          continue;
        }
        return { status: res.statusCode, body };
      } catch (err) {
        if (err instanceof MeshpilotError) throw err;
        lastErr = err;
        if (!isIdempotentFailure(err) || attempt + 1 >= attempts) break;
      }
    }
    throw this.networkError(lastErr);
  }

  private networkError(err: unknown): MeshpilotError {
    if (err instanceof MeshpilotError) return err;
    const code = String((err as { code?: unknown }).code ?? '');
    const msg = (err as { message?: unknown }).message;
    if (isTimeout(err)) {
      return new MeshpilotError('timeout', `the agent of ${this.device} at ${this.where()} did not answer in time`, { cause: err });
    }
    const why = code === 'UND_ERR_CONNECT_TIMEOUT' ? 'connect timed out'
      : code === 'ECONNREFUSED' ? 'connection refused: is meshpilot-agent running there?'
        : code ? `${code}${typeof msg === 'string' && msg ? `: ${msg}` : ''}` : String(msg ?? err);
    return new MeshpilotError('unreachable', `device ${this.device}: agent at ${this.where()} is unreachable (${why})`, { cause: err });
  }

  protected httpError(res: RawResponse): MeshpilotError {
    const parsed = ErrorResponseSchema.safeParse(res.body);
    const wire = parsed.success ? parsed.data.error : undefined;
    const detail = wire?.message ?? `HTTP ${res.status}`;
    switch (res.status) {
      case 401:
        return new MeshpilotError('auth', `the agent of ${this.device} rejected our request: ${detail} (does ${agentSecretPath(this.device, this.home)} match the device's secret_file?)`);
      case 413:
        return new MeshpilotError('invalid_args', `request too large for the agent of ${this.device}: ${detail}`);
      case 429:
        return new MeshpilotError('unreachable', `the agent of ${this.device} is rate limiting us: ${detail}`);
      case 503:
        return new MeshpilotError(asErrorCode(wire?.code, 'unreachable'), `the agent of ${this.device} cannot serve the call: ${detail}`);
      default:
        return new MeshpilotError(asErrorCode(wire?.code, 'internal'), `the agent of ${this.device} answered ${res.status}: ${detail}`);
    }
  }

  /** The agent's /health (unauthenticated); checks that the agent there is this device's. */
  async health(): Promise<HealthResponse> {
    const t = this.healthTimeoutMs;
    const res = await this.request('GET', '/health', { signed: false, idempotent: true, timeoutMs: t, deadlineMs: t, maxBytes: MAX_HEALTH_BYTES });
    if (res.status !== 200) throw this.httpError(res);
    const parsed = HealthResponseSchema.safeParse(res.body);
    if (!parsed.success) throw new MeshpilotError('unreachable', `${this.where()} did not answer like a meshpilot agent`);
    if (parsed.data.device !== this.device) {
      throw new MeshpilotError('config', `${this.where()} is the agent of ${parsed.data.device}, not of ${this.device}: check the manifest's transport address`);
    }
    this.cachedHome = parsed.data.home;
    return parsed.data;
  }

  /** One page of the agent's audit chain after `after` (signed GET). */
  async auditPage(after: number, limit: number): Promise<AuditPage> {
    const t = this.auditTimeoutMs;
    const res = await this.request('GET', `/v1/audit?after=${after}&limit=${limit}`, { signed: true, idempotent: true, timeoutMs: t, deadlineMs: t });
    if (res.status !== 200) throw this.httpError(res);
    const parsed = AuditPageSchema.safeParse(res.body);
    if (!parsed.success) throw new MeshpilotError('audit_broken', `the agent of ${this.device} sent audit entries that are not in the audit format`);
    return parsed.data;
  }

  /**
   * Fetches the agent's audit entries after `from` (a seq + hash already verified and mirrored, or
   * null for the whole chain) and verifies them, page by page, until the chain ends or `maxEntries`.
   * `entries` holds only verified entries; on failure `badSeq`, `reason` and `kind` say where and how
   * the chain broke.
   */
  async pullAudit(from: AuditHead | null, opts: { pageSize?: number; maxEntries?: number } = {}): Promise<AgentAuditSync> {
    const pageSize = opts.pageSize ?? 500;
    const maxEntries = opts.maxEntries ?? 100_000;
    const entries: AuditEntry[] = [];
    let cursor: AuditHead | null = from;
    let agentHead: AuditHead | null = null;
    for (;;) {
      const page = await this.auditPage(cursor?.seq ?? 0, pageSize);
      agentHead = page.head;
      const foreign = page.entries.find((e) => e.device !== this.device);
      if (foreign) {
        return { ok: false, kind: 'foreign', entries, head: cursor, agentHead, badSeq: foreign.seq, reason: `entry ${foreign.seq} belongs to device ${foreign.device}, not ${this.device}` };
      }
      const v = verifyEntries(page.entries, cursor ?? undefined);
      entries.push(...page.entries.slice(0, v.count));
      if (!v.ok) {
        const diverged = from !== null && cursor === from && v.count === 0 && page.entries[0]?.seq === from.seq + 1;
        return { ok: false, kind: diverged ? 'diverged' : 'broken', entries, head: v.head, agentHead, badSeq: v.badSeq, reason: v.reason };
      }
      cursor = v.head;
      if (page.entries.length < pageSize || entries.length >= maxEntries) break;
    }
    if (from && (agentHead?.seq ?? 0) < from.seq) {
      return { ok: false, kind: 'truncated', entries, head: cursor, agentHead, badSeq: (agentHead?.seq ?? 0) + 1, reason: `the agent's chain ends at ${agentHead?.seq ?? 0} but ${from.seq} entries were already mirrored: its log was truncated or replaced` };
    }
    if (agentHead && cursor && agentHead.seq === cursor.seq && agentHead.hash !== cursor.hash) {
      return { ok: false, kind: 'head', entries, head: cursor, agentHead, badSeq: cursor.seq, reason: `the agent reports head ${agentHead.hash.slice(0, 12)}… for entry ${cursor.seq}, but its entries hash to ${cursor.hash.slice(0, 12)}…` };
    }
    return { ok: true, entries, head: cursor, agentHead };
  }

  async close(): Promise<void> {
    if (this.ownsDispatcher) await this.dispatcher.close();
  }
}

async function readCapped(body: AsyncIterable<Buffer | Uint8Array>, max: number, device: string): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > max) throw new MeshpilotError('output_limit', `the agent of ${device} sent more than ${max} bytes`);
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks, size).toString('utf8');
}
