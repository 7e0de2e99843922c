/**
 * vm.* on a mesh device: the controller's invoke sends the call to the device agent (a real
 * `meshpilot agent` process on loopback), whose own Invoker runs the capability with podman on its
 * machine. Both chains record it; the VM's owner label is the controller's caller.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import type { VmInfo } from '../capabilities/vm/backend.js';
import { freePort, startAgentProcess, writeAgentFiles, type AgentFiles, type AgentProcess } from './fixtures/agent-proc.js';

const RUN = `m${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-vmmesh-${RUN}:latest`;
const VM = `mesh-${RUN}`;
const saved = process.env['MESHPILOT_HOME'];
let root: string;
let files: AgentFiles;
let agent: AgentProcess;
let rt: Runtime;

beforeAll(async () => {
  root = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'mp-vmmesh-')));
  const fs = path.join(root, 'rootfs');
  for (const d of ['bin', 'tmp', 'proc', 'sys', 'dev']) mkdirSync(path.join(fs, d), { recursive: true });
  copyFileSync('/bin/busybox', path.join(fs, 'bin', 'busybox'));
  for (const a of ['sh', 'sleep', 'cat']) symlinkSync('busybox', path.join(fs, 'bin', a));
  execFileSync('tar', ['-C', fs, '-cf', path.join(root, 'rootfs.tar'), '.']);
  execFileSync('podman', ['import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(root, 'rootfs.tar'), IMAGE], { stdio: 'ignore' });
  const port = await freePort();
  const manifest = `device: meshbox
transport: { kind: mesh, address: 127.0.0.1, port: ${port} }
capabilities:
  vm.new: { images: ["localhost/mp-vmmesh-*"], approval: never }
  vm.ls: {}
  vm.exec: { approval: never }
  vm.rm: { approval: never }
`;
  files = writeAgentFiles({ device: 'meshbox', address: '127.0.0.1', port, root, manifest });
  agent = await startAgentProcess(files, { mode: 'sources' });
  process.env['MESHPILOT_HOME'] = files.home;
  rt = openRuntime({ root: files.home });
}, 90_000);

afterAll(async () => {
  await rt?.close();
  await agent?.stop();
  try { execFileSync('podman', ['rm', '-f', '-t', '0', `mp-${VM}`], { stdio: 'ignore' }); } catch { /* gone */ }
  try { execFileSync('podman', ['rmi', '-f', IMAGE], { stdio: 'ignore' }); } catch { /* gone */ }
  if (root) rmSync(root, { recursive: true, force: true });
  if (saved === undefined) delete process.env['MESHPILOT_HOME'];
  else process.env['MESHPILOT_HOME'] = saved;
}, 60_000);

describe('vm.* over the mesh', () => {
  it('new, exec (memory limit visible), ls, rm through the device agent; both audit chains record them', async () => {
    const call = (capability: string, args: Record<string, unknown>) => rt.invoker.invoke({ device: 'meshbox', capability, args, actor: '@op:example.org' });
    const made = await call('vm.new', { name: VM, image: IMAGE, memory_mb: 48 });
    expect(made.error).toBeUndefined();
    expect(made.deviceAudit?.seq).toBeGreaterThan(0);
    const mem = await call('vm.exec', { name: VM, argv: ['sh', '-c', 'cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes'] });
    expect(mem.result?.stdout.trim()).toBe(String(48 * 1024 * 1024));
    const ls = await call('vm.ls', {});
    expect((ls.result?.data as VmInfo[]).find((v) => v.name === VM)).toMatchObject({ owner: '@op:example.org', memoryMb: 48, state: 'running' });
    expect((await call('vm.rm', { name: VM })).result).toMatchObject({ ok: true, data: { gone: false } });
    expect((await call('vm.rm', { name: VM })).result).toMatchObject({ ok: true, data: { gone: true } });
    const entries = rt.audit.tail(20, 'meshbox').filter((e) => e.outcome === 'ok').map((e) => e.capability);
    expect(entries).toEqual(['vm.new', 'vm.exec', 'vm.ls', 'vm.rm', 'vm.rm']);
  }, 120_000);
});
