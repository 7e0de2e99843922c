/**
 * vm.* over the ssh transport (a real sshd on loopback, real podman on the "device"): the backend
 * issues its podman commands through the device's Host, so the same capability works remotely.
 * As root: import, new with a published port, exec, ls, rm, rm of a gone VM. As an unprivileged user
 * (rootless podman on this cgroups-v1 host ignores --memory/--cpus): vm.new is refused, nothing left.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase, type Db } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import { acceptHostKey, closeSshPool } from '../capabilities/transports/ssh.js';
import type { VmInfo } from '../capabilities/vm/backend.js';
import { startSshd, type SshdFixture } from './fixtures/sshd.js';

const RUN = `s${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-vmssh-${RUN}:latest`;
const saved = process.env['MESHPILOT_HOME'];
let home: string;
let root: SshdFixture;
let user: SshdFixture;
let db: Db;
let invoker: Invoker;
const manifests = new Map<string, Manifest>();

function manifest(device: string, fx: SshdFixture): Manifest {
  const r = parseManifest(`device: ${device}
transport: { kind: ssh, host: ${fx.host}, port: ${fx.port}, user: ${fx.user}, key: "${fx.keyPath}" }
limits: { timeout_s: 60, max_output_bytes: 65536 }
capabilities:
  vm.new: { images: ["localhost/mp-vmssh-*"], approval: never }
  vm.ls: {}
  vm.exec: { approval: never }
  vm.rm: { approval: never }
  vm.image.import: { paths_allowed: ["${home}/**"], approval: never }
`, `${device}.yaml`);
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r.manifest;
}

beforeAll(async () => {
  home = mkdtempSync(path.join(os.tmpdir(), 'mp-vmssh-'));
  chmodSync(home, 0o755);
  process.env['MESHPILOT_HOME'] = home;
  [root, user] = await Promise.all([startSshd({ user: 'root' }), startSshd()]);
  for (const fx of [root, user]) acceptHostKey({ host: fx.host, port: fx.port, keyType: fx.hostKeyType, fingerprint: fx.hostKeyFingerprint });
  const fs = path.join(home, 'rootfs');
  for (const d of ['bin', 'tmp', 'proc', 'sys', 'dev']) mkdirSync(path.join(fs, d), { recursive: true });
  copyFileSync('/bin/busybox', path.join(fs, 'bin', 'busybox'));
  for (const a of ['sh', 'sleep', 'echo', 'hostname']) symlinkSync('busybox', path.join(fs, 'bin', a));
  execFileSync('tar', ['-C', fs, '-cf', path.join(home, 'rootfs.tar'), '.']);
  chmodSync(path.join(home, 'rootfs.tar'), 0o644);
  manifests.set('vmhost', manifest('vmhost', root));
  manifests.set('userhost', manifest('userhost', user));
  db = openDatabase(path.join(home, 'meshpilot.db'));
  invoker = new Invoker({ manifests: { get: (d) => manifests.get(d) }, audit: new SqliteAuditLog(db) });
}, 60_000);

afterAll(async () => {
  await invoker?.close();
  closeSshPool();
  db?.close();
  try { execFileSync('podman', ['rm', '-f', '-t', '0', `mp-box-${RUN}`], { stdio: 'ignore' }); } catch { /* gone */ }
  try { execFileSync('podman', ['rmi', '-f', IMAGE], { stdio: 'ignore' }); } catch { /* gone */ }
  if (user) {
    try { execFileSync('su', [user.user, '-s', '/bin/sh', '-c', `cd /tmp; podman rm -f -t 0 mp-limits-${RUN}; podman rmi -f ${IMAGE}`], { stdio: 'ignore' }); } catch { /* gone */ }
  }
  await Promise.all([root?.stop(), user?.stop()]);
  rmSync(home, { recursive: true, force: true });
  if (saved === undefined) delete process.env['MESHPILOT_HOME'];
  else process.env['MESHPILOT_HOME'] = saved;
}, 60_000);

describe('vm.* over ssh', () => {
  it('as root: import, new, exec, ls, rm, and rm of a gone VM, all through the ssh Host', async () => {
    const call = (capability: string, args: Record<string, unknown>) => invoker.invoke({ device: 'vmhost', capability, args, actor: '@op:example.org' });
    const imp = await call('vm.image.import', { path: path.join(home, 'rootfs.tar'), image: IMAGE });
    expect(imp.error).toBeUndefined();
    const name = `box-${RUN}`;
    const made = await call('vm.new', { name, image: IMAGE, memory_mb: 64, ports: [80] });
    expect(made.error).toBeUndefined();
    expect((made.result?.data as VmInfo).ports[0]?.host).toBeGreaterThan(0);
    const exec = await call('vm.exec', { name, argv: ['hostname'] });
    expect(exec.result).toMatchObject({ ok: true, stdout: `${name}\n` });
    const ls = await call('vm.ls', {});
    expect((ls.result?.data as VmInfo[]).find((v) => v.name === name)).toMatchObject({ owner: '@op:example.org', memoryMb: 64 });
    expect((await call('vm.rm', { name })).result).toMatchObject({ ok: true, data: { gone: false } });
    expect((await call('vm.rm', { name })).result).toMatchObject({ ok: true, data: { gone: true } });
  }, 120_000);

  it('refuses a VM whose limits podman would ignore (rootless on cgroups v1), leaving nothing behind', async () => {
    const call = (capability: string, args: Record<string, unknown>) => invoker.invoke({ device: 'userhost', capability, args, actor: '@op:example.org' });
    expect((await call('vm.image.import', { path: path.join(home, 'rootfs.tar'), image: IMAGE })).error).toBeUndefined();
    const r = await call('vm.new', { name: `limits-${RUN}`, image: IMAGE, memory_mb: 64 });
    expect(r.ok).toBe(false);
    expect(r.error?.message).toContain('ignores memory and CPU limits');
    const ls = await call('vm.ls', {});
    expect(ls.result?.data).toEqual([]);
  }, 120_000);
});
