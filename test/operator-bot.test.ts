/**
 * The operator room end to end: the test homeserver (real Synapse behind a fault proxy when
 * MESHPILOT_TEST_HOMESERVER is set, else the fixture), the operator's phone (matrix-js-sdk), the
 * operator bot registered through the shared secret, a loopback agent; commands, non-operators, and
 * alerts that survive a homeserver outage (outbox, in order, marked late).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startOperatorServices, type OperatorServices } from '../launcher/operator-room.js';
import { ConfigSchema } from '../capabilities/config.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { freePort } from './fixtures/agent-proc.js';
import { uniqueBotNames } from './helpers/bot-env.js';
import { startTestHomeserver, type ClientEvent, type RegisteredUser, type TestHomeserver } from './helpers/test-homeserver.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';

let hs: TestHomeserver;
let operator: RegisteredUser;
let phone: PhoneHandle;
let root: string;
let rt: Runtime;
let svc: OperatorServices;
let agentPort: number;
let agent: Server | undefined;
let clock = Date.now();
const revoked: string[] = [];

function startFakeAgent(): Promise<Server> {
  return new Promise((resolve) => {
    const s = createServer((req, res) => {
      const body = req.url?.startsWith('/health')
        ? { ok: true, agent: 'meshpilot-agent', protocol: 1, version: '0.1.0', device: 'aurgi-pc', os: 'linux', home: '/home/a', uptime_s: 5, time: new Date().toISOString(), manifest: { sha256: null, valid: true }, audit: { seq: 0, hash: null, chain_ok: true, checked_at: new Date().toISOString() } }
        : { device: 'aurgi-pc', head: null, entries: [] };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    });
    s.keepAliveTimeout = 100;
    s.listen(agentPort, '127.0.0.1', () => resolve(s));
  });
}

async function stopFakeAgent(): Promise<void> {
  const s = agent;
  agent = undefined;
  if (!s) return;
  s.closeAllConnections();
  await new Promise((r) => s.close(r));
}

/** The first bot message (at index `from` or later of what the phone saw) that matches. */
const botSaid = (pred: (text: string) => boolean, from = 0, ms = 15_000): Promise<ClientEvent> =>
  phone.waitFor((e) => e.room_id === svc.roomId && e.sender === svc.userId && e.type === 'm.room.message' && pred(bodyOf(e)) && phone.events.indexOf(e) >= from, ms);

async function command(text: string, expectReply: (t: string) => boolean): Promise<string> {
  const from = phone.events.length;
  await phone.client.sendTextMessage(svc.roomId, text);
  return bodyOf(await botSaid(expectReply, from));
}

beforeAll(async () => {
  hs = await startTestHomeserver();
  operator = await hs.registerUser('lucas', 'pw-lucas');
  phone = await startPhone(hs, operator);
  root = mkdtempSync(path.join(os.tmpdir(), 'mp-opbot-'));
  rt = openRuntime({ root });
  agentPort = await freePort();
  writeFileSync(path.join(rt.home.manifests, 'aurgi-pc.yaml'), `device: aurgi-pc\nos: linux\ntransport: { kind: mesh, address: 127.0.0.1, port: ${agentPort} }\ncapabilities:\n  sys.info: {}\n`);
  agent = await startFakeAgent();
  const config = ConfigSchema.parse({
    // Commands and the outbox here; test/operator-room.e2e.test.ts runs the room encrypted.
    matrix: { homeserver_url: hs.url, server_name: hs.serverName, registration_shared_secret: hs.registrationSharedSecret, encryption: 'off', ...uniqueBotNames(hs) },
    operators: [operator.userId],
  });
  svc = await startOperatorServices({
    runtime: rt, config, now: () => clock, noSchedule: true,
    supervisor: { status: () => [{ device: 'aurgi-pc', state: 'running' }, { device: 'local', state: 'running' }] },
    revoke: async (device) => { revoked.push(device); return `${device} revoked: keys removed, bot stopped`; },
    addPc: async (args, { progress }) => {
      await progress(`add-pc ${args.join(' ')}: 1/2 generating keys`);
      await progress('add-pc: 2/2 writing the manifest');
      return 'add-pc: done';
    },
    monitorOverrides: { agentSecret: () => Buffer.alloc(32, 1), agentTimeoutMs: 1000 },
  });
  // The operator is invited on creation; the phone accepts.
  await hs.waitFor((e) => e.room_id === svc.roomId && e.type === 'm.room.member' && e.state_key === operator.userId && e.content['membership'] === 'join', 15_000);
}, 60_000);

afterAll(async () => {
  await svc?.stop();
  await stopFakeAgent();
  phone?.stop();
  await rt?.close();
  await hs?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('operator room', () => {
  it('is created by the launcher with the default bot user, and its id is kept for the next run', () => {
    expect(svc.userId).toBe(`@${uniqueBotNames(hs).operator_bot ?? 'meshpilot'}:${hs.serverName}`);
    const stored = rt.db.prepare("SELECT value FROM meta WHERE key = 'operator_room'").get() as { value: string };
    expect(stored.value).toBe(svc.roomId);
  });

  it('!devices lists every device with state, transport, mesh IP, handshake, last command and chain', async () => {
    await svc.monitor.runCycle();
    const t = await command('!devices', (b) => b.startsWith('DEVICE'));
    const lines = t.split('\n');
    expect(lines[0]).toMatch(/^DEVICE\s+STATE\s+TRANSPORT\s+MESH IP\s+HANDSHAKE\s+LAST COMMAND\s+CHAIN$/);
    expect(lines.find((l) => l.startsWith('aurgi-pc'))).toMatch(/^aurgi-pc\s+online\s+mesh\s+127\.0\.0\.1\s+-\s+-\s+ok #0$/);
    expect(lines.find((l) => l.startsWith('local'))).toMatch(/^local\s+online\s+local\s+-/);
  });

  it('!health [device] and !audit <device> answer', async () => {
    const all = await command('!health', (b) => /^\d+ devices: /.test(b));
    expect(all).toMatch(/^2 devices: 2 online/);
    const one = await command('!health aurgi-pc', (b) => b.startsWith('aurgi-pc: '));
    expect(one).toContain('aurgi-pc: online');
    expect(one).toContain('agent: ok (v0.1.0)');
    expect(one).toContain('bot: running');
    const audit = await command('!audit aurgi-pc 5', (b) => b.includes('agent chain'));
    expect(audit).toBe('agent chain: verified up to #0 (mirrored as aurgi-pc@agent)');
    const bad = await command('!audit', (b) => b.startsWith('Usage'));
    expect(bad).toBe('Usage: !audit <device> [n]');
  });

  it('!revoke asks for confirmation, then calls the injected revoke', async () => {
    const ask = await command('!revoke aurgi-pc', (b) => b.startsWith('Revoking'));
    expect(ask).toContain('!revoke aurgi-pc confirm');
    expect(revoked).toEqual([]);
    const done = await command('!revoke aurgi-pc confirm', (b) => b.includes('revoked'));
    expect(done).toBe('aurgi-pc revoked: keys removed, bot stopped');
    expect(revoked).toEqual(['aurgi-pc']);
    expect((await svc.monitor.runCycle()).devices.find((d) => d.device === 'aurgi-pc')?.state).toBe('revoked');
    svc.monitor.markRevoked('aurgi-pc', false);
    const again = await command('!revoke aurgi-pc confirm', (b) => b.startsWith('Nothing to confirm'));
    expect(again).toBe('Nothing to confirm: send `!revoke aurgi-pc` first.');
  });

  it('!add-pc streams the progress lines of the injected flow, in order', async () => {
    await phone.client.sendTextMessage(svc.roomId, '!add-pc office-pc --ssh root@10.0.0.9');
    const done = await botSaid((b) => b === 'add-pc: done');
    const texts = phone.events.filter((e) => e.room_id === svc.roomId && e.sender === svc.userId && bodyOf(e).startsWith('add-pc')).map(bodyOf);
    expect(texts).toEqual(['add-pc office-pc --ssh root@10.0.0.9: 1/2 generating keys', 'add-pc: 2/2 writing the manifest', 'add-pc: done']);
    expect(done).toBeDefined();
  });

  it('ignores commands from someone who is not an operator', async () => {
    const before = (await hs.events(svc.roomId)).length;
    await svc.bot.onMessage({ roomId: svc.roomId, sender: `@mallory:${hs.serverName}`, body: '!devices' });
    await new Promise((r) => setTimeout(r, 300));
    expect((await hs.events(svc.roomId)).length).toBe(before);
  });
});

describe('alerts while the homeserver is down', () => {
  it('are kept in the outbox and delivered in order when it is back, marked late', async () => {
    await svc.monitor.runCycle(); // aurgi-pc online again after the lifted revocation
    await stopFakeAgent();
    hs.setDown(true);
    clock += 60_000;
    await svc.monitor.runCycle();
    clock += 60_000;
    const down = await svc.monitor.runCycle();
    expect(down.queued).toEqual(['[ALERT] device_id=aurgi-pc status=unreachable (agent: connection refused, 2 failures)']);
    agent = await startFakeAgent();
    clock += 12 * 60_000;
    const back = await svc.monitor.runCycle();
    expect(back.queued).toEqual(['[RECOVERED] device_id=aurgi-pc status=online (was unreachable 12 min)']);
    expect(svc.monitor.pending().map((p) => p.text)).toEqual([...down.queued, ...back.queued]);

    hs.setDown(false);
    await svc.monitor.flush();
    expect(svc.monitor.pending()).toEqual([]);
    const alert = await botSaid((b) => b.startsWith('[ALERT] device_id=aurgi-pc status=unreachable'));
    const rec = await botSaid((b) => b.startsWith('[RECOVERED] device_id=aurgi-pc'));
    expect(bodyOf(alert)).toBe('[ALERT] device_id=aurgi-pc status=unreachable (agent: connection refused, 2 failures) (late: 12 min)');
    expect(bodyOf(rec)).toBe('[RECOVERED] device_id=aurgi-pc status=online (was unreachable 12 min)');
    expect(alert.origin_server_ts).toBeLessThanOrEqual(rec.origin_server_ts);
    const order = (await hs.events(svc.roomId)).map((e) => e.event_id);
    expect(order.indexOf(alert.event_id)).toBeLessThan(order.indexOf(rec.event_id));
  }, 60_000);
});
