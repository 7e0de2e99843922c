/**
 * ssh transport figures on a loopback sshd (test/fixtures/sshd.ts, started and stopped here):
 * cold = TCP connect + handshake + auth + the once-per-connection `timeout` check + exec of `true`;
 * warm = exec of `true` as a new channel on the pooled connection.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { acceptHostKey, closeSshPool, SshHost } from '../capabilities/transports/ssh.js';
import { startSshd } from '../test/fixtures/sshd.js';
import type { BenchFigure } from './run.js';

export const figures = ['ssh.cold_p50', 'ssh.warm_p50', 'ssh.warm_p99', 'ssh.speedup'];

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

export async function run(): Promise<BenchFigure[]> {
  const savedHome = process.env['MESHPILOT_HOME'];
  const home = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-ssh-'));
  process.env['MESHPILOT_HOME'] = home;
  const fx = await startSshd();
  try {
    acceptHostKey({ host: fx.host, port: fx.port, keyType: fx.hostKeyType, fingerprint: fx.hostKeyFingerprint });
    const transport = { kind: 'ssh' as const, host: fx.host, port: fx.port, user: fx.user, key: fx.keyPath };
    const req = { argv: ['true'], timeoutMs: 10_000, maxOutputBytes: 4096 };

    const cold: number[] = [];
    for (let i = 0; i < 30; i++) {
      closeSshPool();
      const host = new SshHost('bench', transport);
      const t = performance.now();
      const o = await host.exec(req);
      cold.push(performance.now() - t);
      if (o.exitCode !== 0) throw new Error(`true exited ${o.exitCode}`);
    }
    closeSshPool();

    const host = new SshHost('bench', transport);
    for (let i = 0; i < 20; i++) await host.exec(req);
    const warm: number[] = [];
    for (let i = 0; i < 500; i++) {
      const t = performance.now();
      const o = await host.exec(req);
      warm.push(performance.now() - t);
      if (o.exitCode !== 0) throw new Error(`true exited ${o.exitCode}`);
    }
    cold.sort((a, b) => a - b);
    warm.sort((a, b) => a - b);
    const coldP50 = percentile(cold, 50);
    const warmP50 = percentile(warm, 50);
    return [
      { name: 'ssh.cold_p50', value: coldP50, unit: 'ms' },
      { name: 'ssh.warm_p50', value: warmP50, unit: 'ms', target: '<= 15' },
      { name: 'ssh.warm_p99', value: percentile(warm, 99), unit: 'ms' },
      { name: 'ssh.speedup', value: coldP50 / warmP50, unit: 'x', target: '>= 5' },
    ];
  } finally {
    closeSshPool();
    await fx.stop();
    rmSync(home, { recursive: true, force: true });
    if (savedHome === undefined) delete process.env['MESHPILOT_HOME'];
    else process.env['MESHPILOT_HOME'] = savedHome;
  }
}
