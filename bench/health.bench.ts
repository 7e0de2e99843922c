/**
 * Health monitor figures: one cycle over 1,000 simulated agents (a child process with 1,000 HTTP
 * listeners on 127.0.0.1 serving /health and /v1/audit with real hash-chained entries), its wall time
 * and the monitor process's peak RSS, and detection latency: agents killed → cycles until the alert.
 *
 *   health.cycle_1000      s      the first cycle (every agent's chain pulled, verified, mirrored)
 *   health.cycle_1000_rss  MB     peak RSS of the monitor process (the agents run in another process)
 *   health.detect          cycles from killing 100 agents to their alert (unreachable_after = 2)
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { buildEntry, type AuditEntry, type AuditHead } from '../capabilities/audit.js';
import { HealthMonitor } from '../launcher/health/monitor.js';
import { openRuntime } from '../launcher/runtime.js';
import type { BenchFigure } from './run.js';

export const figures = ['health.cycle_1000', 'health.cycle_1000_rss', 'health.detect'];

const N = 1000;
const ENTRIES = 5;
const KILL = 100;

/** The agents: plain JS in a child process; entries come precomputed in a JSON file. */
const AGENTS_JS = `
const http = require('node:http');
const fs = require('node:fs');
const chains = JSON.parse(fs.readFileSync(process.argv[1], 'utf8'));
const servers = [];
let started = 0;
for (const [device, entries] of Object.entries(chains)) {
  const head = entries.length ? { seq: entries[entries.length - 1].seq, hash: entries[entries.length - 1].hash } : null;
  const s = http.createServer((req, res) => {
    let body;
    if (req.url === '/health') {
      const now = new Date().toISOString();
      body = { ok: true, agent: 'meshpilot-agent', protocol: 1, version: '0.1.0', device, os: 'linux', home: '/home/x', uptime_s: 1, time: now,
        manifest: { sha256: null, valid: true }, audit: { seq: head ? head.seq : 0, hash: head ? head.hash : null, chain_ok: true, checked_at: now } };
    } else {
      const u = new URL(req.url, 'http://x');
      const after = Number(u.searchParams.get('after') || 0), limit = Number(u.searchParams.get('limit') || 1000);
      body = { device, head, entries: entries.filter((e) => e.seq > after).slice(0, limit) };
    }
    const text = JSON.stringify(body);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  });
  s.keepAliveTimeout = 120000;
  s.listen(0, '127.0.0.1', () => { servers.push([device, s]); if (++started === Object.keys(chains).length) process.stdout.write(JSON.stringify(servers.map(([d, x]) => [d, x.address().port])) + '\\n'); });
}
require('node:readline').createInterface({ input: process.stdin }).on('line', (line) => {
  const n = Number(line.split(' ')[1]);
  const victims = servers.slice(0, n);
  for (const [, s] of victims) { s.closeAllConnections(); s.close(); }
  process.stdout.write('killed ' + victims.map(([d]) => d).join(',') + '\\n');
});
`;

export async function run(): Promise<BenchFigure[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-health-'));
  const chains: Record<string, AuditEntry[]> = {};
  for (let i = 0; i < N; i++) {
    const device = `sim-${String(i).padStart(4, '0')}`;
    const list: AuditEntry[] = [];
    let prev: AuditHead | undefined;
    for (let k = 0; k < ENTRIES; k++) {
      const e = buildEntry({ device, actor: '@op:example.org', request_id: `r${k}`, capability: 'sys.info', args: {}, decision: 'allowed', outcome: 'ok', exit_code: 0, output_sha256: null, duration_ms: 3, error_code: null, reason: null, context: null }, prev);
      list.push(e);
      prev = { seq: e.seq, hash: e.hash };
    }
    chains[device] = list;
  }
  const chainsFile = path.join(dir, 'chains.json');
  writeFileSync(chainsFile, JSON.stringify(chains));
  const child = spawn(process.execPath, ['-e', AGENTS_JS, chainsFile], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const nextLine = async (): Promise<string> => {
    const r = await lines.next();
    if (r.done) throw new Error('the simulated agents exited');
    return r.value;
  };
  const rt = openRuntime({ root: path.join(dir, 'home') });
  let monitor: HealthMonitor | undefined;
  try {
    const ports = JSON.parse(await nextLine()) as Array<[string, number]>;
    for (const [device, port] of ports) {
      writeFileSync(path.join(rt.home.manifests, `${device}.yaml`), `device: ${device}\nos: linux\ntransport: { kind: mesh, address: 127.0.0.1, port: ${port} }\ncapabilities:\n  sys.info: {}\n`);
    }
    const secret = Buffer.alloc(32, 7);
    monitor = new HealthMonitor({
      db: rt.db, audit: rt.audit, devices: rt.devices, home: rt.home.root, agentSecret: () => secret,
      settings: { schedule: '* * * * *', stale_after_s: 600, unreachable_after: 2, remind_after_s: 21600, digest_min: 5 },
    });
    const t0 = performance.now();
    const first = await monitor.runCycle();
    const cycleS = (performance.now() - t0) / 1000;
    const online = first.devices.filter((d) => d.state === 'online').length;
    const mirrored = first.devices.filter((d) => d.chain?.seq === ENTRIES).length;
    if (online < N || mirrored < N) throw new Error(`first cycle: ${online} online, ${mirrored} chains mirrored of ${N}`);
    const t1 = performance.now();
    await monitor.runCycle();
    const steadyS = (performance.now() - t1) / 1000;
    process.stderr.write(`# health: first cycle ${cycleS.toFixed(2)} s (${N} agents, ${N * ENTRIES} entries mirrored), steady-state cycle ${steadyS.toFixed(2)} s\n`);

    child.stdin!.write(`kill ${KILL}\n`);
    const killed = new Set((await nextLine()).replace(/^killed /, '').split(','));
    let cycles = 0;
    let alerted = 0;
    while (cycles < 10 && alerted < KILL) {
      cycles++;
      const r = await monitor.runCycle();
      alerted += r.transitions.filter((t) => t.kind === 'alert' && killed.has(t.device)).length;
    }
    if (alerted < KILL) throw new Error(`only ${alerted} of ${KILL} killed agents alerted after ${cycles} cycles`);
    const rssMb = process.resourceUsage().maxRSS / 1024;
    return [
      { name: 'health.cycle_1000', value: cycleS, unit: 's', target: '<= 10' },
      { name: 'health.cycle_1000_rss', value: rssMb, unit: 'MB' },
      { name: 'health.detect', value: cycles, unit: 'cycles', target: '<= 2' },
    ];
  } finally {
    await monitor?.stop();
    child.kill('SIGKILL');
    await rt.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
