/**
 * The ssh transport's plumbing: where a device is (manifest or ~/.ssh/config alias), whether its host
 * key is trusted (meshpilot's own known_hosts), and one module-level pool of authenticated ssh2
 * connections shared by every SshHost.
 *
 * known_hosts (MESHPILOT_HOME/known_hosts, 0600) has one line per trusted key:
 *
 *     [host]:port <key-type> SHA256:<base64 sha256 of the key blob, unpadded>
 *
 * e.g. `[10.0.0.5]:22 ssh-ed25519 SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s`, the same
 * fingerprint `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints on the server. `#` starts a
 * comment. Verification is strict: when a host has entries, the client only negotiates those key
 * types and the presented key must match; an unknown host is refused unless the manifest says
 * `trust_on_first_use: true` or the operator ran `meshpilot ssh trust <device> --fingerprint …`.
 *
 * The pool keeps one connection per user@host:port+key. Execs are channels on it (at most
 * MAX_EXEC_CHANNELS at once, OpenSSH's MaxSessions is 10 and the SFTP session takes one); idle
 * connections close after the idle TTL, the least recently used idle one is closed when the pool is
 * full, and a connection that fails (reset, broken pipe, auth, 'Not connected') is dropped and
 * rebuilt on the next call. Idle sockets are unref'd so a pooled connection never keeps a CLI alive.
 */
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Client, type ClientChannel, type SFTPWrapper } from 'ssh2';
import { MeshpilotError } from '../errors.js';
import { resolveHome } from '../home.js';
import { logger } from '../log.js';
import { fingerprintOf, hostPattern, keyTypeOf, knownHostsPath, knownKeysFor, verifyHostKey, type HostKeyVerdict, type SshTarget } from './ssh-hosts.js';

// Targets and known_hosts live in ssh-hosts.ts; importers keep reaching them through here.
export {
  acceptHostKey, defaultKeyCandidates, fingerprintOf, hostPattern, keyTypeOf, knownHostsPath, knownKeysFor, readKnownHosts,
  resolveAlias, resolveTarget, sshConfigPath,
} from './ssh-hosts.js';
export type { AcceptHostKeyOptions, KnownHostKey, SshTarget, SshTransportConfig } from './ssh-hosts.js';

const log = logger('ssh');

// ---- connections ------------------------------------------------------------------------------

const CONNECT_TIMEOUT_MS = 15_000;
/** OpenSSH's default MaxSessions is 10; one goes to SFTP, the rest is margin for sessions sshd has not freed yet. */
export const MAX_EXEC_CHANNELS = 6;

function readKey(target: SshTarget): Buffer {
  try {
    const st = readFileSync(target.keyPath);
    if (st.length > 64 * 1024) throw new MeshpilotError('auth', `${target.keyPath} is too large to be an ssh private key`);
    return st;
  } catch (err) {
    if (err instanceof MeshpilotError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new MeshpilotError('auth', `cannot read the ssh key ${target.keyPath} for ${target.device}${code === 'ENOENT' ? ' (it does not exist)' : code === 'EACCES' ? ' (permission denied)' : ''}`);
  }
}

/** Is this error one after which the connection cannot be trusted to work again? */
export function isFatalConnectionError(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown; level?: unknown } | null;
  const code = typeof e?.code === 'string' ? e.code : '';
  const message = typeof e?.message === 'string' ? e.message : '';
  if (['ECONNRESET', 'EPIPE', 'ECONNREFUSED', 'ETIMEDOUT', 'ERR_STREAM_DESTROYED', 'ERR_STREAM_WRITE_AFTER_END'].includes(code)) return true;
  if (e?.level === 'client-authentication' || e?.level === 'client-socket' || e?.level === 'protocol') return true;
  // Not fatal: a refused channel ("Channel open failure", e.g. sshd's MaxSessions not yet freed) or exec request.
  return /Not connected|No response from server|broken pipe|socket hang up|connection (reset|lost|closed)|Keepalive timeout|write after end/i.test(message);
}

function connectError(target: SshTarget, err: unknown): MeshpilotError {
  if (err instanceof MeshpilotError) return err;
  const e = err as { code?: unknown; level?: unknown; message?: unknown };
  const where = `${target.user}@${target.host}:${target.port} (${target.device})`;
  const message = typeof e?.message === 'string' ? e.message : String(err);
  if (e?.level === 'client-authentication') {
    return new MeshpilotError('auth', `ssh authentication failed for ${where} with key ${target.keyPath}: is its public key in ~${target.user}/.ssh/authorized_keys?`);
  }
  if (/encrypted|passphrase/i.test(message)) {
    return new MeshpilotError('auth', `the ssh key ${target.keyPath} is passphrase-protected; meshpilot needs a key without a passphrase (e.g. ${path.join(resolveHome(), 'keys', 'ssh', 'id_ed25519')})`);
  }
  if (/Cannot parse privateKey|Unsupported key format/i.test(message)) {
    return new MeshpilotError('auth', `${target.keyPath} is not a usable ssh private key: ${message}`);
  }
  const code = typeof e?.code === 'string' ? e.code : '';
  if (code === 'ECONNREFUSED') return new MeshpilotError('unreachable', `cannot reach ${where}: connection refused (is sshd running on port ${target.port}?)`);
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return new MeshpilotError('unreachable', `cannot reach ${where}: unknown host ${target.host}`);
  if (code === 'ETIMEDOUT' || /Timed out/i.test(message)) return new MeshpilotError('unreachable', `cannot reach ${where}: timed out`);
  return new MeshpilotError('unreachable', `cannot reach ${where}: ${message}`);
}

/** Opens a TCP socket (ours, so it can be unref'd while idle) with a connect timeout. */
function openSocket(host: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(Object.assign(new Error('Timed out while connecting'), { code: 'ETIMEDOUT' }));
    }, CONNECT_TIMEOUT_MS);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      // Small request/response packets: Nagle plus delayed ACKs would add ~40 ms to each exec.
      sock.setNoDelay(true);
      resolve(sock);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      sock.destroy();
      reject(err);
    });
  });
}

export interface ConnectOptions {
  knownHostsFile?: string;
  /** Only read the presented key and stop (for `meshpilot ssh fingerprint`). */
  probe?: boolean;
}

/** Connects and authenticates, with the host key checked against known_hosts. */
async function handshake(target: SshTarget, opts: ConnectOptions = {}): Promise<{ client: Client; sock: net.Socket; verdict: HostKeyVerdict }> {
  const file = opts.knownHostsFile ?? knownHostsPath();
  const privateKey = readKey(target);
  const known = knownKeysFor(target.host, target.port, file);
  let sock: net.Socket;
  try {
    sock = await openSocket(target.host, target.port);
  } catch (err) {
    throw connectError(target, err);
  }
  const client = new Client();
  let verdict: HostKeyVerdict | undefined;
  return new Promise((resolve, reject) => {
    let done = false;
    const fail = (err: unknown): void => {
      if (done) return;
      done = true;
      client.removeAllListeners('ready');
      client.end();
      sock.destroy();
      reject(verdict && !verdict.ok ? verdict.error : connectError(target, err));
    };
    client.once('ready', () => {
      if (done) return;
      done = true;
      client.removeListener('error', fail);
      resolve({ client, sock, verdict: verdict as HostKeyVerdict });
    });
    client.on('error', fail);
    client.once('close', () => fail(new Error('connection closed during the handshake')));
    const algorithms = known.length > 0 && !opts.probe
      // Only negotiate the key types we know for this host, so a different key is a mismatch, not a surprise.
      ? { serverHostKey: [...new Set(known.map((k) => k.keyType))] as never }
      : undefined;
    try {
      client.connect({
        sock,
        username: target.user,
        privateKey,
        readyTimeout: CONNECT_TIMEOUT_MS,
        keepaliveInterval: 15_000,
        keepaliveCountMax: 3,
        ...(algorithms ? { algorithms } : {}),
        hostVerifier: (key: Buffer): boolean => {
          verdict = opts.probe
            ? { ok: false, keyType: keyTypeOf(key), fingerprint: fingerprintOf(key), error: new MeshpilotError('host_key', 'probe') }
            : verifyHostKey(target, key, file);
          return verdict.ok;
        },
      });
    } catch (err) {
      fail(err);
    }
  });
}

/** Connects only far enough to read the host key the server presents; changes nothing. */
export async function probeHostKey(target: SshTarget): Promise<{ keyType: string; fingerprint: string }> {
  let sock: net.Socket;
  try {
    sock = await openSocket(target.host, target.port);
  } catch (err) {
    throw connectError(target, err);
  }
  const client = new Client();
  return new Promise((resolve, reject) => {
    let result: { keyType: string; fingerprint: string } | undefined;
    let done = false;
    const finish = (err?: unknown): void => {
      if (done) return;
      done = true;
      client.end();
      sock.destroy();
      if (result) resolve(result);
      else reject(connectError(target, err ?? new Error('the server closed the connection before presenting a host key')));
    };
    client.on('error', finish);
    client.on('close', () => finish());
    client.on('ready', () => finish());
    client.connect({
      sock,
      username: target.user,
      readyTimeout: CONNECT_TIMEOUT_MS,
      hostVerifier: (key: Buffer): boolean => {
        result = { keyType: keyTypeOf(key), fingerprint: fingerprintOf(key) };
        setImmediate(() => finish());
        return false;
      },
    });
  });
}

// ---- the pool -----------------------------------------------------------------------------------

export interface PoolConfig {
  /** Close a connection after it has been idle this long. Default 5 minutes. */
  idleTtlMs: number;
  /** Most hosts kept connected; the least recently used idle one is closed beyond it. Default 32. */
  maxHosts: number;
}

export class PooledConnection {
  active = 0;
  lastUsed = Date.now();
  dead = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private sftpPromise: Promise<SFTPWrapper> | undefined;
  private timeoutProbe: Promise<boolean> | undefined;
  private channels = 0;
  private readonly waiters: Array<() => void> = [];
  /** Cached per connection: the user's home directory (sftp realpath('.')). */
  home: string | undefined;

  constructor(readonly key: string, readonly target: SshTarget, readonly client: Client, private readonly sock: net.Socket, private readonly pool: SshPool) {
    client.on('error', (err) => {
      log.debug({ device: target.device, err: (err as Error).message }, 'ssh connection error');
      this.pool.drop(this, 'error');
    });
    client.on('close', () => this.pool.drop(this, 'closed'));
    client.on('end', () => this.pool.drop(this, 'ended'));
  }

  /** A channel slot (MaxSessions); released by the returned function, exactly once. */
  async slot(): Promise<() => void> {
    if (this.channels >= MAX_EXEC_CHANNELS) await new Promise<void>((r) => this.waiters.push(r));
    this.channels++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.channels--;
      this.waiters.shift()?.();
    };
  }

  /**
   * A TCP stream to `address:port` as the device sees it (a direct-tcpip channel; runs nothing), for
   * the share gateway (launcher/http/share.ts): a VM's port published on the device's loopback, or on
   * the VM's bridge address. It takes a channel slot until it closes.
   */
  async forwardOut(address: string, port: number): Promise<ClientChannel> {
    const release = await this.slot();
    return new Promise((resolve, reject) => {
      try {
        this.client.forwardOut('127.0.0.1', 0, address, port, (err, channel) => {
          if (err) { release(); return reject(err); }
          channel.once('close', release);
          resolve(channel);
        });
      } catch (err) {
        release();
        reject(err as Error);
      }
    });
  }

  /**
   * Opens an exec channel; rejects (and the caller poisons) when the connection is gone. A refused
   * channel is retried a few times: sshd frees a session slot a moment after the channel closes.
   */
  async exec(command: string): Promise<OpenChannel> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.execOnce(command);
      } catch (err) {
        const refused = /Channel open failure|open failed/i.test((err as Error).message ?? '');
        if (!refused || this.dead || attempt >= 5) throw err;
        await new Promise((r) => setTimeout(r, 10 * 2 ** attempt));
      }
    }
  }

  private execOnce(command: string): Promise<OpenChannel> {
    return new Promise((resolve, reject) => {
      try {
        this.client.exec(command, (err, channel) => {
          if (err) return reject(err);
          // A fast command's exit-status can arrive in the same read as the exec reply, before the
          // caller's listeners exist (it is a plain event, not buffered): record it right here.
          const open: OpenChannel = { channel, exit: null };
          channel.on('exit', (code: number | null, sig?: string) => {
            open.exit = { code: code ?? null, signal: sig ? `SIG${sig.replace(/^SIG/, '')}` : null };
          });
          resolve(open);
        });
      } catch (err) {
        reject(err);
      }
    });
  }

  sftp(): Promise<SFTPWrapper> {
    if (!this.sftpPromise) {
      const p = new Promise<SFTPWrapper>((resolve, reject) => {
        try {
          this.client.sftp((err, sftp) => {
            if (err) return reject(err);
            sftp.on('close', () => { if (this.sftpPromise === p) this.sftpPromise = undefined; });
            sftp.on('error', () => { if (this.sftpPromise === p) this.sftpPromise = undefined; });
            resolve(sftp);
          });
        } catch (err) {
          reject(err);
        }
      });
      this.sftpPromise = p;
      p.catch(() => { if (this.sftpPromise === p) this.sftpPromise = undefined; });
    }
    return this.sftpPromise;
  }

  /** Whether `timeout -s TERM -k 2 N cmd` works remotely; checked once per connection. */
  hasRemoteTimeout(): Promise<boolean> {
    this.timeoutProbe ??= (async () => {
      const release = await this.slot();
      try {
        const open = await this.exec('command -v timeout >/dev/null 2>&1 && exec timeout -s TERM -k 2 10 true');
        const ch = open.channel;
        return await new Promise<boolean>((resolve) => {
          ch.on('close', () => resolve(open.exit?.code === 0));
          ch.on('data', () => { /* drain */ });
          ch.stderr.on('data', () => { /* drain */ });
          ch.end();
        });
      } catch (err) {
        this.timeoutProbe = undefined;
        throw err;
      } finally {
        release();
      }
    })();
    return this.timeoutProbe;
  }

  markBusy(): void {
    this.active++;
    this.lastUsed = Date.now();
    if (this.idleTimer) { clearTimeout(this.idleTimer); this.idleTimer = undefined; }
    this.sock.ref();
  }

  markIdle(): void {
    this.active = Math.max(0, this.active - 1);
    this.lastUsed = Date.now();
    if (this.active > 0 || this.dead) return;
    // Idle: never keep the process alive for a pooled connection, and close it after the TTL.
    this.sock.unref();
    this.idleTimer = setTimeout(() => this.pool.drop(this, 'idle'), this.pool.config.idleTtlMs);
    this.idleTimer.unref();
  }

  close(): void {
    this.dead = true;
    if (this.idleTimer) { clearTimeout(this.idleTimer); this.idleTimer = undefined; }
    for (const w of this.waiters.splice(0)) w();
    try { this.client.end(); } catch { /* already closed */ }
    // end() is polite; make sure the socket goes even if the server does not answer.
    setTimeout(() => this.sock.destroy(), 1000).unref();
  }
}

/** An exec channel and its exit status (recorded from the moment it opened). */
export interface OpenChannel {
  channel: ClientChannel;
  exit: { code: number | null; signal: string | null } | null;
}

export interface PoolStats {
  /** Connections now in the pool. */
  hosts: Array<{ key: string; active: number; idleMs: number }>;
  /** Successful handshakes per pool key since the last reset (rebuilds count again). */
  handshakes: Record<string, number>;
  totalHandshakes: number;
}

export class SshPool {
  config: PoolConfig = { idleTtlMs: 5 * 60_000, maxHosts: 32 };
  private readonly live = new Map<string, PooledConnection>();
  private readonly inflight = new Map<string, Promise<PooledConnection>>();
  private handshakes = new Map<string, number>();

  static keyOf(t: SshTarget): string {
    return `${t.user}@${hostPattern(t.host, t.port)}#${t.keyPath}`;
  }

  /** A ready connection for `target`, marked busy: pair with `release`. Concurrent first calls share one handshake. */
  async acquire(target: SshTarget): Promise<PooledConnection> {
    const key = SshPool.keyOf(target);
    for (;;) {
      const hit = this.live.get(key);
      if (hit && !hit.dead) {
        // Map order is LRU order: move to the back.
        this.live.delete(key);
        this.live.set(key, hit);
        hit.markBusy();
        return hit;
      }
      let pending = this.inflight.get(key);
      if (!pending) {
        pending = this.connect(key, target);
        this.inflight.set(key, pending);
        const clear = (): void => { if (this.inflight.get(key) === pending) this.inflight.delete(key); };
        pending.then(clear, clear);
      }
      const conn = await pending;
      if (!conn.dead) {
        conn.markBusy();
        return conn;
      }
      // It died between the handshake and us: go round again (a new handshake).
    }
  }

  release(conn: PooledConnection): void {
    conn.markIdle();
  }

  /** Removes a connection (fatal error, idle, eviction) and closes it. */
  drop(conn: PooledConnection, why: string): void {
    if (this.live.get(conn.key) === conn) this.live.delete(conn.key);
    if (!conn.dead) log.debug({ device: conn.target.device, why }, 'ssh connection dropped');
    conn.close();
  }

  private async connect(key: string, target: SshTarget): Promise<PooledConnection> {
    const { client, sock } = await handshake(target);
    this.handshakes.set(key, (this.handshakes.get(key) ?? 0) + 1);
    const conn = new PooledConnection(key, target, client, sock, this);
    this.evictFor(key);
    this.live.set(key, conn);
    log.debug({ device: target.device, host: hostPattern(target.host, target.port) }, 'ssh connected');
    return conn;
  }

  private evictFor(key: string): void {
    // The cap is soft: connections in use are never closed under a caller.
    while (this.live.size >= this.config.maxHosts && !this.live.has(key)) {
      const idle = [...this.live.values()].find((c) => c.active === 0);
      if (!idle) break;
      this.drop(idle, 'evicted');
    }
  }

  stats(): PoolStats {
    const now = Date.now();
    const handshakes = Object.fromEntries(this.handshakes);
    return {
      hosts: [...this.live.values()].map((c) => ({ key: c.key, active: c.active, idleMs: c.active > 0 ? 0 : now - c.lastUsed })),
      handshakes,
      totalHandshakes: Object.values(handshakes).reduce((a, b) => a + b, 0),
    };
  }

  resetStats(): void {
    this.handshakes = new Map();
  }

  /** Closes the pooled connections for these keys (or all). */
  closeAll(keys?: Set<string>): void {
    for (const conn of [...this.live.values()]) if (!keys || keys.has(conn.key)) this.drop(conn, 'closed by caller');
  }
}

/** The one pool, shared by every SshHost in this process. */
export const sshPool = new SshPool();

export function configureSshPool(c: Partial<PoolConfig>): void {
  if (c.idleTtlMs !== undefined) {
    if (!(c.idleTtlMs > 0)) throw new MeshpilotError('config', 'idleTtlMs must be positive');
    sshPool.config.idleTtlMs = c.idleTtlMs;
  }
  if (c.maxHosts !== undefined) {
    if (!Number.isInteger(c.maxHosts) || c.maxHosts < 1) throw new MeshpilotError('config', 'maxHosts must be a whole number >= 1');
    sshPool.config.maxHosts = c.maxHosts;
  }
}

export function sshPoolStats(): PoolStats {
  return sshPool.stats();
}

export function resetSshPoolStats(): void {
  sshPool.resetStats();
}

/** Closes every pooled connection (shutdown, tests). */
export function closeSshPool(): void {
  sshPool.closeAll();
}

export { handshake as sshHandshake };
