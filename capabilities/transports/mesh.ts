/**
 * The `mesh` transport, controller side: a device whose capabilities run in its own agent
 * (capabilities/agent/server.ts), reached over the WireGuard mesh with signed HTTP requests.
 *
 *   manifest:  transport: { kind: mesh, address: 10.88.0.2, port: 7420 }
 *   secret:    MESHPILOT_HOME/keys/<device>/agent.secret (the same 32 bytes as the agent's secret_file)
 *
 * One undici Pool (keep-alive) per device. Only idempotent requests are retried: GETs and
 * invocations of risk 'read' capabilities, on connection failures and 503.
 * Loading this module registers the transport (launcher/runtime.ts imports it for its side effect).
 */
import * as path from 'node:path';
import { Pool } from 'undici';
import { verifyEntries, type AuditEntry, type AuditHead } from '../audit.js';
import { failResult, type CapabilityResult } from '../capability.js';
import { MeshpilotError, type ErrorCode } from '../errors.js';
import { resolveHome } from '../home.js';
import type { DeviceOs, Manifest } from '../manifest.js';
import type { PathResolver } from '../policy.js';
import { builtinRegistry, type CapabilityRegistry } from '../registry.js';
import { loadSecretFile, signRequest } from '../agent/auth.js';
import {
  AuditPageSchema, ErrorResponseSchema, HealthResponseSchema, InvokeResponseSchema,
  type AuditPage, type HealthResponse,
} from '../agent/protocol.js';
import { registerTransport, type RemoteRunner } from './index.js';

export const DEFAULT_AGENT_PORT = 7420;
const MAX_REQUEST_BYTES = 1024 * 1024;
const MAX_RESPONSE_BYTES = 48 * 1024 * 1024;
const RETRY_DELAYS_MS = [100, 400];

export function agentSecretPath(device: string, home: string = resolveHome()): string {
  return path.join(home, 'keys', device, 'agent.secret');
}

export interface MeshRunnerOptions {
  device: string;
  address: string;
  port?: number;
  os?: DeviceOs;
  /** MESHPILOT_HOME (for the secret file); default resolveHome(). */
  home?: string;
  /** The device secret itself (tests, embedders); otherwise read from the secret file. */
  secret?: Buffer;
  /** Per-call timeout budget: the capability's manifest timeout (defaults to 30 s). */
  timeoutFor?: (capability: string) => number;
  connectTimeoutMs?: number;
  connections?: number;
  registry?: CapabilityRegistry;
}

export interface MeshRunRequest {
  capability: string;
  args: Record<string, unknown>;
  actor: string;
  requestId: string;
  /** Who approved the call on the controller (required by the agent for approval-gated capabilities). */
  approvedBy?: string;
}

interface RawResponse {
  status: number;
  body: unknown;
}

function isIdempotentFailure(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && [
    'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN',
    'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED',
  ].includes(code);
}

const KNOWN_CODES = new Set<string>([
  'usage', 'invalid_args', 'unknown_device', 'unknown_capability', 'manifest_invalid', 'policy_denied',
  'approval_rejected', 'tool_missing', 'timeout', 'output_limit', 'not_found', 'permission', 'unreachable',
  'host_key', 'auth', 'exec_failed', 'audit_broken', 'config', 'internal',
]);
function asErrorCode(code: string | undefined, fallback: ErrorCode): ErrorCode {
  return code && KNOWN_CODES.has(code) ? (code as ErrorCode) : fallback;
}

export class MeshRunner implements RemoteRunner {
  readonly device: string;
  readonly address: string;
  readonly port: number;
  readonly os: DeviceOs;
  private readonly pool: Pool;
  private readonly origin: string;
  private readonly home: string;
  private readonly registry: CapabilityRegistry;
  private secret: Buffer | undefined;
  private cachedHome: string | undefined;
  private readonly timeoutFor: (capability: string) => number;

  constructor(opts: MeshRunnerOptions) {
    this.device = opts.device;
    this.address = opts.address;
    this.port = opts.port ?? DEFAULT_AGENT_PORT;
    this.os = opts.os ?? 'linux';
    this.home = opts.home ?? resolveHome();
    this.secret = opts.secret;
    this.registry = opts.registry ?? builtinRegistry();
    this.timeoutFor = opts.timeoutFor ?? (() => 30_000);
    const host = this.address.includes(':') ? `[${this.address}]` : this.address;
    this.origin = `http://${host}:${this.port}`;
    this.pool = new Pool(this.origin, {
      connections: opts.connections ?? 8,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 60_000,
      connectTimeout: opts.connectTimeoutMs ?? 5_000,
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
  }

  static fromManifest(manifest: Manifest, opts: Partial<MeshRunnerOptions> = {}): MeshRunner {
    const t = manifest.transport;
    if (t.kind !== 'mesh') throw new MeshpilotError('config', `${manifest.device} does not use the mesh transport`);
    return new MeshRunner({
      device: manifest.device, address: t.address, port: t.port, os: manifest.os,
      timeoutFor: (cap) => (manifest.capabilities[cap]?.timeout_s ?? manifest.limits.timeout_s) * 1000,
      ...opts,
    });
  }

  private where(): string {
    return `${this.address}:${this.port}`;
  }

  private key(): Buffer {
    this.secret ??= loadSecretFile(agentSecretPath(this.device, this.home));
    return this.secret;
  }

  /** One HTTP exchange, signed when `signed`; retried only when `idempotent`. */
  private async request(method: 'GET' | 'POST', pathWithQuery: string, opts: { body?: string; signed: boolean; idempotent: boolean; timeoutMs: number }): Promise<RawResponse> {
    const attempts = opts.idempotent ? RETRY_DELAYS_MS.length + 1 : 1;
    let lastErr: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, RETRY_DELAYS_MS[attempt - 1]));
      try {
        const headers: Record<string, string> = { accept: 'application/json' };
        if (opts.body !== undefined) headers['content-type'] = 'application/json';
        if (opts.signed) Object.assign(headers, signRequest(this.key(), { device: this.device, method, path: pathWithQuery, ...(opts.body !== undefined ? { body: opts.body } : {}) }));
        const res = await this.pool.request({
          method, path: pathWithQuery, headers,
          ...(opts.body !== undefined ? { body: opts.body } : {}),
          headersTimeout: opts.timeoutMs, bodyTimeout: opts.timeoutMs,
        });
        const text = await readCapped(res.body, MAX_RESPONSE_BYTES, this.device);
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
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      return new MeshpilotError('timeout', `the agent of ${this.device} at ${this.where()} did not answer in time`);
    }
    const why = code === 'UND_ERR_CONNECT_TIMEOUT' ? 'connect timed out'
      : code === 'ECONNREFUSED' ? 'connection refused: is meshpilot-agent running there?'
        : code ? `${code}${typeof msg === 'string' && msg ? `: ${msg}` : ''}` : String(msg ?? err);
    return new MeshpilotError('unreachable', `device ${this.device}: agent at ${this.where()} is unreachable (${why})`, { cause: err });
  }

  private httpError(res: RawResponse): MeshpilotError {
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

  async run(req: MeshRunRequest): Promise<{ result: CapabilityResult; deviceAudit?: { seq: number; hash: string } }> {
    const body = JSON.stringify({
      capability: req.capability, args: req.args, actor: req.actor, request_id: req.requestId,
      ...(req.approvedBy ? { approved_by: req.approvedBy } : {}),
    });
    if (Buffer.byteLength(body) > MAX_REQUEST_BYTES) {
      throw new MeshpilotError('invalid_args', `${req.capability}: the arguments are over the agent's ${MAX_REQUEST_BYTES}-byte request limit`);
    }
    const idempotent = this.registry.get(req.capability)?.risk === 'read';
    const res = await this.request('POST', '/v1/invoke', { body, signed: true, idempotent, timeoutMs: this.timeoutFor(req.capability) + 15_000 });
    const parsed = InvokeResponseSchema.safeParse(res.body);
    const inv = parsed.success ? parsed.data.invoke : undefined;
    if (!inv) throw this.httpError(res);
    const result = inv.result ?? failResult({
      code: asErrorCode(inv.error?.code, 'exec_failed'),
      message: inv.error ? `${inv.error.message} (enforced by the agent on ${this.device})` : `the agent of ${this.device} did not run it`,
    });
    return inv.audit ? { result, deviceAudit: inv.audit } : { result };
  }

  /** The agent's /health (unauthenticated). */
  async health(): Promise<HealthResponse> {
    const res = await this.request('GET', '/health', { signed: false, idempotent: true, timeoutMs: 10_000 });
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
    const res = await this.request('GET', `/v1/audit?after=${after}&limit=${limit}`, { signed: true, idempotent: true, timeoutMs: 30_000 });
    if (res.status !== 200) throw this.httpError(res);
    const parsed = AuditPageSchema.safeParse(res.body);
    if (!parsed.success) throw new MeshpilotError('audit_broken', `the agent of ${this.device} sent audit entries that are not in the audit format`);
    return parsed.data;
  }

  /** Lexical view (the agent resolves symlinks and checks them against its own manifest). */
  async resolver(): Promise<PathResolver> {
    const home = this.cachedHome ?? (await this.health()).home;
    return { os: this.os, home, realpath: async (p) => p };
  }

  async close(): Promise<void> {
    await this.pool.close();
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

// ---- audit mirroring -----------------------------------------------------------------------

export type AgentAuditSync =
  | { ok: true; entries: AuditEntry[]; head: AuditHead | null; agentHead: AuditHead | null }
  | { ok: false; entries: AuditEntry[]; head: AuditHead | null; agentHead: AuditHead | null; badSeq: number; reason: string };

/**
 * Fetches the agent's audit entries after `from` (a seq + hash already verified and mirrored,
 * or null for the whole chain) and verifies them, page by page. `entries` holds only verified
 * entries; on failure `badSeq` and `reason` say where the chain broke.
 */
export async function fetchAgentAudit(runner: MeshRunner, from: AuditHead | null, opts: { pageSize?: number; maxEntries?: number } = {}): Promise<AgentAuditSync> {
  const pageSize = opts.pageSize ?? 500;
  const maxEntries = opts.maxEntries ?? 100_000;
  const entries: AuditEntry[] = [];
  let cursor: AuditHead | null = from;
  let agentHead: AuditHead | null = null;
  for (;;) {
    const page = await runner.auditPage(cursor?.seq ?? 0, pageSize);
    agentHead = page.head;
    const foreign = page.entries.find((e) => e.device !== runner.device);
    if (foreign) {
      return { ok: false, entries, head: cursor, agentHead, badSeq: foreign.seq, reason: `entry ${foreign.seq} belongs to device ${foreign.device}, not ${runner.device}` };
    }
    const v = verifyEntries(page.entries, cursor ?? undefined);
    entries.push(...page.entries.slice(0, v.count));
    if (!v.ok) return { ok: false, entries, head: v.head, agentHead, badSeq: v.badSeq, reason: v.reason };
    cursor = v.head;
    if (page.entries.length < pageSize || entries.length >= maxEntries) break;
  }
  if (from && (agentHead?.seq ?? 0) < from.seq) {
    return { ok: false, entries, head: cursor, agentHead, badSeq: (agentHead?.seq ?? 0) + 1, reason: `the agent's chain ends at ${agentHead?.seq ?? 0} but ${from.seq} entries were already mirrored: its log was truncated or replaced` };
  }
  if (agentHead && cursor && agentHead.seq === cursor.seq && agentHead.hash !== cursor.hash) {
    return { ok: false, entries, head: cursor, agentHead, badSeq: cursor.seq, reason: `the agent reports head ${agentHead.hash.slice(0, 12)}… for entry ${cursor.seq}, but its entries hash to ${cursor.hash.slice(0, 12)}…` };
  }
  return { ok: true, entries, head: cursor, agentHead };
}

registerTransport('mesh', (manifest) => ({ kind: 'remote', remote: MeshRunner.fromManifest(manifest) }));
