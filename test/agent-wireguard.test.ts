/**
 * The agent across a real WireGuard tunnel: two network namespaces joined by a veth pair,
 * wireguard-go in each; the agent listens on its tunnel IP in namespace 0, the controller
 * (the real runtime: SQLite audit, Invoker, mesh transport) runs as a child process in namespace 1.
 */
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readJsonlEntries, verifyEntries } from '../capabilities/audit.js';
import { REPO_ROOT, startAgentProcess, writeAgentFiles, type AgentFiles, type AgentProcess } from './fixtures/agent-proc.js';
import { createWgMesh, wgAvailable, type WgMesh } from './fixtures/wg-netns.js';

const DEVICE = 'wgdev';
const PORT = 7420;

let root: string;
let mesh: WgMesh | undefined;
let files: AgentFiles;
let agent: AgentProcess | undefined;

interface ClientReport {
  sysinfo: { ok: boolean; decision: string; error?: { code: string }; result?: { stdout: string }; deviceAudit?: { seq: number; hash: string }; audit: { seq: number } | null };
  denied: { ok: boolean; decision: string; error?: { code: string; message: string }; deviceAudit?: { seq: number } };
  controllerChainOk: boolean;
  audit: { ok: boolean; count: number; head: { seq: number; hash: string } | null; reason?: string };
  health: { device: string; ok: boolean; manifest: { sha256: string | null } };
  underlay: { code?: string; message?: string } | 'reachable';
  latencyMs: number[];
}

/** Runs the controller side inside namespace `i` and returns its JSON report. */
async function runClient(m: WgMesh, i: number, script: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const file = path.join(root, `client-${i}.mts`);
  writeFileSync(file, script);
  const child = m.spawn(i, process.execPath, ['--import', 'tsx', file], {
    cwd: REPO_ROOT, env: { ...process.env, MESHPILOT_HOME: files.home, MESHPILOT_LOG_LEVEL: 'error' }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (c: Buffer) => { stdout += c.toString(); });
  child.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });
  const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  clearTimeout(timer);
  return { code, stdout, stderr };
}

beforeAll(async () => {
  const avail = wgAvailable();
  if (!avail.ok) throw new Error(`this test needs a WireGuard mesh: ${avail.reason} (npm test installs the packages via scripts/ensure-deps.mjs --system)`);
  root = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'mp-agent-wg-')));
  mkdirSync(path.join(root, 'data'));
  mesh = await createWgMesh({ nodes: 2 });
  const wgIp = mesh.nodes[0]!.wgIp;
  files = writeAgentFiles({
    device: DEVICE, address: wgIp, port: PORT, root,
    manifest: `device: ${DEVICE}\nos: linux\ntransport: { kind: mesh, address: ${wgIp}, port: ${PORT} }\ncapabilities:\n  sys.info: {}\n  fs.read: { paths_allowed: ["${root}/data/**"] }\n`,
    // The controller's copy allows far more: the agent must still refuse.
    controllerManifest: `device: ${DEVICE}\nos: linux\ntransport: { kind: mesh, address: ${wgIp}, port: ${PORT} }\ncapabilities:\n  sys.info: {}\n  fs.read: { paths_allowed: ["/**"] }\n`,
  });
  const m = mesh;
  agent = await startAgentProcess(files, { mode: 'sources', spawner: (cmd, args, opts) => m.spawn(0, cmd, args, opts) });
}, 90_000);

afterAll(async () => {
  await agent?.stop();
  await mesh?.teardown();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('agent over a WireGuard tunnel between network namespaces', () => {
  it('serves the controller in the other namespace over the tunnel IP only, with policy and audit intact', async () => {
    const m = mesh!;
    const n0 = m.nodes[0]!;
    const script = `
      import { openRuntime } from ${JSON.stringify(path.join(REPO_ROOT, 'launcher', 'runtime.ts'))};
      import { MeshRunner } from ${JSON.stringify(path.join(REPO_ROOT, 'capabilities', 'transports', 'mesh.ts'))};
      const home = process.env.MESHPILOT_HOME;
      const rt = openRuntime({ root: home });
      const actor = '@wg:example.org';
      const out = {};
      out.sysinfo = await rt.invoker.invoke({ device: ${JSON.stringify(DEVICE)}, capability: 'sys.info', args: {}, actor });
      out.denied = await rt.invoker.invoke({ device: ${JSON.stringify(DEVICE)}, capability: 'fs.read', args: { path: '/etc/hostname' }, actor });
      out.controllerChainOk = rt.audit.verify(${JSON.stringify(DEVICE)}).ok;
      const runner = new MeshRunner({ device: ${JSON.stringify(DEVICE)}, address: ${JSON.stringify(n0.wgIp)}, port: ${PORT}, home });
      out.latencyMs = [];
      for (let i = 0; i < 20; i++) {
        const t = performance.now();
        const r = await runner.run({ capability: 'sys.info', args: {}, actor, requestId: 'lat-' + i });
        if (!r.result.ok) throw new Error('sys.info failed: ' + JSON.stringify(r.result.error));
        out.latencyMs.push(performance.now() - t);
      }
      const a = await runner.pullAudit(null, { pageSize: 7 });
      out.audit = { ok: a.ok, count: a.entries.length, head: a.head, reason: a.ok ? undefined : a.reason };
      out.health = await runner.health();
      const under = new MeshRunner({ device: ${JSON.stringify(DEVICE)}, address: ${JSON.stringify(n0.vethIp)}, port: ${PORT}, home, connectTimeoutMs: 2000 });
      try { await under.health(); out.underlay = 'reachable'; } catch (e) { out.underlay = { code: e.code, message: e.message }; }
      await under.close();
      await runner.close();
      await rt.close();
      console.log(JSON.stringify(out));
    `;
    const r = await runClient(m, 1, script);
    expect(r.stderr.slice(-2000)).not.toMatch(/Error/);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as ClientReport;

    // sys.info ran on the agent, through the tunnel.
    expect(report.sysinfo.error).toBeUndefined();
    expect(report.sysinfo.ok).toBe(true);
    expect(report.sysinfo.result?.stdout).toContain(os.hostname());
    expect(report.sysinfo.deviceAudit?.seq).toBe(2);
    expect(m.lastHandshake(1, 0)).not.toBeNull();

    // The controller allowed fs.read /etc/hostname; the agent's manifest did not.
    expect(report.denied.decision).toBe('allowed');
    expect(report.denied.ok).toBe(false);
    expect(report.denied.error?.code).toBe('policy_denied');
    expect(report.denied.error?.message).toMatch(/enforced by the agent on wgdev/);
    expect(report.controllerChainOk).toBe(true);

    // The agent's chain, fetched over the tunnel, verifies and matches its file.
    const onDisk = [...readJsonlEntries(files.auditFile)];
    expect(verifyEntries(onDisk).ok).toBe(true);
    expect(report.audit.ok).toBe(true);
    expect(report.audit.count).toBe(onDisk.length);
    expect(report.audit.count).toBe(2 + 1 + 40); // sys.info (2), the denial (1), 20 timed calls (40)
    expect(report.audit.head).toEqual({ seq: onDisk.at(-1)!.seq, hash: onDisk.at(-1)!.hash });
    expect(report.health.device).toBe(DEVICE);
    expect(report.health.ok).toBe(true);

    // The agent listens on the tunnel address only: the underlay address refuses.
    expect(report.underlay).not.toBe('reachable');
    expect(report.underlay).toMatchObject({ code: 'unreachable', message: expect.stringContaining(`agent at ${n0.vethIp}:${PORT}`) as unknown });
    expect(report.latencyMs.length).toBe(20);
  }, 60_000);
});
