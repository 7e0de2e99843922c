/**
 * The device agent: a small node:http server on the device's mesh address that runs capabilities
 * through the same Invoker as the controller (validate → the agent's OWN manifest → approval →
 * LocalHost → JSONL audit), so a request that skipped the controller's checks is still checked here.
 *
 * Approvals: the controller asks the human; the agent accepts `approved_by` on a signed request and
 * records it. A capability the agent's manifest marks for approval never runs without one, and
 * `approved_by` never widens what the manifest allows (policy runs first).
 *
 * No native modules, no ssh2: this file is the heart of dist/meshpilot-agent.mjs.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { statSync, existsSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { JsonlAuditLog, type AuditEntry, type AuditHead, type AuditInput } from '../audit.js';
import type { AuditSink } from '../audit-sqlite.js';
import { MeshpilotError, toMpError } from '../errors.js';
import { thisOs } from '../home.js';
import { Invoker, type ApprovalHook, type ManifestSource } from '../invoke.js';
import { setPublishAddress } from '../vm/podman.js';
import { formatIssue, loadManifest, type Manifest } from '../manifest.js';
import { logger as makeLogger } from '../log.js';
import { builtinRegistry, type CapabilityRegistry } from '../registry.js';
import type { Endpoint, TransportProvider } from '../transports/index.js';
import { LocalHost } from '../transports/local.js';
import { loadSecretFile, NonceCache, TokenBuckets, verifyRequest } from './auth.js';
import type { AgentConfig } from './config.js';
import { InvokeBodySchema, PROTOCOL_VERSION, type AuditPage, type HealthResponse } from './protocol.js';

declare const __MESHPILOT_AGENT_VERSION__: string | undefined;

export function agentVersion(): string {
  if (typeof __MESHPILOT_AGENT_VERSION__ === 'string') return __MESHPILOT_AGENT_VERSION__;
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    if (typeof pkg.version === 'string') return pkg.version;
  } catch { /* running from somewhere without package.json */ }
  return '0.0.0';
}

// ---- adapters ------------------------------------------------------------------------------

/** JsonlAuditLog as the Invoker's AuditSink (one device, one file). */
export class JsonlAuditSink implements AuditSink {
  constructor(readonly log: JsonlAuditLog) {}
  append(input: AuditInput): AuditEntry {
    return this.log.append(input);
  }
  head(device: string): AuditHead | null {
    return device === this.log.device ? this.log.getHead() : null;
  }
}

/** The agent's own manifest file, re-read when it changes; fails closed when it becomes invalid. */
export class ManifestFile implements ManifestSource {
  private current: Manifest | undefined;
  private error: string | undefined;
  private stamp = '';

  constructor(readonly file: string, readonly device: string, private readonly registry: CapabilityRegistry) {
    this.refresh();
  }

  private refresh(): void {
    let stamp: string;
    try {
      const st = statSync(this.file);
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      stamp = 'missing';
    }
    if (stamp === this.stamp) return;
    this.stamp = stamp;
    const r = loadManifest(this.file, this.registry);
    if (!r.ok) {
      this.current = undefined;
      this.error = r.issues.map(formatIssue).join('; ');
    } else if (r.manifest.device !== this.device) {
      this.current = undefined;
      this.error = `${this.file} is the manifest of ${r.manifest.device}, not of ${this.device}`;
    } else {
      this.current = r.manifest;
      this.error = undefined;
    }
  }

  get(device: string): Manifest | undefined {
    if (device !== this.device) return undefined;
    this.refresh();
    return this.current;
  }

  status(): { manifest: Manifest | undefined; error: string | undefined } {
    this.refresh();
    return { manifest: this.current, error: this.error };
  }
}

/** Whatever the manifest's transport says (the controller's view: mesh), on the device it is this machine. */
export class LocalOnlyTransports implements TransportProvider {
  private readonly endpoint: Endpoint;
  constructor(device: string) {
    this.endpoint = { kind: 'host', host: new LocalHost(device) };
  }
  endpointFor(): Endpoint {
    return this.endpoint;
  }
  async closeAll(): Promise<void> { /* LocalHost holds nothing open */ }
}

// ---- the server -----------------------------------------------------------------------------

export interface RunningAgent {
  readonly server: Server;
  readonly address: { address: string; port: number };
  readonly invoker: Invoker;
  readonly audit: JsonlAuditLog;
  close(): Promise<void>;
}

class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, extraHeaders: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(text)),
    'cache-control': 'no-store',
    ...extraHeaders,
  });
  res.end(text);
}

function sendError(res: ServerResponse, status: number, code: string, message: string, extra: Record<string, string> = {}): void {
  sendJson(res, status, { error: { code, message } }, extra);
}

/** Reads the body up to `max` bytes; rejects with 413 before reading when Content-Length says it is larger. */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > max) {
    return Promise.reject(new HttpError(413, 'too_large', `request body of ${declared} bytes is over the ${max}-byte limit`));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on('data', (c: Buffer) => {
      if (failed) return;
      size += c.length;
      if (size > max) {
        failed = true;
        reject(new HttpError(413, 'too_large', `request body is over the ${max}-byte limit`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => { if (!failed) resolve(Buffer.concat(chunks, size)); });
    req.on('error', (err) => { if (!failed) { failed = true; reject(err); } });
  });
}

const AUDIT_QUERY = /^\d{1,15}$/;

export async function startAgent(config: AgentConfig, opts: { log?: Logger; secret?: Buffer; registry?: CapabilityRegistry } = {}): Promise<RunningAgent> {
  const log = opts.log ?? makeLogger('agent', { device: config.device });
  const secret = opts.secret ?? loadSecretFile(config.secret_file);
  const registry = opts.registry ?? builtinRegistry();
  const limits = config.limits;
  const started = Date.now();
  const version = agentVersion();

  // VMs publish their ports on the mesh address this agent listens on (loopback when it listens on every address).
  setPublishAddress(config.device, config.listen.address);
  const manifests = new ManifestFile(config.manifest, config.device, registry);
  const first = manifests.status();
  if (!first.manifest) log.error({ manifest: config.manifest }, `manifest not usable, every call is refused until it is fixed: ${first.error}`);

  const fileHasEntries = existsSync(config.audit_log) && statSync(config.audit_log).size > 0;
  const audit = new JsonlAuditLog(config.audit_log, config.device);
  if (fileHasEntries && audit.getHead() === null) {
    audit.close();
    throw new MeshpilotError('audit_broken', `${config.audit_log}: the last line is not an audit entry; refusing to start a second chain (move the file aside or repair it)`);
  }
  const sink = new JsonlAuditSink(audit);
  const invoker = new Invoker({
    manifests, audit: sink, registry, transports: new LocalOnlyTransports(config.device), logger: log,
  });

  const nonces = new NonceCache(limits.nonce_cache, limits.clock_skew_s * 2000);
  const buckets = new TokenBuckets(limits.rate_per_s, limits.burst);
  let inFlight = 0;

  type ChainStatus = HealthResponse['audit'];
  let chain: { status: ChainStatus; at: number } | undefined;
  const chainStatus = (): ChainStatus => {
    const now = Date.now();
    if (chain && now - chain.at < limits.chain_check_s * 1000) {
      const head = audit.getHead();
      return { ...chain.status, seq: head?.seq ?? 0, hash: head?.hash ?? null };
    }
    let status: ChainStatus;
    try {
      const v = audit.verify();
      const head = audit.getHead();
      status = v.ok
        ? { seq: head?.seq ?? 0, hash: head?.hash ?? null, chain_ok: true, checked_at: new Date(now).toISOString() }
        : { seq: head?.seq ?? 0, hash: head?.hash ?? null, chain_ok: false, checked_at: new Date(now).toISOString(), bad_seq: v.badSeq, reason: v.reason.slice(0, 1000) };
    } catch (err) {
      const head = audit.getHead();
      status = { seq: head?.seq ?? 0, hash: head?.hash ?? null, chain_ok: false, checked_at: new Date(now).toISOString(), reason: toMpError(err).message.slice(0, 1000) };
    }
    chain = { status, at: now };
    return status;
  };
  const startupChain = chainStatus();
  if (!startupChain.chain_ok) log.error({ bad_seq: startupChain.bad_seq }, `audit chain broken: ${startupChain.reason}`);

  const health = (): HealthResponse => {
    const m = manifests.status();
    const a = chainStatus();
    return {
      ok: m.manifest !== undefined && a.chain_ok,
      agent: 'meshpilot-agent',
      protocol: PROTOCOL_VERSION,
      version,
      device: config.device,
      os: m.manifest?.os ?? thisOs(),
      home: os.homedir(),
      uptime_s: Math.round((Date.now() - started) / 1000),
      time: new Date().toISOString(),
      manifest: { sha256: m.manifest?.hash ?? null, valid: m.manifest !== undefined, ...(m.error ? { error: m.error.slice(0, 4000) } : {}) },
      audit: a,
    };
  };

  /** Authenticates a request and reads its body; throws HttpError with the status to answer. */
  const authenticate = async (req: IncomingMessage, pathWithQuery: string): Promise<Buffer> => {
    const body = await readBody(req, limits.max_body_bytes);
    const v = verifyRequest(secret, config.device, { method: req.method ?? 'GET', path: pathWithQuery, headers: req.headers, body }, { maxSkewMs: limits.clock_skew_s * 1000 });
    if (!v.ok) {
      log.warn({ why: v.why, remote: req.socket.remoteAddress, path: pathWithQuery.slice(0, 128) }, 'request rejected');
      throw new HttpError(401, 'auth', v.message);
    }
    const admitted = nonces.admit(v.nonce);
    if (admitted === 'replay') {
      log.warn({ remote: req.socket.remoteAddress }, 'replayed nonce rejected');
      throw new HttpError(401, 'auth', 'replayed request: this nonce was already used');
    }
    if (admitted === 'full') throw new HttpError(429, 'rate_limited', 'too many requests in the replay window; slow down');
    if (!buckets.take(v.device)) throw new HttpError(429, 'rate_limited', `rate limit for ${v.device} exceeded (${limits.rate_per_s}/s, burst ${limits.burst})`);
    return body;
  };

  const handleInvoke = async (body: Buffer, res: ServerResponse): Promise<void> => {
    let raw: unknown;
    try {
      raw = JSON.parse(body.toString('utf8'));
    } catch {
      throw new HttpError(400, 'usage', 'the body must be a JSON object');
    }
    const parsed = InvokeBodySchema.safeParse(raw);
    if (!parsed.success) {
      throw new HttpError(400, 'usage', parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; ').slice(0, 2000));
    }
    const b = parsed.data;
    if (!manifests.status().manifest) throw new HttpError(503, 'manifest_invalid', `the agent's manifest is not usable: ${manifests.status().error ?? 'unknown error'}`);
    if (inFlight >= limits.max_concurrent) throw new HttpError(503, 'busy', `the agent is already running ${inFlight} calls; try again shortly`);
    // The controller obtained the approval; the agent checks it exists, records who gave it, and
    // never lets it override a denial (decide() runs before the hook).
    const approve: ApprovalHook = async () => (b.approved_by
      ? { approved: true, by: b.approved_by }
      : { approved: false, by: 'agent', reason: 'it needs approval on this device and the request carries no approved_by' });
    inFlight++;
    let r;
    try {
      r = await invoker.invoke({
        device: config.device, capability: b.capability, args: b.args, actor: b.actor, requestId: b.request_id,
        context: { via: 'mesh', ...(b.approved_by ? { approved_by: b.approved_by } : {}) },
      }, approve);
    } finally {
      inFlight--;
    }
    const status = r.result ? 200
      : r.error?.code === 'invalid_args' || r.error?.code === 'unknown_capability' ? 400
        : r.error?.code === 'policy_denied' || r.error?.code === 'approval_rejected' ? 403
          : 500;
    sendJson(res, status, status === 200 ? { invoke: r } : { error: r.error, invoke: r });
  };

  const handleAudit = (url: URL, res: ServerResponse): void => {
    const afterText = url.searchParams.get('after') ?? '0';
    const limitText = url.searchParams.get('limit') ?? String(limits.audit_page_max);
    if (!AUDIT_QUERY.test(afterText) || !AUDIT_QUERY.test(limitText)) throw new HttpError(400, 'usage', 'after and limit must be whole numbers');
    const limit = Math.min(Number(limitText), limits.audit_page_max);
    if (limit < 1) throw new HttpError(400, 'usage', 'limit must be at least 1');
    let entries: AuditEntry[];
    try {
      entries = audit.readAfter(Number(afterText), limit);
    } catch (err) {
      throw new HttpError(500, 'audit_broken', toMpError(err).message);
    }
    const page: AuditPage = { device: config.device, head: audit.getHead(), entries };
    sendJson(res, 200, page);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const pathWithQuery = req.url ?? '/';
    if (pathWithQuery.length > 2048) throw new HttpError(414, 'usage', 'URL too long');
    const url = new URL(pathWithQuery, 'http://agent.invalid');
    const method = req.method ?? 'GET';
    const route = `${method} ${url.pathname}`;
    switch (route) {
      case 'GET /health':
        req.resume();
        sendJson(res, 200, health());
        return;
      case 'POST /v1/invoke': {
        const body = await authenticate(req, pathWithQuery);
        await handleInvoke(body, res);
        return;
      }
      case 'GET /v1/audit':
        await authenticate(req, pathWithQuery);
        handleAudit(url, res);
        return;
      default:
        req.resume();
        if (['/health', '/v1/invoke', '/v1/audit'].includes(url.pathname)) throw new HttpError(405, 'usage', `${method} is not allowed on ${url.pathname}`);
        throw new HttpError(404, 'not_found', `no such endpoint ${url.pathname.slice(0, 128)}`);
    }
  };

  const server = createServer({ maxHeaderSize: 16 * 1024 }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (res.headersSent) { res.destroy(); return; }
      if (err instanceof HttpError) {
        // After an oversize body the rest of the stream is not read: close the connection.
        const close: Record<string, string> = err.status === 413 ? { connection: 'close' } : {};
        sendError(res, err.status, err.code, err.message, close);
        return;
      }
      const e = toMpError(err);
      log.error({ code: e.code }, `request failed: ${e.message}`);
      sendError(res, 500, 'internal', 'internal error in the agent (see its log)');
    });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 60_000;
  // Longer than the controller's pool keep-alive, so the client always closes idle sockets first.
  server.keepAliveTimeout = 65_000;
  server.maxRequestsPerSocket = 0;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: config.listen.address, port: config.listen.port, exclusive: true }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  log.info({ address: addr.address, port: addr.port, manifest_sha256: first.manifest?.hash ?? null, audit_seq: audit.getHead()?.seq ?? 0 }, 'agent listening');

  let closed = false;
  return {
    server,
    address: { address: addr.address, port: addr.port },
    invoker,
    audit,
    async close() {
      if (closed) return;
      closed = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      audit.close();
    },
  };
}
