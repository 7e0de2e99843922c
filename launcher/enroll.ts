/**
 * The enrollment engine behind `meshpilot add-pc` (and, undone in reverse, `meshpilot revoke`).
 *
 * An enrollment is a list of steps; each has
 *   check(ctx)  is it already done? (re-runs and resumes skip what is in place)
 *   apply(ctx)  do it (idempotent: it may run again after a crash half-way through)
 *   undo(ctx)   take it away (tolerant: what is already gone is fine)
 * Progress goes to `onEvent` (one object per event: the CLI prints lines or JSON, the operator
 * room bot can forward them). Secrets never appear in events, the database or the log.
 *
 * State: one row per device in MESHPILOT_HOME/meshpilot.db `enrollments` (status, options, the
 * non-secret data steps learned — mesh IP, OS, public key, manifest text — and the state of each
 * step), plus `mesh_ips` (one row per allocated mesh address; UNIQUE, freed on undo/revoke).
 * Secrets live in MESHPILOT_HOME/keys/<device>/ (0600).
 *
 * A failing step undoes every step it touched, in reverse order, and reports each undo. A run that
 * was interrupted (Ctrl-C, kill -9, power cut) is picked up by the next `add-pc <device>`: resumed
 * when it names the same target, rolled back first otherwise. An enrollment that completed is
 * verified by a re-run (each step's check; what is broken, e.g. a stopped agent, is applied again)
 * and never rolled back.
 *
 * This module (with the step lists in enroll-wg.ts / enroll-ssh.ts) is the one launcher module
 * allowed to hold an ssh/local Host: enrollment installs the agent and WireGuard, which no
 * capability may do. Every enrollment and revocation is written to the controller's audit log.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { z } from 'zod';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase, type Db } from '../capabilities/db.js';
import { MeshpilotError, toMpError, type ErrorCode } from '../capabilities/errors.js';
import { ensureHome, resolveHome, type HomeLayout } from '../capabilities/home.js';
import { logger } from '../capabilities/log.js';
import { DEVICE_NAME, parseManifest, type TransportConfig } from '../capabilities/manifest.js';
import { LocalHost } from '../capabilities/transports/local.js';
import type { Host } from '../capabilities/transports/types.js';
import {
  acceptHostKey, knownHostsPath, knownKeysFor, probeHostKey, resolveTarget, SshHost, type SshTarget,
} from '../capabilities/transports/ssh.js';
import { readCredentials, writeCredentials, credentialsFile } from '../bots/credentials.js';
import { deactivateUser, registerWithSharedSecret } from '../bots/matrix.js';
import { botUserId, loadConfigOrThrow, serverNameOf, type Config } from './config.js';
import { readPidFile } from './supervisor.js';

const log = logger('enroll');

// ---- exit codes and events -------------------------------------------------------------------

/**
 * Exit codes of add-pc / revoke:
 *   0   done (live; or registered while no launcher runs: start one with `npm start`)
 *   1   a step failed; everything it had done was undone (nothing is left behind)
 *   2   usage: bad name or flags, the name is taken, no `mesh` config, another add-pc is running
 *   5   the target's ssh host key is not trusted yet (or changed): check it, pass --accept-host-key
 *   6   a step failed AND some undo failed too: the result lists what is left; run the same
 *       add-pc again (it resumes the cleanup) or `meshpilot revoke <name>`
 *   130 interrupted (Ctrl-C): run the same add-pc again to resume, or revoke to undo
 */
export const ENROLL_EXIT = { ok: 0, failed: 1, usage: 2, hostKey: 5, partial: 6, interrupted: 130 } as const;

export type Via = 'wg' | 'ssh';
export type EnrollStatus = 'running' | 'interrupted' | 'failed' | 'rolled_back' | 'registered' | 'live' | 'revoked';
export type StepState = 'pending' | 'running' | 'done' | 'failed' | 'undone' | 'undo_failed';

export type EnrollEvent =
  | { type: 'start'; device: string; via: Via; mode: 'new' | 'resume' | 'verify'; total: number; message: string }
  | { type: 'step'; device: string; index: number; total: number; step: string; title: string; status: 'running' | 'done' | 'skipped' | 'failed'; ms?: number; detail?: string; error?: { code: ErrorCode; message: string } }
  | { type: 'undo'; device: string; step: string; title: string; status: 'done' | 'failed'; message?: string }
  | { type: 'info' | 'warn'; device: string; message: string }
  | { type: 'result'; device: string; ok: boolean; status: EnrollStatus; exit: number; message: string; undone?: string[]; leftovers?: string[]; error?: { code: ErrorCode; message: string }; timings?: Record<string, number> };

export type OnEvent = (e: EnrollEvent) => void;

// ---- options -----------------------------------------------------------------------------------

export interface AddPcOptions {
  name: string;
  via: Via;
  /** alias (from ~/.ssh/config) or user@host[:port] */
  ssh: string;
  /** Private key for the ssh connection (default: the ssh transport's default keys). */
  sshKey?: string;
  os?: 'linux' | 'darwin';
  arch?: string;
  /** The manifest template profile for --via wg (default readonly). */
  profile?: 'readonly' | 'operator';
  dryRun?: boolean;
  /** SHA256:… the operator checked on the target. */
  acceptHostKey?: string;
  /** MESHPILOT_HOME (default resolveHome()). */
  home?: string;
  /** Asks the operator a question (host key confirmation); absent: non-interactive. */
  ask?: (question: string) => Promise<string>;
  /** Stops the run between steps (Ctrl-C). */
  signal?: AbortSignal;
  /** Replaces the wait for the bot's "live" message (tests, the operator room bot). */
  waitLive?: (w: LiveWait) => Promise<void>;
  /** Fault injection for tests: `fail:<step>` fails that step after it ran, `corrupt-upload` corrupts the agent upload. */
  fault?: string;
  /** Who runs it, for the audit log (default cli:<user>). */
  actor?: string;
}

export interface LiveWait {
  device: string;
  homeserverUrl: string;
  botUserId: string;
  botToken: string;
  /** Only messages at or after this time count. */
  sinceTs: number;
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface EnrollResult {
  ok: boolean;
  exit: number;
  status: EnrollStatus;
  message: string;
}

// ---- persisted enrollment state ------------------------------------------------------------------

/** Non-secret facts the steps learn, persisted after every step (so a resume has them). */
export const EnrollDataSchema = z.object({
  os: z.enum(['linux', 'darwin']).optional(),
  arch: z.string().max(32).optional(),
  home: z.string().max(1024).optional(),
  uid: z.number().int().optional(),
  sudo: z.boolean().optional(),
  systemd: z.boolean().optional(),
  node: z.string().max(1024).optional(),
  sshTransport: z.record(z.string(), z.unknown()).optional(),
  hostKeyAdded: z.object({ pattern: z.string(), keyType: z.string(), fingerprint: z.string() }).optional(),
  publicKey: z.string().max(64).optional(),
  hubPublicKey: z.string().max(64).optional(),
  hubTouched: z.boolean().optional(),
  ip: z.string().max(64).optional(),
  iface: z.string().max(15).optional(),
  installDir: z.string().max(1024).optional(),
  manifestText: z.string().max(256 * 1024).optional(),
  matrixTouched: z.boolean().optional(),
  botUserId: z.string().max(255).optional(),
  registeredAt: z.number().optional(),
  live: z.boolean().optional(),
  installMs: z.number().optional(),
}).strict();
export type EnrollData = z.infer<typeof EnrollDataSchema>;

const RowOptsSchema = z.object({ via: z.enum(['wg', 'ssh']), ssh: z.string(), sshKey: z.string().optional(), os: z.string().optional(), arch: z.string().optional(), profile: z.string().optional() });

export interface EnrollRow {
  device: string;
  via: Via;
  status: EnrollStatus;
  opts: z.infer<typeof RowOptsSchema>;
  data: EnrollData;
  steps: Record<string, StepState>;
  pid: number | null;
  pidStart: string | null;
  startedAt: string;
  updatedAt: string;
  error: string | null;
}

export class EnrollStore {
  constructor(readonly db: Db) {
    db.exec(`
      CREATE TABLE IF NOT EXISTS enrollments (
        device TEXT PRIMARY KEY, via TEXT NOT NULL, status TEXT NOT NULL, opts TEXT NOT NULL, data TEXT NOT NULL,
        steps TEXT NOT NULL, pid INTEGER, pid_start TEXT, started_at TEXT NOT NULL, updated_at TEXT NOT NULL, error TEXT);
      CREATE TABLE IF NOT EXISTS mesh_ips (ip TEXT PRIMARY KEY, device TEXT NOT NULL UNIQUE, allocated_at TEXT NOT NULL);
    `);
  }

  get(device: string): EnrollRow | undefined {
    const r = this.db.prepare('SELECT * FROM enrollments WHERE device = ?').get(device) as Record<string, unknown> | undefined;
    if (!r) return undefined;
    const data = EnrollDataSchema.safeParse(JSON.parse(String(r['data'])));
    return {
      device: String(r['device']), via: r['via'] as Via, status: r['status'] as EnrollStatus,
      opts: RowOptsSchema.parse(JSON.parse(String(r['opts']))), data: data.success ? data.data : {},
      steps: JSON.parse(String(r['steps'])) as Record<string, StepState>,
      pid: typeof r['pid'] === 'number' ? r['pid'] : null, pidStart: typeof r['pid_start'] === 'string' ? r['pid_start'] : null,
      startedAt: String(r['started_at']), updatedAt: String(r['updated_at']), error: typeof r['error'] === 'string' ? r['error'] : null,
    };
  }

  put(row: EnrollRow): void {
    this.db.prepare(`INSERT INTO enrollments (device, via, status, opts, data, steps, pid, pid_start, started_at, updated_at, error)
      VALUES (@device, @via, @status, @opts, @data, @steps, @pid, @pid_start, @started_at, @updated_at, @error)
      ON CONFLICT(device) DO UPDATE SET via=excluded.via, status=excluded.status, opts=excluded.opts, data=excluded.data, steps=excluded.steps,
        pid=excluded.pid, pid_start=excluded.pid_start, started_at=excluded.started_at, updated_at=excluded.updated_at, error=excluded.error`).run({
      device: row.device, via: row.via, status: row.status, opts: JSON.stringify(row.opts), data: JSON.stringify(row.data),
      steps: JSON.stringify(row.steps), pid: row.pid, pid_start: row.pidStart, started_at: row.startedAt, updated_at: new Date().toISOString(), error: row.error,
    });
  }

  ipOf(device: string): string | undefined {
    const r = this.db.prepare('SELECT ip FROM mesh_ips WHERE device = ?').get(device) as { ip: string } | undefined;
    return r?.ip;
  }

  /** Takes the first free address of `candidates` for `device` (UNIQUE makes two enrollments never share one). */
  allocateIp(device: string, candidates: Iterable<string>, taken: Set<string>): string | undefined {
    return this.db.transaction(() => {
      const mine = this.ipOf(device);
      if (mine) return mine;
      const used = new Set((this.db.prepare('SELECT ip FROM mesh_ips').all() as Array<{ ip: string }>).map((r) => r.ip));
      for (const ip of candidates) {
        if (used.has(ip) || taken.has(ip)) continue;
        this.db.prepare('INSERT INTO mesh_ips (ip, device, allocated_at) VALUES (?, ?, ?)').run(ip, device, new Date().toISOString());
        return ip;
      }
      return undefined;
    }).immediate();
  }

  freeIp(device: string): void {
    this.db.prepare('DELETE FROM mesh_ips WHERE device = ?').run(device);
  }
}

// ---- remote execution --------------------------------------------------------------------------

export interface ShResult { code: number | null; stdout: string; stderr: string }

/** A machine enrollment runs shell scripts on: a target over ssh, the hub over ssh or locally. */
export interface Remote {
  readonly where: string;
  sh(script: string, o?: { stdin?: string | Buffer; timeoutMs?: number; privileged?: boolean }): Promise<ShResult>;
  /** sh() that throws exec_failed (with the first lines of stderr) on a non-zero exit. */
  shOk(script: string, o?: { stdin?: string | Buffer; timeoutMs?: number; privileged?: boolean; what?: string }): Promise<string>;
  close(): Promise<void>;
}

class HostRemote implements Remote {
  constructor(readonly where: string, private readonly host: Host, private readonly sudo: () => boolean) {}

  async sh(script: string, o: { stdin?: string | Buffer; timeoutMs?: number; privileged?: boolean } = {}): Promise<ShResult> {
    const argv = o.privileged && this.sudo() ? ['sudo', '-n', 'sh', '-c', script] : ['sh', '-c', script];
    const out = await this.host.exec({
      argv, timeoutMs: o.timeoutMs ?? 60_000, maxOutputBytes: 1024 * 1024, env: { LC_ALL: 'C' },
      ...(o.stdin !== undefined ? { stdin: o.stdin } : {}),
    });
    if (out.timedOut) throw new MeshpilotError('timeout', `a command on ${this.where} did not finish in ${Math.round((o.timeoutMs ?? 60_000) / 1000)} s`);
    return { code: out.exitCode, stdout: out.stdout.toString('utf8'), stderr: out.stderr.toString('utf8') };
  }

  async shOk(script: string, o: { stdin?: string | Buffer; timeoutMs?: number; privileged?: boolean; what?: string } = {}): Promise<string> {
    const r = await this.sh(script, o);
    if (r.code !== 0) {
      const why = r.stderr.trim().split('\n').filter(Boolean).slice(-3).join(' / ').slice(0, 600) || `exit ${r.code}`;
      throw new MeshpilotError('exec_failed', `${o.what ?? 'a command'} failed on ${this.where}: ${why}`);
    }
    return r.stdout;
  }

  async close(): Promise<void> {
    await this.host.close?.();
  }
}

/** `alias` or `user@host[:port]` (a bare name is an alias when the ssh config file exists, else a host). */
export function parseSshSpec(spec: string, key?: string): Extract<TransportConfig, { kind: 'ssh' }> {
  const s = spec.trim();
  if (!s || s.length > 300 || /\s/.test(s)) throw new MeshpilotError('usage', `--ssh must be an alias or user@host[:port] (got ${JSON.stringify(spec.slice(0, 80))})`);
  const m = /^(?:([A-Za-z0-9._-]{1,64})@)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253})(?::(\d{1,5}))?$/.exec(s);
  if (!m) throw new MeshpilotError('usage', `--ssh must be an alias or user@host[:port] (got ${JSON.stringify(spec.slice(0, 80))})`);
  const [, user, hostRaw = '', portRaw] = m;
  const host = hostRaw.replace(/^\[|\]$/g, '');
  const port = portRaw ? Number(portRaw) : undefined;
  if (port !== undefined && (port < 1 || port > 65535)) throw new MeshpilotError('usage', `--ssh port ${portRaw} is not a port number`);
  const keyPart = key ? { key: path.resolve(key) } : {};
  if (!user && port === undefined && existsSync(process.env['MESHPILOT_SSH_CONFIG'] || path.join(os.homedir(), '.ssh', 'config')) && !/^[\d.]+$/.test(host)) {
    return { kind: 'ssh', alias: host, ...keyPart };
  }
  return { kind: 'ssh', host, ...(port !== undefined ? { port } : {}), ...(user ? { user } : {}), ...keyPart };
}

export function sshRemote(label: string, transport: Extract<TransportConfig, { kind: 'ssh' }>, sudo: () => boolean = () => false): Remote {
  const host = new SshHost(label, transport);
  const t = host.resolved();
  return new HostRemote(`${label} (${t.user}@${t.host}:${t.port})`, host, sudo);
}

export function localRemote(label: string): Remote {
  return new HostRemote(label, new LocalHost(label), () => process.getuid?.() !== 0);
}

// ---- host keys ---------------------------------------------------------------------------------

/**
 * Makes sure the target's host key is trusted: already known, or the operator confirms it (the
 * fingerprint given with --accept-host-key, or "yes" on the terminal). Returns what was added.
 */
export async function ensureHostKey(target: SshTarget, o: { accept?: string; ask?: (q: string) => Promise<string>; device: string }): Promise<EnrollData['hostKeyAdded']> {
  const presented = await probeHostKey(target);
  const known = knownKeysFor(target.host, target.port);
  if (known.some((k) => k.keyType === presented.keyType && k.fingerprint === presented.fingerprint)) return undefined;
  const pattern = `[${target.host.toLowerCase()}]:${target.port}`;
  if (known.length > 0) {
    throw new MeshpilotError('host_key', `HOST KEY CHANGED for ${pattern}: known ${known.map((k) => `${k.keyType} ${k.fingerprint}`).join(', ')}, presented ${presented.keyType} ${presented.fingerprint}. Refusing to enroll ${o.device}; if the server was reinstalled, check the new key and run: meshpilot ssh trust … --replace (or remove the line from ${knownHostsPath()})`);
  }
  let ok = false;
  if (o.accept) {
    if (o.accept.trim() !== presented.fingerprint) {
      throw new MeshpilotError('host_key', `${pattern} presents ${presented.keyType} ${presented.fingerprint}, not ${o.accept.trim()}: nothing was trusted, nothing was changed`);
    }
    ok = true;
  } else if (o.ask) {
    const answer = await o.ask(`The host key of ${pattern} is not known yet: ${presented.keyType} ${presented.fingerprint}\nCheck it on the machine (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub). Trust it? Type yes: `);
    ok = answer.trim().toLowerCase() === 'yes';
    if (!ok) throw new MeshpilotError('host_key', `the host key of ${pattern} was not confirmed: nothing was changed`);
  }
  if (!ok) {
    throw new MeshpilotError('host_key', `the host key of ${pattern} is not known yet: it presents ${presented.keyType} ${presented.fingerprint}. Check it on the machine (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then run again with --accept-host-key ${presented.fingerprint}`);
  }
  acceptHostKey({ host: target.host, port: target.port, keyType: presented.keyType, fingerprint: presented.fingerprint });
  return { pattern, keyType: presented.keyType, fingerprint: presented.fingerprint };
}

/** Removes one known_hosts line that enrollment added. */
export function forgetHostKey(added: NonNullable<EnrollData['hostKeyAdded']>): void {
  const file = knownHostsPath();
  if (!existsSync(file)) return;
  const lines = readFileSync(file, 'utf8').split('\n');
  const kept = lines.filter((l) => {
    const [p, t, f] = l.trim().split(/\s+/);
    return !(p?.toLowerCase() === added.pattern && t === added.keyType && f === added.fingerprint);
  });
  if (kept.length !== lines.length) writeFileSync(file, kept.join('\n'), { mode: 0o600 });
}

// ---- the context the steps share ---------------------------------------------------------------

export interface EnrollContext {
  device: string;
  via: Via;
  opts: AddPcOptions;
  home: HomeLayout;
  config: Config;
  store: EnrollStore;
  data: EnrollData;
  /** Persists `data` now (call before doing something an undo must know about). */
  save(): void;
  emit: OnEvent;
  info(message: string): void;
  warn(message: string): void;
  /** The ssh transport of the target (from --ssh, --ssh-key). */
  targetTransport: Extract<TransportConfig, { kind: 'ssh' }>;
  target(): Remote;
  /** True while undoing because of revoke (archive instead of delete). */
  revoking: boolean;
  close(): Promise<void>;
}

export interface Step {
  id: string;
  title: string;
  /** Runs even when check() says done (preflight: it learns facts later steps need). */
  always?: boolean;
  check(ctx: EnrollContext): Promise<boolean>;
  apply(ctx: EnrollContext): Promise<string | void>;
  undo(ctx: EnrollContext): Promise<string | void>;
}

export function keysDir(ctx: { home: HomeLayout; device: string }): string {
  return path.join(ctx.home.keys, ctx.device);
}

/** Writes a secret file (0600) atomically, its folder 0700. */
export function writeSecret(file: string, data: string | Buffer): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  chmodSync(path.dirname(file), 0o700);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Single-quotes a value for sh. */
export function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// ---- shared steps: preflight, Matrix, registry -------------------------------------------------

export const NODE_MIN_MAJOR = 18;

const PREFLIGHT_SCRIPT = [
  'uname -sm',
  'id -u',
  'printf "%s\\n" "$HOME"',
  'command -v node 2>/dev/null || echo -',
  '(node --version 2>/dev/null || echo -) | head -n 1',
  'if [ -d /run/systemd/system ]; then echo systemd; else echo nosystemd; fi',
  'if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then echo priv; else echo nopriv; fi',
].join('\n');

export function preflightStep(o: { needRoot: boolean }): Step {
  return {
    id: 'preflight', title: 'checking ssh access and the machine', always: true,
    check: async () => false,
    async apply(ctx) {
      const target = resolveTarget(ctx.device, ctx.targetTransport, {});
      ctx.data.sshTransport = ctx.targetTransport as Record<string, unknown>;
      const added = await ensureHostKey(target, { device: ctx.device, ...(ctx.opts.acceptHostKey ? { accept: ctx.opts.acceptHostKey } : {}), ...(ctx.opts.ask ? { ask: ctx.opts.ask } : {}) });
      if (added) {
        ctx.data.hostKeyAdded = added;
        ctx.save();
      }
      const out = (await ctx.target().shOk(PREFLIGHT_SCRIPT, { what: 'the preflight check', timeoutMs: 20_000 })).split('\n');
      const [sys = '', machine = ''] = (out[0] ?? '').trim().split(/\s+/);
      const detectedOs = sys === 'Linux' ? 'linux' : sys === 'Darwin' ? 'darwin' : undefined;
      const osName = ctx.opts.os ?? detectedOs;
      if (!osName) throw new MeshpilotError('config', `${ctx.device} runs ${sys || 'an unknown system'}: add-pc supports Linux and macOS targets (pass --os to override)`);
      ctx.data.os = osName;
      ctx.data.arch = ctx.opts.arch ?? ({ x86_64: 'x64', amd64: 'x64', aarch64: 'arm64', arm64: 'arm64', armv7l: 'arm' } as Record<string, string>)[machine] ?? machine;
      ctx.data.uid = Number(out[1]);
      ctx.data.home = (out[2] ?? '').trim() || '/';
      const node = (out[3] ?? '').trim();
      ctx.data.node = node && node !== '-' ? node : undefined;
      ctx.data.systemd = (out[5] ?? '').trim() === 'systemd';
      const priv = (out[6] ?? '').trim() === 'priv';
      ctx.data.sudo = ctx.data.uid !== 0;
      if (o.needRoot && !priv) {
        throw new MeshpilotError('permission', `${target.user} on ${ctx.device} is not root and cannot run sudo without a password: WireGuard and the agent service need root (use root@…, or allow passwordless sudo)`);
      }
      return `${ctx.data.os}/${ctx.data.arch}, ${target.user}@${target.host}:${target.port}${added ? ', host key trusted' : ''}`;
    },
    async undo(ctx) {
      if (ctx.data.hostKeyAdded && !ctx.revoking) {
        forgetHostKey(ctx.data.hostKeyAdded);
        return 'host key forgotten';
      }
      return undefined;
    },
  };
}

function matrixSecret(config: Config): string {
  const s = config.matrix.registration_shared_secret;
  if (!s) throw new MeshpilotError('config', 'matrix.registration_shared_secret is not set (config.yaml or MESHPILOT_REGISTRATION_SECRET): add-pc creates the bot user with it');
  return s;
}

async function matrixFetch(url: string, init: { method?: string; token?: string; body?: unknown; timeoutMs?: number }): Promise<{ status: number; json: unknown }> {
  let res: Response;
  try {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (init.token) headers['authorization'] = `Bearer ${init.token}`;
    res = await fetch(url, { method: init.method ?? 'GET', headers, body: init.body === undefined ? null : JSON.stringify(init.body), signal: AbortSignal.timeout(init.timeoutMs ?? 15_000) });
  } catch (err) {
    throw new MeshpilotError('unreachable', `cannot reach the Matrix homeserver: ${(err as Error).message}`);
  }
  const text = await res.text();
  if (text.length > 4 * 1024 * 1024) throw new MeshpilotError('output_limit', 'the homeserver answered with more than 4 MiB');
  let json: unknown = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  return { status: res.status, json };
}

const AdminFileSchema = z.object({ userId: z.string().max(255), accessToken: z.string().min(1).max(4096), password: z.string().min(1).max(512).optional() }).strict();

function hsUrl(config: Config): string {
  return config.matrix.homeserver_url.replace(/\/+$/, '');
}

async function whoami(config: Config, token: string): Promise<string | undefined> {
  const r = await matrixFetch(`${hsUrl(config)}/_matrix/client/v3/account/whoami`, { token });
  if (r.status !== 200) return undefined;
  const p = z.object({ user_id: z.string().max(255) }).safeParse(r.json);
  return p.success ? p.data.user_id : undefined;
}

async function login(config: Config, userId: string, password: string): Promise<{ userId: string; accessToken: string; deviceId?: string }> {
  const r = await matrixFetch(`${hsUrl(config)}/_matrix/client/v3/login`, { method: 'POST', body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: userId }, password, initial_device_display_name: 'meshpilot' } });
  const p = z.object({ user_id: z.string().max(255), access_token: z.string().min(1).max(4096), device_id: z.string().max(255).optional() }).safeParse(r.json);
  if (r.status !== 200 || !p.success) throw new MeshpilotError(r.status >= 500 ? 'unreachable' : 'auth', `Matrix login as ${userId} failed (HTTP ${r.status})`);
  return { userId: p.data.user_id, accessToken: p.data.access_token, ...(p.data.device_id ? { deviceId: p.data.device_id } : {}) };
}

/** meshpilot's own Synapse admin account (keys/matrix-admin.json), created with the shared secret on first use. */
export async function adminToken(home: HomeLayout, config: Config): Promise<string> {
  const file = path.join(home.keys, 'matrix-admin.json');
  let saved: z.infer<typeof AdminFileSchema> | undefined;
  if (existsSync(file)) {
    const p = AdminFileSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
    if (p.success) saved = p.data;
  }
  if (saved && (await whoami(config, saved.accessToken)) === saved.userId) return saved.accessToken;
  if (saved?.password) {
    const l = await login(config, saved.userId, saved.password);
    writeSecret(file, JSON.stringify({ ...saved, accessToken: l.accessToken }));
    return l.accessToken;
  }
  const password = randomBytes(24).toString('base64url');
  const localpart = `${config.matrix.operator_bot.replace(/[^a-z0-9._=-]/g, '')}_admin`;
  const r = await registerWithSharedSecret({ homeserverUrl: hsUrl(config), sharedSecret: matrixSecret(config), localpart, password, admin: true, displayname: 'meshpilot admin' });
  writeSecret(file, JSON.stringify({ userId: r.userId, accessToken: r.accessToken, password }));
  return r.accessToken;
}

async function adminUser(config: Config, admin: string, userId: string): Promise<{ deactivated: boolean } | undefined> {
  const r = await matrixFetch(`${hsUrl(config)}/_synapse/admin/v2/users/${encodeURIComponent(userId)}`, { token: admin });
  if (r.status === 404) return undefined;
  // Synapse before 1.7x answers `deactivated` as 0/1 (its database column), later ones as a boolean.
  const p = z.object({ deactivated: z.union([z.boolean(), z.number().int().min(0).max(1)]).transform(Boolean) }).loose().safeParse(r.json);
  if (r.status !== 200 || !p.success) throw new MeshpilotError('unreachable', `Matrix admin lookup of ${userId} failed (HTTP ${r.status})`);
  return { deactivated: p.data.deactivated };
}

export const matrixStep: Step = {
  id: 'matrix', title: 'creating the Matrix bot user',
  async check(ctx) {
    const creds = readCredentials(ctx.home.keys, ctx.device);
    if (!creds || creds.userId !== botUserId(ctx.config, ctx.device)) return false;
    return (await whoami(ctx.config, creds.accessToken)) === creds.userId;
  },
  async apply(ctx) {
    const config = ctx.config;
    const userId = botUserId(config, ctx.device);
    const localpart = `${config.matrix.bot_prefix}${ctx.device}`;
    const pwFile = path.join(keysDir(ctx), 'matrix.password');
    const hadPassword = existsSync(pwFile);
    const password = hadPassword ? readFileSync(pwFile, 'utf8').trim() : randomBytes(24).toString('base64url');
    if (!hadPassword) writeSecret(pwFile, password);
    const admin = await adminToken(ctx.home, config);
    ctx.data.matrixTouched = true;
    ctx.data.botUserId = userId;
    ctx.save();
    const displayname = `🖥 ${ctx.device}`;
    let creds: { userId: string; accessToken: string; deviceId?: string };
    const existing = await adminUser(config, admin, userId);
    if (!existing) {
      const r = await registerWithSharedSecret({ homeserverUrl: hsUrl(config), sharedSecret: matrixSecret(config), localpart, password, displayname });
      creds = { userId: r.userId, accessToken: r.accessToken, ...(r.deviceId ? { deviceId: r.deviceId } : {}) };
    } else if (existing.deactivated) {
      // Synapse never frees a deactivated name: a device enrolled again (after revoke or a rollback) gets it back.
      const r = await matrixFetch(`${hsUrl(config)}/_synapse/admin/v2/users/${encodeURIComponent(userId)}`, { method: 'PUT', token: admin, body: { deactivated: false, password, displayname } });
      if (r.status !== 200) throw new MeshpilotError('exec_failed', `reactivating the Matrix user ${userId} failed (HTTP ${r.status})`);
      creds = await login(config, userId, password);
      ctx.info(`the Matrix user ${userId} was deactivated by an earlier revoke or rollback: reactivated it`);
    } else if (hadPassword) {
      creds = await login(config, userId, password);
    } else {
      throw new MeshpilotError('config', `the Matrix user ${userId} already exists and meshpilot has no credentials for it: pick another device name, or remove that user`);
    }
    const setName = await matrixFetch(`${hsUrl(config)}/_matrix/client/v3/profile/${encodeURIComponent(userId)}/displayname`, { method: 'PUT', token: creds.accessToken, body: { displayname } });
    if (setName.status !== 200) ctx.warn(`could not set the display name of ${userId} (HTTP ${setName.status})`);
    writeCredentials(ctx.home.keys, ctx.device, { ...creds, homeserverUrl: config.matrix.homeserver_url });
    chmodSync(credentialsFile(ctx.home.keys, ctx.device), 0o600);
    ctx.data.registeredAt = Date.now();
    return userId;
  },
  async undo(ctx) {
    const userId = ctx.data.botUserId ?? botUserId(ctx.config, ctx.device);
    const hasCreds = existsSync(credentialsFile(ctx.home.keys, ctx.device));
    if (!ctx.data.matrixTouched && !hasCreds) {
      if (!ctx.revoking) {
        rmSync(path.join(keysDir(ctx), 'matrix.password'), { force: true });
        try { if (readdirSync(keysDir(ctx)).length === 0) rmSync(keysDir(ctx), { recursive: true, force: true }); } catch { /* gone */ }
      }
      return undefined;
    }
    const admin = await adminToken(ctx.home, ctx.config);
    const u = await adminUser(ctx.config, admin, userId);
    if (u && !u.deactivated) await deactivateUser({ homeserverUrl: hsUrl(ctx.config), adminToken: admin, userId });
    if (!ctx.revoking) {
      rmSync(credentialsFile(ctx.home.keys, ctx.device), { force: true });
      rmSync(path.join(keysDir(ctx), 'matrix.password'), { force: true });
      // the bot's end-to-end encryption keys belong to the deactivated account: useless, and secret
      rmSync(path.join(keysDir(ctx), 'crypto'), { recursive: true, force: true });
      rmSync(path.join(keysDir(ctx), 'cross-signing.json'), { force: true });
      try { if (readdirSync(keysDir(ctx)).length === 0) rmSync(keysDir(ctx), { recursive: true, force: true }); } catch { /* gone */ }
    }
    ctx.data.matrixTouched = false;
    return `${userId} deactivated`;
  },
};

/** Polls the bot's own view of its rooms until it has posted "✓ <device> live" (after sinceTs). */
export async function waitForLiveMessage(w: LiveWait): Promise<void> {
  // Never /sync as the bot: its to-device messages (encryption keys) would be acknowledged here and
  // lost to the bot. Instead poll the bot's DMs (m.direct) for the `dev.meshpilot.live` state event it
  // sets next to its "live" message (state is never encrypted), then check that message exists.
  const deadline = Date.now() + w.timeoutMs;
  const want = `✓ ${w.device} live`;
  const base = w.homeserverUrl.replace(/\/+$/, '');
  const Direct = z.record(z.string().max(255), z.array(z.string().max(255)).max(100));
  const Live = z.object({ device: z.string().max(64), ts: z.number(), event_id: z.string().max(255) }).loose();
  const Event = z.object({ sender: z.string().max(255), type: z.string().max(255), content: z.object({ body: z.unknown().optional() }).loose() }).loose();
  const enc = encodeURIComponent;
  while (Date.now() < deadline) {
    if (w.signal?.aborted) throw new MeshpilotError('internal', 'interrupted');
    try {
      const d = await matrixFetch(`${base}/_matrix/client/v3/user/${enc(w.botUserId)}/account_data/m.direct`, { token: w.botToken });
      const direct = d.status === 200 ? Direct.safeParse(d.json) : undefined;
      for (const room of new Set(Object.values(direct?.success ? direct.data : {}).flat())) {
        const st = await matrixFetch(`${base}/_matrix/client/v3/rooms/${enc(room)}/state/dev.meshpilot.live/`, { token: w.botToken });
        const live = st.status === 200 ? Live.safeParse(st.json) : undefined;
        if (!live?.success || live.data.device !== w.device || live.data.ts < w.sinceTs - 1000) continue;
        const ev = await matrixFetch(`${base}/_matrix/client/v3/rooms/${enc(room)}/event/${enc(live.data.event_id)}`, { token: w.botToken });
        const e = ev.status === 200 ? Event.safeParse(ev.json) : undefined;
        if (!e?.success || e.data.sender !== w.botUserId) continue;
        // An encrypted DM: the body is ciphertext; that the bot sent it is what can be checked here.
        if (e.data.type === 'm.room.encrypted' || (e.data.type === 'm.room.message' && typeof e.data.content.body === 'string' && e.data.content.body.startsWith(want))) return;
      }
    } catch {
      // homeserver briefly unreachable: keep polling until the deadline
    }
    await new Promise((res) => setTimeout(res, 500));
  }
  throw new MeshpilotError('timeout', `the bot of ${w.device} did not post "${want}" within ${Math.round(w.timeoutMs / 1000)} s: check the launcher's log (is the homeserver reachable from it?)`);
}

/** Writes manifests/<device>.yaml for the controller; the running launcher starts its bot, which says "live". */
export const registerStep: Step = {
  id: 'register', title: 'registering the device and waiting for its bot',
  async check(ctx) {
    const file = path.join(ctx.home.manifests, `${ctx.device}.yaml`);
    if (!ctx.data.manifestText || !existsSync(file)) return false;
    if (readFileSync(file, 'utf8') !== ctx.data.manifestText) return false;
    const launcher = readPidFile(ctx.home.root);
    return ctx.data.live === true || !launcher?.alive;
  },
  async apply(ctx) {
    const text = ctx.data.manifestText;
    if (!text) throw new MeshpilotError('internal', 'no manifest was prepared');
    const parsed = parseManifest(text, `${ctx.device}.yaml`);
    if (!parsed.ok) throw new MeshpilotError('internal', `the generated manifest is invalid: ${parsed.issues.map((i) => i.message).join('; ')}`);
    const file = path.join(ctx.home.manifests, `${ctx.device}.yaml`);
    const tmp = path.join(ctx.home.manifests, `.${ctx.device}.yaml.tmp`);
    writeFileSync(tmp, text, { mode: 0o600 });
    renameSync(tmp, file);
    const launcher = readPidFile(ctx.home.root);
    if (!launcher?.alive) {
      ctx.data.live = false;
      ctx.warn(`no launcher is running, so the bot of ${ctx.device} is not started yet: run \`npm start\` (or \`meshpilot up\`); it will greet you in a DM`);
      return 'registered (no launcher running)';
    }
    try { process.kill(launcher.pid, 'SIGHUP'); } catch { /* it also watches the folder */ }
    const creds = readCredentials(ctx.home.keys, ctx.device);
    if (!creds) throw new MeshpilotError('internal', 'the Matrix credentials are missing');
    const wait = ctx.opts.waitLive ?? waitForLiveMessage;
    await wait({
      device: ctx.device, homeserverUrl: creds.homeserverUrl ?? ctx.config.matrix.homeserver_url, botUserId: creds.userId, botToken: creds.accessToken,
      sinceTs: ctx.data.registeredAt ?? 0, timeoutMs: (ctx.config.mesh?.live_timeout_s ?? 60) * 1000, ...(ctx.opts.signal ? { signal: ctx.opts.signal } : {}),
    });
    ctx.data.live = true;
    return 'the bot said live';
  },
  async undo(ctx) {
    const file = path.join(ctx.home.manifests, `${ctx.device}.yaml`);
    if (!existsSync(file)) return undefined;
    rmSync(file, { force: true });
    const launcher = readPidFile(ctx.home.root);
    if (launcher?.alive) { try { process.kill(launcher.pid, 'SIGHUP'); } catch { /* watched anyway */ } }
    ctx.data.live = false;
    return 'manifest removed (the launcher stops its bot)';
  },
};

// ---- the engine ---------------------------------------------------------------------------------

function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function pidAlive(pid: number | null, start: string | null): boolean {
  if (!pid) return false;
  try { process.kill(pid, 0); } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false; }
  const now = processStart(pid);
  return start === null || now === null || now === start;
}

function cliActor(): string {
  try { return `cli:${os.userInfo().username}`; } catch { return 'cli:unknown'; }
}

export interface Session {
  home: HomeLayout;
  config: Config;
  db: Db;
  store: EnrollStore;
  audit: SqliteAuditLog;
  close(): void;
}

export function openSession(homeRoot?: string): Session {
  const { home } = ensureHome(homeRoot ?? resolveHome());
  const config = loadConfigOrThrow(home.config);
  const db = openDatabase(home.db);
  return { home, config, db, store: new EnrollStore(db), audit: new SqliteAuditLog(db), close: () => db.close() };
}

export function makeContext(s: Session, row: EnrollRow, opts: AddPcOptions, emit: OnEvent, revoking: boolean): EnrollContext {
  let target: Remote | undefined;
  const transport = parseSshSpec(row.opts.ssh, row.opts.sshKey);
  const ctx: EnrollContext = {
    device: row.device, via: row.via, opts, home: s.home, config: s.config, store: s.store, data: row.data,
    save: () => { row.data = ctx.data; s.store.put(row); },
    emit,
    info: (message) => emit({ type: 'info', device: row.device, message }),
    warn: (message) => emit({ type: 'warn', device: row.device, message }),
    targetTransport: transport,
    target: () => (target ??= sshRemote(row.device, transport, () => ctx.data.sudo === true)),
    revoking,
    close: async () => { await target?.close(); },
  };
  return ctx;
}

function audit(s: Session, device: string, actor: string, capability: string, args: Record<string, unknown>, ok: boolean, reason: string | null, code: ErrorCode | null): void {
  try {
    s.audit.append({
      device, actor, request_id: null, capability, args, decision: 'allowed', outcome: ok ? 'ok' : 'error',
      exit_code: null, output_sha256: null, duration_ms: null, error_code: code, reason, context: null,
    });
  } catch (err) {
    log.warn({ err: toMpError(err).message }, 'could not write the audit entry');
  }
}
export { audit as auditEnrollment };

/** Undoes the steps of `row` that were touched, in reverse order. Returns what was undone and what is left. */
export async function undoSteps(ctx: EnrollContext, steps: readonly Step[], row: EnrollRow, s: Session, opts: { continueOnError: boolean }): Promise<{ undone: string[]; leftovers: string[] }> {
  const undone: string[] = [];
  const leftovers: string[] = [];
  for (const step of [...steps].reverse()) {
    const st = row.steps[step.id] ?? 'pending';
    if (st === 'pending' || st === 'undone') continue;
    try {
      const msg = await step.undo(ctx);
      row.steps[step.id] = 'undone';
      undone.push(step.id);
      ctx.emit({ type: 'undo', device: ctx.device, step: step.id, title: step.title, status: 'done', ...(msg ? { message: msg } : {}) });
    } catch (err) {
      const e = toMpError(err);
      row.steps[step.id] = 'undo_failed';
      leftovers.push(`${step.id}: ${e.message}`);
      ctx.emit({ type: 'undo', device: ctx.device, step: step.id, title: step.title, status: 'failed', message: e.message });
      if (!opts.continueOnError) break;
    }
    row.data = ctx.data;
    s.store.put(row);
  }
  return { undone, leftovers };
}

export type StepsFor = (via: Via, config: Config) => Step[];

/**
 * Runs (or resumes, or verifies) the enrollment of opts.name. `stepsFor` gives the step list for
 * the transport (enroll-wg.ts / enroll-ssh.ts). Never throws: the result carries the exit code.
 */
export async function runEnrollment(opts: AddPcOptions, stepsFor: StepsFor, onEvent: OnEvent): Promise<EnrollResult> {
  const device = opts.name;
  const finish = (r: Omit<Extract<EnrollEvent, { type: 'result' }>, 'type' | 'device'>): EnrollResult => {
    onEvent({ type: 'result', device, ...r });
    return { ok: r.ok, exit: r.exit, status: r.status, message: r.message };
  };
  if (!DEVICE_NAME.test(device) || device.length > 32) {
    return finish({ ok: false, status: 'rolled_back', exit: ENROLL_EXIT.usage, message: `"${device.slice(0, 40)}" is not a valid device name: 1-32 characters of a-z, 0-9 and -, not starting with -`, error: { code: 'usage', message: 'invalid device name' } });
  }
  let s: Session;
  try {
    s = openSession(opts.home);
    if (opts.via === 'wg' && !s.config.mesh) throw new MeshpilotError('config', 'add-pc --via wg needs a `mesh` section in config.yaml (hub interface, address/subnet, endpoint, ssh or local)');
    parseSshSpec(opts.ssh, opts.sshKey);
  } catch (err) {
    const e = toMpError(err);
    return finish({ ok: false, status: 'rolled_back', exit: ENROLL_EXIT.usage, message: e.message, error: e });
  }
  const actor = opts.actor ?? cliActor();
  const steps = stepsFor(opts.via, s.config);
  const total = steps.length;
  const rowOpts = { via: opts.via, ssh: opts.ssh, ...(opts.sshKey ? { sshKey: path.resolve(opts.sshKey) } : {}), ...(opts.os ? { os: opts.os } : {}), ...(opts.arch ? { arch: opts.arch } : {}), ...(opts.profile ? { profile: opts.profile } : {}) };
  let mode: 'new' | 'resume' | 'verify' = 'new';
  let row = s.store.get(device);
  const contexts: EnrollContext[] = [];
  try {
    if (row && row.status === 'running' && pidAlive(row.pid, row.pidStart) && row.pid !== process.pid) {
      return finish({ ok: false, status: 'running', exit: ENROLL_EXIT.usage, message: `another add-pc for ${device} is running (pid ${row.pid}); wait for it, or stop it`, error: { code: 'usage', message: 'already running' } });
    }
    const sameTarget = row !== undefined && row.via === opts.via && row.opts.ssh === opts.ssh;
    if (row && (row.status === 'live' || row.status === 'registered')) {
      if (!sameTarget) return finish({ ok: false, status: row.status, exit: ENROLL_EXIT.usage, message: `${device} is already enrolled (via ${row.via}, ${row.opts.ssh}): revoke it first (meshpilot revoke ${device})`, error: { code: 'usage', message: 'name taken' } });
      mode = 'verify';
    } else if (row && (row.status === 'running' || row.status === 'interrupted' || row.status === 'failed')) {
      if (sameTarget) {
        mode = 'resume';
        const done = steps.filter((st) => row!.steps[st.id] === 'done').length;
        onEvent({ type: 'info', device, message: `resuming the interrupted enrollment of ${device} (${done} of ${total} steps were done; each is checked again)` });
      } else {
        onEvent({ type: 'info', device, message: `rolling back the interrupted enrollment of ${device} (it was for ${row.via} ${row.opts.ssh}) before starting again` });
        const old = row;
        const octx = makeContext(s, old, opts, onEvent, false);
        contexts.push(octx);
        const r = await undoSteps(octx, stepsFor(old.via, s.config), old, s, { continueOnError: true });
        if (r.leftovers.length) {
          old.status = 'failed';
          s.store.put(old);
          return finish({ ok: false, status: 'failed', exit: ENROLL_EXIT.partial, message: `could not roll back the earlier enrollment of ${device}: ${r.leftovers.join('; ')}`, leftovers: r.leftovers, undone: r.undone });
        }
        s.store.freeIp(device);
        row = undefined;
      }
    }
    if (mode === 'new') {
      const manifestFile = path.join(s.home.manifests, `${device}.yaml`);
      if (existsSync(manifestFile)) {
        return finish({ ok: false, status: 'rolled_back', exit: ENROLL_EXIT.usage, message: `a device named ${device} already exists (${manifestFile}); pick another name, or revoke it first`, error: { code: 'usage', message: 'name taken' } });
      }
      if (s.store.ipOf(device) && !row) s.store.freeIp(device);
    }
    if (opts.dryRun) {
      onEvent({ type: 'start', device, via: opts.via, mode, total, message: `dry run: would ${mode === 'new' ? 'enroll' : mode} ${device} via ${opts.via} (${opts.ssh})` });
      steps.forEach((st, i) => onEvent({ type: 'step', device, index: i + 1, total, step: st.id, title: st.title, status: 'skipped', detail: 'dry run' }));
      return finish({ ok: true, status: row?.status ?? 'rolled_back', exit: ENROLL_EXIT.ok, message: `dry run: nothing was changed (${total} steps would run)` });
    }
    const wasLive = mode === 'verify';
    row = {
      device, via: opts.via, status: 'running', opts: rowOpts, data: mode === 'new' ? {} : row!.data,
      steps: mode === 'new' ? Object.fromEntries(steps.map((st) => [st.id, 'pending' as StepState])) : row!.steps,
      pid: process.pid, pidStart: processStart(process.pid), startedAt: mode === 'new' ? new Date().toISOString() : row!.startedAt, updatedAt: '', error: null,
    };
    const prevStatus = wasLive ? (s.store.get(device)?.status ?? 'live') : 'running';
    s.store.put(row);
    const ctx = makeContext(s, row, opts, onEvent, false);
    contexts.push(ctx);
    onEvent({ type: 'start', device, via: opts.via, mode, total, message: mode === 'verify' ? `${device} is enrolled: verifying each step` : mode === 'resume' ? `resuming ${device}` : `enrolling ${device} via ${opts.via} (${opts.ssh})` });
    const timings: Record<string, number> = {};
    for (let i = 0; i < steps.length; i++) {
      const step = steps[i]!;
      if (opts.signal?.aborted) {
        row.status = wasLive ? prevStatus : 'interrupted';
        row.pid = null;
        s.store.put(row);
        return finish({ ok: false, status: row.status, exit: ENROLL_EXIT.interrupted, message: `interrupted before step ${i + 1} (${step.title}): run the same add-pc again to resume, or \`meshpilot revoke ${device}\` to undo what was done` });
      }
      const t0 = performance.now();
      onEvent({ type: 'step', device, index: i + 1, total, step: step.id, title: step.title, status: 'running' });
      try {
        let skipped = false;
        let detail: string | void = undefined;
        if (!step.always && (mode !== 'new' || row.steps[step.id] !== 'pending') && (await step.check(ctx))) skipped = true;
        if (!skipped) {
          row.steps[step.id] = 'running';
          s.store.put(row);
          detail = await step.apply(ctx);
          const fault = opts.fault;
          if (fault === `fail:${step.id}`) throw new MeshpilotError('exec_failed', `injected fault after step ${step.id}`);
        }
        row.steps[step.id] = 'done';
        ctx.save();
        const ms = Math.round(performance.now() - t0);
        timings[step.id] = ms;
        onEvent({ type: 'step', device, index: i + 1, total, step: step.id, title: step.title, status: skipped ? 'skipped' : 'done', ms, ...(skipped ? { detail: 'already done' } : detail ? { detail } : {}) });
      } catch (err) {
        const e = toMpError(err);
        const ms = Math.round(performance.now() - t0);
        if (row.steps[step.id] === 'running') row.steps[step.id] = 'failed';
        row.error = e.message;
        ctx.save();
        onEvent({ type: 'step', device, index: i + 1, total, step: step.id, title: step.title, status: 'failed', ms, error: e });
        const exitFor = e.code === 'host_key' ? ENROLL_EXIT.hostKey : ENROLL_EXIT.failed;
        if (wasLive) {
          row.status = prevStatus;
          row.pid = null;
          if (row.steps[step.id] === 'failed') row.steps[step.id] = 'done';
          s.store.put(row);
          audit(s, device, actor, 'device.enroll', { via: opts.via, check: 'verify' }, false, e.message, e.code);
          return finish({ ok: false, status: row.status, exit: ENROLL_EXIT.failed, message: `${device} is enrolled but step ${i + 1} (${step.title}) is broken and could not be repaired: ${e.message}`, error: e });
        }
        const r = await undoSteps(ctx, steps, row, s, { continueOnError: true });
        if (r.leftovers.length === 0) {
          s.store.freeIp(device);
          row.status = 'rolled_back';
          row.pid = null;
          s.store.put(row);
          audit(s, device, actor, 'device.enroll', { via: opts.via, target: opts.ssh, failed_step: step.id, undone: r.undone }, false, e.message, e.code);
          return finish({ ok: false, status: 'rolled_back', exit: exitFor, message: `step ${i + 1} (${step.title}) failed: ${e.message}. ${r.undone.length ? `Undone: ${r.undone.join(', ')}.` : 'Nothing had been changed.'}`, undone: r.undone, error: e });
        }
        row.status = 'failed';
        row.pid = null;
        s.store.put(row);
        audit(s, device, actor, 'device.enroll', { via: opts.via, target: opts.ssh, failed_step: step.id, leftovers: r.leftovers }, false, e.message, e.code);
        return finish({ ok: false, status: 'failed', exit: ENROLL_EXIT.partial, message: `step ${i + 1} (${step.title}) failed: ${e.message}. The cleanup is incomplete: ${r.leftovers.join('; ')}. Run the same add-pc again to retry, or \`meshpilot revoke ${device}\``, undone: r.undone, leftovers: r.leftovers, error: e });
      }
    }
    row.status = ctx.data.live ? 'live' : 'registered';
    row.pid = null;
    row.error = null;
    s.store.put(row);
    audit(s, device, actor, 'device.enroll', { via: opts.via, target: opts.ssh, mode, ...(ctx.data.ip ? { ip: ctx.data.ip } : {}) }, true, null, null);
    const botId = ctx.data.botUserId ?? botUserId(s.config, device);
    const message = row.status === 'live'
      ? `✓ ${device} live. DM @${botId.slice(1).split(':')[0]} from your Matrix client.`
      : `${device} is registered, but no launcher is running: run \`npm start\` and its bot (${botId}) will greet you in a DM.`;
    return finish({ ok: true, status: row.status, exit: ENROLL_EXIT.ok, message, timings: { ...timings, ...(ctx.data.installMs !== undefined ? { install: ctx.data.installMs } : {}) } });
  } catch (err) {
    const e = toMpError(err);
    if (row) { row.status = 'failed'; row.pid = null; row.error = e.message; s.store.put(row); }
    return finish({ ok: false, status: 'failed', exit: ENROLL_EXIT.partial, message: `add-pc stopped unexpectedly: ${e.message}`, error: e });
  } finally {
    for (const c of contexts) await c.close().catch(() => undefined);
    s.close();
  }
}

export { serverNameOf };

/** The step list for a transport (loaded lazily: the step modules import this one). */
export async function stepsModule(): Promise<StepsFor> {
  const [{ wgSteps }, { sshSteps }] = await Promise.all([import('./enroll-wg.js'), import('./enroll-ssh.js')]);
  return (via) => (via === 'wg' ? wgSteps() : sshSteps());
}

/**
 * Enrolls (or resumes, or verifies) a device; progress goes to onEvent. The CLI's `add-pc` and the
 * operator room bot both call this. Never throws: the result carries the exit code (ENROLL_EXIT).
 */
export async function runAddPc(opts: AddPcOptions, onEvent: OnEvent = () => undefined): Promise<EnrollResult> {
  return runEnrollment(opts, await stepsModule(), onEvent);
}
