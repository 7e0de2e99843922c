/**
 * A share of a VM on a mesh device across a real WireGuard tunnel: two network namespaces joined by a
 * veth pair, wireguard-go in each (test/fixtures/wg-netns.ts). The device agent runs in namespace 0 and
 * listens on its tunnel IP; its podman (entered with `nsenter --net`, so /sys and the cgroups stay the
 * host's) publishes the VM's port on that tunnel IP. The controller — the real runtime and the share
 * gateway on 127.0.0.1 — runs as a child process in namespace 1, where the device is reachable only over
 * the tunnel: vm.new, vm.share, GET /s/<id>/ through the gateway, vm.unshare (404), vm.rm.
 */
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startAgentProcess, writeAgentFiles, type AgentFiles, type AgentProcess } from './fixtures/agent-proc.js';
import { createWgMesh, wgAvailable, type WgMesh } from './fixtures/wg-netns.js';

const DEVICE = 'wgvm';
const PORT = 7420;
const RUN = `g${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-sharewg-${RUN}:latest`;
const VM = `wgweb-${RUN}`;

let root: string;
let mesh: WgMesh | undefined;
let files: AgentFiles;
let agent: AgentProcess | undefined;

/** podman inside namespace 0's network (only the network namespace: runc needs the host's /sys). */
function podmanIn0(...args: string[]): string {
  return execFileSync('nsenter', [`--net=/run/netns/${mesh!.nodes[0]!.ns}`, 'podman', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

interface Report {
  made: { ok: boolean; error?: { message: string }; ports?: Array<{ guest: number; host: number | null; hostIp?: string }> };
  shared: { ok: boolean; error?: { message: string }; path?: string; deviceAudit?: { seq: number } };
  status: number;
  body: string;
  after: number;
  removed: boolean;
  chainOk: boolean;
}

beforeAll(async () => {
  const avail = wgAvailable();
  if (!avail.ok) throw new Error(`this test needs a WireGuard mesh: ${avail.reason} (npm test installs the packages via scripts/ensure-deps.mjs --system)`);
  root = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'mp-sharewg-')));
  const fs = path.join(root, 'rootfs');
  for (const d of ['bin', 'tmp', 'proc', 'sys', 'dev', 'etc', 'www']) mkdirSync(path.join(fs, d), { recursive: true });
  copyFileSync('/bin/busybox', path.join(fs, 'bin', 'busybox'));
  for (const a of ['sh', 'httpd', 'sleep']) symlinkSync('busybox', path.join(fs, 'bin', a));
  writeFileSync(path.join(fs, 'www', 'index.html'), '<h1>hello through the tunnel</h1>\n');
  execFileSync('tar', ['-C', fs, '-cf', path.join(root, 'rootfs.tar'), '.']);
  execFileSync('podman', ['import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(root, 'rootfs.tar'), IMAGE], { stdio: 'ignore' });
  mesh = await createWgMesh({ nodes: 2 });
  const wgIp = mesh.nodes[0]!.wgIp;
  files = writeAgentFiles({
    device: DEVICE, address: wgIp, port: PORT, root,
    manifest: `device: ${DEVICE}\nos: linux\ntransport: { kind: mesh, address: ${wgIp}, port: ${PORT} }\ncapabilities:\n  vm.new: { images: ["localhost/mp-sharewg-*"], approval: never }\n  vm.ls: {}\n  vm.rm: { approval: never }\n  vm.share: { approval: never }\n  vm.unshare: { approval: never }\n`,
  });
  const ns0 = mesh.nodes[0]!.ns;
  agent = await startAgentProcess(files, { mode: 'sources', timeoutMs: 60_000, spawner: (cmd, args, opts) => spawn('nsenter', [`--net=/run/netns/${ns0}`, cmd, ...args], opts) });
}, 120_000);

afterAll(async () => {
  if (mesh) try { podmanIn0('rm', '-f', '-t', '0', `mp-${VM}`); } catch { /* gone */ }
  await agent?.stop();
  await mesh?.teardown();
  try { execFileSync('podman', ['rmi', '-f', IMAGE], { stdio: 'ignore' }); } catch { /* gone */ }
  if (root) rmSync(root, { recursive: true, force: true });
}, 60_000);

describe('a shared VM port on a mesh device, over a real WireGuard tunnel', () => {
  it('the gateway in the controller\'s namespace reaches the VM at the device\'s tunnel IP', async () => {
    const m = mesh!;
    const wgIp = m.nodes[0]!.wgIp;
    const mod = (...p: string[]): string => JSON.stringify(path.join(REPO_ROOT, ...p));
    const script = `
      import { openRuntime } from ${mod('launcher', 'runtime.ts')};
      import { startHttpServer } from ${mod('launcher', 'http', 'server.ts')};
      import { shareSurface } from ${mod('launcher', 'http', 'share.ts')};
      import { logger } from ${mod('capabilities', 'log.ts')};
      const rt = openRuntime({ root: process.env.MESHPILOT_HOME });
      const server = await startHttpServer({ runtime: rt, http: { listen: '127.0.0.1:0', max_body_bytes: 1048576, auth_failures_per_min: 10 }, logger: logger('http') }, [shareSurface()]);
      const call = (capability, args) => rt.invoker.invoke({ device: ${JSON.stringify(DEVICE)}, capability, args, actor: '@op:example.org' });
      const out = {};
      const made = await call('vm.new', { name: ${JSON.stringify(VM)}, image: ${JSON.stringify(IMAGE)}, memory_mb: 48, ttl_h: 1, ports: [8080], command: ['httpd', '-f', '-p', '8080', '-h', '/www'] });
      out.made = { ok: made.ok, error: made.error, ports: made.result?.data?.ports };
      const shared = await call('vm.share', { name: ${JSON.stringify(VM)}, port: 8080, public: true });
      out.shared = { ok: shared.ok, error: shared.error, path: shared.result?.data?.path, deviceAudit: shared.deviceAudit };
      out.status = 0; out.body = '';
      for (let i = 0; i < 60 && out.status !== 200; i++) {
        try { const r = await fetch(server.url + out.shared.path); out.status = r.status; out.body = await r.text(); } catch (e) { out.body = String(e); }
        if (out.status !== 200) await new Promise((r) => setTimeout(r, 150));
      }
      await call('vm.unshare', { name: ${JSON.stringify(VM)}, port: 8080 });
      out.after = (await fetch(server.url + out.shared.path)).status;
      out.removed = (await call('vm.rm', { name: ${JSON.stringify(VM)} })).ok;
      out.chainOk = rt.audit.verify(${JSON.stringify(DEVICE)}).ok;
      await server.close();
      await rt.close();
      console.log(JSON.stringify(out));
    `;
    const file = path.join(root, 'controller.mts');
    writeFileSync(file, script);
    const child = m.spawn(1, process.execPath, ['--import', 'tsx', file], {
      cwd: REPO_ROOT, env: { ...process.env, MESHPILOT_HOME: files.home, MESHPILOT_LOG_LEVEL: 'error' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    clearTimeout(timer);
    expect(stderr.slice(-2000)).not.toMatch(/Error/);
    expect(code).toBe(0);
    const report = JSON.parse(stdout.trim().split('\n').at(-1)!) as Report;

    expect(report.made.error).toBeUndefined();
    expect(report.made.ports?.[0]).toMatchObject({ guest: 8080, hostIp: wgIp });
    expect(report.shared.error).toBeUndefined();
    expect(report.shared.path).toMatch(/^\/s\/[0-9a-f]{32}\/$/);
    expect(report.shared.deviceAudit?.seq).toBeGreaterThan(0);
    expect(report.status).toBe(200);
    expect(report.body).toBe('<h1>hello through the tunnel</h1>\n');
    expect(report.after).toBe(404);
    expect(report.removed).toBe(true);
    expect(report.chainOk).toBe(true);
    expect(m.lastHandshake(1, 0)).not.toBeNull();
  }, 120_000);
});
