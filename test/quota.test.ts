/**
 * VM quotas per trust level: reserved atomically before vm.new runs (in one process and across
 * processes sharing meshpilot.db), refusals that name the quota and the use, audited as denials;
 * released on a failed create, on vm.rm, and when a create is not approved.
 */
import { fork } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { ConfigSchema } from '../capabilities/config.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker, type ApprovalHook } from '../capabilities/invoke.js';
import type { Caller } from '../capabilities/levels.js';
import { parseManifest } from '../capabilities/manifest.js';
import { CapabilityRegistry } from '../capabilities/registry.js';
import { VmGate } from '../capabilities/vm/quota-gate.js';
import { quotaRefusal, SqliteQuotaStore } from '../capabilities/vm/quota-sqlite.js';
import { fakeVmFamily } from './helpers/fake-vm.js';
import { tempDir } from './helpers/tmp.js';

const ANN: Caller = { user: '@ann:x', level: 'citizen' };
const QUOTAS = { citizen: { vms: 3, cpus: 4, memory_mb: 4096, disk_mb: 20480, max_ttl_h: 24 } };

function setup(opts: { failCreate?: () => boolean; createDelayMs?: number; approve?: ApprovalHook; approval?: string } = {}) {
  const dir = tempDir('mp-quota-');
  const fake = fakeVmFamily(opts);
  const registry = new CapabilityRegistry(fake.defs);
  const m = (device: string) => {
    const r = parseManifest(`device: ${device}
capabilities:
  vm.new: { tiers: [citizen, operator], approval: ${opts.approval ?? 'never'} }
  vm.rm: { tiers: [citizen, operator], approval: never }
  vm.ls: { tiers: [citizen, operator] }
`, `${device}.yaml`, registry);
    if (!r.ok) throw new Error(JSON.stringify(r.issues));
    return r.manifest;
  };
  const manifests = new Map([['nas', m('nas')], ['pi', m('pi')]]);
  const db = openDatabase(path.join(dir, 'meshpilot.db'));
  const audit = new SqliteAuditLog(db);
  const config = ConfigSchema.parse({ matrix: { homeserver_url: 'http://127.0.0.1:1' }, operators: ['@op:x'], quotas: QUOTAS });
  const store = new SqliteQuotaStore(db, config.quotas);
  const invoker = new Invoker({ manifests: { get: (d) => manifests.get(d) }, audit, registry, gate: new VmGate(store), ...(opts.approve ? { approve: opts.approve } : {}) });
  const vmNew = (name: string, extra: Record<string, unknown> = {}, caller: Caller = ANN, device = 'nas') =>
    invoker.invoke({ device, capability: 'vm.new', args: { name, cpus: 1, memory_mb: 256, disk_mb: 1024, ttl_h: 1, ...extra }, actor: `llm:${caller.user}`, caller });
  return { dir, db, audit, invoker, store, vms: fake.vms, vmNew };
}

describe('VM quotas', () => {
  it('concurrent creates at the limit: of N+2 at once exactly N succeed; the refusal names the quota and the use, audited', async () => {
    const { vmNew, vms, audit, store } = setup({ createDelayMs: 30 });
    const results = await Promise.all(['a', 'b', 'c', 'd', 'e'].map((n) => vmNew(n)));
    expect(results.filter((r) => r.ok)).toHaveLength(3);
    const refused = results.filter((r) => !r.ok);
    expect(refused).toHaveLength(2);
    for (const r of refused) {
      expect(r).toMatchObject({ decision: 'denied', error: { code: 'quota' } });
      expect(r.error?.message).toMatch(/^vm\.new [a-e] refused: citizen quota: 3 VMs, you have 3$/);
    }
    expect(vms.size).toBe(3);
    expect(store.use('@ann:x')).toEqual({ vms: 3, cpus: 3, memory_mb: 768, disk_mb: 3072 });
    const denials = audit.tail(20, 'nas').filter((e) => e.decision === 'denied');
    expect(denials.map((e) => [e.actor, e.outcome, e.error_code])).toEqual([['llm:@ann:x', 'not_run', 'quota'], ['llm:@ann:x', 'not_run', 'quota']]);
    expect(denials[0]?.reason).toContain('citizen quota: 3 VMs, you have 3');
  });

  it('concurrent reservations from separate processes on one meshpilot.db: exactly N of N+2', async () => {
    const dir = tempDir('mp-quota-proc-');
    const file = path.join(dir, 'meshpilot.db');
    openDatabase(file).close(); // migrations applied once, before the race
    const children = ['a', 'b', 'c', 'd', 'e'].map((n) => fork(path.join(__dirname, 'helpers', 'quota-worker.ts'), [file, n], { execArgv: ['--import', 'tsx'], stdio: 'inherit' }));
    await Promise.all(children.map((c) => new Promise((r) => c.once('message', r))));
    const verdicts = await Promise.all(children.map((c) => new Promise<{ ok: boolean; message?: string }>((r) => { c.once('message', (m) => r(m as { ok: boolean })); c.send('go'); })));
    expect(verdicts.filter((v) => v.ok)).toHaveLength(3);
    expect(verdicts.filter((v) => !v.ok).map((v) => v.message)).toEqual(['citizen quota: 3 VMs, you have 3', 'citizen quota: 3 VMs, you have 3']);
    const db = openDatabase(file);
    expect((db.prepare('SELECT COUNT(*) AS n FROM vm_reservations').get() as { n: number }).n).toBe(3);
    db.close();
  }, 30_000);

  it('the quota counts the owner\'s VMs on every device', async () => {
    const { vmNew } = setup();
    expect((await vmNew('a', {}, ANN, 'nas')).ok).toBe(true);
    expect((await vmNew('b', {}, ANN, 'pi')).ok).toBe(true);
    expect((await vmNew('c', {}, ANN, 'pi')).ok).toBe(true);
    expect((await vmNew('d', {}, ANN, 'nas')).error?.message).toBe('vm.new d refused: citizen quota: 3 VMs, you have 3');
    // Another citizen has their own quota.
    expect((await vmNew('e', {}, { user: '@bob:x', level: 'citizen' })).ok).toBe(true);
  });

  it('each limit has its wording: CPUs, memory, disk, the largest TTL', async () => {
    const { vmNew } = setup();
    expect((await vmNew('big', { cpus: 3 })).ok).toBe(true);
    expect((await vmNew('cpu', { cpus: 2 })).error?.message).toBe('vm.new cpu refused: citizen quota: 4 CPUs, you use 3 and asked for 2 more');
    expect((await vmNew('mem', { memory_mb: 4000 })).error?.message).toBe('vm.new mem refused: citizen quota: 4096 MB of memory, you use 256 MB and asked for 4000 MB more');
    expect((await vmNew('disk', { disk_mb: 20000 })).error?.message).toBe('vm.new disk refused: citizen quota: 20480 MB of disk, you use 1024 MB and asked for 20000 MB more');
    expect((await vmNew('ttl', { ttl_h: 48 })).error?.message).toBe('vm.new ttl refused: citizen quota: VMs live at most 24 h, you asked for 48 h');
    expect(quotaRefusal('newbie', { vms: 1, cpus: 1, memory_mb: 1, disk_mb: 1, max_ttl_h: 1 }, { vms: 1, cpus: 0, memory_mb: 0, disk_mb: 0 }, { cpus: 0, memory_mb: 0, disk_mb: 0, ttl_h: 0 }))
      .toBe('newbie quota: 1 VM, you have 1');
  });

  it('operators have no quota unless the config sets one', async () => {
    const { vmNew } = setup();
    const op: Caller = { user: '@op:x', level: 'operator' };
    for (const n of ['a', 'b', 'c', 'd', 'e']) expect((await vmNew(n, { cpus: 16, ttl_h: 999 }, op)).ok).toBe(true);
  });

  it('released when the create fails, when vm.rm succeeds, and when the create is not approved', async () => {
    let fail = true;
    let approve = false;
    const { vmNew, invoker, store, vms } = setup({ failCreate: () => fail, approval: 'always', approve: async () => (approve ? { approved: true, by: '@op:x' } : { approved: false, by: '@op:x' }) });
    expect((await vmNew('a')).decision).toBe('rejected');
    expect(store.use('@ann:x').vms).toBe(0);
    approve = true;
    expect((await vmNew('a')).ok).toBe(false);
    expect(store.use('@ann:x').vms).toBe(0);
    fail = false;
    for (const n of ['a', 'b', 'c']) expect((await vmNew(n)).ok).toBe(true);
    expect((await vmNew('d')).error?.code).toBe('quota');
    const rm = await invoker.invoke({ device: 'nas', capability: 'vm.rm', args: { name: 'a' }, actor: '@ann:x', caller: ANN });
    expect(rm.ok).toBe(true);
    expect(vms.has('a')).toBe(false);
    expect(store.use('@ann:x').vms).toBe(2);
    expect((await vmNew('d')).ok).toBe(true);
    // A name meshpilot already records on the device is refused before anything runs (and keeps its owner).
    const dup = await vmNew('d', {}, { user: '@bob:x', level: 'citizen' });
    expect(dup.error).toEqual({ code: 'policy_denied', message: 'vm.new d refused: a VM named d already exists on nas' });
    expect(store.ownerOf('nas', 'd')).toBe('@ann:x');
  });

  it('the reaper (no caller: an operator) removing a citizen\'s VM releases it', async () => {
    const { vmNew, invoker, store } = setup();
    await vmNew('a');
    const r = await invoker.invoke({ device: 'nas', capability: 'vm.rm', args: { name: 'a' }, actor: 'reaper' });
    expect(r.ok).toBe(true);
    expect(store.ownerOf('nas', 'a')).toBeUndefined();
  });
});
