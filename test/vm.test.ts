/**
 * vm.* through invoke on a local device with real podman (installed by scripts/ensure-deps.mjs --system):
 * an image imported from a busybox-static rootfs, new/exec/ls/stop/start/rm, the memory limit seen
 * from inside, the reaper (an expired VM goes, a foreign container stays), rm of a gone VM, a foreign
 * container refused, and the message when podman is missing.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker, type ApprovalHook } from '../capabilities/invoke.js';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import { VmReaper } from '../capabilities/vm/reaper.js';
import { setQuotaGate, type QuotaRequest } from '../capabilities/vm/quota.js';
import type { VmInfo } from '../capabilities/vm/backend.js';
import { backendFor } from '../capabilities/vm/podman.js';
import { LocalHost } from '../capabilities/transports/local.js';
import { connect } from 'node:net';
import { makeTempDir } from './helpers/tmp.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `t${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-vmtest-${RUN}:latest`;
const FOREIGN = `mp-foreign-${RUN}`;
const tmp = makeTempDir('mp-vm-');

function podman(...args: string[]): string {
  return execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function manifestText(extra = ''): string {
  return `device: local
capabilities:
  vm.new: { images: ["localhost/mp-vmtest-*"], approval: never }
  vm.ls: {}
  vm.rm: { approval: never }
  vm.stop: { approval: never }
  vm.start: { approval: never }
  vm.logs: {}
  vm.exec: { approval: never }
  vm.image.import: { paths_allowed: ["${tmp.dir}/**"], approval: never }
${extra}`;
}

function setup(text = manifestText(), approve?: ApprovalHook) {
  const r = parseManifest(text, 'local.yaml');
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  const db = openDatabase(path.join(tmp.dir, `meshpilot-${Math.random().toString(36).slice(2)}.db`));
  const audit = new SqliteAuditLog(db);
  const manifest: Manifest = r.manifest;
  const invoker = new Invoker({ manifests: { get: (d) => (d === 'local' ? manifest : undefined) }, audit, ...(approve ? { approve } : {}) });
  return { invoker, audit, manifest };
}

const OP = '@op:example.org';
let env: ReturnType<typeof setup>;
const vmNames: string[] = [];
const vm = (n: string): string => {
  const name = `${n}-${RUN}`;
  vmNames.push(name);
  return name;
};

beforeAll(() => {
  // A rootfs with busybox-static only: no registry is needed (or reachable here).
  busyboxRootfs(tmp.dir, { applets: ['sh', 'sleep', 'cat', 'echo', 'ls', 'id', 'hostname', 'head', 'true'] });
  env = setup();
}, 60_000);

afterAll(() => {
  for (const n of vmNames) try { podman('rm', '-f', '-t', '0', `mp-${n}`); } catch { /* gone */ }
  try { podman('rm', '-f', '-t', '0', FOREIGN); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  setQuotaGate(undefined);
  tmp.cleanup();
}, 60_000);

describe('vm.* on real podman', () => {
  it('imports an image from a rootfs tarball, then new/exec/ls/stop/start/rm through invoke, audited', async () => {
    const { invoker, audit } = env;
    const imp = await invoker.invoke({ device: 'local', capability: 'vm.image.import', args: { path: path.join(tmp.dir, 'rootfs.tar'), image: IMAGE }, actor: OP });
    expect(imp.error).toBeUndefined();
    expect(imp.result?.stdout).toContain(`as ${IMAGE}`);

    const name = vm('dev');
    const created = await invoker.invoke({ device: 'local', capability: 'vm.new', args: { name, image: IMAGE, cpus: 0.5, memory_mb: 64, ttl_h: 2, ports: [8080] }, actor: `llm:${OP}` });
    expect(created.error).toBeUndefined();
    const info = created.result?.data as VmInfo;
    expect(info).toMatchObject({ name, owner: OP, cpus: 0.5, memoryMb: 64, state: 'running' });
    expect(info.ports[0]).toMatchObject({ guest: 8080 });
    expect(info.ports[0]?.host).toBeGreaterThan(0);
    expect(info.expiresAt! - Date.now()).toBeGreaterThan(7_100_000);
    // the labels podman holds
    const labels = JSON.parse(podman('container', 'inspect', '--format', '{{json .Config.Labels}}', `mp-${name}`)) as Record<string, string>;
    expect(labels).toMatchObject({ 'meshpilot.name': name, 'meshpilot.owner': OP });
    expect(labels['meshpilot.id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(Date.parse(labels['meshpilot.expires']!)).toBe(info.expiresAt);

    const hostname = await invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name, argv: ['hostname'] }, actor: OP });
    expect(hostname.result).toMatchObject({ ok: true, exitCode: 0, stdout: `${name}\n` });
    // argv, no shell: metacharacters are literal
    const literal = await invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name, argv: ['echo', '$(id)', ';', 'ls'] }, actor: OP });
    expect(literal.result?.stdout).toBe('$(id) ; ls\n');
    const fails = await invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name, argv: ['sh', '-c', 'echo oops >&2; exit 3'] }, actor: OP });
    expect(fails.result).toMatchObject({ ok: false, exitCode: 3, stderr: 'oops\n' });

    const ls = await invoker.invoke({ device: 'local', capability: 'vm.ls', args: {}, actor: OP });
    const rows = ls.result?.data as VmInfo[];
    expect(rows.find((r) => r.name === name)).toMatchObject({ state: 'running', owner: OP, image: IMAGE });
    expect(ls.result?.stdout).toMatch(new RegExp(`${name}  running  ${IMAGE}  0.5 cpu 64M  127\\.0\\.0\\.1:\\d+->8080  ${OP}  expires in`));

    const stop = await invoker.invoke({ device: 'local', capability: 'vm.stop', args: { name }, actor: OP });
    expect(stop.result?.data).toMatchObject({ state: 'exited' });
    const stoppedExec = await invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name, argv: ['true'] }, actor: OP });
    expect(stoppedExec.error?.message).toContain('not running');
    const start = await invoker.invoke({ device: 'local', capability: 'vm.start', args: { name }, actor: OP });
    expect(start.result?.data).toMatchObject({ state: 'running' });
    const again = await invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name, argv: ['echo', 'back'] }, actor: OP });
    expect(again.result?.stdout).toBe('back\n');

    const logs = await invoker.invoke({ device: 'local', capability: 'vm.logs', args: { name }, actor: OP });
    expect(logs.ok).toBe(true);

    const dup = await invoker.invoke({ device: 'local', capability: 'vm.new', args: { name, image: IMAGE }, actor: OP });
    expect(dup.error?.message).toContain('already exists');

    const rm = await invoker.invoke({ device: 'local', capability: 'vm.rm', args: { name }, actor: OP });
    expect(rm.result).toMatchObject({ ok: true, data: { gone: false, owner: OP } });
    expect(() => podman('container', 'exists', `mp-${name}`)).toThrow();
    // already gone: removed all the same, never wedged on "not found"
    const rm2 = await invoker.invoke({ device: 'local', capability: 'vm.rm', args: { name }, actor: OP });
    expect(rm2.result).toMatchObject({ ok: true, data: { gone: true } });
    expect(rm2.result?.stdout).toContain('already gone');

    const caps = audit.tail(100, 'local').filter((e) => e.outcome !== 'started').map((e) => `${e.capability}:${e.outcome}`);
    expect(caps).toEqual(expect.arrayContaining(['vm.new:ok', 'vm.exec:ok', 'vm.exec:error', 'vm.stop:ok', 'vm.start:ok', 'vm.rm:ok']));
    expect(audit.verify('local').ok).toBe(true);
  }, 120_000);

  it('applies the memory and CPU limits: the cgroup inside the VM shows them', async () => {
    const name = vm('mem');
    const r = await env.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name, image: IMAGE, memory_mb: 96, cpus: 1.5 }, actor: OP });
    expect(r.error).toBeUndefined();
    // cgroup v2 (memory.max) or v1 (memory/memory.limit_in_bytes), whichever the device has
    const mem = await env.invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name, argv: ['sh', '-c', 'cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes'] }, actor: OP });
    expect(mem.result?.stdout.trim()).toBe(String(96 * 1024 * 1024));
    const cpu = await env.invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name, argv: ['sh', '-c', 'cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"'] }, actor: OP });
    const [quota, period] = (cpu.result?.stdout.trim() ?? '').split(/\s+/).map(Number);
    expect(quota! / period!).toBeCloseTo(1.5, 2);
    await env.invoker.invoke({ device: 'local', capability: 'vm.rm', args: { name }, actor: OP });
  }, 60_000);

  it('the manifest decides: images by glob (required), names by the device-name rules', async () => {
    const bad = await env.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name: vm('img'), image: 'docker.io/library/debian:12' }, actor: OP });
    expect(bad).toMatchObject({ ok: false, decision: 'denied', error: { code: 'policy_denied' } });
    expect(bad.error?.message).toBe('vm.new docker.io/library/debian:12 denied: not in images [localhost/mp-vmtest-*]');
    const badName = await env.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name: '-rf', image: IMAGE }, actor: OP });
    expect(badName.error?.code).toBe('invalid_args');
    const upper = await env.invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name: 'Dev', argv: ['id'] }, actor: OP });
    expect(upper.error?.code).toBe('invalid_args');
    const noImages = parseManifest('device: x\ncapabilities:\n  vm.new: {}\n', 'x.yaml');
    expect(noImages.ok).toBe(false);
    if (!noImages.ok) expect(noImages.issues[0]?.message).toContain('vm.new needs images');
  });

  it('approval where the manifest asks: vm.new, vm.rm and vm.exec are risky by default', async () => {
    const asked: string[] = [];
    const { invoker } = setup(`device: local
capabilities:
  vm.new: { images: ["localhost/mp-vmtest-*"] }
  vm.exec: {}
  vm.rm: {}
  vm.ls: {}
`, async (req) => { asked.push(req.capability); return { approved: false, by: '@boss:x' }; });
    const r = await invoker.invoke({ device: 'local', capability: 'vm.new', args: { name: vm('appr'), image: IMAGE }, actor: OP });
    expect(r).toMatchObject({ ok: false, decision: 'rejected', error: { code: 'approval_rejected' } });
    await invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name: 'x', argv: ['id'] }, actor: OP });
    await invoker.invoke({ device: 'local', capability: 'vm.rm', args: { name: 'x' }, actor: OP });
    await invoker.invoke({ device: 'local', capability: 'vm.ls', args: {}, actor: OP });
    expect(asked).toEqual(['vm.new', 'vm.exec', 'vm.rm']);
  });

  it('never touches a container without meshpilot labels; the reaper removes expired VMs only, audited as reaper', async () => {
    // A foreign container with a name meshpilot would use: no labels.
    podman('run', '-d', '--runtime', 'runc', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', '--name', FOREIGN, IMAGE);
    const foreignName = FOREIGN.slice(3);
    for (const capability of ['vm.rm', 'vm.stop', 'vm.exec']) {
      const args = capability === 'vm.exec' ? { name: foreignName, argv: ['id'] } : { name: foreignName };
      const r = await env.invoker.invoke({ device: 'local', capability, args, actor: OP });
      expect(r.ok, capability).toBe(false);
      expect(r.error?.message).toContain('was not created by meshpilot');
    }
    const ls = await env.invoker.invoke({ device: 'local', capability: 'vm.ls', args: {}, actor: OP });
    expect((ls.result?.data as VmInfo[]).map((v) => v.name)).not.toContain(foreignName);

    const old = vm('old');
    const young = vm('young');
    expect((await env.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name: old, image: IMAGE, ttl_h: 0.5 }, actor: OP })).ok).toBe(true);
    expect((await env.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name: young, image: IMAGE, ttl_h: 5 }, actor: OP })).ok).toBe(true);
    // vm.rm with expired_before keeps a VM that has not expired
    const early = await env.invoker.invoke({ device: 'local', capability: 'vm.rm', args: { name: young, expired_before: new Date().toISOString() }, actor: OP });
    expect(early.error?.message).toContain('has not expired');

    const reaper = new VmReaper({ invoker: env.invoker, manifests: () => [env.manifest] });
    const oneHourLater = Date.now() + 3_600_000;
    const reaped = await reaper.run(oneHourLater);
    expect(reaped.filter((r) => r.name === old)).toMatchObject([{ ok: true, gone: false }]);
    expect(reaped.map((r) => r.name)).not.toContain(young);
    expect(() => podman('container', 'exists', `mp-${old}`)).toThrow();
    podman('container', 'exists', `mp-${young}`);
    expect(podman('container', 'inspect', '--format', '{{.State.Status}}', FOREIGN).trim()).toBe('running');

    const entry = env.audit.tail(50, 'local').find((e) => e.capability === 'vm.rm' && e.actor === 'reaper' && e.outcome === 'ok');
    expect(entry?.args).toMatchObject({ name: old });
    expect(entry?.context).toMatchObject({ reason: 'expired', owner: OP });
    // Next pass: nothing is due yet, so it does not even list (no audit noise every minute).
    const before = env.audit.tail(1, 'local')[0]?.seq;
    expect(await reaper.run(oneHourLater + 60_000)).toEqual([]);
    expect(env.audit.tail(1, 'local')[0]?.seq).toBe(before);
    await env.invoker.invoke({ device: 'local', capability: 'vm.rm', args: { name: young }, actor: OP });
  }, 120_000);

  it('reserves quota before creating and releases it when creation fails or the VM is removed', async () => {
    const calls: string[] = [];
    setQuotaGate({
      reserve: async (q: QuotaRequest) => {
        calls.push(`reserve ${q.owner} ${q.name} ${q.cpus}/${q.memory_mb}/${q.disk_mb}/${q.ttl_h}`);
        return q.cpus > 2 ? { ok: false, error: { code: 'quota', message: 'citizen quota: 2 CPUs, you have 2' } } : { ok: true };
      },
      release: async (device, name, owner) => { calls.push(`release ${device} ${name} ${owner}`); },
    });
    try {
      const name = vm('quota');
      const refused = await env.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name, image: IMAGE, cpus: 3 }, actor: OP });
      expect(refused.error).toEqual({ code: 'quota', message: 'citizen quota: 2 CPUs, you have 2' });
      const noImage = await env.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name, image: 'localhost/mp-vmtest-missing:1' }, actor: OP });
      expect(noImage.ok).toBe(false);
      const ok = await env.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name, image: IMAGE, cpus: 1 }, actor: OP });
      expect(ok.ok).toBe(true);
      await env.invoker.invoke({ device: 'local', capability: 'vm.rm', args: { name }, actor: OP });
      expect(calls).toEqual([
        `reserve ${OP} ${name} 3/512/2048/24`,
        `reserve ${OP} ${name} 1/512/2048/24`, `release local ${name} ${OP}`,
        `reserve ${OP} ${name} 1/512/2048/24`, `release local ${name} ${OP}`,
      ]);
    } finally {
      setQuotaGate(undefined);
    }
  }, 60_000);

  it('publish: where the device reaches a guest port (the published loopback port, else the VM on the bridge)', async () => {
    const name = vm('web');
    const serve = (port: number) => `while true; do /bin/busybox nc -l -p ${port} < /etc/msg; done &`;
    const r = await env.invoker.invoke({ device: 'local', capability: 'vm.new', args: {
      name, image: IMAGE, ports: [8080],
      command: ['/bin/sh', '-c', `echo hello-from-${name} > /etc/msg; ${serve(8080)} ${serve(9090)} wait`],
    }, actor: OP });
    expect(r.error).toBeUndefined();
    const backend = backendFor({ host: new LocalHost('local'), device: 'local', os: 'linux', limits: { timeoutMs: 30_000, maxOutputBytes: 65_536 } });
    const read = (address: string, port: number) => new Promise<string>((resolve, reject) => {
      let got = '';
      const s = connect(port, address);
      s.on('data', (d: Buffer) => { got += d.toString(); });
      s.on('end', () => resolve(got));
      s.on('error', reject);
      setTimeout(() => { s.destroy(); resolve(got); }, 3000);
    });
    const published = await backend.publish(name, 8080);
    expect(published).toMatchObject({ ok: true, value: { address: '127.0.0.1', via: 'loopback' } });
    const bridged = await backend.publish(name, 9090);
    expect(bridged).toMatchObject({ ok: true, value: { port: 9090, via: 'bridge' } });
    for (const p of [published, bridged]) {
      if (!p.ok) throw new Error('unreachable');
      let text = '';
      for (let i = 0; i < 20 && !text; i++) {
        text = await read(p.value.address, p.value.port).catch(() => '');
        if (!text) await new Promise((res) => setTimeout(res, 100));
      }
      expect(text).toBe(`hello-from-${name}\n`);
    }
    expect(await backend.publish('nope-vm', 80)).toMatchObject({ ok: false, error: { code: 'not_found' } });
    await env.invoker.invoke({ device: 'local', capability: 'vm.rm', args: { name }, actor: OP });
  }, 60_000);

  it('says which package to install when podman is missing', async () => {
    const saved = process.env['PATH'];
    process.env['PATH'] = '/nonexistent';
    try {
      const r = await env.invoker.invoke({ device: 'local', capability: 'vm.ls', args: {}, actor: OP });
      expect(r.error).toEqual({ code: 'tool_missing', message: 'podman is not installed on local: apt-get install podman runc' });
    } finally {
      process.env['PATH'] = saved;
    }
  });
});
