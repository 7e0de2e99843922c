/**
 * The health monitor against real agent processes on 127.0.0.1 (kill / restart / audit tampering),
 * and 50 loopback agents that flap together (one digest), with a controllable clock.
 */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalJson, entryHash, readJsonlEntries, type AuditHead } from '../capabilities/audit.js';
import type { AnchorSource } from '../launcher/health/chains.js';
import { HealthMonitor, type HealthSettings } from '../launcher/health/monitor.js';
import { mirrorKey } from '../launcher/health/state.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { freePort, rawRequest, startAgentProcess, writeAgentFiles, type AgentFiles, type AgentProcess } from './fixtures/agent-proc.js';

const DEVICE = 'aurgi-pc';
const SETTINGS: HealthSettings = { schedule: '* * * * *', stale_after_s: 600, unreachable_after: 2, remind_after_s: 3600, digest_min: 5 };

let root: string;
let files: AgentFiles;
let agent: AgentProcess | undefined;
let rt: Runtime;
let clock = Date.now();
const sent: string[] = [];
const anchored = new Map<string, AuditHead[]>();
const anchors: AnchorSource = {
  agentAnchors: async (devices) => new Map(devices.filter((d) => anchored.has(d)).map((d) => [d, anchored.get(d)!])),
  anchor: async (device, head) => { anchored.set(device, [head]); },
};
let monitor: HealthMonitor;

function manifest(port: number): string {
  return `device: ${DEVICE}\nos: linux\ntransport: { kind: mesh, address: 127.0.0.1, port: ${port} }\ncapabilities:\n  sys.info: {}\n`;
}

async function invokeOnAgent(): Promise<void> {
  const body = JSON.stringify({ capability: 'sys.info', args: {}, actor: '@op:example.org', request_id: `t-${randomBytes(4).toString('hex')}` });
  const r = await rawRequest(`http://127.0.0.1:${files.port}`, { method: 'POST', path: '/v1/invoke', body, secret: files.secret, device: DEVICE });
  expect(r.status).toBe(200);
}

const cycle = async (advanceMs = 60_000) => { clock += advanceMs; return monitor.runCycle(); };
const stateOf = (r: Awaited<ReturnType<HealthMonitor['runCycle']>>, d = DEVICE) => r.devices.find((x) => x.device === d);

beforeAll(async () => {
  root = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'mp-health-')));
  const port = await freePort();
  files = writeAgentFiles({ device: DEVICE, address: '127.0.0.1', port, root, manifest: manifest(port) });
  agent = await startAgentProcess(files, { mode: 'sources' });
  for (let i = 0; i < 3; i++) await invokeOnAgent();
  rt = openRuntime({ root: files.home });
  monitor = new HealthMonitor({
    db: rt.db, audit: rt.audit, devices: rt.devices, settings: SETTINGS, home: files.home,
    now: () => clock, send: async (t) => { sent.push(t); }, anchors, agentTimeoutMs: 1500,
  });
}, 60_000);

afterAll(async () => {
  await monitor?.stop();
  await rt?.close();
  await agent?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('agent signal', () => {
  it('a reachable agent is online and its audit chain is mirrored under <device>@agent', async () => {
    const r = await cycle();
    const h = stateOf(r)!;
    expect(h.state).toBe('online');
    expect(h.agent?.ok).toBe(true);
    expect(h.chain).toEqual({ ok: true, seq: 6 });
    expect(rt.audit.head(mirrorKey(DEVICE))?.seq).toBe(6);
    expect(rt.audit.verify(mirrorKey(DEVICE)).ok).toBe(true);
    expect(anchored.get(DEVICE)?.[0]?.seq).toBe(6);
    expect(sent).toEqual([]);
  });

  it('one transient failure raises no alert', async () => {
    await agent!.stop();
    const r1 = await cycle();
    expect(stateOf(r1)?.state).toBe('online');
    expect(stateOf(r1)?.agent).toMatchObject({ ok: false, failures: 1, error: 'connection refused' });
    agent = await startAgentProcess(files, { mode: 'sources' });
    const r2 = await cycle();
    expect(stateOf(r2)?.state).toBe('online');
    expect(stateOf(r2)?.agent?.failures).toBe(0);
    expect(sent).toEqual([]);
  }, 60_000);

  it('a killed agent is unreachable after the failure threshold (one alert), and recovers when restarted', async () => {
    agent!.child.kill('SIGKILL');
    await new Promise((r) => agent!.child.once('exit', r));
    await cycle();
    expect(sent).toEqual([]);
    const r = await cycle();
    expect(stateOf(r)?.state).toBe('unreachable');
    expect(sent).toEqual([`[ALERT] device_id=${DEVICE} status=unreachable (agent: connection refused, 2 failures)`]);
    await cycle();
    expect(sent).toHaveLength(1); // no repeat every cycle
    agent = await startAgentProcess(files, { mode: 'sources' });
    const back = await cycle();
    expect(stateOf(back)?.state).toBe('online');
    expect(sent[1]).toBe(`[RECOVERED] device_id=${DEVICE} status=online (was unreachable 2 min)`);
    expect(monitor.history(DEVICE).map((e) => e.to).slice(0, 2)).toEqual(['online', 'unreachable']);
  }, 60_000);

  it('a device still down after remind_after_s gets one reminder, not one per cycle', async () => {
    await agent!.stop();
    await cycle();
    await cycle();
    expect(sent.at(-1)).toMatch(/^\[ALERT\] device_id=aurgi-pc status=unreachable/);
    const before = sent.length;
    await cycle(SETTINGS.remind_after_s * 1000);
    expect(sent.slice(before)).toEqual([`[REMINDER] device_id=${DEVICE} status=unreachable (down 60 min: agent: connection refused, 3 failures)`]);
    await cycle();
    expect(sent.length).toBe(before + 1);
    agent = await startAgentProcess(files, { mode: 'sources' });
    await cycle();
    expect(sent.at(-1)).toMatch(/^\[RECOVERED\] device_id=aurgi-pc status=online \(was unreachable 6\d min\)$/);
  }, 60_000);
});

describe('audit integrity', () => {
  it('an entry edited on the device with every later hash recomputed is corrupted, naming the first bad seq', async () => {
    await invokeOnAgent();
    const ok = await cycle();
    expect(stateOf(ok)?.chain).toEqual({ ok: true, seq: 8 });
    const anchoredHead = anchored.get(DEVICE)![0]!;
    expect(anchoredHead.seq).toBe(8);

    // Tamper while the agent is down: entry 3 changed, 3..8 re-hashed so the file verifies on its own.
    await agent!.stop();
    const entries = [...readJsonlEntries(files.auditFile)];
    let prev = entries[1]!.hash;
    const forged = entries.map((e) => {
      if (e.seq < 3) return e;
      const changed = { ...e, actor: e.seq === 3 ? '@someone-else:example.org' : e.actor, prev_hash: prev };
      const hash = entryHash(changed);
      prev = hash;
      return { ...changed, hash };
    });
    writeFileSync(files.auditFile, forged.map((e) => canonicalJson(e)).join('\n') + '\n');
    agent = await startAgentProcess(files, { mode: 'sources' });
    const h = await rawRequest(`http://127.0.0.1:${files.port}`, { method: 'GET', path: '/health' });
    expect((h.json['audit'] as { chain_ok: boolean }).chain_ok).toBe(true); // the agent alone cannot tell

    const before = sent.length;
    const r = await cycle();
    expect(stateOf(r)?.state).toBe('corrupted');
    expect(stateOf(r)?.chain).toMatchObject({ ok: false, badSeq: 3 });
    expect(sent.slice(before)).toHaveLength(1);
    expect(sent.at(-1)).toMatch(/^\[ALERT\] device_id=aurgi-pc status=corrupted \(audit chain: first bad seq 3: /);
    // The mirror keeps the verified entries, not the forged ones.
    expect(rt.audit.get(mirrorKey(DEVICE), 3)?.actor).toBe('@op:example.org');
    await cycle();
    expect(sent.length).toBe(before + 1);
  }, 60_000);

  it('a controller without a mirror detects it from the head anchored in Matrix', async () => {
    // A second controller home: same manifests and secrets, empty database; only the Matrix anchor remembers.
    const home2 = path.join(root, 'home2');
    mkdirSync(home2);
    cpSync(path.join(files.home, 'manifests'), path.join(home2, 'manifests'), { recursive: true });
    cpSync(path.join(files.home, 'keys'), path.join(home2, 'keys'), { recursive: true });
    const rt2 = openRuntime({ root: home2 });
    const sent2: string[] = [];
    const m2 = new HealthMonitor({ db: rt2.db, audit: rt2.audit, devices: rt2.devices, settings: SETTINGS, home: home2, now: () => clock, send: async (t) => { sent2.push(t); }, anchors });
    try {
      expect(anchored.get(DEVICE)?.[0]?.seq).toBe(8);
      const r = await m2.runCycle();
      expect(stateOf(r)?.state).toBe('corrupted');
      expect(stateOf(r)?.detail).toContain('anchored in Matrix');
      expect(sent2).toEqual([expect.stringMatching(/^\[ALERT\] device_id=aurgi-pc status=corrupted \(audit chain: first bad seq 8: entry 8 no longer has the hash anchored in Matrix/)]);
      expect(rt2.audit.head(mirrorKey(DEVICE))).toBeNull(); // nothing unverifiable was mirrored
    } finally {
      await m2.stop();
      await rt2.close();
    }
  }, 60_000);
});

describe('many devices at once', () => {
  const N = 50;
  let root2: string;
  let rt2: Runtime;
  const servers: Server[] = [];
  const ports: number[] = [];
  const sent2: string[] = [];
  let m2: HealthMonitor;
  let clock2 = Date.now();
  const name = (i: number) => `flap-${String(i).padStart(2, '0')}`;

  const serve = (i: number): Promise<Server> => new Promise((resolve) => {
    const s = createServer((req, res) => {
      const device = name(i);
      const body = req.url?.startsWith('/health')
        ? { ok: true, agent: 'meshpilot-agent', protocol: 1, version: '0.1.0', device, os: 'linux', home: '/root', uptime_s: 1, time: new Date().toISOString(), manifest: { sha256: null, valid: true }, audit: { seq: 0, hash: null, chain_ok: true, checked_at: new Date().toISOString() } }
        : { device, head: null, entries: [] };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    });
    s.keepAliveTimeout = 100;
    s.listen(ports[i], '127.0.0.1', () => resolve(s));
  });

  beforeAll(async () => {
    root2 = mkdtempSync(path.join(os.tmpdir(), 'mp-health-flap-'));
    rt2 = openRuntime({ root: root2 });
    for (let i = 0; i < N; i++) {
      ports.push(await freePort());
      writeFileSync(path.join(rt2.home.manifests, `${name(i)}.yaml`), `device: ${name(i)}\nos: linux\ntransport: { kind: mesh, address: 127.0.0.1, port: ${ports[i]} }\ncapabilities:\n  sys.info: {}\n`);
      servers.push(await serve(i));
    }
    m2 = new HealthMonitor({
      db: rt2.db, audit: rt2.audit, devices: rt2.devices, settings: SETTINGS, home: root2, now: () => clock2,
      send: async (t) => { sent2.push(t); }, agentSecret: () => Buffer.alloc(32, 1), agentTimeoutMs: 1000,
    });
  });

  afterAll(async () => {
    await m2?.stop();
    for (const s of servers) { s.closeAllConnections(); s.close(); }
    await rt2?.close();
    rmSync(root2, { recursive: true, force: true });
  });

  it('50 devices going down together give one digest, and one digest when they come back', async () => {
    const first = await m2.runCycle();
    expect(first.devices.filter((d) => d.state === 'online')).toHaveLength(N + 1); // + the enrolled `local`
    expect(sent2).toEqual([]);
    for (const s of servers.splice(0)) { s.closeAllConnections(); await new Promise((r) => s.close(r)); }
    clock2 += 60_000;
    await m2.runCycle();
    expect(sent2).toEqual([]);
    clock2 += 60_000;
    const down = await m2.runCycle();
    expect(down.transitions).toHaveLength(N);
    expect(sent2).toHaveLength(1);
    const lines = sent2[0]!.split('\n');
    expect(lines[0]).toBe(`[DIGEST] ${N} device changes (${N} alerts)`);
    expect(lines.slice(1)).toHaveLength(N);
    expect(lines[1]).toBe('[ALERT] device_id=flap-00 status=unreachable (agent: connection refused, 2 failures)');
    for (let i = 0; i < N; i++) servers.push(await serve(i));
    clock2 += 60_000;
    await m2.runCycle();
    expect(sent2).toHaveLength(2);
    expect(sent2[1]!.split('\n')[0]).toBe(`[DIGEST] ${N} device changes (${N} recovered)`);
    expect(sent2[1]).toContain('[RECOVERED] device_id=flap-49 status=online (was unreachable 1 min)');
  }, 60_000);

  it('ssh devices: a failing authenticated exec makes them unreachable after the threshold', async () => {
    writeFileSync(path.join(rt2.home.manifests, 'ssh-box.yaml'), 'device: ssh-box\nos: linux\ntransport: { kind: ssh, host: 127.0.0.1, port: 1 }\ncapabilities:\n  sys.info: {}\n');
    let fail = true;
    const m3 = new HealthMonitor({
      db: rt2.db, audit: rt2.audit, devices: { list: () => rt2.devices.list().filter((l) => l.device === 'ssh-box') }, settings: SETTINGS, home: root2, now: () => clock2,
      sshPing: async () => { if (fail) throw new Error('ECONNREFUSED'); return 3; },
    });
    try {
      expect((await m3.runCycle()).devices[0]).toMatchObject({ state: 'online', ssh: { ok: false, failures: 1 } });
      expect((await m3.runCycle()).devices[0]).toMatchObject({ state: 'unreachable', detail: 'ssh: ECONNREFUSED, 2 failures' });
      fail = false;
      expect((await m3.runCycle()).devices[0]).toMatchObject({ state: 'online', ssh: { ok: true, ms: 3 } });
      expect(m3.pending().map((p) => p.text)).toEqual([
        '[ALERT] device_id=ssh-box status=unreachable (ssh: ECONNREFUSED, 2 failures)',
        '[RECOVERED] device_id=ssh-box status=online (was unreachable 0 min)',
      ]);
    } finally {
      await m3.stop();
    }
  });
});
