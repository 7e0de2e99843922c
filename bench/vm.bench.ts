/**
 * vm.* against bare podman, measured side by side (interleaved) in one run on the local device:
 *   vm.new_ratio  = meshpilot vm.new through invoke (policy, the VM gate's reservation, audit started + outcome,
 *                   podman run -d with labels) / bare `podman run -d` of the same image with the
 *                   same runtime, ulimit, memory and CPU flags (the ones this machine needs);
 *   vm.exec_ratio = vm.exec through invoke / bare `podman exec` of the same argv in the same VM;
 *   vm.ls_ms / vm.ls_size_ms = vm.ls through invoke of the ~14 VMs made here, without and with sizes
 *                   (size=true: each writable layer walked, what the reaper's disk_mb check costs a
 *                   device every 2 minutes while VMs with a limit run).
 * Medians; the absolute times are printed too. Needs podman, runc and busybox-static.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import { parseManifest } from '../capabilities/manifest.js';
import { PODMAN_RUN_FLAGS } from '../capabilities/vm/podman.js';
import { VmGate } from '../capabilities/vm/quota-gate.js';
import { SqliteQuotaStore } from '../capabilities/vm/quota-sqlite.js';
import { QuotasSchema } from '../capabilities/config.js';
import type { BenchFigure } from './run.js';
import { busyboxRootfs } from '../test/helpers/busybox-rootfs.js';

export const figures = ['vm.new_ms', 'vm.new_bare_ms', 'vm.new_ratio', 'vm.exec_ms', 'vm.exec_bare_ms', 'vm.exec_ratio', 'vm.ls_ms', 'vm.ls_size_ms'];

const run = promisify(execFile);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await f();
  return performance.now() - t;
}

const podman = (...args: string[]): Promise<unknown> => run('podman', args);

export async function benchRun(): Promise<BenchFigure[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-vm-'));
  const tag = `b${process.pid.toString(36)}`;
  const image = `localhost/mp-vmbench-${tag}:latest`;
  const made: string[] = [];
  try {
    busyboxRootfs(dir, { applets: ['sh', 'sleep', 'true', 'echo'] });
    execFileSync('podman', ['import', '--change', `CMD ["/bin/sh","-c","trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]`, path.join(dir, 'rootfs.tar'), image], { stdio: 'ignore' });

    const parsed = parseManifest(`device: local
capabilities:
  vm.new: { images: ["localhost/mp-vmbench-*"], approval: never }
  vm.exec: { approval: never }
  vm.rm: { approval: never }
  vm.ls: {}
`, 'local.yaml');
    if (!parsed.ok) throw new Error('bench manifest invalid');
    const manifest = parsed.manifest;
    const db = openDatabase(path.join(dir, 'meshpilot.db'));
    const audit = new SqliteAuditLog(db);
    // As the launcher builds it (launcher/runtime-core.ts): the VM gate records owners and reservations.
    const gate = new VmGate(new SqliteQuotaStore(db, QuotasSchema.parse({})));
    const invoker = new Invoker({ manifests: { get: (d) => (d === 'local' ? manifest : undefined) }, audit, gate });
    const newVm = async (name: string): Promise<void> => {
      made.push(`mp-${name}`);
      const r = await invoker.invoke({ device: 'local', capability: 'vm.new', args: { name, image, cpus: 1, memory_mb: 128 }, actor: 'bench' });
      if (!r.ok) throw new Error(`vm.new: ${r.error?.message}`);
    };
    const bareNew = async (name: string): Promise<void> => {
      made.push(name);
      await podman('run', '-d', ...PODMAN_RUN_FLAGS, '--name', name, '--memory', '128m', '--cpus', '1', image);
    };

    // Warm-up: the first create on a device also learns whether --storage-opt size works there.
    await newVm(`warm-${tag}`);
    await bareNew(`bare-warm-${tag}`);

    const N = 12;
    const mpNew: number[] = [];
    const bareNewT: number[] = [];
    for (let i = 0; i < N; i++) {
      mpNew.push(await timed(() => newVm(`n${i}-${tag}`)));
      bareNewT.push(await timed(() => bareNew(`bare-n${i}-${tag}`)));
    }

    const vm = `warm-${tag}`;
    const bareTarget = `mp-${vm}`;
    const argv = ['echo', 'hello'];
    for (let i = 0; i < 3; i++) {
      await invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name: vm, argv }, actor: 'bench' });
      await podman('exec', bareTarget, ...argv);
    }
    const M = 30;
    const mpExec: number[] = [];
    const bareExec: number[] = [];
    for (let i = 0; i < M; i++) {
      mpExec.push(await timed(async () => {
        const r = await invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name: vm, argv }, actor: 'bench' });
        if (r.result?.stdout !== 'hello\n') throw new Error(`vm.exec: ${r.error?.message ?? r.result?.stdout}`);
      }));
      bareExec.push(await timed(() => podman('exec', bareTarget, ...argv)));
    }
    // The disk check: one VM has written 20 MiB, the others nothing.
    await invoker.invoke({ device: 'local', capability: 'vm.exec', args: { name: vm, argv: ['sh', '-c', 'dd if=/dev/zero of=/tmp/fill bs=1M count=20 2>/dev/null'] }, actor: 'bench' });
    const ls: number[] = [];
    const lsSize: number[] = [];
    for (let i = 0; i < 10; i++) {
      ls.push(await timed(() => invoker.invoke({ device: 'local', capability: 'vm.ls', args: {}, actor: 'bench' })));
      lsSize.push(await timed(async () => {
        const r = await invoker.invoke({ device: 'local', capability: 'vm.ls', args: { size: true }, actor: 'bench' });
        if (!(r.result?.data as Array<{ name: string; diskUsedMb?: number }>).some((v) => v.name === vm && (v.diskUsedMb ?? 0) >= 20)) throw new Error('vm.ls size=true did not see the 20 MiB');
      }));
    }
    await invoker.close();

    const nm = median(mpNew);
    const nb = median(bareNewT);
    const em = median(mpExec);
    const eb = median(bareExec);
    return [
      { name: 'vm.new_ms', value: nm, unit: 'ms' },
      { name: 'vm.new_bare_ms', value: nb, unit: 'ms' },
      { name: 'vm.new_ratio', value: nm / nb, unit: 'x', target: '<= 1.5' },
      { name: 'vm.exec_ms', value: em, unit: 'ms' },
      { name: 'vm.exec_bare_ms', value: eb, unit: 'ms' },
      { name: 'vm.exec_ratio', value: em / eb, unit: 'x', target: '<= 1.3' },
      { name: 'vm.ls_ms', value: median(ls), unit: 'ms' },
      { name: 'vm.ls_size_ms', value: median(lsSize), unit: 'ms', target: '<= 1000' },
    ];
  } finally {
    for (let i = 0; i < made.length; i += 20) {
      try { execFileSync('podman', ['rm', '-f', '-t', '0', ...made.slice(i, i + 20)], { stdio: 'ignore' }); } catch { /* gone */ }
    }
    try { execFileSync('podman', ['rmi', '-f', image], { stdio: 'ignore' }); } catch { /* gone */ }
    rmSync(dir, { recursive: true, force: true });
  }
}

export { benchRun as run };
