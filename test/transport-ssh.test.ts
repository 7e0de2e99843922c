/**
 * The ssh transport against a real OpenSSH sshd on 127.0.0.1 (test/fixtures/sshd.ts): invoke() end
 * to end with audit, quoting, timeouts that kill the remote process, output caps, SFTP, host key
 * verification (unknown, TOFU, changed), the connection pool (reuse, in-flight sharing, idle TTL,
 * LRU, recovery after sshd restarts), ssh config aliases, and the `meshpilot ssh` CLI.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase, type Db } from '../capabilities/db.js';
import { MeshpilotError } from '../capabilities/errors.js';
import { Invoker } from '../capabilities/invoke.js';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import {
  acceptHostKey,
  closeSshPool,
  configureSshPool,
  knownHostsPath,
  readKnownHosts,
  resetSshPoolStats,
  resolveTarget,
  SshHost,
  sshPing,
  sshPoolStats,
} from '../capabilities/transports/ssh.js';
import { SshPool } from '../capabilities/transports/ssh-pool.js';
import { runCli, type CliIo } from '../launcher/cli.js';
import { startSshd, type SshdFixture } from './fixtures/sshd.js';

let fx: SshdFixture;
let fx2: SshdFixture;
let home: string;
let data: string;
let db: Db;
let audit: SqliteAuditLog;
let invoker: Invoker;
let manifest: Manifest;
const savedEnv = { home: process.env['MESHPILOT_HOME'], sshConfig: process.env['MESHPILOT_SSH_CONFIG'] };

const LIMITS = { timeoutMs: 10_000, maxOutputBytes: 64 * 1024 };

function hostFor(f: SshdFixture, device: string, extra: { trust_on_first_use?: boolean; key?: string } = {}, opts: { remoteTimeout?: boolean } = {}): SshHost {
  return new SshHost(device, { kind: 'ssh', host: f.host, port: f.port, user: f.user, key: extra.key ?? f.keyPath, ...(extra.trust_on_first_use !== undefined ? { trust_on_first_use: extra.trust_on_first_use } : {}) }, opts);
}

function poolKey(f: SshdFixture, key: string = f.keyPath): string {
  return SshPool.keyOf({ device: 'x', host: f.host, port: f.port, user: f.user, keyPath: key, trustOnFirstUse: false, origin: 'manifest' });
}

function pgrep(pattern: string): string[] {
  try {
    return execFileSync('pgrep', ['-f', pattern], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  } catch {
    return []; // exit 1: no process matched
  }
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return cond();
}

function capture(): CliIo & { stdout: string; stderr: string } {
  const io = { stdout: '', stderr: '', isTTY: false, out: (t: string) => { io.stdout += t; }, err: (t: string) => { io.stderr += t; } };
  return io;
}

function mptestIds(): { uid: number; gid: number } {
  const uid = Number(execFileSync('id', ['-u', fx.user], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', fx.user], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

beforeAll(async () => {
  home = mkdtempSync(path.join(os.tmpdir(), 'mp-ssh-home-'));
  process.env['MESHPILOT_HOME'] = home;
  [fx, fx2] = await Promise.all([startSshd(), startSshd()]);
  acceptHostKey({ host: fx.host, port: fx.port, keyType: fx.hostKeyType, fingerprint: fx.hostKeyFingerprint });

  // Files the test user can read and write.
  data = mkdtempSync(path.join(os.tmpdir(), 'mp-ssh-data-'));
  chmodSync(data, 0o755);
  if (process.getuid?.() === 0) {
    const { uid, gid } = mptestIds();
    chownSync(data, uid, gid);
  }

  const text = [
    'device: sshbox',
    'os: linux',
    `transport: { kind: ssh, host: ${fx.host}, port: ${fx.port}, user: ${fx.user}, key: "${fx.keyPath}" }`,
    'limits: { timeout_s: 10, max_output_bytes: 65536 }',
    'capabilities:',
    '  sys.info: {}',
    `  fs.list: { paths_allowed: ["${data}", "${data}/**"] }`,
    `  fs.read: { paths_allowed: ["${data}/**"] }`,
    '  shell.exec: { binaries: [printf, head, meshpilot-no-such-tool], approval: never, max_output_bytes: 1024 }',
    '',
  ].join('\n');
  const parsed = parseManifest(text, 'sshbox.yaml');
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));
  manifest = parsed.manifest;
  db = openDatabase(path.join(home, 'test.db'));
  audit = new SqliteAuditLog(db);
  invoker = new Invoker({ manifests: { get: (d) => (d === 'sshbox' ? manifest : undefined) }, audit });
}, 60_000);

afterAll(async () => {
  await invoker?.close();
  closeSshPool();
  db?.close();
  await Promise.all([fx?.stop(), fx2?.stop()]);
  rmSync(home, { recursive: true, force: true });
  rmSync(data, { recursive: true, force: true });
  if (savedEnv.home === undefined) delete process.env['MESHPILOT_HOME'];
  else process.env['MESHPILOT_HOME'] = savedEnv.home;
  if (savedEnv.sshConfig === undefined) delete process.env['MESHPILOT_SSH_CONFIG'];
  else process.env['MESHPILOT_SSH_CONFIG'] = savedEnv.sshConfig;
}, 30_000);

describe('invoke() over ssh', () => {
  it('runs shell.exec end to end and writes the audit entry on the controller', async () => {
    const r = await invoker.invoke({ device: 'sshbox', capability: 'shell.exec', args: { argv: ['printf', 'hello %s', 'ssh'] }, actor: 'test' });
    expect(r.error).toBeUndefined();
    expect(r.ok).toBe(true);
    expect(r.result?.stdout).toBe('hello ssh');
    expect(r.audit).not.toBeNull();
    const entries = audit.tail(10, 'sshbox');
    const done = entries.find((e) => e.seq === r.audit?.seq);
    expect(done?.capability).toBe('shell.exec');
    expect(done?.outcome).toBe('ok');
    expect(done?.exit_code).toBe(0);
    expect(entries.some((e) => e.outcome === 'started' && e.seq === (r.audit?.seq ?? 0) - 1)).toBe(true);
    expect(audit.verify('sshbox').ok).toBe(true);
  }, 30_000);

  it('runs sys.info (one remote exec, parsed)', async () => {
    const r = await invoker.invoke({ device: 'sshbox', capability: 'sys.info', args: {}, actor: 'test' });
    expect(r.ok).toBe(true);
    const info = (r.result?.data as { hostname?: string; os?: string; cpus?: number; memory?: { totalBytes: number } } | undefined);
    const flat = JSON.stringify(r.result?.data);
    expect(flat).toContain(os.hostname());
    expect(r.result?.stdout).toContain(os.hostname());
    expect(info).toBeDefined();
    const sysInfo = await hostFor(fx, 'sshbox').systemInfo();
    expect(sysInfo.hostname).toBe(os.hostname());
    expect(sysInfo.os).toBe('linux');
    expect(sysInfo.cpus).toBe(os.cpus().length);
    expect(sysInfo.memory.totalBytes).toBeGreaterThan(0);
    expect(sysInfo.uptimeS).toBeGreaterThan(0);
  }, 30_000);

  it('reads a binary file through SFTP: fs.read returns base64 that round-trips; fs.list sees it', async () => {
    const bytes = Buffer.concat([Buffer.from([0xff, 0xfe, 0x00, 0x80]), randomBytes(3000)]);
    const file = path.join(data, 'blob.bin');
    writeFileSync(file, bytes, { mode: 0o644 });
    const r = await invoker.invoke({ device: 'sshbox', capability: 'fs.read', args: { path: file }, actor: 'test' });
    expect(r.error).toBeUndefined();
    expect(r.result?.encoding).toBe('base64');
    expect(Buffer.from(r.result?.stdout ?? '', 'base64').equals(bytes)).toBe(true);
    const part = await invoker.invoke({ device: 'sshbox', capability: 'fs.read', args: { path: file, offset: 1000, length: 500 }, actor: 'test' });
    expect(Buffer.from(part.result?.stdout ?? '', 'base64').equals(bytes.subarray(1000, 1500))).toBe(true);
    const list = await invoker.invoke({ device: 'sshbox', capability: 'fs.list', args: { path: data }, actor: 'test' });
    expect(list.ok).toBe(true);
    const entries = (list.result?.data as { entries: Array<{ name: string; size: number; type: string }> }).entries;
    expect(entries.find((e) => e.name === 'blob.bin')).toMatchObject({ type: 'file', size: bytes.length });
  }, 30_000);

  it('reports a missing program as tool_missing naming the device', async () => {
    const r = await invoker.invoke({ device: 'sshbox', capability: 'shell.exec', args: { argv: ['meshpilot-no-such-tool', '--x'] }, actor: 'test' });
    expect(r.ok).toBe(false);
    expect(r.error).toEqual({ code: 'tool_missing', message: 'meshpilot-no-such-tool not installed on sshbox' });
    const e = await hostFor(fx, 'box2').exec({ argv: ['meshpilot-no-such-tool'], ...LIMITS }).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(MeshpilotError);
    expect((e as MeshpilotError).code).toBe('tool_missing');
    // A program that itself exits 127 is not "missing".
    const own = await hostFor(fx, 'box2').exec({ argv: ['sh', '-c', 'exit 127'], ...LIMITS });
    expect(own.exitCode).toBe(127);
  }, 30_000);

  it('caps output at the manifest limit while streaming', async () => {
    const file = path.join(data, 'big.txt');
    writeFileSync(file, 'x'.repeat(100_000), { mode: 0o644 });
    const r = await invoker.invoke({ device: 'sshbox', capability: 'shell.exec', args: { argv: ['head', '-c', '100000', file] }, actor: 'test' });
    expect(r.result?.truncated).toBe(true);
    expect(Buffer.byteLength(r.result?.stdout ?? '')).toBe(1024);
    const direct = await hostFor(fx, 'box2').exec({ argv: ['head', '-c', '300000', '/dev/urandom'], timeoutMs: 10_000, maxOutputBytes: 4096 });
    expect(direct.exitCode).toBe(0);
    expect(direct.stdout.length).toBe(4096);
    expect(direct.truncated).toBe(true);
  }, 30_000);
});

describe('SshHost exec', () => {
  it('keeps every argument literal: spaces, quotes, ;, $(id), backticks, globs, newlines, empty', async () => {
    const args = ['a b', "it's", '"double"', 'x; id', '$(id)', '`id`', '*', 'line1\nline2', '', '\\back\\', '$HOME', 'a&&b|c>d', "mixed ' \" $ \\"];
    const out = await hostFor(fx, 'box2').exec({ argv: ['printf', '[%s]', ...args], ...LIMITS });
    expect(out.stderr.toString()).toBe('');
    expect(out.stdout.toString()).toBe(args.map((a) => `[${a}]`).join(''));
  }, 30_000);

  it('passes env (quoted) and cwd (even with spaces and metacharacters)', async () => {
    const dir = path.join(data, 'd ir $(id);');
    mkdirSync(dir);
    chmodSync(dir, 0o755);
    const out = await hostFor(fx, 'box2').exec({
      argv: ['sh', '-c', 'printf "%s|%s|%s" "$FOO" "$BAR" "$(pwd)"'],
      env: { FOO: 'a b $(id) `x`', BAR: "q'uote" },
      cwd: dir,
      ...LIMITS,
    });
    expect(out.stdout.toString()).toBe(`a b $(id) \`x\`|q'uote|${dir}`);
    const stdin = await hostFor(fx, 'box2').exec({ argv: ['head', '-c', '5'], stdin: 'hello world', ...LIMITS });
    expect(stdin.stdout.toString()).toBe('hello');
  }, 30_000);

  for (const remoteTimeout of [true, false]) {
    it(`kills the remote process on timeout (${remoteTimeout ? 'remote timeout(1)' : 'channel signal fallback'})`, async () => {
      const secs = String(randomInt(5000, 90000));
      const pattern = `^(timeout .*)?sleep ${secs}$`;
      const started = performance.now();
      const pending = hostFor(fx, 'box2', {}, { remoteTimeout }).exec({ argv: ['sleep', secs], timeoutMs: 1500, maxOutputBytes: 1024 });
      expect(await waitFor(() => pgrep(pattern).length > 0, 1400)).toBe(true);
      const out = await pending;
      expect(out.timedOut).toBe(true);
      expect(performance.now() - started).toBeLessThan(8000);
      expect(await waitFor(() => pgrep(pattern).length === 0, 3000)).toBe(true);
    }, 30_000);
  }
});

describe('SFTP writes', () => {
  it('writes atomically, keeps the mode, refuses symlinks, leaves no temp files', async () => {
    const host = hostFor(fx, 'box2');
    const target = path.join(data, 'out.txt');
    await host.writeFileAtomic(target, Buffer.from('one\n'));
    expect(readFileSync(target, 'utf8')).toBe('one\n');
    expect(statSync(target).mode & 0o777).toBe(0o644);
    chmodSync(target, 0o600);
    await host.writeFileAtomic(target, Buffer.from('two\n'));
    expect(readFileSync(target, 'utf8')).toBe('two\n');
    expect(statSync(target).mode & 0o777).toBe(0o600);
    await host.writeFileAtomic(target, Buffer.from('three\n'), 0o640);
    expect(statSync(target).mode & 0o777).toBe(0o640);
    const link = path.join(data, 'link.txt');
    symlinkSync(target, link);
    const e = await host.writeFileAtomic(link, Buffer.from('evil')).catch((err: unknown) => err);
    expect((e as MeshpilotError).code).toBe('permission');
    expect(readFileSync(target, 'utf8')).toBe('three\n');
    expect(readdirSync(data).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    expect((await host.lstat(link)).type).toBe('symlink');
    expect(await host.realpath(link)).toBe(target);
    await expect(host.realpath(path.join(data, 'nope'))).rejects.toMatchObject({ code: 'ENOENT' });
    await host.unlink(link);
    expect(existsSync(link)).toBe(false);
    expect(await host.homedir()).toBe(process.getuid?.() === 0 ? `/home/${fx.user}` : os.homedir());
  }, 30_000);
});

describe('host keys', () => {
  it('refuses an unknown host without TOFU, naming the exact command; accepts it with TOFU', async () => {
    const e = await hostFor(fx2, 'dev2').exec({ argv: ['true'], ...LIMITS }).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(MeshpilotError);
    expect((e as MeshpilotError).code).toBe('host_key');
    expect((e as MeshpilotError).message).toContain(`meshpilot ssh trust dev2 --fingerprint ${fx2.hostKeyFingerprint}`);
    expect(readKnownHosts().some((k) => k.pattern === `[127.0.0.1]:${fx2.port}`)).toBe(false);

    const ok = await hostFor(fx2, 'dev2', { trust_on_first_use: true }).exec({ argv: ['true'], ...LIMITS });
    expect(ok.exitCode).toBe(0);
    expect(readFileSync(knownHostsPath(), 'utf8')).toContain(`[127.0.0.1]:${fx2.port} ssh-ed25519 ${fx2.hostKeyFingerprint}`);
    expect(statSync(knownHostsPath()).mode & 0o777).toBe(0o600);
  }, 30_000);

  it('refuses a changed host key loudly (even with TOFU), naming old and new; the CLI trusts it only on request', async () => {
    const oldFp = fx2.hostKeyFingerprint;
    await fx2.restart({ newHostKey: true });
    const newFp = fx2.hostKeyFingerprint;
    expect(newFp).not.toBe(oldFp);
    const before = readFileSync(knownHostsPath(), 'utf8');
    const e = await hostFor(fx2, 'dev2', { trust_on_first_use: true }).exec({ argv: ['true'], ...LIMITS }).catch((err: unknown) => err);
    expect((e as MeshpilotError).code).toBe('host_key');
    expect((e as MeshpilotError).message).toMatch(/HOST KEY CHANGED/);
    expect((e as MeshpilotError).message).toContain(oldFp);
    expect((e as MeshpilotError).message).toContain(newFp);
    expect((e as MeshpilotError).message).toContain(`meshpilot ssh trust dev2 --fingerprint ${newFp} --replace`);
    expect(readFileSync(knownHostsPath(), 'utf8')).toBe(before);

    // The CLI, on a device enrolled in MESHPILOT_HOME.
    mkdirSync(path.join(home, 'manifests'), { recursive: true });
    writeFileSync(path.join(home, 'manifests', 'dev2.yaml'),
      `device: dev2\ntransport: { kind: ssh, host: ${fx2.host}, port: ${fx2.port}, user: ${fx2.user}, key: "${fx2.keyPath}" }\ncapabilities:\n  sys.info: {}\n`);
    let io = capture();
    expect(await runCli(['ssh', 'fingerprint', 'dev2'], io)).toBe(0);
    expect(io.stdout).toContain(`ssh-ed25519 ${newFp}`);
    expect(io.stdout).toContain('CHANGED');
    expect(readFileSync(knownHostsPath(), 'utf8')).toBe(before);

    io = capture();
    expect(await runCli(['ssh', 'trust', 'dev2', '--fingerprint', oldFp], io)).not.toBe(0);
    expect(io.stderr).toContain(`presents ssh-ed25519 ${newFp}`);
    io = capture();
    expect(await runCli(['ssh', 'trust', 'dev2', '--fingerprint', newFp], io)).not.toBe(0);
    expect(io.stderr).toContain('--replace');
    expect(readFileSync(knownHostsPath(), 'utf8')).toBe(before);

    io = capture();
    expect(await runCli(['ssh', 'trust', 'dev2', '--fingerprint', newFp, '--replace'], io)).toBe(0);
    expect(io.stdout).toContain('replaced and trusted');
    const after = readKnownHosts().filter((k) => k.pattern === `[127.0.0.1]:${fx2.port}`);
    expect(after).toEqual([{ pattern: `[127.0.0.1]:${fx2.port}`, keyType: 'ssh-ed25519', fingerprint: newFp }]);
    const ok = await hostFor(fx2, 'dev2').exec({ argv: ['true'], ...LIMITS });
    expect(ok.exitCode).toBe(0);
  }, 60_000);
});

describe('connection pool', () => {
  it('shares one handshake between concurrent first calls and reuses it for 100 execs', async () => {
    closeSshPool();
    resetSshPoolStats();
    const host = hostFor(fx, 'pooled');
    const first = await Promise.all(Array.from({ length: 12 }, (_, i) => host.exec({ argv: ['printf', String(i)], ...LIMITS })));
    expect(first.map((o) => o.stdout.toString())).toEqual(Array.from({ length: 12 }, (_, i) => String(i)));
    for (let i = 0; i < 100; i++) {
      const o = await host.exec({ argv: ['true'], ...LIMITS });
      expect(o.exitCode).toBe(0);
    }
    await host.readdir(data);
    expect(sshPoolStats().handshakes[poolKey(fx)]).toBe(1);
  }, 60_000);

  it('rebuilds the connection after sshd restarts', async () => {
    closeSshPool();
    resetSshPoolStats();
    const host = hostFor(fx, 'pooled');
    expect((await host.exec({ argv: ['true'], ...LIMITS })).exitCode).toBe(0);
    await fx.restart();
    const again = await host.exec({ argv: ['printf', 'back'], ...LIMITS });
    expect(again.stdout.toString()).toBe('back');
    expect((await host.lstat(data)).type).toBe('dir');
    expect(sshPoolStats().handshakes[poolKey(fx)]).toBe(2);
  }, 60_000);

  it('closes idle connections after the TTL and evicts the least recently used beyond the cap', async () => {
    closeSshPool();
    try {
      configureSshPool({ idleTtlMs: 300 });
      await hostFor(fx, 'pooled').exec({ argv: ['true'], ...LIMITS });
      expect(sshPoolStats().hosts.map((h) => h.key)).toEqual([poolKey(fx)]);
      expect(await waitFor(() => sshPoolStats().hosts.length === 0, 3000)).toBe(true);

      configureSshPool({ idleTtlMs: 60_000, maxHosts: 1 });
      const key2 = path.join(fx.dir, 'id_copy');
      copyFileSync(fx.keyPath, key2);
      await hostFor(fx, 'pooled').exec({ argv: ['true'], ...LIMITS });
      await hostFor(fx, 'pooled', { key: key2 }).exec({ argv: ['true'], ...LIMITS });
      expect(sshPoolStats().hosts.map((h) => h.key)).toEqual([poolKey(fx, key2)]);
    } finally {
      configureSshPool({ idleTtlMs: 5 * 60_000, maxHosts: 32 });
      closeSshPool();
    }
  }, 30_000);

  it('reports a refused connection as unreachable and does not pool it', async () => {
    const e = await new SshHost('gone', { kind: 'ssh', host: '127.0.0.1', port: 1, user: fx.user, key: fx.keyPath }).exec({ argv: ['true'], ...LIMITS }).catch((err: unknown) => err);
    expect((e as MeshpilotError).code).toBe('unreachable');
    expect((e as MeshpilotError).message).toContain('connection refused');
  }, 30_000);
});

describe('targets', () => {
  it('resolves an ~/.ssh/config alias (HostName, Port, User, IdentityFile) and refuses ProxyJump clearly', async () => {
    const cfg = path.join(home, 'ssh_config');
    writeFileSync(cfg, [
      'Host customer-prod',
      '  HostName 127.0.0.1',
      `  Port ${fx.port}`,
      `  User ${fx.user}`,
      `  IdentityFile ${fx.keyPath}`,
      'Host behind-bastion',
      '  HostName 10.9.9.9',
      '  ProxyJump bastion',
      '',
    ].join('\n'));
    process.env['MESHPILOT_SSH_CONFIG'] = cfg;
    const t = resolveTarget('cp', { kind: 'ssh', alias: 'customer-prod' });
    expect(t).toMatchObject({ host: '127.0.0.1', port: fx.port, user: fx.user, keyPath: fx.keyPath });
    const out = await new SshHost('cp', { kind: 'ssh', alias: 'customer-prod' }).exec({ argv: ['printf', 'via alias'], ...LIMITS });
    expect(out.stdout.toString()).toBe('via alias');
    const e = await new SshHost('bb', { kind: 'ssh', alias: 'behind-bastion' }).exec({ argv: ['true'], ...LIMITS }).catch((err: unknown) => err);
    expect((e as MeshpilotError).code).toBe('config');
    expect((e as MeshpilotError).message).toMatch(/ProxyJump is not supported yet/);
  }, 30_000);

  it('defaults the key to MESHPILOT_HOME/keys/ssh/id_ed25519 when present', () => {
    const keyDir = path.join(home, 'keys', 'ssh');
    mkdirSync(keyDir, { recursive: true });
    copyFileSync(fx.keyPath, path.join(keyDir, 'id_ed25519'));
    const t = resolveTarget('k', { kind: 'ssh', host: 'example.org' });
    expect(t.keyPath).toBe(path.join(keyDir, 'id_ed25519'));
    expect(t.port).toBe(22);
  });
});

describe('health probes over ssh', () => {
  it('sshPing runs `true` on the pooled connection, and fails clearly once sshd is gone', async () => {
    const ms = await sshPing(manifest, 5_000);
    expect(ms).toBeGreaterThan(0);
    const text = [
      'device: gone',
      `transport: { kind: ssh, host: 127.0.0.1, port: 9, user: ${fx.user}, key: "${fx.keyPath}" }`,
      'capabilities:',
      '  sys.info: {}',
      '',
    ].join('\n');
    const parsed = parseManifest(text, 'gone.yaml');
    if (!parsed.ok) throw new Error('bad manifest');
    const err = await sshPing(parsed.manifest, 3_000).catch((e: unknown) => e);
    expect((err as MeshpilotError).code).toBe('unreachable');
  }, 30_000);
});
