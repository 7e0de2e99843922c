/**
 * Trust levels, quotas and ownership with the real vm.* capabilities on real podman (device local):
 * a citizen within their quota and no further, another citizen kept off their VM (exec, rm, ls), a
 * newbie without the exec tier, an operator who sees and removes all and so frees the quota.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { ConfigSchema } from '../capabilities/config.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import type { Caller } from '../capabilities/levels.js';
import { parseManifest } from '../capabilities/manifest.js';
import type { VmInfo } from '../capabilities/vm/backend.js';
import { VmGate } from '../capabilities/vm/quota-gate.js';
import { SqliteQuotaStore } from '../capabilities/vm/quota-sqlite.js';
import { makeTempDir } from './helpers/tmp.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `l${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-lvtest-${RUN}:latest`;
const tmp = makeTempDir('mp-levels-podman-');
const ANN: Caller = { user: '@ann:x', level: 'citizen' };
const BOB: Caller = { user: '@bob:x', level: 'citizen' };
const KID: Caller = { user: '@kid:x', level: 'newbie' };
const OP: Caller = { user: '@op:x', level: 'operator' };
const names: string[] = [];
const vm = (n: string): string => { const v = `${n}-${RUN}`; names.push(v); return v; };
const podman = (...args: string[]): string => execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let invoker: Invoker;
let audit: SqliteAuditLog;
let store: SqliteQuotaStore;

beforeAll(async () => {
  busyboxRootfs(tmp.dir, { applets: ['sh', 'sleep', 'echo', 'hostname'] });
  const r = parseManifest(`device: local
capabilities:
  vm.new: { images: ["localhost/mp-lvtest-*"], tiers: [newbie, citizen, operator, admin], approval: never }
  vm.ls: { tiers: [newbie, citizen, operator, admin] }
  vm.rm: { tiers: [newbie, citizen, operator, admin], approval: never }
  vm.exec: { tiers: [citizen, operator, admin], approval: never }
  vm.image.import: { paths_allowed: ["${tmp.dir}/**"], approval: never }
`, 'local.yaml');
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  const db = openDatabase(path.join(tmp.dir, 'meshpilot.db'));
  audit = new SqliteAuditLog(db);
  const config = ConfigSchema.parse({ matrix: { homeserver_url: 'http://127.0.0.1:1' }, operators: [OP.user], quotas: { citizen: { vms: 1, cpus: 1, memory_mb: 128, disk_mb: 8192, max_ttl_h: 2 } } });
  store = new SqliteQuotaStore(db, config.quotas);
  invoker = new Invoker({ manifests: { get: (d) => (d === 'local' ? r.manifest : undefined) }, audit, gate: new VmGate(store) });
  const imp = await invoker.invoke({ device: 'local', capability: 'vm.image.import', args: { path: path.join(tmp.dir, 'rootfs.tar'), image: IMAGE }, actor: 'cli:root' });
  expect(imp.error).toBeUndefined();
}, 60_000);

afterAll(() => {
  for (const n of names) try { podman('rm', '-f', '-t', '0', `mp-${n}`); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  tmp.cleanup();
}, 60_000);

const call = (caller: Caller, capability: string, args: Record<string, unknown>) =>
  invoker.invoke({ device: 'local', capability, args, actor: `llm:${caller.user}`, caller });
const exists = (n: string): boolean => { try { podman('container', 'exists', `mp-${n}`); return true; } catch { return false; } };

describe('trust levels on real podman', () => {
  it('a citizen creates within the quota and no further; others cannot touch the VM; operators see and remove it', async () => {
    const a = vm('ann');
    const b = vm('ann2');
    const created = await call(ANN, 'vm.new', { name: a, image: IMAGE, cpus: 0.5, memory_mb: 64, ttl_h: 1 });
    expect(created.error).toBeUndefined();
    expect(created.result?.data).toMatchObject({ name: a, owner: ANN.user });
    expect(store.ownerOf('local', a)).toBe(ANN.user);

    const over = await call(ANN, 'vm.new', { name: b, image: IMAGE, cpus: 0.25, memory_mb: 32, ttl_h: 1 });
    expect(over).toMatchObject({ ok: false, decision: 'denied', error: { code: 'quota', message: `vm.new ${b} refused: citizen quota: 1 VM, you have 1` } });
    expect(exists(b)).toBe(false);

    // Another citizen: not their VM (exec, rm denied; ls does not show it).
    const bobExec = await call(BOB, 'vm.exec', { name: a, argv: ['hostname'] });
    expect(bobExec.error).toEqual({ code: 'policy_denied', message: `vm.exec ${a} denied: ${a} is not one of your VMs on local` });
    const bobRm = await call(BOB, 'vm.rm', { name: a });
    expect(bobRm.error?.code).toBe('policy_denied');
    expect(exists(a)).toBe(true);
    const bobLs = await call(BOB, 'vm.ls', {});
    expect((bobLs.result?.data as VmInfo[]).map((v) => v.name)).not.toContain(a);
    // A newbie has no exec tier here.
    expect((await call(KID, 'vm.exec', { name: a, argv: ['hostname'] })).error?.message).toBe('vm.exec is not granted to newbies on local (tiers [citizen, operator, admin])');

    // The owner runs in it and lists it.
    const annExec = await call(ANN, 'vm.exec', { name: a, argv: ['hostname'] });
    expect(annExec.result).toMatchObject({ ok: true, stdout: `${a}\n` });
    const annLs = await call(ANN, 'vm.ls', {});
    expect((annLs.result?.data as VmInfo[]).map((v) => v.name)).toEqual([a]);

    // An operator sees it and removes it; that frees the citizen's quota.
    const opLs = await call(OP, 'vm.ls', {});
    expect((opLs.result?.data as VmInfo[]).map((v) => v.name)).toContain(a);
    expect((await call(OP, 'vm.rm', { name: a })).ok).toBe(true);
    expect(exists(a)).toBe(false);
    expect(store.ownerOf('local', a)).toBeUndefined();
    const now = await call(ANN, 'vm.new', { name: b, image: IMAGE, cpus: 0.25, memory_mb: 32, ttl_h: 1 });
    expect(now.error).toBeUndefined();
    expect((await call(ANN, 'vm.rm', { name: b })).ok).toBe(true);

    const denials = audit.tail(100, 'local').filter((e) => e.decision === 'denied').map((e) => `${e.actor} ${e.capability} ${e.error_code}`);
    expect(denials).toEqual([
      `llm:${ANN.user} vm.new quota`, `llm:${BOB.user} vm.exec policy_denied`, `llm:${BOB.user} vm.rm policy_denied`, `llm:${KID.user} vm.exec policy_denied`,
    ]);
    expect(audit.verify('local').ok).toBe(true);
  }, 120_000);
});
