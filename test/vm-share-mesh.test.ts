/**
 * Shares of a VM on a mesh device: a real `meshpilot agent` process listening on 127.0.0.2 acts as
 * the mesh device (its manifest's transport.address is 127.0.0.2: another loopback address, so a
 * port published on the mesh address is told apart from one on 127.0.0.1), real podman runs a busybox
 * httpd VM there, and the launcher's share gateway (real HTTP) proxies /s/<id>/ to the mesh address.
 * - vm.new publishes the port on the agent's mesh address, not on 127.0.0.1 nor 0.0.0.0;
 * - vm.share runs in the agent (no meshpilot.db there) and the controller records the share: the same
 *   answer as on local devices, in both audit chains;
 * - /s/<id>/ answers through the mesh address; vm.unshare and vm.rm end it at once (404);
 * - a share published elsewhere than the mesh address is a clear 502.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { logger } from '../capabilities/log.js';
import type { VmInfo } from '../capabilities/vm/backend.js';
import { setShareStore, shareStore } from '../capabilities/vm/shares.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { routeOf, shareSurface } from '../launcher/http/share.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { freePort, startAgentProcess, writeAgentFiles, type AgentFiles, type AgentProcess } from './fixtures/agent-proc.js';

const RUN = `q${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-sharemesh-${RUN}:latest`;
const VM = `meshweb-${RUN}`;
const MESH_IP = '127.0.0.2';
const OP = '@op:example.org';
const saved = process.env['MESHPILOT_HOME'];
let root: string;
let files: AgentFiles;
let agent: AgentProcess;
let rt: Runtime;
let server: RunningHttpServer;
const podman = (...args: string[]): string => execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** Whether something accepts a TCP connection at address:port. */
function accepts(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, address);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
    setTimeout(() => { s.destroy(); resolve(false); }, 2000).unref();
  });
}

beforeAll(async () => {
  root = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'mp-sharemesh-')));
  const fs = path.join(root, 'rootfs');
  for (const d of ['bin', 'tmp', 'proc', 'sys', 'dev', 'etc', 'www']) mkdirSync(path.join(fs, d), { recursive: true });
  copyFileSync('/bin/busybox', path.join(fs, 'bin', 'busybox'));
  for (const a of ['sh', 'httpd', 'sleep']) symlinkSync('busybox', path.join(fs, 'bin', a));
  writeFileSync(path.join(fs, 'www', 'index.html'), '<h1>hello over the mesh</h1>\n');
  execFileSync('tar', ['-C', fs, '-cf', path.join(root, 'rootfs.tar'), '.']);
  podman('import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(root, 'rootfs.tar'), IMAGE);
  const port = await freePort();
  const manifest = `device: meshweb
transport: { kind: mesh, address: ${MESH_IP}, port: ${port} }
capabilities:
  vm.new: { images: ["localhost/mp-sharemesh-*"], approval: never }
  vm.ls: {}
  vm.rm: { approval: never }
  vm.share: { approval: never }
  vm.unshare: { approval: never }
`;
  files = writeAgentFiles({ device: 'meshweb', address: MESH_IP, port, root, manifest });
  agent = await startAgentProcess(files, { mode: 'sources', timeoutMs: 60_000 });
  process.env['MESHPILOT_HOME'] = files.home;
  rt = openRuntime({ root: files.home });
  server = await startHttpServer({
    runtime: rt, http: { listen: '127.0.0.1:0', max_body_bytes: 1024 * 1024, auth_failures_per_min: 10 }, logger: logger('http'),
  }, [shareSurface()]);
}, 120_000);

afterAll(async () => {
  await server?.close();
  await rt?.close();
  await agent?.stop();
  setShareStore(undefined);
  try { podman('rm', '-f', '-t', '0', `mp-${VM}`); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  if (root) rmSync(root, { recursive: true, force: true });
  if (saved === undefined) delete process.env['MESHPILOT_HOME'];
  else process.env['MESHPILOT_HOME'] = saved;
}, 60_000);

describe('shares of VMs on a mesh device', () => {
  it('publishes on the mesh address, records the share on the controller, proxies /s/<id>/ over the mesh; unshare and rm end it', async () => {
    const call = (capability: string, args: Record<string, unknown>) => rt.invoker.invoke({ device: 'meshweb', capability, args, actor: OP });
    const made = await call('vm.new', { name: VM, image: IMAGE, memory_mb: 48, ttl_h: 1, ports: [8080], command: ['httpd', '-f', '-p', '8080', '-h', '/www'] });
    expect(made.error).toBeUndefined();
    const info = made.result?.data as VmInfo;
    expect(info.ports).toHaveLength(1);
    expect(info.ports[0]).toMatchObject({ guest: 8080, hostIp: MESH_IP });
    const hostPort = info.ports[0]!.host!;
    expect(made.result?.stdout).toContain(`port 8080 -> ${MESH_IP}:${hostPort} on meshweb`);
    // On the mesh address only: not on loopback's 127.0.0.1, not on every interface.
    expect(podman('port', `mp-${VM}`, '8080').trim()).toBe(`${MESH_IP}:${hostPort}`);
    let up = false;
    for (let i = 0; i < 50 && !up; i++) {
      up = await accepts(MESH_IP, hostPort);
      if (!up) await new Promise((r) => setTimeout(r, 100));
    }
    expect(up).toBe(true);
    expect(await accepts('127.0.0.1', hostPort)).toBe(false);

    const shared = await call('vm.share', { name: VM, port: 8080, public: true });
    expect(shared.error).toBeUndefined();
    expect(shared.deviceAudit?.seq).toBeGreaterThan(0);
    const data = shared.result?.data as { id: string; path: string; public: boolean; owner: string; created: boolean };
    expect(data).toMatchObject({ public: true, owner: OP, created: true });
    expect(data.path).toBe(`/s/${data.id}/`);
    expect(shared.result?.stdout).toMatch(new RegExp(`^shared ${VM}:8080 on meshweb \\(public: anyone with the link\\)\\n.*/s/${data.id}/$`));
    expect(shareStore()?.get(data.id)).toMatchObject({ device: 'meshweb', vm: VM, port: 8080, address: MESH_IP, hostPort });

    const page = await fetch(`${server.url}${data.path}`);
    expect(page.status).toBe(200);
    expect(await page.text()).toBe('<h1>hello over the mesh</h1>\n');

    // vm.ls (run by the agent, which has no shares) lists the VM with its share, added on the controller.
    const ls = await call('vm.ls', {});
    const listed = (ls.result?.data as Array<VmInfo & { shares: Array<{ id: string }> }>).find((v) => v.name === VM);
    expect(listed?.ports[0]).toMatchObject({ hostIp: MESH_IP, host: hostPort });
    expect(listed?.shares.map((s) => s.id)).toEqual([data.id]);
    expect(ls.result?.stdout).toMatch(new RegExp(`${VM}  running  ${IMAGE}  1 cpu 48M  ${MESH_IP.replace(/\./g, '\\.')}:${hostPort}->8080  ${OP}  expires in \\d+ (min|h)\n  shared :8080 public /s/${data.id}/`));
    // The controller's chain records share with the controller's answer.
    const entry = rt.audit.tail(20, 'meshweb').find((e) => e.capability === 'vm.share' && e.outcome === 'ok');
    expect(entry).toMatchObject({ actor: OP, args: { name: VM, port: 8080 } });
    expect(entry?.reason).toMatch(/^started at #\d+$/);

    const un = await call('vm.unshare', { name: VM, port: 8080 });
    expect(un.result?.stdout).toBe(`unshared ${VM}:8080 on meshweb`);
    expect((await fetch(`${server.url}${data.path}`)).status).toBe(404);

    // Shared again, then the VM removed on the device: the controller's row goes with it.
    const again = await call('vm.share', { name: VM, port: 8080, public: true });
    const id2 = (again.result?.data as { id: string }).id;
    expect(id2).not.toBe(data.id);
    expect((await fetch(`${server.url}/s/${id2}/`)).status).toBe(200);
    expect((await call('vm.rm', { name: VM })).ok).toBe(true);
    expect(shareStore()?.get(id2)).toBeUndefined();
    expect((await fetch(`${server.url}/s/${id2}/`)).status).toBe(404);
    expect(rt.audit.verify('meshweb').ok).toBe(true);
  }, 120_000);

  it('a share of a port that is not on the mesh address answers 502 with the reason', async () => {
    const m = rt.devices.get('meshweb')!;
    const share = { id: '0'.repeat(32), device: 'meshweb', vm: 'x', port: 80, address: '127.0.0.1', hostPort: 40000, public: true, grantees: [], owner: OP, createdMs: 0 };
    expect(routeOf(share, m)).toEqual({ ok: false, message: `x:80 is published on 127.0.0.1 on meshweb, out of the mesh's reach (${MESH_IP}): recreate the VM with vm.new ports=[80] while the device agent listens on its mesh address, then vm.share it again` });
    expect(routeOf({ ...share, address: MESH_IP }, m)).toEqual({ ok: true, target: { host: MESH_IP, port: 40000 } });
    const stored = shareStore()!.share({ device: 'meshweb', vm: 'x', port: 80, address: '127.0.0.1', hostPort: 40000, public: true, grantees: [], owner: OP });
    const res = await fetch(`${server.url}/s/${stored.share.id}/`);
    expect(res.status).toBe(502);
    expect(await res.json()).toMatchObject({ code: 'unreachable', message: expect.stringContaining('out of the mesh\'s reach') });
    shareStore()!.unshare('meshweb', 'x');
  });
});
