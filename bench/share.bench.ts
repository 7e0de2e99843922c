/**
 * The share gateway against the VM's published port, side by side (interleaved) in one run:
 *   share.get_ratio  = GET /s/<id>/ of a small page through the launcher's HTTP server (private share:
 *                      the session and the share read from meshpilot.db, the proxy) / the same GET
 *                      straight to the published loopback port;
 *   share.mb4_ratio  = the same for a 4 MiB file (the streamed body).
 * Both on keep-alive connections from the client; medians; absolute times printed. Needs podman, runc
 * and busybox-static. The VM is `busybox httpd`. Targets <= 3x: the gateway is a second user-space hop
 * (client → launcher → VM) and the bench client shares the launcher's process and event loop.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { DashboardLogins } from '../capabilities/dashboard-login.js';
import { logger } from '../capabilities/log.js';
import { setShareStore } from '../capabilities/vm/shares.js';
import { dashboardSurface } from '../launcher/http/dashboard/index.js';
import { startHttpServer } from '../launcher/http/server.js';
import { shareSurface } from '../launcher/http/share.js';
import { openRuntime } from '../launcher/runtime-core.js';
import type { BenchFigure } from './run.js';
import { busyboxRootfs } from '../test/helpers/busybox-rootfs.js';

export const figures = ['share.get_ms', 'share.get_bare_ms', 'share.get_ratio', 'share.mb4_ms', 'share.mb4_bare_ms', 'share.mb4_ratio'];

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function get(url: string, cookie?: string): Promise<number> {
  const t = performance.now();
  return new Promise((resolve, reject) => {
    http.get(url, { agent, headers: cookie ? { cookie } : {} }, (res) => {
      if (res.statusCode !== 200) reject(new Error(`${url}: ${res.statusCode}`));
      res.on('data', () => undefined);
      res.on('end', () => resolve(performance.now() - t));
    }).on('error', reject);
  });
}

export async function benchRun(): Promise<BenchFigure[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-share-'));
  const tag = `b${process.pid.toString(36)}`;
  const image = `localhost/mp-sharebench-${tag}:latest`;
  const vm = `web-${tag}`;
  const rt = openRuntime({ root: path.join(dir, 'home') });
  try {
    busyboxRootfs(dir, { applets: ['sh', 'sleep', 'httpd'], dirs: ['www'], files: { 'www/index.html': '<h1>hello</h1>\n', 'www/big.bin': Buffer.alloc(4 * 1024 * 1024, 7) } });
    execFileSync('podman', ['import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(dir, 'rootfs.tar'), image], { stdio: 'ignore' });
    writeFileSync(path.join(rt.home.manifests, 'local.yaml'), `device: local
capabilities:
  vm.new: { images: ["localhost/mp-sharebench-*"], approval: never }
  vm.rm: { approval: never }
  vm.share: { approval: never }
`);
    const op = { user: '@op:bench', level: 'operator' as const };
    const made = await rt.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name: vm, image, cpus: 1, memory_mb: 128, ttl_h: 1, ports: [8080], command: ['httpd', '-f', '-p', '8080', '-h', '/www'] }, actor: op.user, caller: op });
    if (!made.ok) throw new Error(`vm.new: ${made.error?.message ?? made.result?.error?.message}`);
    const shared = await rt.invoker.invoke({ device: 'local', capability: 'vm.share', args: { name: vm, port: 8080, to: '@friend:bench' }, actor: op.user, caller: op });
    if (!shared.ok) throw new Error(`vm.share: ${shared.error?.message ?? shared.result?.error?.message}`);
    const sharePath = (shared.result?.data as { path: string }).path;
    const hostPort = Number(execFileSync('podman', ['port', `mp-${vm}`, '8080'], { encoding: 'utf8' }).trim().split(':').pop());
    const bare = `http://127.0.0.1:${hostPort}/`;
    const server = await startHttpServer({
      runtime: rt, http: { listen: '127.0.0.1:0', max_body_bytes: 1024 * 1024, auth_failures_per_min: 10 }, logger: logger('bench'),
    }, [shareSurface(), dashboardSurface()]);
    try {
      const logins = new DashboardLogins(rt.db);
      const s = logins.consumeLink(logins.createLink('@friend:bench'));
      if (!s.ok) throw new Error('session');
      const cookie = `meshpilot_session=${s.sessionId}`;
      const gw = `${server.url}${sharePath}`;
      for (let i = 0; i < 50; i++) {
        try { await get(bare); break; } catch { await new Promise((r) => setTimeout(r, 100)); }
      }
      const pair = async (n: number, file: string): Promise<[number, number]> => {
        for (let i = 0; i < 10; i++) { await get(gw + file, cookie); await get(bare + file); } // warm-up
        const a: number[] = [];
        const b: number[] = [];
        for (let i = 0; i < n; i++) {
          a.push(await get(gw + file, cookie));
          b.push(await get(bare + file));
        }
        return [median(a), median(b)];
      };
      const [small, smallBare] = await pair(300, '');
      const [big, bigBare] = await pair(40, 'big.bin');
      return [
        { name: 'share.get_ms', value: small, unit: 'ms' },
        { name: 'share.get_bare_ms', value: smallBare, unit: 'ms' },
        { name: 'share.get_ratio', value: small / smallBare, unit: 'x', target: '<= 3' },
        { name: 'share.mb4_ms', value: big, unit: 'ms' },
        { name: 'share.mb4_bare_ms', value: bigBare, unit: 'ms' },
        { name: 'share.mb4_ratio', value: big / bigBare, unit: 'x', target: '<= 3' },
      ];
    } finally {
      await server.close();
    }
  } finally {
    agent.destroy();
    try { execFileSync('podman', ['rm', '-f', '-t', '0', `mp-${vm}`], { stdio: 'ignore' }); } catch { /* gone */ }
    try { execFileSync('podman', ['rmi', '-f', image], { stdio: 'ignore' }); } catch { /* gone */ }
    await rt.close();
    setShareStore(undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

export { benchRun as run };
