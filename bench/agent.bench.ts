/**
 * Device agent figures: `sys.info` round trips through the mesh transport (signed request →
 * agent: validate, policy, LocalHost, two fsync'd JSONL audit appends → response), on loopback
 * and across a WireGuard tunnel (wireguard-go between two network namespaces), and the throughput
 * of 8 concurrent callers on loopback. The agent runs as the bundle (what devices run), built
 * into a temp dir. sys.info itself spawns `df`, which is most of each call: its in-process
 * cost is printed beside the figures for reference.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sysCapabilities } from '../capabilities/catalog/sys.js';
import { LocalHost } from '../capabilities/transports/local.js';
import { MeshRunner } from '../capabilities/transports/mesh.js';
import { freePort, REPO_ROOT, startAgentProcess, writeAgentFiles } from '../test/fixtures/agent-proc.js';
import { createWgMesh, wgAvailable } from '../test/fixtures/wg-netns.js';
import type { BenchFigure } from './run.js';

export const figures = ['agent.loopback_p50', 'agent.loopback_p99', 'agent.wg_p50', 'agent.concurrent8'];

const SAMPLES = 1000;
const WARMUP = 100;
const CONCURRENT_S = 3;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

const manifest = (device: string, address: string, port: number): string =>
  `device: ${device}\nos: linux\ntransport: { kind: mesh, address: ${address}, port: ${port} }\ncapabilities:\n  sys.info: {}\n`;
const LIMITS = { rate_per_s: 1_000_000, burst: 1_000_000, chain_check_s: 3600, max_concurrent: 64 };

async function loopback(root: string, bundlePath: string): Promise<BenchFigure[]> {
  const port = await freePort();
  const files = writeAgentFiles({ device: 'bench', address: '127.0.0.1', port, root, manifest: manifest('bench', '127.0.0.1', port), limits: LIMITS });
  const agent = await startAgentProcess(files, { mode: 'bundle', bundlePath });
  const runner = new MeshRunner({ device: 'bench', address: '127.0.0.1', port, home: files.home, connections: 8 });
  try {
    let n = 0;
    const call = async (): Promise<void> => {
      const r = await runner.run({ capability: 'sys.info', args: {}, actor: 'bench', requestId: `b${n++}` });
      if (!r.result.ok) throw new Error(`sys.info failed: ${r.result.error?.message}`);
    };
    for (let i = 0; i < WARMUP; i++) await call();
    const samples: number[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      const t = performance.now();
      await call();
      samples.push(performance.now() - t);
    }
    samples.sort((a, b) => a - b);
    const health: number[] = [];
    for (let i = 0; i < 300; i++) {
      const t = performance.now();
      await runner.health();
      health.push(performance.now() - t);
    }
    process.stderr.write(`# /health round trip p50 ${percentile(health.sort((a, b) => a - b), 50).toFixed(3)} ms (HTTP + JSON only)\n`);

    const until = performance.now() + CONCURRENT_S * 1000;
    let done = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (performance.now() < until) {
        await call();
        done++;
      }
    }));
    const rate = done / ((performance.now() - t0) / 1000);
    return [
      { name: 'agent.loopback_p50', value: percentile(samples, 50), unit: 'ms', target: '<= 5' },
      { name: 'agent.loopback_p99', value: percentile(samples, 99), unit: 'ms' },
      { name: 'agent.concurrent8', value: Math.round(rate), unit: 'calls/s' },
    ];
  } finally {
    await runner.close();
    await agent.stop();
  }
}

async function wireguard(root: string, bundlePath: string): Promise<BenchFigure[]> {
  const avail = wgAvailable();
  if (!avail.ok) {
    process.stderr.write(`# agent.wg_p50 skipped: ${avail.reason}\n`);
    return [];
  }
  const mesh = await createWgMesh({ nodes: 2 });
  let agent;
  try {
    const ip = mesh.nodes[0]!.wgIp;
    const files = writeAgentFiles({ device: 'benchwg', address: ip, port: 7420, root: path.join(root, 'wg'), manifest: manifest('benchwg', ip, 7420), limits: LIMITS });
    agent = await startAgentProcess(files, { mode: 'bundle', bundlePath, spawner: (c, a, o) => mesh.spawn(0, c, a, o) });
    const script = path.join(root, 'wg-client.mts');
    writeFileSync(script, `
      import { MeshRunner } from ${JSON.stringify(path.join(REPO_ROOT, 'capabilities', 'transports', 'mesh.ts'))};
      const runner = new MeshRunner({ device: 'benchwg', address: ${JSON.stringify(ip)}, port: 7420, home: process.env.MESHPILOT_HOME });
      let n = 0;
      const call = async () => { const r = await runner.run({ capability: 'sys.info', args: {}, actor: 'bench', requestId: 'w' + n++ }); if (!r.result.ok) throw new Error('failed'); };
      for (let i = 0; i < ${WARMUP}; i++) await call();
      const s = [];
      for (let i = 0; i < ${SAMPLES}; i++) { const t = performance.now(); await call(); s.push(performance.now() - t); }
      s.sort((a, b) => a - b);
      await runner.close();
      console.log(JSON.stringify({ p50: s[Math.floor(s.length / 2)], p99: s[Math.floor(s.length * 0.99)] }));
    `);
    const child = mesh.spawn(1, process.execPath, ['--import', 'tsx', script], { cwd: REPO_ROOT, env: { ...process.env, MESHPILOT_HOME: files.home, MESHPILOT_LOG_LEVEL: 'error' }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout?.on('data', (c: Buffer) => { out += c.toString(); });
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    if (code !== 0) throw new Error(`wg client exited ${code}`);
    const r = JSON.parse(out.trim().split('\n').at(-1)!) as { p50: number; p99: number };
    process.stderr.write(`# agent.wg_p99 ${r.p99.toFixed(3)} ms\n`);
    return [{ name: 'agent.wg_p50', value: r.p50, unit: 'ms' }];
  } finally {
    await agent?.stop();
    await mesh.teardown();
  }
}

async function sysInfoInProcess(): Promise<number> {
  const def = sysCapabilities.find((c) => c.name === 'sys.info');
  if (!def) throw new Error('sys.info missing');
  const host = new LocalHost('bench');
  const ctx = { host, device: 'bench', os: 'linux' as const, limits: { timeoutMs: 10_000, maxOutputBytes: 65536 } };
  for (let i = 0; i < 20; i++) await def.run({}, ctx);
  const s: number[] = [];
  for (let i = 0; i < 200; i++) {
    const t = performance.now();
    await def.run({}, ctx);
    s.push(performance.now() - t);
  }
  return percentile(s.sort((a, b) => a - b), 50);
}

export async function run(): Promise<BenchFigure[]> {
  const root = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-agent-'));
  try {
    const bundlePath = path.join(root, 'meshpilot-agent.mjs');
    execFileSync(process.execPath, [path.join(REPO_ROOT, 'scripts', 'bundle-agent.mjs')], { env: { ...process.env, MESHPILOT_AGENT_OUT: bundlePath }, stdio: 'ignore' });
    process.stderr.write(`# sys.info in-process p50 ${(await sysInfoInProcess()).toFixed(3)} ms (no transport, no audit)\n`);
    return [...(await loopback(root, bundlePath)), ...(await wireguard(root, bundlePath))];
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
