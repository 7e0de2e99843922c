/**
 * WireGuard handshake ages from real `wg show <if> dump` output of wireguard-go interfaces in network
 * namespaces (test/fixtures/wg-netns.ts), through the monitor with a controllable clock.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HealthMonitor, type HealthSettings } from '../launcher/health/monitor.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { parseWgDump, peerForAddress } from '../launcher/wg.js';
import { createWgMesh, wgAvailable, type WgMesh } from './fixtures/wg-netns.js';

const avail = wgAvailable();
if (!avail.ok && process.env['CI']) throw new Error(`WireGuard tests need: ${avail.reason}`);

describe('parseWgDump (synthetic edge cases)', () => {
  it('never keeps the private key or preshared keys, and rejects what is not a dump without quoting it', () => {
    const [priv, pub, peer, psk] = [0, 1, 2, 3].map(() => randomBytes(32).toString('base64')) as [string, string, string, string];
    const d = parseWgDump(`${priv}\t${pub}\t51820\toff\n${peer}\t${psk}\t10.0.0.2:51820\t10.88.0.2/32\t1700000000\t10\t20\t25\n`);
    expect(d.publicKey).toBe(pub);
    expect(d.peers).toEqual([{ publicKey: peer, endpoint: '10.0.0.2:51820', allowedIps: ['10.88.0.2/32'], latestHandshake: 1700000000, rxBytes: 10, txBytes: 20, keepalive: 25 }]);
    expect(JSON.stringify(d)).not.toContain(priv);
    expect(JSON.stringify(d)).not.toContain(psk);
    let msg = '';
    try { parseWgDump(`${priv}\tgarbage\n`); } catch (e) { msg = (e as Error).message; }
    expect(msg).toMatch(/not an interface line/);
    expect(msg).not.toContain(priv);
  });
});

describe.runIf(avail.ok)('WireGuard hub signal (wireguard-go in namespaces)', () => {
  let mesh: WgMesh;
  let root: string;
  let rt: Runtime;
  let monitor: HealthMonitor;
  let clock = Date.now();
  const sent: string[] = [];
  const settings: HealthSettings = { schedule: '* * * * *', stale_after_s: 30, unreachable_after: 20, remind_after_s: 3600, digest_min: 5 };
  const dump = async () => mesh.exec(0, 'wg', ['show', mesh.nodes[0]!.wg, 'dump']);
  /** Sends one UDP packet through the tunnel (it starts a handshake) and waits until the hub records a newer one. */
  const ping = async (): Promise<void> => {
    const before = mesh.lastHandshake(0, 1);
    const script = `require('node:dgram').createSocket('udp4').send('x', 9, ${JSON.stringify(mesh.nodes[1]!.wgIp)}, () => process.exit(0))`;
    const deadline = Date.now() + 15_000;
    for (;;) {
      mesh.exec(0, process.execPath, ['-e', script]);
      await new Promise((r) => setTimeout(r, 200));
      const now = mesh.lastHandshake(0, 1);
      if (now !== null && (before === null || now < before)) return;
      if (Date.now() > deadline) throw new Error('no handshake');
    }
  };

  beforeAll(async () => {
    mesh = await createWgMesh({ nodes: 2 });
    root = mkdtempSync(path.join(os.tmpdir(), 'mp-health-wg-'));
    rt = openRuntime({ root });
    // The device behind node 1; its agent is not reachable from here (only the handshake signal counts).
    writeFileSync(path.join(rt.home.manifests, 'aurgi-pc.yaml'), `device: aurgi-pc\nos: linux\ntransport: { kind: mesh, address: ${mesh.nodes[1]!.wgIp}, port: 7420 }\ncapabilities:\n  sys.info: {}\n`);
    monitor = new HealthMonitor({
      db: rt.db, audit: rt.audit, devices: { list: () => rt.devices.list().filter((l) => l.device === 'aurgi-pc') }, settings, home: root,
      now: () => clock, wgDump: dump, send: async (t) => { sent.push(t); }, agentTimeoutMs: 200,
    });
  }, 60_000);

  afterAll(async () => {
    await monitor?.stop();
    await rt?.close();
    await mesh?.teardown();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('parses the live dump: the peer of node 1 by its mesh address, no private key kept', async () => {
    const before = parseWgDump(await dump());
    expect(peerForAddress(before, mesh.nodes[1]!.wgIp)?.latestHandshake).toBe(0);
    await ping();
    const text = await dump();
    const d = parseWgDump(text);
    const priv = text.split('\n')[0]!.split('\t')[0]!;
    expect(priv).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    expect(JSON.stringify(d)).not.toContain(priv);
    expect(d.publicKey).toBe(mesh.nodes[0]!.publicKey);
    const p = peerForAddress(d, mesh.nodes[1]!.wgIp)!;
    expect(p.publicKey).toBe(mesh.nodes[1]!.publicKey);
    expect(p.endpoint).toBe(`${mesh.nodes[1]!.vethIp}:${mesh.nodes[1]!.listenPort}`);
    expect(Math.abs(Date.now() / 1000 - p.latestHandshake)).toBeLessThan(10);
    expect(p.rxBytes).toBeGreaterThan(0);
  }, 30_000);

  it('a handshake ageing past stale_after_s gives one stale alert, a new handshake one recovery; past 24 h it is offline', async () => {
    const t0 = peerForAddress(parseWgDump(await dump()), mesh.nodes[1]!.wgIp)!.latestHandshake;
    clock = t0 * 1000 + 1000;
    expect((await monitor.runCycle()).devices[0]).toMatchObject({ state: 'online', lastHandshake: t0 });
    clock = (t0 + 31) * 1000;
    expect((await monitor.runCycle()).devices[0]).toMatchObject({ state: 'stale', detail: 'handshake 31s ago' });
    clock = (t0 + 32) * 1000;
    await monitor.runCycle();
    expect(sent).toEqual(['[ALERT] device_id=aurgi-pc status=stale (handshake 31s ago)']);

    // A fresh handshake: drop and re-add the peer on the hub, then send traffic.
    while (Date.now() / 1000 < t0 + 5) await new Promise((r) => setTimeout(r, 200));
    const n0 = mesh.nodes[0]!;
    const n1 = mesh.nodes[1]!;
    mesh.exec(0, 'wg', ['set', n0.wg, 'peer', n1.publicKey, 'remove']);
    mesh.exec(0, 'wg', ['set', n0.wg, 'peer', n1.publicKey, 'allowed-ips', `${n1.wgIp}/32`, 'endpoint', `${n1.vethIp}:${n1.listenPort}`]);
    await ping();
    const t2 = peerForAddress(parseWgDump(await dump()), n1.wgIp)!.latestHandshake;
    expect(t2).toBeGreaterThanOrEqual(t0 + 5);
    clock = (t0 + 33) * 1000;
    expect((await monitor.runCycle()).devices[0]).toMatchObject({ state: 'online', lastHandshake: t2 });
    expect(sent).toEqual(['[ALERT] device_id=aurgi-pc status=stale (handshake 31s ago)', '[RECOVERED] device_id=aurgi-pc status=online (was stale 0 min)']);

    clock = (t2 + 24 * 3600 + 1) * 1000;
    const r = await monitor.runCycle();
    expect(r.devices[0]).toMatchObject({ state: 'offline', detail: 'handshake 24h ago' });
    expect(sent.at(-1)).toBe('[ALERT] device_id=aurgi-pc status=offline (handshake 24h ago)');
  }, 60_000);
});
