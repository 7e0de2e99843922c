/**
 * Trust levels' cost on the one path: a citizen's vm.new + vm.rm through invoke with the VM gate
 * (tiers, an atomic quota reservation in SQLite, its release) against the same calls without the gate
 * (as an operator), interleaved in one run over an in-process VM family, so only the gate differs.
 * Also the bare reservation (BEGIN IMMEDIATE: read the use, insert) and release.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { ConfigSchema } from '../capabilities/config.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import { parseManifest } from '../capabilities/manifest.js';
import { CapabilityRegistry } from '../capabilities/registry.js';
import { VmGate } from '../capabilities/vm/quota-gate.js';
import { SqliteQuotaStore } from '../capabilities/vm/quota-sqlite.js';
import { fakeVmFamily } from '../test/helpers/fake-vm.js';
import type { BenchFigure } from './run.js';

export const figures = ['vm.gate_ratio', 'vm.gate_pair_us', 'vm.bare_pair_us', 'vm.quota_reserve_us'];

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

export async function run(): Promise<BenchFigure[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-quota-'));
  try {
    const fake = fakeVmFamily();
    const registry = new CapabilityRegistry(fake.defs);
    const r = parseManifest('device: nas\ncapabilities:\n  vm.new: { tiers: [citizen, operator], approval: never }\n  vm.rm: { tiers: [citizen, operator], approval: never }\n', 'nas.yaml', registry);
    if (!r.ok) throw new Error('bad manifest');
    const manifests = { get: (d: string) => (d === 'nas' ? r.manifest : undefined) };
    const db = openDatabase(path.join(dir, 'bench.db'));
    const audit = new SqliteAuditLog(db);
    const config = ConfigSchema.parse({ matrix: { homeserver_url: 'http://127.0.0.1:1' }, operators: ['@op:x'], quotas: { citizen: { vms: 1000, cpus: 1e5, memory_mb: 1e8, disk_mb: 1e9, max_ttl_h: 24 } } });
    const store = new SqliteQuotaStore(db, config.quotas);
    const gated = new Invoker({ manifests, audit, registry, gate: new VmGate(store) });
    const bare = new Invoker({ manifests, audit, registry });
    const citizen = { user: '@ann:x', level: 'citizen' as const };

    let i = 0;
    const pair = async (inv: Invoker, withCaller: boolean): Promise<number> => {
      const name = `vm${i++}`;
      const caller = withCaller ? { caller: citizen } : {};
      const t0 = performance.now();
      const a = await inv.invoke({ device: 'nas', capability: 'vm.new', args: { name }, actor: '@ann:x', ...caller });
      const b = await inv.invoke({ device: 'nas', capability: 'vm.rm', args: { name }, actor: '@ann:x', ...caller });
      const t = performance.now() - t0;
      if (!a.ok || !b.ok) throw new Error(`bench call failed: ${a.error?.message ?? b.error?.message}`);
      return t;
    };
    for (let w = 0; w < 200; w++) { await pair(gated, true); await pair(bare, false); }
    const g: number[] = [];
    const n: number[] = [];
    for (let k = 0; k < 2000; k++) {
      // Interleaved, alternating which goes first.
      if (k % 2) { g.push(await pair(gated, true)); n.push(await pair(bare, false)); } else { n.push(await pair(bare, false)); g.push(await pair(gated, true)); }
    }
    const res: number[] = [];
    for (let k = 0; k < 5000; k++) {
      const t0 = performance.now();
      store.reserve('citizen', '@bob:x', 'nas', `r${k}`, { cpus: 1, memory_mb: 1, disk_mb: 1, ttl_h: 1 });
      store.release('nas', `r${k}`);
      res.push(performance.now() - t0);
    }
    db.close();
    const gm = median(g);
    const nm = median(n);
    return [
      { name: 'vm.gate_ratio', value: gm / nm, unit: 'x', target: '<= 1.5' },
      { name: 'vm.gate_pair_us', value: Math.round(gm * 1000), unit: 'us' },
      { name: 'vm.bare_pair_us', value: Math.round(nm * 1000), unit: 'us' },
      { name: 'vm.quota_reserve_us', value: Math.round(median(res) * 1000), unit: 'us' },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
