/**
 * Audit log figures: append throughput (one transaction per entry, as in production),
 * verify time for 1,000,000 entries, and invoke() overhead for an in-process capability.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { z } from 'zod';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { buildEntry, type AuditEntry, type AuditHead, type AuditInput } from '../capabilities/audit.js';
import { defineCapability, okResult, type AnyCapability } from '../capabilities/capability.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import { parseManifest } from '../capabilities/manifest.js';
import { BUILTIN_CAPABILITIES, CapabilityRegistry } from '../capabilities/registry.js';
import type { BenchFigure } from './run.js';

export const figures = ['audit.append', 'audit.verify_1m', 'invoke.overhead_p50', 'invoke.overhead_p99'];

function input(i: number): AuditInput {
  return {
    device: 'bench', actor: '@op:example.org', request_id: `r${i}`, capability: 'fs.list',
    args: { path: '/var/log' }, decision: 'allowed', outcome: 'ok', exit_code: 0,
    output_sha256: 'a'.repeat(64), duration_ms: 3, error_code: null, reason: null, context: null,
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

export async function run(): Promise<BenchFigure[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-audit-'));
  const out: BenchFigure[] = [];
  try {
    const db = openDatabase(path.join(dir, 'bench.db'));
    const log = new SqliteAuditLog(db);

    // Append: one BEGIN IMMEDIATE transaction per entry, exactly as invoke() does.
    const n = 50_000;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) log.append(input(i));
    const appendRate = n / ((performance.now() - t0) / 1000);
    out.push({ name: 'audit.append', value: Math.round(appendRate), unit: 'entries/s', target: '>= 20000' });

    // Verify 1M: fill a second device's chain in bulk (batched inserts), then time a full verify.
    const total = 1_000_000;
    let prev: AuditHead | undefined;
    const batch = db.transaction((entries: AuditEntry[]) => { for (const e of entries) log.insertVerified(e); });
    let buf: AuditEntry[] = [];
    for (let i = 0; i < total; i++) {
      const e = buildEntry({ ...input(i), device: 'bench1m' }, prev);
      prev = { seq: e.seq, hash: e.hash };
      buf.push(e);
      if (buf.length === 10_000) { batch(buf); buf = []; }
    }
    if (buf.length) batch(buf);
    const t1 = performance.now();
    const v = log.verify('bench1m');
    const verifyS = (performance.now() - t1) / 1000;
    if (!v.ok || v.count !== total) throw new Error(`verify failed: ${JSON.stringify(v)}`);
    out.push({ name: 'audit.verify_1m', value: verifyS, unit: 's', target: '<= 5' });

    // invoke() overhead: validate + policy + two audit appends around an in-process capability.
    const noop = defineCapability({
      name: 'bench.info', description: 'in-process sys.info-like capability', input: z.object({}).strict(), risk: 'read',
      run: async () => okResult({ durationMs: 0, data: { hostname: os.hostname(), uptime: os.uptime() } }),
    });
    const registry = new CapabilityRegistry([...BUILTIN_CAPABILITIES, noop as AnyCapability]);
    const parsed = parseManifest('device: bench\ncapabilities:\n  bench.info: {}\n', 'bench.yaml', registry);
    if (!parsed.ok) throw new Error('bench manifest invalid');
    const manifest = parsed.manifest;
    const invoker = new Invoker({ manifests: { get: (d) => (d === 'bench' ? manifest : undefined) }, audit: log, registry });
    for (let i = 0; i < 500; i++) await invoker.invoke({ device: 'bench', capability: 'bench.info', args: {}, actor: 'bench' });
    const samples: number[] = [];
    for (let i = 0; i < 5000; i++) {
      const s = performance.now();
      const r = await invoker.invoke({ device: 'bench', capability: 'bench.info', args: {}, actor: 'bench' });
      samples.push(performance.now() - s);
      if (!r.ok) throw new Error(`invoke failed: ${r.error?.message}`);
    }
    samples.sort((a, b) => a - b);
    out.push({ name: 'invoke.overhead_p50', value: percentile(samples, 50), unit: 'ms', target: '<= 1' });
    out.push({ name: 'invoke.overhead_p99', value: percentile(samples, 99), unit: 'ms' });
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}
