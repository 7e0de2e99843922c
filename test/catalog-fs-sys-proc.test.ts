import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { toJsonSchema, type AnyCapability, type CapabilityContext, type CapabilityResult, type Limits } from '../capabilities/capability.js';
import { fsCapabilities } from '../capabilities/catalog/fs.js';
import { procCapabilities, type ProcRow } from '../capabilities/catalog/proc.js';
import { assessHealth, parseDf, sysCapabilities, type DiskUsage, type HealthSummary } from '../capabilities/catalog/sys.js';
import { MeshpilotError } from '../capabilities/errors.js';
import { CapabilityRegistry } from '../capabilities/registry.js';
import { LocalHost } from '../capabilities/transports/local.js';
import type { SystemInfo } from '../capabilities/transports/types.js';

const registry = new CapabilityRegistry([...sysCapabilities, ...fsCapabilities, ...procCapabilities]);
const host = new LocalHost('local');

function cap(name: string): AnyCapability {
  const def = registry.get(name);
  if (!def) throw new Error(`missing capability ${name}`);
  return def;
}

/** Validates like invoke() does, then runs. */
async function call(name: string, args: Record<string, unknown>, limits: Partial<Limits> = {}): Promise<CapabilityResult> {
  const def = cap(name);
  const ctx: CapabilityContext = {
    host,
    device: 'local',
    os: 'linux',
    limits: { timeoutMs: 10_000, maxOutputBytes: 64 * 1024, ...limits },
  };
  return def.run(def.input.parse(args), ctx);
}

let dir: string;
beforeEach(async () => {
  dir = await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), 'mp-catalog-')));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

const children: ChildProcess[] = [];
function spawnChild(argv: string[]): ChildProcess {
  const [file, ...rest] = argv;
  const child = spawn(file!, rest, { stdio: 'ignore' });
  children.push(child);
  return child;
}
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

describe('definitions', () => {
  it('registers the expected names without duplicates', () => {
    expect(registry.names()).toEqual([
      'fs.delete', 'fs.list', 'fs.read', 'fs.stat', 'fs.write', 'proc.kill', 'proc.list', 'sys.health', 'sys.info',
    ]);
  });

  it('derives an object JSON Schema for every input', () => {
    for (const def of registry.all()) {
      const schema = toJsonSchema(def);
      expect(schema['type'], def.name).toBe('object');
      expect(schema['additionalProperties'], def.name).toBe(false);
      expect(def.description.length, def.name).toBeGreaterThan(40);
    }
    const read = toJsonSchema(cap('fs.read')) as { properties: Record<string, { description?: string }>; required?: string[] };
    expect(read.properties['path']?.description).toMatch(/path/i);
    expect(read.required).toEqual(['path']);
  });

  it('declares path scopes and risks', () => {
    for (const name of ['fs.list', 'fs.stat', 'fs.read', 'fs.write', 'fs.delete']) {
      expect(cap(name).scope, name).toEqual({ kind: 'paths', args: ['path'] });
    }
    expect(cap('fs.write').risk).toBe('write');
    expect(cap('fs.delete').risk).toBe('write');
    expect(cap('proc.kill').risk).toBe('exec');
    expect(cap('sys.info').risk).toBe('read');
    expect(cap('sys.info').scope).toBeUndefined();
  });

  it('rejects unknown and out-of-range arguments', () => {
    expect(() => cap('fs.list').input.parse({ path: '/', bogus: 1 })).toThrow();
    expect(() => cap('fs.list').input.parse({ path: '/', limit: 10_001 })).toThrow();
    expect(() => cap('proc.list').input.parse({ limit: 201 })).toThrow();
    expect(() => cap('fs.write').input.parse({ path: '/x', content: '', mode: '999' })).toThrow();
    expect(() => cap('proc.kill').input.parse({ pid: 5, signal: 'STOP' })).toThrow();
  });
});

describe('sys', () => {
  it('sys.info reports sane fields and disks', async () => {
    const r = await call('sys.info', {});
    expect(r.ok).toBe(true);
    const d = r.data as SystemInfo & { disks: DiskUsage[] };
    expect(d.hostname).toBe(os.hostname());
    expect(d.os).toBe(process.platform);
    expect(d.cpus).toBeGreaterThan(0);
    expect(d.memory.totalBytes).toBeGreaterThan(d.memory.availableBytes);
    expect(d.uptimeS).toBeGreaterThan(0);
    expect(d.load).toHaveLength(3);
    const root = d.disks.find((x) => x.mount === '/');
    expect(root).toBeDefined();
    expect(root!.sizeBytes).toBeGreaterThan(0);
    expect(root!.usePercent).toBeGreaterThanOrEqual(0);
    expect(root!.usePercent).toBeLessThanOrEqual(100);
    expect(d.disks.some((x) => x.filesystem === 'tmpfs' || x.filesystem === 'devtmpfs')).toBe(false);
    expect(r.stdout).toContain(d.hostname);
    expect(r.stdout.split('\n').length).toBeGreaterThanOrEqual(3);
  });

  it('sys.info respects the output cap', async () => {
    const r = await call('sys.info', {}, { maxOutputBytes: 20 });
    expect(Buffer.byteLength(r.stdout)).toBeLessThanOrEqual(20);
    expect(r.truncated).toBe(true);
  });

  it('sys.health returns a status line', async () => {
    const r = await call('sys.health', {});
    expect(r.ok).toBe(true);
    const h = r.data as HealthSummary;
    expect(['ok', 'warn', 'crit']).toContain(h.status);
    expect(h.memAvailablePercent).toBeGreaterThan(0);
    expect(h.memAvailablePercent).toBeLessThanOrEqual(100);
    expect(typeof h.diskMaxUsePercent).toBe('number');
    expect(r.stdout).toMatch(/^(ok|warn|crit)\b.* · load [\d.]+\/cpu · mem \d+% free · disk max \d+% \(\/.*\)$/);
    expect(r.stdout).not.toContain('\n');
  });

  it('parseDf handles spaces in names and skips pseudo file systems', () => {
    const text = [
      'Filesystem 1024-blocks Used Available Capacity Mounted on',
      '/dev/sda1 1000 910 90 91% /',
      'tmpfs 500 0 500 0% /dev/shm',
      'map auto_home 0 0 0 100% /System/Volumes/Data/home',
      '//srv/share 2000 100 1900 5% /Volumes/My Share',
      'overlay 3000 30 2970 1% /var/lib/docker/overlay2/abc/merged',
      '/dev/loop3 100 100 0 100% /snap/core/1',
    ].join('\n');
    expect(parseDf(text)).toEqual([
      { mount: '/', filesystem: '/dev/sda1', sizeBytes: 1000 * 1024, usedBytes: 910 * 1024, availBytes: 90 * 1024, usePercent: 91 },
      { mount: '/Volumes/My Share', filesystem: '//srv/share', sizeBytes: 2000 * 1024, usedBytes: 100 * 1024, availBytes: 1900 * 1024, usePercent: 5 },
    ]);
    expect(parseDf('Filesystem 1024-blocks Used Available Capacity Mounted on\noverlay 3000 30 2970 1% /')).toHaveLength(1);
  });

  it('assessHealth applies the thresholds', () => {
    const info = (load1: number, availPct: number): SystemInfo => ({
      hostname: 'h', os: 'linux', arch: 'x64', kernel: '6', uptimeS: 10, load: [load1, 0, 0],
      memory: { totalBytes: 1000, availableBytes: availPct * 10 }, cpus: 2,
    });
    const disk = (usePercent: number, mount = '/'): DiskUsage => ({ mount, filesystem: 'x', sizeBytes: 1, usedBytes: 1, availBytes: 0, usePercent });
    expect(assessHealth(info(1, 50), [disk(50)]).status).toBe('ok');
    expect(assessHealth(info(1, 50), [disk(89)]).status).toBe('ok');
    expect(assessHealth(info(1, 50), [disk(10), disk(90, '/var')])).toMatchObject({ status: 'warn', reasons: ['disk /var 90% full'], diskMaxUsePercent: 90, diskMaxMount: '/var' });
    expect(assessHealth(info(1, 50), [disk(97)]).status).toBe('crit');
    expect(assessHealth(info(1, 9), [disk(1)]).status).toBe('warn');
    expect(assessHealth(info(1, 2), [disk(1)]).status).toBe('crit');
    expect(assessHealth(info(4.2, 50), [disk(1)])).toMatchObject({ status: 'warn', load1PerCpu: 2.1 });
    expect(assessHealth(info(8.2, 50), [disk(1)]).status).toBe('crit');
    expect(assessHealth(info(8.2, 50), [disk(91)]).reasons).toHaveLength(2);
    expect(assessHealth(info(1, 50), []).diskMaxUsePercent).toBeNull();
  });
});

describe('fs.list', () => {
  it('lists entries sorted by name with types, sizes and hidden filter', async () => {
    await fsp.writeFile(path.join(dir, 'b.txt'), 'hello');
    await fsp.mkdir(path.join(dir, 'a-dir'));
    await fsp.writeFile(path.join(dir, '.hidden'), '');
    await fsp.symlink(path.join(dir, 'b.txt'), path.join(dir, 'c-link'));
    const r = await call('fs.list', { path: dir });
    expect(r.ok).toBe(true);
    const data = r.data as { entries: { name: string; type: string; size: number; mtimeMs: number }[]; total: number };
    expect(data.entries.map((e) => [e.name, e.type])).toEqual([
      ['.hidden', 'file'], ['a-dir', 'dir'], ['b.txt', 'file'], ['c-link', 'symlink'],
    ]);
    expect(data.entries.find((e) => e.name === 'b.txt')?.size).toBe(5);
    expect(data.entries[0]!.mtimeMs).toBeGreaterThan(Date.now() - 60_000);
    expect(r.truncated).toBe(false);
    expect(r.stdout).toContain('a-dir/');

    // LocalHost's readdir happens to come back sorted (libuv); a remote Host's need not, so sorting is ours to do.
    class UnsortedHost extends LocalHost {
      override async readdir(p: string) {
        return (await super.readdir(p)).reverse();
      }
    }
    const def = cap('fs.list');
    const unsorted = await def.run(def.input.parse({ path: dir }), {
      host: new UnsortedHost('local'), device: 'local', os: 'linux', limits: { timeoutMs: 10_000, maxOutputBytes: 65_536 },
    });
    expect((unsorted.data as { entries: { name: string }[] }).entries.map((e) => e.name)).toEqual(['.hidden', 'a-dir', 'b.txt', 'c-link']);

    const noHidden = await call('fs.list', { path: dir, hidden: false });
    expect((noHidden.data as { entries: { name: string }[] }).entries.map((e) => e.name)).toEqual(['a-dir', 'b.txt', 'c-link']);
  });

  it('truncates at limit and caps stdout', async () => {
    for (let i = 0; i < 5; i++) await fsp.writeFile(path.join(dir, `f${i}`), '');
    const r = await call('fs.list', { path: dir, limit: 3 });
    expect(r.truncated).toBe(true);
    expect((r.data as { entries: { name: string }[]; total: number }).entries.map((e) => e.name)).toEqual(['f0', 'f1', 'f2']);
    expect((r.data as { total: number }).total).toBe(5);
    const capped = await call('fs.list', { path: dir }, { maxOutputBytes: 30 });
    expect(Buffer.byteLength(capped.stdout)).toBeLessThanOrEqual(30);
    expect(capped.truncated).toBe(true);
  });

  it('refuses a file and reports a missing path', async () => {
    await fsp.writeFile(path.join(dir, 'f'), 'x');
    const r = await call('fs.list', { path: path.join(dir, 'f') });
    expect(r.ok).toBe(false);
    expect(r.error?.code).toBe('invalid_args');
    expect(r.error?.message).toContain('not a directory');
    const missing = await call('fs.list', { path: path.join(dir, 'nope') });
    expect(missing.error).toEqual({ code: 'not_found', message: `${path.join(dir, 'nope')} does not exist` });
  });
});

describe('fs.stat', () => {
  it('reports files with an octal mode and symlinks as symlinks', async () => {
    const f = path.join(dir, 'f');
    await fsp.writeFile(f, 'abc');
    await fsp.chmod(f, 0o640);
    const r = await call('fs.stat', { path: f });
    expect(r.ok).toBe(true);
    expect(r.data).toMatchObject({ path: f, type: 'file', size: 3, mode: 0o640, modeOctal: '0640', uid: process.getuid!() });
    expect(r.stdout).toContain('0640');

    const link = path.join(dir, 'l');
    await fsp.symlink(f, link);
    const s = await call('fs.stat', { path: link });
    expect(s.data).toMatchObject({ type: 'symlink', target: f });

    const missing = await call('fs.stat', { path: path.join(dir, 'nope') });
    expect(missing.error?.code).toBe('not_found');
  });
});

describe('fs.read', () => {
  it('reads text', async () => {
    const f = path.join(dir, 't.txt');
    await fsp.writeFile(f, 'héllo\n');
    const r = await call('fs.read', { path: f });
    expect(r.ok).toBe(true);
    expect(r.stdout).toBe('héllo\n');
    expect(r.encoding).toBe('utf8');
    expect(r.truncated).toBe(false);
    expect(r.data).toEqual({ path: f, size: 7, offset: 0, bytesRead: 7, encoding: 'utf8' });
  });

  it('returns binary as base64 that round-trips through fs.write', async () => {
    const bytes = Buffer.from([0, 255, 254, 1, 2, 0x80, 0xc3, 10]);
    const f = path.join(dir, 'bin');
    await fsp.writeFile(f, bytes);
    const r = await call('fs.read', { path: f });
    expect(r.encoding).toBe('base64');
    expect(Buffer.from(r.stdout, 'base64')).toEqual(bytes);
    const copy = path.join(dir, 'copy');
    const w = await call('fs.write', { path: copy, content: r.stdout, encoding: 'base64' });
    expect(w.ok).toBe(true);
    expect(await fsp.readFile(copy)).toEqual(bytes);
  });

  it('honours offset and length and flags truncation', async () => {
    const f = path.join(dir, 'abc');
    await fsp.writeFile(f, 'abcdefghij');
    const mid = await call('fs.read', { path: f, offset: 2, length: 3 });
    expect(mid.stdout).toBe('cde');
    expect(mid.truncated).toBe(true);
    expect(mid.data).toMatchObject({ size: 10, offset: 2, bytesRead: 3 });
    const tail = await call('fs.read', { path: f, offset: 7, length: 3 });
    expect(tail.stdout).toBe('hij');
    expect(tail.truncated).toBe(false);
    const past = await call('fs.read', { path: f, offset: 50 });
    expect(past.ok).toBe(true);
    expect(past.stdout).toBe('');
    expect(past.data).toMatchObject({ bytesRead: 0 });
  });

  it('caps reads at the output limit, text and binary', async () => {
    const f = path.join(dir, 'big');
    await fsp.writeFile(f, 'x'.repeat(100));
    const r = await call('fs.read', { path: f, length: 50 }, { maxOutputBytes: 16 });
    expect(r.stdout).toBe('x'.repeat(16));
    expect(r.truncated).toBe(true);

    const b = path.join(dir, 'bigbin');
    await fsp.writeFile(b, Buffer.alloc(100, 0xff));
    const rb = await call('fs.read', { path: b }, { maxOutputBytes: 16 });
    expect(rb.encoding).toBe('base64');
    expect(rb.stdout.length).toBeLessThanOrEqual(16);
    expect(rb.truncated).toBe(true);
    expect(Buffer.from(rb.stdout, 'base64')).toEqual(Buffer.alloc((rb.data as { bytesRead: number }).bytesRead, 0xff));
  });

  it('does not split a multi-byte character at the window edge', async () => {
    const f = path.join(dir, 'utf');
    await fsp.writeFile(f, 'aé');
    const r = await call('fs.read', { path: f, length: 2 });
    expect(r.encoding).toBe('utf8');
    expect(r.stdout).toBe('a');
    expect(r.data).toMatchObject({ bytesRead: 1 });
    expect(r.truncated).toBe(true);
  });

  it('refuses directories and symlinks, reports missing files', async () => {
    const d = await call('fs.read', { path: dir });
    expect(d.ok).toBe(false);
    expect(d.error?.code).toBe('invalid_args');
    expect(d.error?.message).toContain('is a directory');
    const f = path.join(dir, 'f');
    await fsp.writeFile(f, 'x');
    await fsp.symlink(f, path.join(dir, 'l'));
    const l = await call('fs.read', { path: path.join(dir, 'l') });
    expect(l.error?.code).toBe('invalid_args');
    expect(l.error?.message).toContain(`symlink to ${f}`);
    const m = await call('fs.read', { path: path.join(dir, 'nope') });
    expect(m.error?.code).toBe('not_found');
  });
});

describe('fs.write', () => {
  it('writes atomically, leaves no temp file and applies the mode', async () => {
    const f = path.join(dir, 'new.txt');
    const r = await call('fs.write', { path: f, content: 'hi there', mode: '0600' });
    expect(r.ok).toBe(true);
    expect(r.data).toEqual({ path: f, bytesWritten: 8 });
    expect(await fsp.readFile(f, 'utf8')).toBe('hi there');
    expect((await fsp.stat(f)).mode & 0o7777).toBe(0o600);
    expect(await fsp.readdir(dir)).toEqual(['new.txt']);
  });

  it('keeps the existing mode when none is given', async () => {
    const f = path.join(dir, 'script.sh');
    await fsp.writeFile(f, 'old');
    await fsp.chmod(f, 0o751);
    const r = await call('fs.write', { path: f, content: 'new' });
    expect(r.ok).toBe(true);
    expect(await fsp.readFile(f, 'utf8')).toBe('new');
    expect((await fsp.stat(f)).mode & 0o7777).toBe(0o751);
  });

  it('refuses to write through a symlink', async () => {
    const target = path.join(dir, 'target');
    await fsp.writeFile(target, 'original');
    const link = path.join(dir, 'link');
    await fsp.symlink(target, link);
    const r = await call('fs.write', { path: link, content: 'evil' });
    expect(r.ok).toBe(false);
    expect(r.error?.message).toContain('symlink');
    expect(await fsp.readFile(target, 'utf8')).toBe('original');
    expect((await fsp.lstat(link)).isSymbolicLink()).toBe(true);
    expect((await fsp.readdir(dir)).sort()).toEqual(['link', 'target']);
  });

  it('rejects invalid base64, writing nothing', async () => {
    const bad = await call('fs.write', { path: path.join(dir, 'x'), content: 'not base64!!', encoding: 'base64' });
    expect(bad.error?.code).toBe('invalid_args');
    expect(await fsp.readdir(dir)).toEqual([]);
  });

  it('makes the missing directories of a new file (a workspace home), and no stray temp file', async () => {
    const nested = path.join(dir, 'no', 'such', 'x');
    const r = await call('fs.write', { path: nested, content: 'a' });
    expect(r.ok).toBe(true);
    expect(await fsp.readFile(nested, 'utf8')).toBe('a');
    expect(await fsp.readdir(path.join(dir, 'no', 'such'))).toEqual(['x']);
  });
});

describe('fs.delete', () => {
  it('deletes a file', async () => {
    const f = path.join(dir, 'f');
    await fsp.writeFile(f, 'x');
    const r = await call('fs.delete', { path: f });
    expect(r.ok).toBe(true);
    await expect(fsp.lstat(f)).rejects.toThrow();
  });

  it('deletes a symlink but not its target', async () => {
    const target = path.join(dir, 'target');
    await fsp.writeFile(target, 'keep');
    const link = path.join(dir, 'link');
    await fsp.symlink(target, link);
    const r = await call('fs.delete', { path: link });
    expect(r.ok).toBe(true);
    expect(r.data).toMatchObject({ type: 'symlink' });
    await expect(fsp.lstat(link)).rejects.toThrow();
    expect(await fsp.readFile(target, 'utf8')).toBe('keep');
  });

  it('refuses a directory and reports a missing path', async () => {
    const sub = path.join(dir, 'sub');
    await fsp.mkdir(sub);
    const r = await call('fs.delete', { path: sub });
    expect(r.ok).toBe(false);
    expect(r.error?.code).toBe('invalid_args');
    expect(r.error?.message).toBe(`${sub} is a directory; fs.delete removes only files and symlinks`);
    expect((await fsp.stat(sub)).isDirectory()).toBe(true);
    const m = await call('fs.delete', { path: path.join(dir, 'nope') });
    expect(m.error?.code).toBe('not_found');
  });
});

describe('proc', () => {
  it('proc.list includes a spawned busy process, sorted by cpu', async () => {
    const busy = spawnChild([process.execPath, '-e', 'for(;;){}']);
    await new Promise((r) => setTimeout(r, 700));
    const r = await call('proc.list', { limit: 200 });
    busy.kill('SIGKILL');
    expect(r.ok).toBe(true);
    const data = r.data as { rows: ProcRow[]; total: number; sort: string };
    const row = data.rows.find((x) => x.pid === busy.pid);
    expect(row).toBeDefined();
    expect(row!.ppid).toBe(process.pid);
    expect(row!.cpu).toBeGreaterThan(10);
    expect(row!.rssKb).toBeGreaterThan(0);
    expect(data.total).toBeGreaterThanOrEqual(data.rows.length);
    for (let i = 1; i < data.rows.length; i++) expect(data.rows[i - 1]!.cpu).toBeGreaterThanOrEqual(data.rows[i]!.cpu);
    expect(r.stdout.split('\n')[0]).toMatch(/PID\s+USER\s+CPU%\s+MEM%\s+RSS COMMAND/);
    expect(r.stdout).toContain(String(busy.pid));
  });

  it('proc.list sorts by memory and honours the limit', async () => {
    const r = await call('proc.list', { sort: 'mem', limit: 3 });
    const rows = (r.data as { rows: ProcRow[] }).rows;
    expect(rows).toHaveLength(3);
    expect(rows[0]!.rssKb).toBeGreaterThanOrEqual(rows[1]!.rssKb);
    expect(rows[1]!.rssKb).toBeGreaterThanOrEqual(rows[2]!.rssKb);
    expect(r.stdout.split('\n')).toHaveLength(4);
  });

  it('proc.kill refuses pid 1, pid 0 and the agent itself', async () => {
    for (const pid of [0, 1, process.pid]) {
      const r = await call('proc.kill', { pid, signal: 'KILL' });
      expect(r.ok, String(pid)).toBe(false);
      expect(r.error?.code, String(pid)).toBe('policy_denied');
      expect(r.error?.message).toContain(`pid ${pid}`);
    }
  });

  it('proc.kill terminates a real sleep process', async () => {
    const child = spawnChild(['sleep', '30']);
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
    const r = await call('proc.kill', { pid: child.pid });
    expect(r.ok).toBe(true);
    expect(r.stdout).toContain('SIGTERM');
    expect(await exited).toBe('SIGTERM');
  });

  it('proc.kill sends the requested signal', async () => {
    const child = spawnChild(['sleep', '30']);
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
    const r = await call('proc.kill', { pid: child.pid, signal: 'HUP' });
    expect(r.ok).toBe(true);
    expect(await exited).toBe('SIGHUP');
  });

  it('proc.kill reports a missing process as not_found', async () => {
    const child = spawnChild(['true']);
    await new Promise((resolve) => child.on('exit', resolve));
    const r = await call('proc.kill', { pid: child.pid });
    expect(r.ok).toBe(false);
    expect(r.error?.code).toBe('not_found');
  });
});

describe('sys.info disks without df', () => {
  it('LocalHost.diskUsage (statfs) reports the same real disks as `df -kP`', async () => {
    const { execFileSync } = await import('node:child_process');
    const { parseDf, realDisks } = await import('../capabilities/catalog/sys.js');
    const direct = realDisks((await new LocalHost('local').diskUsage())!);
    const viaDf = parseDf(execFileSync('df', ['-kP'], { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } }));
    expect(direct.map((d) => [d.mount, d.filesystem, d.sizeBytes])).toEqual(viaDf.map((d) => [d.mount, d.filesystem, d.sizeBytes]));
    for (const d of direct) {
      const twin = viaDf.find((x) => x.mount === d.mount)!;
      expect(Math.abs(d.usePercent - twin.usePercent)).toBeLessThanOrEqual(1);
    }
  });
});

describe('a Host that fails (guarded, as in every family)', () => {
  // A device that went away mid-call: every Host method rejects. The capabilities answer with a
  // failed result a person can read, never a rejection (catalog/shared.ts guarded()).
  const gone = new Proxy({ kind: 'ssh', device: 'gone' } as Record<string, unknown>, {
    get: (target, prop) => (prop in target ? target[prop as string] : async () => { throw new MeshpilotError('unreachable', 'device gone: connection lost'); }),
  }) as unknown as CapabilityContext['host'];
  const ctx: CapabilityContext = { host: gone, device: 'gone', os: 'linux', limits: { timeoutMs: 1000, maxOutputBytes: 1024 } };

  it.each([
    ['fs.list', { path: '/tmp' }], ['fs.stat', { path: '/tmp' }], ['fs.read', { path: '/tmp/x' }], ['fs.write', { path: '/tmp/x', content: 'x' }],
    ['fs.delete', { path: '/tmp/x' }], ['sys.info', {}], ['sys.health', {}], ['proc.list', {}], ['proc.kill', { pid: 4242 }],
  ])('%s', async (name, args) => {
    const def = cap(name);
    const r = await def.run(def.input.parse(args), ctx);
    expect(r).toMatchObject({ ok: false, error: { code: 'unreachable', message: expect.stringContaining('device gone') as unknown } });
  });
});
