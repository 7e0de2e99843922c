/**
 * The `local` transport: this machine, through child_process with argv (never a shell) and fs.
 * Also the Host the device agent uses on a mesh device.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp, constants as fsConstants } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MeshpilotError } from '../errors.js';
import type { DirEntry, ExecOutcome, ExecRequest, FileStat, FileType, Host, MountUsage, SystemInfo } from './types.js';

/** Network and FUSE mounts can hang statfs (a dead NFS server): they are left to df's own timeout. */
const NETWORK_FS = /^(nfs4?|cifs|smb3?|smbfs|sshfs|fuse\..*|ceph|glusterfs|9p|afs)$/;
const STATFS_TIMEOUT_MS = 2000;

/** Variables a child may inherit; everything else (tokens, keys, LD_PRELOAD…) is scrubbed. */
export const ENV_ALLOWLIST = ['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LC_ALL', 'LC_CTYPE', 'TZ', 'TERM', 'TMPDIR', 'SHELL'];
const KILL_GRACE_MS = 2000;

export function scrubbedEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of ENV_ALLOWLIST) {
    const value = process.env[key];
    if (value !== undefined) env[key] = value;
  }
  if (!env['PATH']) env['PATH'] = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
  return { ...env, ...extra };
}

/** Collects a stream up to `cap` bytes, counting (and dropping) the rest. */
export class CappedBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  truncated = false;
  constructor(private readonly cap: number) {}
  push(chunk: Buffer): void {
    if (this.size >= this.cap) {
      this.truncated = true;
      return;
    }
    const room = this.cap - this.size;
    if (chunk.length > room) {
      this.chunks.push(chunk.subarray(0, room));
      this.size += room;
      this.truncated = true;
    } else {
      this.chunks.push(chunk);
      this.size += chunk.length;
    }
  }
  toBuffer(): Buffer {
    return Buffer.concat(this.chunks, this.size);
  }
}

export function runLocalProcess(req: ExecRequest, device: string): Promise<ExecOutcome> {
  const [file, ...args] = req.argv;
  if (!file) return Promise.reject(new MeshpilotError('invalid_args', 'argv must not be empty'));
  const started = performance.now();
  return new Promise<ExecOutcome>((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: req.cwd,
      env: scrubbedEnv(req.env),
      // Own process group, so a timeout kills the whole tree and not just the direct child.
      detached: true,
      stdio: ['pipe', 'pipe', 'pipe'],
      windowsHide: true,
    });
    const stdout = new CappedBuffer(req.maxOutputBytes);
    const stderr = new CappedBuffer(req.maxOutputBytes);
    let timedOut = false;
    let settled = false;
    let killTimer: NodeJS.Timeout | undefined;

    const killGroup = (signal: NodeJS.Signals): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, signal);
      } catch {
        try { child.kill(signal); } catch { /* already gone */ }
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
      killTimer.unref();
    }, req.timeoutMs);

    child.stdout.on('data', (c: Buffer) => stdout.push(c));
    child.stderr.on('data', (c: Buffer) => stderr.push(c));
    child.stdin.on('error', () => { /* child closed stdin early; not our failure */ });
    if (req.stdin !== undefined) child.stdin.end(req.stdin);
    else child.stdin.end();

    child.on('error', (err: NodeJS.ErrnoException) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      if (err.code === 'ENOENT') {
        const cwdMissing = req.cwd !== undefined;
        reject(new MeshpilotError('tool_missing', cwdMissing
          ? `${file} not installed on ${device} (or working directory ${req.cwd} does not exist)`
          : `${file} not installed on ${device}`));
      } else if (err.code === 'EACCES') {
        reject(new MeshpilotError('permission', `${file}: permission denied on ${device}`));
      } else {
        reject(new MeshpilotError('exec_failed', `${file}: ${err.message}`));
      }
    });
    child.on('close', (code, signal) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      // The group may still hold stragglers that ignored SIGTERM: make sure they go too.
      if (timedOut) killGroup('SIGKILL');
      resolve({
        exitCode: code,
        signal: signal ?? null,
        stdout: stdout.toBuffer(),
        stderr: stderr.toBuffer(),
        truncated: stdout.truncated || stderr.truncated,
        timedOut,
        durationMs: Math.round(performance.now() - started),
      });
    });
  });
}

/** A POSIX st_mode's file type (what ssh's SFTP attrs and a VM's `stat -c %f` give). */
export function typeOfMode(mode: number): FileType {
  const fmt = mode & 0o170000;
  if (fmt === 0o120000) return 'symlink';
  if (fmt === 0o100000) return 'file';
  if (fmt === 0o040000) return 'dir';
  return 'other';
}

function fileType(st: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean }): FileType {
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  return 'other';
}

export class LocalHost implements Host {
  readonly kind = 'local' as const;
  readonly selfPid = process.pid;
  constructor(readonly device: string = 'local') {}

  exec(req: ExecRequest): Promise<ExecOutcome> {
    return runLocalProcess(req, this.device);
  }

  async homedir(): Promise<string> {
    return os.homedir();
  }

  async realpath(p: string): Promise<string> {
    return fsp.realpath(p);
  }

  async lstat(p: string): Promise<FileStat> {
    const st = await fsp.lstat(p);
    return { path: p, type: fileType(st), size: st.size, mode: st.mode & 0o7777, mtimeMs: Math.round(st.mtimeMs), uid: st.uid, gid: st.gid };
  }

  async readdir(p: string): Promise<DirEntry[]> {
    const names = await fsp.readdir(p);
    const entries: DirEntry[] = [];
    for (const name of names) {
      try {
        const st = await fsp.lstat(path.join(p, name));
        entries.push({ name, type: fileType(st), size: st.size, mtimeMs: Math.round(st.mtimeMs) });
      } catch {
        // Vanished between readdir and lstat: skip it rather than fail the listing.
      }
    }
    return entries;
  }

  async readFile(p: string, offset: number, length: number): Promise<Buffer> {
    const fh = await fsp.open(p, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    try {
      const buf = Buffer.alloc(length);
      let total = 0;
      while (total < length) {
        const { bytesRead } = await fh.read(buf, total, length - total, offset + total);
        if (bytesRead === 0) break;
        total += bytesRead;
      }
      return buf.subarray(0, total);
    } finally {
      await fh.close();
    }
  }

  async writeFileAtomic(p: string, data: Buffer, mode?: number): Promise<void> {
    let existingMode: number | undefined;
    try {
      const st = await fsp.lstat(p);
      if (st.isSymbolicLink()) throw new MeshpilotError('permission', `${p} is a symlink; refusing to write through it`);
      if (!st.isFile()) throw new MeshpilotError('permission', `${p} is not a regular file`);
      existingMode = st.mode & 0o7777;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      // A new file: its missing directories are made (a workspace's home; policy checked the whole path).
      await fsp.mkdir(path.dirname(p), { recursive: true, mode: 0o755 });
    }
    const tmp = path.join(path.dirname(p), `.${path.basename(p)}.mp-${randomBytes(6).toString('hex')}.tmp`);
    const fh = await fsp.open(tmp, 'wx', mode ?? existingMode ?? 0o644);
    try {
      await fh.writeFile(data);
      if (mode !== undefined) await fh.chmod(mode);
      else if (existingMode !== undefined) await fh.chmod(existingMode);
      await fh.sync();
    } catch (err) {
      await fh.close();
      await fsp.rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    try {
      await fsp.rename(tmp, p);
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw err;
    }
  }

  async unlink(p: string): Promise<void> {
    await fsp.unlink(p);
  }

  /** statfs on every mount in /proc/self/mounts: what `df -kP` prints, without a process per call. */
  async diskUsage(): Promise<MountUsage[] | null> {
    if (process.platform !== 'linux') return null;
    let mounts: string;
    try {
      mounts = await fsp.readFile('/proc/self/mounts', 'utf8');
    } catch {
      return null;
    }
    // /proc/mounts escapes spaces and the like as \040 (octal).
    const unescape = (f: string): string => f.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    const rows = mounts.split('\n').map((l) => l.split(' ')).filter((f) => f.length >= 3 && !NETWORK_FS.test(f[2] ?? ''));
    const out: MountUsage[] = [];
    await Promise.all(rows.map(async ([dev = '', mnt = '']) => {
      const mount = unescape(mnt);
      try {
        const st = await Promise.race([
          fsp.statfs(mount),
          new Promise<null>((r) => setTimeout(() => r(null), STATFS_TIMEOUT_MS).unref()),
        ]);
        if (!st || st.blocks === 0) return;
        const size = st.blocks * st.bsize;
        const used = (st.blocks - st.bfree) * st.bsize;
        const avail = st.bavail * st.bsize;
        // df's Use%: used / (used + available to unprivileged users), rounded up.
        const usePercent = used + avail > 0 ? Math.ceil((used / (used + avail)) * 100) : 0;
        out.push({ mount, filesystem: unescape(dev), sizeBytes: size, usedBytes: used, availBytes: avail, usePercent });
      } catch { /* unreadable mount: skip, like df's partial output */ }
    }));
    // Like df: a block device mounted twice (bind mounts) is listed once, at its shortest mount point.
    const byDevice = new Map<string, MountUsage>();
    const rest: MountUsage[] = [];
    for (const m of out) {
      if (!m.filesystem.startsWith('/')) { rest.push(m); continue; }
      const seen = byDevice.get(m.filesystem);
      if (!seen || m.mount.length < seen.mount.length) byDevice.set(m.filesystem, m);
    }
    // Code-point order: the same on every host, and localeCompare would map ICU's collation data (2 MB per bot).
    return [...byDevice.values(), ...rest].sort((a, b) => (a.mount < b.mount ? -1 : a.mount > b.mount ? 1 : 0));
  }

  async systemInfo(): Promise<SystemInfo> {
    const load = os.loadavg();
    let available = os.freemem();
    try {
      // MemAvailable counts reclaimable cache; freemem() does not, and alarms people needlessly.
      const meminfo = await fsp.readFile('/proc/meminfo', 'utf8');
      const m = /^MemAvailable:\s+(\d+) kB/m.exec(meminfo);
      if (m?.[1]) available = Number(m[1]) * 1024;
    } catch { /* not linux */ }
    return {
      hostname: os.hostname(),
      os: os.platform(),
      arch: os.arch(),
      kernel: os.release(),
      uptimeS: Math.round(os.uptime()),
      load: [load[0] ?? 0, load[1] ?? 0, load[2] ?? 0],
      memory: { totalBytes: os.totalmem(), availableBytes: available },
      cpus: os.cpus().length,
    };
  }
}
