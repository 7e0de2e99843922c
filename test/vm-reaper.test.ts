/**
 * The VM reaper on the health monitor's schedule (HealthMonitorOptions.afterCycle, as the launcher
 * wires it in operator-room.ts): a real runtime with a local device, real podman. A cycle after the
 * VM's expiry removes it through invoke (actor reaper, audited); a container without meshpilot's
 * labels on the same device is left running; a failing job never fails the cycle.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, realpathSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HealthMonitor, type HealthSettings } from '../launcher/health/monitor.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { vmReaperJob } from '../capabilities/vm/reaper.js';

const RUN = `r${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-vmreap-${RUN}:latest`;
const FOREIGN = `plain-${RUN}`;
const SETTINGS: HealthSettings = { schedule: '* * * * *', stale_after_s: 600, unreachable_after: 2, remind_after_s: 3600, digest_min: 5 };

let root: string;
let rt: Runtime;
let clock = Date.now();

const podman = (...args: string[]): string => execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

beforeAll(() => {
  root = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'mp-vmreap-')));
  const fs = path.join(root, 'rootfs');
  for (const d of ['bin', 'tmp', 'proc', 'sys', 'dev']) mkdirSync(path.join(fs, d), { recursive: true });
  copyFileSync('/bin/busybox', path.join(fs, 'bin', 'busybox'));
  for (const a of ['sh', 'sleep']) symlinkSync('busybox', path.join(fs, 'bin', a));
  execFileSync('tar', ['-C', fs, '-cf', path.join(root, 'rootfs.tar'), '.']);
  podman('import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(root, 'rootfs.tar'), IMAGE);
  const home = path.join(root, 'home');
  mkdirSync(path.join(home, 'manifests'), { recursive: true });
  writeFileSync(path.join(home, 'manifests', 'local.yaml'), `device: local
capabilities:
  vm.new: { images: ["localhost/mp-vmreap-*"], approval: never }
  vm.ls: {}
  vm.rm: {}
`);
  rt = openRuntime({ root: home });
}, 60_000);

afterAll(async () => {
  for (const c of [`mp-gone-${RUN}`, `mp-kept-${RUN}`, FOREIGN]) try { podman('rm', '-f', '-t', '0', c); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  await rt?.close();
  if (root) rmSync(root, { recursive: true, force: true });
}, 60_000);

describe('the reaper on the health schedule', () => {
  it('a cycle after expiry removes the VM through invoke as reaper; a foreign container stays; a failing job is logged only', async () => {
    const gone = `gone-${RUN}`;
    const kept = `kept-${RUN}`;
    for (const [name, ttl_h] of [[gone, 0.25], [kept, 48]] as const) {
      const r = await rt.invoker.invoke({ device: 'local', capability: 'vm.new', args: { name, image: IMAGE, ttl_h }, actor: '@ann:example.org' });
      expect(r.error).toBeUndefined();
    }
    podman('run', '-d', '--runtime', 'runc', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', '--label', 'meshpilot.expires=2000-01-01T00:00:00Z', '--name', FOREIGN, IMAGE);

    const ran: number[] = [];
    const monitor = new HealthMonitor({
      db: rt.db, audit: rt.audit, devices: rt.devices, settings: SETTINGS, home: rt.home.root, now: () => clock,
      afterCycle: [
        { name: 'broken', run: async () => { throw new Error('boom'); } },
        { name: 'spy', run: async (now) => { ran.push(now); } },
        vmReaperJob(rt),
      ],
    });
    try {
      await monitor.runCycle(); // nothing expired yet
      podman('container', 'exists', `mp-${gone}`);
      clock += 30 * 60_000;
      const r = await monitor.runCycle();
      expect(r.devices.map((d) => d.device)).toEqual(['local']);
      expect(ran).toEqual([clock - 30 * 60_000, clock]);
      expect(() => podman('container', 'exists', `mp-${gone}`)).toThrow();
      podman('container', 'exists', `mp-${kept}`);
      expect(podman('container', 'inspect', '--format', '{{.State.Status}}', FOREIGN).trim()).toBe('running');
      const rm = rt.audit.tail(50, 'local').filter((e) => e.capability === 'vm.rm' && e.outcome !== 'started');
      expect(rm.map((e) => [e.actor, e.decision, e.outcome, (e.args as { name: string }).name])).toEqual([['reaper', 'approved', 'ok', gone]]);
      expect(rm[0]?.reason).toContain('approved by reaper');
    } finally {
      await monitor.stop();
    }
  }, 120_000);
});
