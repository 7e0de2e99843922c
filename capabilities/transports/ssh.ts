/**
 * The `ssh` transport: a device reached with OpenSSH, nothing installed on it. Commands run as
 * channels on a pooled connection (ssh-pool.ts), files go through one SFTP session per connection.
 *
 * Commands: argv is quoted for a POSIX login shell (shell-quote), so `;`, `$(…)`, quotes and
 * newlines stay literal; env is an `env K=V` prefix (quoted; sshd's AcceptEnv would refuse most
 * setenv requests), cwd is `cd -- <dir> &&`. The timeout runs remotely as
 * `timeout -s TERM -k 2 <secs>` when the device has a working `timeout` (checked once per
 * connection), which kills the whole remote process group; otherwise the channel is signalled and
 * closed. Either way the outcome says timedOut.
 *
 * Registered with registerTransport('ssh') when this module is loaded (launcher/runtime.ts does).
 */
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { quote } from 'shell-quote';
import type { ClientChannel, FileEntry, SFTPWrapper, Stats } from 'ssh2';
import { MeshpilotError } from '../errors.js';
import type { Manifest } from '../manifest.js';
import { registerTransport } from './index.js';
import { CappedBuffer, typeOfMode } from './local.js';
import {
  isFatalConnectionError,
  resolveTarget,
  sshPool,
  SshPool,
  type PooledConnection,
  type SshTarget,
  type SshTransportConfig,
} from './ssh-pool.js';
import { parseSystemInfo, SYSINFO_SCRIPT } from './sysinfo.js';
import type { DirEntry, ExecOutcome, ExecRequest, FileStat, FileType, Host, SystemInfo } from './types.js';

export { parseSystemInfo } from './sysinfo.js';

export {
  acceptHostKey,
  closeSshPool,
  configureSshPool,
  fingerprintOf,
  knownHostsPath,
  knownKeysFor,
  probeHostKey,
  readKnownHosts,
  resetSshPoolStats,
  resolveAlias,
  resolveTarget,
  sshPoolStats,
  type PoolStats,
  type SshTarget,
} from './ssh-pool.js';

const KILL_GRACE_S = 2;
/** Beyond the timeout, how long we wait for the remote `timeout` before closing the channel ourselves. */
const LOCAL_GRACE_MS = (KILL_GRACE_S + 3) * 1000;
const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SFTP_CHUNK = 32 * 1024;

export interface SshHostOptions {
  /** Use the device's `timeout` to kill a command that runs too long (default true; false forces the channel-signal fallback). */
  remoteTimeout?: boolean;
  /** ssh config file for aliases (default MESHPILOT_SSH_CONFIG or ~/.ssh/config). */
  configFile?: string;
}

/** The command line a POSIX shell on the device runs for `req` (exported for tests). */
export function buildRemoteCommand(req: Pick<ExecRequest, 'argv' | 'cwd' | 'env'>, timeoutMs: number | null): string {
  if (req.argv.length === 0 || !req.argv[0]) throw new MeshpilotError('invalid_args', 'argv must not be empty');
  for (const a of req.argv) if (a.includes('\0')) throw new MeshpilotError('invalid_args', 'argv must not contain NUL bytes');
  const parts: string[] = [];
  if (req.cwd !== undefined) {
    if (req.cwd.includes('\0')) throw new MeshpilotError('invalid_args', 'cwd must not contain NUL bytes');
    parts.push(`cd -- ${quote([req.cwd])} &&`);
  }
  // exec: the shell is replaced, so a signal on the channel reaches the command (or `timeout`) itself.
  parts.push('exec');
  if (timeoutMs !== null) parts.push(`timeout -s TERM -k ${KILL_GRACE_S} ${(Math.max(1, timeoutMs) / 1000).toFixed(3)}`);
  const env = Object.entries(req.env ?? {});
  if (env.length > 0) {
    for (const [k, v] of env) {
      if (!ENV_KEY.test(k)) throw new MeshpilotError('invalid_args', `environment variable name ${k} is not valid`);
      if (v.includes('\0')) throw new MeshpilotError('invalid_args', `environment variable ${k} must not contain NUL bytes`);
    }
    parts.push('env', ...env.map(([k, v]) => quote([`${k}=${v}`])));
    // `env` would take a program name containing '=' for one more assignment.
    if (req.argv[0].includes('=')) throw new MeshpilotError('invalid_args', 'with env set, the program name must not contain =');
  }
  parts.push(quote(req.argv));
  return parts.join(' ');
}

function sftpError(err: unknown, p: string): Error {
  const e = err as { code?: unknown; message?: unknown };
  const msg = typeof e?.message === 'string' ? e.message : String(err);
  // SFTP v3 status codes: 2 no such file, 3 permission denied, 4 failure.
  if (e?.code === 2 || /no such file/i.test(msg)) return Object.assign(new Error(`${p}: no such file or directory`), { code: 'ENOENT' });
  if (e?.code === 3 || /permission denied/i.test(msg)) return Object.assign(new Error(`${p}: permission denied`), { code: 'EACCES' });
  if (err instanceof Error) return err;
  return new Error(msg);
}

function toFileStat(p: string, st: Stats): FileStat {
  return { path: p, type: typeOfMode(st.mode), size: st.size, mode: st.mode & 0o7777, mtimeMs: st.mtime * 1000, uid: st.uid, gid: st.gid };
}

/**
 * Sends an SSH "signal" request (sshd delivers it with killpg to the session's process group).
 * ssh2's channel.signal() silently does nothing once our side has sent EOF (stdin ended), which is
 * always the case here, so this goes to the protocol layer the same way channel.signal() does.
 */
function sendSignal(channel: ClientChannel, sig: 'TERM' | 'KILL'): void {
  // Internal ssh2 fields (lib/Channel.js signal()); typed loosely on purpose, checked before use.
  const ch = channel as unknown as { outgoing?: { id?: number; state?: string }; _client?: { _protocol?: { signal?: (id: number, s: string) => void } } };
  const id = ch.outgoing?.id;
  const proto = ch._client?._protocol;
  try {
    if (id !== undefined && (ch.outgoing?.state === 'open' || ch.outgoing?.state === 'eof') && typeof proto?.signal === 'function') proto.signal(id, sig);
    else channel.signal(sig);
  } catch { /* the channel is gone */ }
}

/** Promisified SFTP calls. */
function sftpCall<T>(fn: (cb: (err: Error | null | undefined, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    fn((err, value) => (err ? reject(err) : resolve(value as T)));
  });
}

export class SshHost implements Host {
  readonly kind = 'ssh' as const;
  private target: SshTarget | undefined;
  private home: string | undefined;
  private closed = false;
  private heldKey: string | undefined;

  constructor(readonly device: string, private readonly transport: SshTransportConfig, private readonly opts: SshHostOptions = {}) {}

  /** Resolved lazily, so a bad alias or missing key is an error on the call, not when the manifest loads. */
  resolved(): SshTarget {
    this.target ??= resolveTarget(this.device, this.transport, this.opts.configFile ? { configFile: this.opts.configFile } : {});
    return this.target;
  }

  /**
   * Runs `fn` on a pooled connection. A connection-level failure poisons it (dropped, rebuilt next
   * call); when it happened before the command could start (`retryable`), the call is tried once more.
   */
  private async withConnection<T>(fn: (conn: PooledConnection, markStarted: () => void) => Promise<T>): Promise<T> {
    if (this.closed) throw new MeshpilotError('internal', `the ssh host ${this.device} was closed`);
    const target = this.resolved();
    for (let attempt = 0; ; attempt++) {
      const conn = await sshPool.acquire(target);
      let started = false;
      try {
        return await fn(conn, () => { started = true; });
      } catch (err) {
        const fatal = conn.dead || isFatalConnectionError(err);
        if (fatal) sshPool.drop(conn, 'fatal error');
        if (fatal && !started && attempt === 0) continue;
        if (fatal && !(err instanceof MeshpilotError)) {
          throw new MeshpilotError('unreachable', `the ssh connection to ${this.device} failed: ${(err as Error).message}`);
        }
        throw err;
      } finally {
        sshPool.release(conn);
      }
    }
  }

  exec(req: ExecRequest): Promise<ExecOutcome> {
    const bin = req.argv[0];
    if (!bin) return Promise.reject(new MeshpilotError('invalid_args', 'argv must not be empty'));
    return this.withConnection(async (conn, markStarted) => {
      const useRemoteTimeout = this.opts.remoteTimeout !== false && (await conn.hasRemoteTimeout());
      const command = buildRemoteCommand(req, useRemoteTimeout ? req.timeoutMs : null);
      const release = await conn.slot();
      try {
        const startedAt = performance.now();
        const open = await conn.exec(command);
        const channel = open.channel;
        markStarted();
        const outcome = await new Promise<ExecOutcome>((resolve, reject) => {
          const stdout = new CappedBuffer(req.maxOutputBytes);
          const stderr = new CappedBuffer(req.maxOutputBytes);
          let timedOut = false;
          const timers: NodeJS.Timeout[] = [];
          let settled = false;
          const kill = (sig: 'TERM' | 'KILL'): void => sendSignal(channel, sig);
          const lastResort = (): void => {
            kill('KILL');
            channel.close();
            // sshd answers our close only once its child is gone: do not wait for it forever.
            timers.push(setTimeout(() => finish(), LOCAL_GRACE_MS));
          };
          timers.push(setTimeout(() => {
            timedOut = true;
            if (!useRemoteTimeout) {
              kill('TERM');
              timers.push(setTimeout(lastResort, KILL_GRACE_S * 1000));
            } else {
              // The remote `timeout` kills it; if nothing has come back well after, do it ourselves.
              timers.push(setTimeout(lastResort, LOCAL_GRACE_MS));
            }
          }, req.timeoutMs));
          channel.on('data', (c: Buffer) => stdout.push(c));
          channel.stderr.on('data', (c: Buffer) => stderr.push(c));
          channel.on('error', () => { /* reported through close */ });
          const finish = (): void => {
            if (settled) return;
            settled = true;
            for (const t of timers) clearTimeout(t);
            const durationMs = Math.round(performance.now() - startedAt);
            const exitCode = open.exit?.code ?? null;
            const signal = open.exit?.signal ?? null;
            if (!open.exit && !timedOut && conn.dead) {
              reject(new MeshpilotError('unreachable', `the ssh connection to ${this.device} was lost while ${bin} was running`));
              return;
            }
            // GNU timeout exits 124 (TERM worked) or 137 (had to KILL) when it fired.
            if (useRemoteTimeout && (exitCode === 124 || exitCode === 137) && durationMs >= req.timeoutMs * 0.9) timedOut = true;
            resolve({
              exitCode, signal, stdout: stdout.toBuffer(), stderr: stderr.toBuffer(),
              truncated: stdout.truncated || stderr.truncated, timedOut, durationMs,
            });
          };
          channel.on('close', finish);
          if (req.stdin !== undefined) channel.end(req.stdin);
          else channel.end();
        });
        if (outcome.exitCode === 127 && !outcome.timedOut && this.notFound(outcome.stderr, bin)) {
          throw new MeshpilotError('tool_missing', `${bin} not installed on ${this.device}`);
        }
        return outcome;
      } finally {
        release();
      }
    });
  }

  /** Did the shell, `env` or `timeout` say argv[0] cannot be found (rather than the program itself exiting 127)? */
  private notFound(stderr: Buffer, bin: string): boolean {
    const head = stderr.subarray(0, 4096).toString('utf8');
    return head.split('\n').slice(0, 3).some((l) => l.includes(bin) && /not found|No such file or directory/i.test(l));
  }

  private sftp<T>(fn: (sftp: SFTPWrapper, conn: PooledConnection) => Promise<T>): Promise<T> {
    return this.withConnection(async (conn) => fn(await conn.sftp(), conn));
  }

  async homedir(): Promise<string> {
    if (this.home) return this.home;
    const home = await this.sftp((s) => sftpCall<string>((cb) => s.realpath('.', cb)));
    this.home = home;
    return home;
  }

  async realpath(p: string): Promise<string> {
    return this.sftp(async (s) => {
      let resolved: string;
      try {
        resolved = await sftpCall<string>((cb) => s.realpath(p, cb));
        // Some servers resolve a missing last component anyway: the contract is not_found.
        await sftpCall<Stats>((cb) => s.lstat(resolved, cb));
      } catch (err) {
        throw sftpError(err, p);
      }
      return resolved;
    });
  }

  async lstat(p: string): Promise<FileStat> {
    return this.sftp(async (s) => {
      try {
        return toFileStat(p, await sftpCall<Stats>((cb) => s.lstat(p, cb)));
      } catch (err) {
        throw sftpError(err, p);
      }
    });
  }

  async readdir(p: string): Promise<DirEntry[]> {
    return this.sftp(async (s) => {
      let list: FileEntry[];
      try {
        list = await sftpCall<FileEntry[]>((cb) => s.readdir(p, cb));
      } catch (err) {
        throw sftpError(err, p);
      }
      // OpenSSH's sftp-server reports readdir attributes with lstat semantics (links are links).
      return list
        .filter((e) => e.filename !== '.' && e.filename !== '..')
        .map((e) => ({ name: e.filename, type: typeOfMode(e.attrs.mode), size: e.attrs.size, mtimeMs: e.attrs.mtime * 1000 }));
    });
  }

  async readFile(p: string, offset: number, length: number): Promise<Buffer> {
    return this.sftp(async (s) => {
      // SFTP has no O_NOFOLLOW: check first (fs.* has already refused symlinks; this is the backstop).
      let st: Stats;
      try {
        st = await sftpCall<Stats>((cb) => s.lstat(p, cb));
      } catch (err) {
        throw sftpError(err, p);
      }
      if (typeOfMode(st.mode) === 'symlink') throw Object.assign(new Error(`${p} is a symlink`), { code: 'ELOOP' });
      if (typeOfMode(st.mode) === 'dir') throw Object.assign(new Error(`${p} is a directory`), { code: 'EISDIR' });
      let handle: Buffer;
      try {
        handle = await sftpCall<Buffer>((cb) => s.open(p, 'r', cb));
      } catch (err) {
        throw sftpError(err, p);
      }
      try {
        const buf = Buffer.alloc(length);
        let total = 0;
        while (total < length) {
          const want = Math.min(SFTP_CHUNK, length - total);
          const n = await new Promise<number>((resolve, reject) => {
            s.read(handle, buf, total, want, offset + total, (err, bytesRead) => {
              // ssh2 reports end of file as an error with SFTP status EOF (1).
              if (err) return (err as { code?: unknown }).code === 1 ? resolve(0) : reject(err);
              resolve(bytesRead);
            });
          });
          if (n === 0) break;
          total += n;
        }
        return buf.subarray(0, total);
      } catch (err) {
        throw sftpError(err, p);
      } finally {
        await sftpCall<void>((cb) => s.close(handle, cb)).catch(() => undefined);
      }
    });
  }

  async writeFileAtomic(p: string, data: Buffer, mode?: number): Promise<void> {
    return this.sftp(async (s) => {
      let existingMode: number | undefined;
      try {
        const st = await sftpCall<Stats>((cb) => s.lstat(p, cb));
        const t = typeOfMode(st.mode);
        if (t === 'symlink') throw new MeshpilotError('permission', `${p} is a symlink; refusing to write through it`);
        if (t !== 'file') throw new MeshpilotError('permission', `${p} is not a regular file`);
        existingMode = st.mode & 0o7777;
      } catch (err) {
        if (err instanceof MeshpilotError) throw err;
        const e = sftpError(err, p) as NodeJS.ErrnoException;
        if (e.code !== 'ENOENT') throw e;
      }
      const finalMode = mode ?? existingMode ?? 0o644;
      const tmp = path.posix.join(path.posix.dirname(p), `.${path.posix.basename(p)}.mp-${randomBytes(6).toString('hex')}.tmp`);
      let handle: Buffer;
      const openTmp = (): Promise<Buffer> => sftpCall<Buffer>((cb) => s.open(tmp, 'wx', { mode: finalMode }, cb));
      try {
        handle = await openTmp();
      } catch (err) {
        const e = sftpError(err, path.posix.dirname(p)) as NodeJS.ErrnoException;
        if (e.code !== 'ENOENT') throw e;
        // A new file: its missing directories are made, top down (a workspace's home; policy checked the whole path).
        const missing: string[] = [];
        for (let d = path.posix.dirname(p); d !== '/' && d !== '.'; d = path.posix.dirname(d)) {
          const exists = await sftpCall<Stats>((cb) => s.stat(d, cb)).then(() => true, () => false);
          if (exists) break;
          missing.unshift(d);
        }
        for (const d of missing) await sftpCall<void>((cb) => s.mkdir(d, { mode: 0o755 }, cb)).catch(() => undefined);
        try {
          handle = await openTmp();
        } catch (err2) {
          throw sftpError(err2, path.posix.dirname(p));
        }
      }
      const removeTmp = (): Promise<void> => sftpCall<void>((cb) => s.unlink(tmp, cb)).catch(() => undefined);
      try {
        let off = 0;
        while (off < data.length) {
          const n = Math.min(SFTP_CHUNK, data.length - off);
          await sftpCall<void>((cb) => s.write(handle, data, off, n, off, cb));
          off += n;
        }
        // The umask applies to open's mode: set it explicitly.
        await sftpCall<void>((cb) => s.fchmod(handle, finalMode, cb));
        await sftpCall<unknown>((cb) => s.ext_openssh_fsync(handle, cb)).catch(() => undefined);
      } catch (err) {
        await sftpCall<void>((cb) => s.close(handle, cb)).catch(() => undefined);
        await removeTmp();
        throw sftpError(err, p);
      }
      await sftpCall<void>((cb) => s.close(handle, cb));
      try {
        // posix-rename@openssh.com replaces the target atomically; plain SFTP rename refuses to.
        await sftpCall<void>((cb) => s.ext_openssh_rename(tmp, p, cb));
      } catch (err) {
        await removeTmp();
        const msg = (err as Error).message ?? '';
        if (/not supported/i.test(msg)) throw new MeshpilotError('exec_failed', `the SFTP server on ${this.device} has no atomic rename (posix-rename@openssh.com)`);
        throw sftpError(err, p);
      }
    });
  }

  async unlink(p: string): Promise<void> {
    return this.sftp(async (s) => {
      try {
        await sftpCall<void>((cb) => s.unlink(p, cb));
      } catch (err) {
        throw sftpError(err, p);
      }
    });
  }

  async systemInfo(): Promise<SystemInfo> {
    const out = await this.exec({ argv: ['sh', '-c', SYSINFO_SCRIPT], env: { LC_ALL: 'C' }, timeoutMs: 15_000, maxOutputBytes: 64 * 1024 });
    if (out.exitCode !== 0 && out.stdout.length === 0) {
      throw new MeshpilotError('exec_failed', `cannot describe ${this.device}: ${out.stderr.toString('utf8').trim().split('\n')[0] ?? `exit ${out.exitCode}`}`);
    }
    return parseSystemInfo(out.stdout.toString('utf8'));
  }

  /** Closes this device's pooled connection unless another SshHost still uses it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const key = this.heldKey;
    if (!key) return;
    holders.set(key, (holders.get(key) ?? 1) - 1);
    if ((holders.get(key) ?? 0) <= 0) {
      holders.delete(key);
      sshPool.closeAll(new Set([key]));
    }
  }

  /** Counts this host as a user of its pool key (so close() knows when the connection is no longer needed). */
  hold(): this {
    if (this.heldKey) return this;
    const key = SshPool.keyOf(this.resolved());
    this.heldKey = key;
    holders.set(key, (holders.get(key) ?? 0) + 1);
    return this;
  }
}

/** How many open SshHosts use each pool key. */
const holders = new Map<string, number>();

function sshTransport(manifest: Manifest): SshTransportConfig {
  if (manifest.transport.kind !== 'ssh') throw new MeshpilotError('internal', `device ${manifest.device} is not an ssh device`);
  return manifest.transport;
}

/** The SshHost for a manifest (registered as the `ssh` transport). */
export function sshHostFor(manifest: Manifest, opts: SshHostOptions = {}): SshHost {
  const host = new SshHost(manifest.device, sshTransport(manifest), opts);
  try { host.hold(); } catch { /* resolution errors surface on the first call */ }
  return host;
}

// ---- share gateway --------------------------------------------------------------------------------

/**
 * A stream to a VM port as the device reaches it (its loopback, or the VM's bridge address) over the
 * pooled connection (direct-tcpip), for the share gateway (launcher/http/share.ts). It runs no
 * command; the address and port are the ones an audited vm.share recorded. The connection stays busy until the stream closes.
 */
export async function sshForward(manifest: Manifest, address: string, port: number): Promise<import('node:stream').Duplex> {
  const target = probeHostFor(manifest).resolved();
  const conn = await sshPool.acquire(target);
  try {
    const channel = await conn.forwardOut(address, port);
    channel.once('close', () => sshPool.release(conn));
    return channel;
  } catch (err) {
    sshPool.release(conn);
    if (isFatalConnectionError(err)) sshPool.drop(conn, 'fatal error');
    throw new MeshpilotError('unreachable', `cannot reach ${address}:${port} on ${manifest.device} over ssh: ${(err as Error).message}`);
  }
}

// ---- health probes ------------------------------------------------------------------------------

/**
 * Probes for the launcher's health monitor (launcher/health/monitor.ts), on the pooled connection. They run
 * fixed commands chosen here, never anything a manifest, a chat message or an LLM supplies, so they
 * sit outside invoke() and its audit: `true` (a cheap authenticated exec) and `wg show <iface> dump`
 * on the WireGuard hub. The dump's first line holds the interface's private key: callers must parse
 * it and drop that line, and never log the text.
 */
const probeHosts = new Map<string, { key: string; host: SshHost }>();
function probeHostFor(manifest: Manifest): SshHost {
  const key = JSON.stringify(manifest.transport);
  const hit = probeHosts.get(manifest.device);
  if (hit && hit.key === key) return hit.host;
  const host = new SshHost(manifest.device, sshTransport(manifest));
  probeHosts.set(manifest.device, { key, host });
  return host;
}

/** Runs `true` on the device; resolves with the round trip in ms, throws MeshpilotError when it cannot. */
export async function sshPing(manifest: Manifest, timeoutMs = 10_000): Promise<number> {
  const t0 = performance.now();
  const out = await probeHostFor(manifest).exec({ argv: ['true'], timeoutMs, maxOutputBytes: 1024 });
  if (out.timedOut) throw new MeshpilotError('timeout', `ssh ping to ${manifest.device} timed out after ${timeoutMs} ms`);
  if (out.exitCode !== 0) throw new MeshpilotError('exec_failed', `ssh ping to ${manifest.device}: \`true\` exited ${out.exitCode ?? out.signal}`);
  return performance.now() - t0;
}

const WG_IFACE = /^[a-zA-Z0-9_.=+-]{1,15}$/;

/** `wg show <iface> dump` on the hub (with `sudo -n` when plain wg is not permitted). Never log the result. */
export async function sshWgDump(manifest: Manifest, iface: string, timeoutMs = 10_000): Promise<string> {
  if (!WG_IFACE.test(iface)) throw new MeshpilotError('config', `not a WireGuard interface name: ${iface.slice(0, 32)}`);
  const host = probeHostFor(manifest);
  const req = { timeoutMs, maxOutputBytes: 8 * 1024 * 1024 };
  let out = await host.exec({ argv: ['wg', 'show', iface, 'dump'], ...req });
  if (out.exitCode !== 0 && /permitted|permission|denied/i.test(out.stderr.toString('utf8'))) {
    out = await host.exec({ argv: ['sudo', '-n', 'wg', 'show', iface, 'dump'], ...req });
  }
  if (out.timedOut) throw new MeshpilotError('timeout', `wg show ${iface} dump on ${manifest.device} timed out`);
  if (out.truncated) throw new MeshpilotError('output_limit', `wg show ${iface} dump on ${manifest.device} is over 8 MiB`);
  if (out.exitCode !== 0) {
    const why = out.stderr.toString('utf8').trim().split('\n')[0]?.slice(0, 300) ?? '';
    throw new MeshpilotError(out.exitCode === 127 ? 'tool_missing' : 'exec_failed', `wg show ${iface} dump on ${manifest.device} failed (exit ${out.exitCode ?? out.signal}): ${why}`);
  }
  return out.stdout.toString('utf8');
}

registerTransport('ssh', (manifest) => ({ kind: 'host', host: sshHostFor(manifest) }));
