/**
 * The vm transport (capabilities/transports/vm.ts) against bare podman, interleaved in one run, on a
 * busybox-static VM of the local device:
 *   transport_vm.exec_ratio = shell.exec of `echo hello` through invoke on a manifest whose transport is
 *                             the VM / bare `podman exec` of the same argv (one podman exec each);
 *   transport_vm.read_ms    = fs.read of a small file in the VM through invoke (the policy's realpath,
 *                             lstat, the read: three podman execs), beside bare `podman exec cat`;
 *   transport_vm.write_ms   = fs.write of a small file (realpath of the path, the write script).
 * Medians. Needs podman, runc and busybox-static.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import '../capabilities/transports/vm.js';
import type { BenchFigure } from './run.js';
import { busyboxRootfs } from '../test/helpers/busybox-rootfs.js';

export const figures = [
  'transport_vm.exec_ms', 'transport_vm.exec_bare_ms', 'transport_vm.exec_ratio',
  'transport_vm.read_ms', 'transport_vm.read_bare_ms', 'transport_vm.write_ms',
];

const run = promisify(execFile);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await f();
  return performance.now() - t;
}

export async function benchRun(): Promise<BenchFigure[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-tvm-'));
  const tag = `b${process.pid.toString(36)}`;
  const image = `localhost/mp-tvmbench-${tag}:latest`;
  const vm = `tvm-${tag}`;
  const container = `mp-${vm}`;
  try {
    busyboxRootfs(dir, { applets: 'all', dirs: ['srv'] });
    execFileSync('podman', ['import', '--change', `CMD ["/bin/sh","-c","trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]`, path.join(dir, 'rootfs.tar'), image], { stdio: 'ignore' });
    // As vm.new makes it: meshpilot's labels (the transport checks them), the same runtime flags.
    execFileSync('podman', ['run', '-d', '--runtime', 'runc', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096', '--name', container, '--hostname', vm,
      '--label', `meshpilot.id=${tag}`, '--label', `meshpilot.name=${vm}`, '--label', 'meshpilot.owner=bench', image], { stdio: 'ignore' });
    execFileSync('podman', ['exec', container, 'sh', '-c', 'mkdir -p /srv/ws && echo hello > /srv/ws/a.txt']);

    const parsed = parseManifest(`device: ws
transport: { kind: vm, vm: ${vm}, via: { kind: local } }
capabilities:
  shell.exec: { binaries: ["echo"], approval: never }
  fs.read: { paths_allowed: ["/srv/ws/**"] }
  fs.write: { paths_allowed: ["/srv/ws/**"], approval: never }
`, 'ws.yaml');
    if (!parsed.ok) throw new Error('bench manifest invalid');
    const manifest: Manifest = parsed.manifest;
    const db = openDatabase(path.join(dir, 'meshpilot.db'));
    const invoker = new Invoker({ manifests: { get: (d) => (d === 'ws' ? manifest : undefined) }, audit: new SqliteAuditLog(db) });
    const call = async (capability: string, args: Record<string, unknown>, expect?: string): Promise<void> => {
      const r = await invoker.invoke({ device: 'ws', capability, args, actor: 'bench' });
      if (!r.ok || (expect !== undefined && r.result?.stdout !== expect)) throw new Error(`${capability}: ${r.error?.message ?? r.result?.error?.message ?? r.result?.stdout}`);
    };
    const bare = (...argv: string[]): Promise<unknown> => run('podman', ['exec', container, ...argv]);

    // Warm-up: the container check, the home, the VM's `timeout` learnt by the first exec.
    for (let i = 0; i < 2; i++) {
      await call('shell.exec', { argv: ['echo', 'hello'] }, 'hello\n');
      await bare('echo', 'hello');
    }
    const N = 10;
    const exec: number[] = [];
    const execBare: number[] = [];
    const read: number[] = [];
    const readBare: number[] = [];
    const write: number[] = [];
    for (let i = 0; i < N; i++) {
      exec.push(await timed(() => call('shell.exec', { argv: ['echo', 'hello'] }, 'hello\n')));
      execBare.push(await timed(() => bare('echo', 'hello')));
      read.push(await timed(() => call('fs.read', { path: '/srv/ws/a.txt' }, 'hello\n')));
      readBare.push(await timed(() => bare('cat', '/srv/ws/a.txt')));
      write.push(await timed(() => call('fs.write', { path: `/srv/ws/w${i}.txt`, content: 'written\n' })));
    }
    await invoker.close();
    db.close();
    const em = median(exec);
    const eb = median(execBare);
    return [
      { name: 'transport_vm.exec_ms', value: em, unit: 'ms' },
      { name: 'transport_vm.exec_bare_ms', value: eb, unit: 'ms' },
      { name: 'transport_vm.exec_ratio', value: em / eb, unit: 'x', target: '<= 1.3' },
      { name: 'transport_vm.read_ms', value: median(read), unit: 'ms' },
      { name: 'transport_vm.read_bare_ms', value: median(readBare), unit: 'ms' },
      { name: 'transport_vm.write_ms', value: median(write), unit: 'ms' },
    ];
  } finally {
    try { execFileSync('podman', ['rm', '-f', '-t', '0', container], { stdio: 'ignore' }); } catch { /* gone */ }
    try { execFileSync('podman', ['rmi', '-f', image], { stdio: 'ignore' }); } catch { /* gone */ }
    rmSync(dir, { recursive: true, force: true });
  }
}

export { benchRun as run };
