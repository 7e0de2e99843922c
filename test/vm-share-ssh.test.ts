/**
 * The share gateway for a VM on an ssh device: the device is this machine through a real OpenSSH
 * server (as root, so podman runs there as in test/vm-ssh.test.ts); vm.new and vm.share run over the
 * ssh Host, and `/s/<id>/` reaches the VM's loopback port through a direct-tcpip channel on the pooled
 * connection (no new ssh handshake per request).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { logger } from '../capabilities/log.js';
import { acceptHostKey, closeSshPool, sshPoolStats } from '../capabilities/transports/ssh.js';
import { setShareStore } from '../capabilities/vm/shares.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { shareSurface } from '../launcher/http/share.js';
import { openRuntime, type Runtime } from '../launcher/runtime-core.js';
import { startSshd, type SshdFixture } from './fixtures/sshd.js';

const RUN = `x${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-sharessh-${RUN}:latest`;
const VM = `web-${RUN}`;
const saved = process.env['MESHPILOT_HOME'];
let home: string;
let sshd: SshdFixture;
let rt: Runtime;
let server: RunningHttpServer;

beforeAll(async () => {
  home = mkdtempSync(path.join(os.tmpdir(), 'mp-sharessh-'));
  chmodSync(home, 0o755);
  process.env['MESHPILOT_HOME'] = home;
  sshd = await startSshd({ user: 'root' });
  acceptHostKey({ host: sshd.host, port: sshd.port, keyType: sshd.hostKeyType, fingerprint: sshd.hostKeyFingerprint });
  const fs = path.join(home, 'rootfs');
  for (const d of ['bin', 'tmp', 'proc', 'sys', 'dev', 'www']) mkdirSync(path.join(fs, d), { recursive: true });
  copyFileSync('/bin/busybox', path.join(fs, 'bin', 'busybox'));
  for (const a of ['sh', 'sleep', 'httpd']) symlinkSync('busybox', path.join(fs, 'bin', a));
  writeFileSync(path.join(fs, 'www', 'index.html'), 'served over ssh\n');
  execFileSync('tar', ['-C', fs, '-cf', path.join(home, 'rootfs.tar'), '.']);
  chmodSync(path.join(home, 'rootfs.tar'), 0o644);
  rt = openRuntime({ root: home });
  writeFileSync(path.join(rt.home.manifests, 'vmhost.yaml'), `device: vmhost
transport: { kind: ssh, host: ${sshd.host}, port: ${sshd.port}, user: ${sshd.user}, key: "${sshd.keyPath}" }
limits: { timeout_s: 60, max_output_bytes: 65536 }
capabilities:
  vm.new: { images: ["localhost/mp-sharessh-*"], approval: never }
  vm.rm: { approval: never }
  vm.share: { approval: never }
  vm.image.import: { paths_allowed: ["${home}/**"], approval: never }
`);
  server = await startHttpServer({
    runtime: rt, http: { listen: '127.0.0.1:0', max_body_bytes: 64 * 1024, auth_failures_per_min: 10 }, logger: logger('http'),
  }, [shareSurface()]);
}, 60_000);

afterAll(async () => {
  await server?.close();
  try { execFileSync('podman', ['rm', '-f', '-t', '0', `mp-${VM}`], { stdio: 'ignore' }); } catch { /* gone */ }
  try { execFileSync('podman', ['rmi', '-f', IMAGE], { stdio: 'ignore' }); } catch { /* gone */ }
  await rt?.close();
  closeSshPool();
  setShareStore(undefined);
  await sshd?.stop();
  rmSync(home, { recursive: true, force: true });
  if (saved === undefined) delete process.env['MESHPILOT_HOME'];
  else process.env['MESHPILOT_HOME'] = saved;
}, 60_000);

describe('a share of a VM on an ssh device', () => {
  it('proxies /s/<id>/ through a forwarded channel on the pooled ssh connection', async () => {
    const call = (capability: string, args: Record<string, unknown>) => rt.invoker.invoke({ device: 'vmhost', capability, args, actor: '@op:example.org' });
    expect((await call('vm.image.import', { path: path.join(home, 'rootfs.tar'), image: IMAGE })).error).toBeUndefined();
    const made = await call('vm.new', { name: VM, image: IMAGE, cpus: 0.5, memory_mb: 64, ttl_h: 1, ports: [8080], command: ['httpd', '-f', '-p', '8080', '-h', '/www'] });
    expect(made.error).toBeUndefined();
    const shared = await call('vm.share', { name: VM, port: 8080, public: true });
    expect(shared.error).toBeUndefined();
    const sharePath = (shared.result?.data as { path: string }).path;

    let page: Response | undefined;
    for (let i = 0; i < 50; i++) {
      page = await fetch(`${server.url}${sharePath}`);
      if (page.status === 200) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(page?.status).toBe(200);
    expect(await page!.text()).toBe('served over ssh\n');
    const before = sshPoolStats().totalHandshakes;
    for (let i = 0; i < 5; i++) expect((await fetch(`${server.url}${sharePath}`)).status).toBe(200);
    expect(sshPoolStats().totalHandshakes).toBe(before);

    expect((await call('vm.rm', { name: VM })).ok).toBe(true);
    expect((await fetch(`${server.url}${sharePath}`)).status).toBe(404);
  }, 120_000);
});
