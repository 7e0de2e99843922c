/**
 * add-pc wall time on real hosts (test/fixtures/netns-lab.ts: a hub and a target namespace with
 * their own sshd, wireguard-go, the homeserver fixture, the real launcher and device bot), from
 * starting `meshpilot add-pc` to its exit after the bot posted "✓ live" — CLI start-up included.
 * WireGuard tools and node are pre-installed on the target, so no package install is in these
 * figures; what an install took (0 when nothing was missing) is reported separately as addpc.install.
 */
import { createLab } from '../test/fixtures/netns-lab.js';
import type { BenchFigure } from './run.js';

export const figures = ['addpc.ssh', 'addpc.wg', 'addpc.install'];

export async function run(): Promise<BenchFigure[]> {
  const lab = await createLab({ targets: 1 });
  try {
    await lab.startLauncher();
    const t = lab.targets[0]!;
    const base = ['--ssh', t.spec, '--ssh-key', t.key, '--accept-host-key', t.sshd.hostKeyFingerprint, '--json'];
    const ssh: number[] = [];
    const wg: number[] = [];
    let install = 0;
    for (let i = 0; i < 3; i++) {
      let t0 = performance.now();
      const a = await lab.runCli(['add-pc', `bssh${i}`, '--via', 'ssh', ...base]);
      ssh.push((performance.now() - t0) / 1000);
      if (a.code !== 0) throw new Error(`add-pc --via ssh failed: ${a.stdout.slice(-500)} ${a.stderr.slice(-500)}`);
      t0 = performance.now();
      const b = await lab.runCli(['add-pc', `bwg${i}`, '--via', 'wg', ...base]);
      wg.push((performance.now() - t0) / 1000);
      if (b.code !== 0) throw new Error(`add-pc --via wg failed: ${b.stdout.slice(-500)} ${b.stderr.slice(-500)}`);
      const timings = (b.events.find((e) => e.type === 'result')?.['timings'] ?? {}) as Record<string, number>;
      install += (timings['install'] ?? 0) / 1000;
      await lab.runCli(['revoke', `bssh${i}`, '--yes']);
      await lab.runCli(['revoke', `bwg${i}`, '--yes']);
    }
    const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)] ?? 0;
    return [
      { name: 'addpc.ssh', value: median(ssh), unit: 's', target: '<= 5' },
      { name: 'addpc.wg', value: median(wg), unit: 's', target: '<= 20' },
      { name: 'addpc.install', value: install / 3, unit: 's' },
    ];
  } finally {
    await lab.teardown();
  }
}
