/**
 * disk_mb enforced on real podman (ext4/overlay here: `--storage-opt size=` is refused): a VM that
 * writes past its limit is stopped by the reaper (vm.ls size=true reads each writable layer, vm.stop
 * through invoke as `reaper`, audited with the sizes), the operators get a notice naming the sizes; a
 * VM within its limit keeps running; a stopped VM is not stopped again.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import type { VmInfo } from '../capabilities/vm/backend.js';
import { VmReaper } from '../capabilities/vm/reaper.js';
import { makeTempDir } from './helpers/tmp.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `d${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-vmdisk-${RUN}:latest`;
const BIG = `big-${RUN}`;
const SMALL = `small-${RUN}`;
const OP = '@op:example.org';
const tmp = makeTempDir('mp-vmdisk-');
const podman = (...args: string[]): string => execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let invoker: Invoker;
let audit: SqliteAuditLog;
let manifest: Manifest;

beforeAll(() => {
  busyboxRootfs(tmp.dir, { applets: ['sh', 'sleep', 'dd', 'sync'], dirs: ['data'] });
  podman('import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(tmp.dir, 'rootfs.tar'), IMAGE);
  const r = parseManifest(`device: local
capabilities:
  vm.new: { images: ["localhost/mp-vmdisk-*"], approval: never }
  vm.ls: {}
  vm.rm: { approval: never }
  vm.stop: { approval: always }
  vm.exec: { approval: never }
`, 'local.yaml');
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  manifest = r.manifest;
  audit = new SqliteAuditLog(openDatabase(path.join(tmp.dir, 'meshpilot.db')));
  // Any approval asked through the default hook is refused: the reaper must bring its own.
  invoker = new Invoker({ manifests: { get: (d) => (d === 'local' ? manifest : undefined) }, audit, approve: async () => ({ approved: false, by: 'test' }) });
}, 60_000);

afterAll(() => {
  for (const n of [BIG, SMALL]) try { podman('rm', '-f', '-t', '0', `mp-${n}`); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  tmp.cleanup();
}, 60_000);

describe('disk_mb enforcement (real podman)', () => {
  it('the reaper stops a VM that wrote past its disk_mb, audited as reaper, with a notice; one within its limit keeps running', async () => {
    const call = (capability: string, args: Record<string, unknown>) => invoker.invoke({ device: 'local', capability, args, actor: OP });
    for (const name of [BIG, SMALL]) {
      const made = await call('vm.new', { name, image: IMAGE, memory_mb: 64, disk_mb: 64, ttl_h: 1 });
      expect(made.error).toBeUndefined();
    }
    // 80 MiB written in BIG (over 64), 2 MiB in SMALL.
    const wrote = await call('vm.exec', { name: BIG, argv: ['sh', '-c', 'dd if=/dev/zero of=/data/fill bs=1M count=80 2>/dev/null && sync && echo done'] });
    expect(wrote.result?.stdout).toBe('done\n');
    expect((await call('vm.exec', { name: SMALL, argv: ['dd', 'if=/dev/zero', 'of=/data/fill', 'bs=1M', 'count=2'] })).result?.exitCode).toBe(0);

    const ls = await call('vm.ls', { size: true });
    const listed = ls.result?.data as VmInfo[];
    const big = listed.find((v) => v.name === BIG)!;
    expect(big.diskUsedMb).toBeGreaterThanOrEqual(80);
    expect(big.diskUsedMb).toBeLessThan(90);
    expect(listed.find((v) => v.name === SMALL)!.diskUsedMb).toBeLessThan(64);
    expect(ls.result?.stdout).toMatch(new RegExp(`${BIG}  running  ${IMAGE}  1 cpu 64M disk 8\\d(\\.\\d)?/64M`));
    // Without size=true nothing is walked.
    expect(((await call('vm.ls', {})).result?.data as VmInfo[]).find((v) => v.name === BIG)?.diskUsedMb).toBeUndefined();

    const notices: string[] = [];
    const reaper = new VmReaper({ invoker, manifests: () => [manifest], notify: async (t) => { notices.push(t); } });
    const now = Date.now();
    const out = await reaper.run(now, true);
    const mine = out.filter((o) => o.name === BIG || o.name === SMALL);
    expect(mine).toHaveLength(1);
    expect(mine[0]).toMatchObject({ device: 'local', name: BIG, action: 'stopped', ok: true, diskMb: 64 });
    expect(notices.filter((n) => n.includes(RUN))).toHaveLength(1);
    expect(notices.find((n) => n.includes(BIG))).toMatch(new RegExp(`^${BIG} on local stopped: disk 8\\d MB > 64 MB \\(owner ${OP}; vm\\.rm frees it\\)$`));
    expect(podman('container', 'inspect', '--format', '{{.State.Status}}', `mp-${BIG}`).trim()).toBe('exited');
    expect(podman('container', 'inspect', '--format', '{{.State.Status}}', `mp-${SMALL}`).trim()).toBe('running');

    // In the audit: vm.stop by the reaper, approved by it, with what was written and the limit.
    const stop = audit.tail(50, 'local').find((e) => e.capability === 'vm.stop' && e.outcome === 'ok');
    expect(stop).toMatchObject({ actor: 'reaper', decision: 'approved', args: { name: BIG } });
    expect(stop?.context).toMatchObject({ reason: 'disk', disk_mb: 64, owner: OP });
    expect((stop?.context as { disk_used_mb: number }).disk_used_mb).toBeGreaterThanOrEqual(80);
    expect(audit.verify('local').ok).toBe(true);

    // SMALL runs with a disk limit: the reaper checks again within 2 minutes, not 10. BIG, stopped, is left alone.
    const lists = (): number => audit.tail(200, 'local').filter((e) => e.capability === 'vm.ls' && e.actor === 'reaper' && e.outcome === 'ok').length;
    const listed1 = lists();
    expect(await reaper.run(now + 60_000)).toEqual([]);
    expect(lists()).toBe(listed1);
    const again = await reaper.run(now + 2 * 60_000 + 1);
    expect(lists()).toBe(listed1 + 1);
    expect(again.filter((o) => o.name === BIG || o.name === SMALL)).toEqual([]);
    expect(notices.filter((n) => n.includes(RUN))).toHaveLength(1);
  }, 120_000);
});
