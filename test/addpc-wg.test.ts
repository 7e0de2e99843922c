/**
 * add-pc --via wg end to end on real hosts: network namespaces with their own sshd, a wireguard-go
 * hub, the homeserver fixture, the real launcher/supervisor and device bot (test/fixtures/netns-lab.ts).
 * Happy path (the bot answers !status over the new mesh link), a fault at every step leaving exactly
 * nothing behind, kill -9 mid-run then resume, re-run idempotency (and agent restart), revoke.
 */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ifaceFor } from '../launcher/enroll/mesh.js';
import { createLab, labAvailable, type Lab } from './fixtures/netns-lab.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';

const avail = labAvailable();
let lab: Lab;
let phone: PhoneHandle;

function addPc(name: string, target = 0, extra: string[] = [], env: Record<string, string> = {}) {
  const t = lab.targets[target]!;
  return lab.runCli(['add-pc', name, '--via', 'wg', '--ssh', t.spec, '--ssh-key', t.key, '--accept-host-key', t.sshd.hostKeyFingerprint, '--json', ...extra], env);
}

function row(name: string): { status: string; data: string } | undefined {
  const db = new Database(path.join(lab.home, 'meshpilot.db'), { readonly: true });
  try {
    return db.prepare('SELECT status, data FROM enrollments WHERE device = ?').get(name) as { status: string; data: string } | undefined;
  } finally {
    db.close();
  }
}

function ipRow(name: string): unknown {
  const db = new Database(path.join(lab.home, 'meshpilot.db'), { readonly: true });
  try {
    return db.prepare('SELECT ip FROM mesh_ips WHERE device = ?').get(name);
  } finally {
    db.close();
  }
}

/** Every item of "clean": no hub peer, no active Matrix user, no registry entry, nothing on the target, IP freed, no keys. */
async function expectClean(name: string, target = 0): Promise<void> {
  const t = lab.targets[target]!;
  const iface = ifaceFor(name);
  const hubPeers = lab.nsExec(lab.hubNs, 'wg', ['show', lab.hubIface, 'allowed-ips']);
  const data = JSON.parse(row(name)?.data ?? '{}') as { publicKey?: string; ip?: string };
  if (data.publicKey) expect(hubPeers).not.toContain(data.publicKey);
  if (data.ip) expect(hubPeers).not.toContain(`${data.ip}/32`);
  expect(readFileSync(lab.hubConf, 'utf8')).not.toContain(`meshpilot:${name} `);
  const u = await lab.matrixUser(name);
  expect(!u.exists || u.deactivated === true).toBe(true);
  expect(existsSync(path.join(lab.home, 'manifests', `${name}.yaml`))).toBe(false);
  expect(existsSync(path.join(lab.dir, 'agents', name))).toBe(false);
  expect(existsSync(path.join(lab.dir, 'wg', `${iface}.conf`))).toBe(false);
  expect(lab.nsExec(t.ns, 'ip', ['link', 'show', iface], true)).toBe('');
  expect(lab.nsExec(t.ns, 'sh', ['-c', `ps -eo args | grep -F ${path.join(lab.dir, 'agents', name)} | grep -v grep || true`])).toBe('');
  expect(ipRow(name)).toBeUndefined();
  expect(existsSync(path.join(lab.home, 'keys', name))).toBe(false);
}

const fromBot = (name: string) => (e: ClientEvent): boolean => e.sender === `@${lab.botPrefix}${name}:${lab.hs.serverName}` && e.type === 'm.room.message';

beforeAll(async () => {
  if (!avail.ok) return;
  lab = await createLab({ targets: 2 });
  await lab.startLauncher();
  phone = await startPhone(lab.hs, lab.operator, { crypto: true });
}, 90_000);

afterAll(async () => {
  phone?.stop();
  await lab?.teardown();
}, 60_000);

describe.skipIf(!avail.ok)('add-pc --via wg', () => {
  it('enrolls a device end to end: live message, then !status answered over the new mesh link', async () => {
    const r = await addPc('wgpc');
    const result = r.events.find((e) => e.type === 'result');
    expect(r.stderr).toBe('');
    expect(result).toMatchObject({ ok: true, status: 'live', exit: 0 });
    expect(String(result?.['message'])).toBe(`✓ wgpc live. DM @${lab.botPrefix}wgpc from your Matrix client.`);
    expect(r.code).toBe(0);
    const steps = r.events.filter((e) => e.type === 'step' && e.status === 'done').map((e) => e.step);
    expect(steps).toEqual(['preflight', 'keys', 'ip', 'hub', 'target', 'agent', 'health', 'matrix', 'register']);
    const manifest = readFileSync(path.join(lab.home, 'manifests', 'wgpc.yaml'), 'utf8');
    expect(manifest).toMatch(/transport: \{ kind: mesh, address: 10\.98\.0\.\d+, port: 7420 \}/);
    // Secrets: 0600 files, never in the event stream.
    const key = readFileSync(path.join(lab.home, 'keys', 'wgpc', 'wg.key'), 'utf8').trim();
    expect(r.stdout).not.toContain(key);
    // The phone gets the DM, sends !status, the bot answers through the agent over WireGuard.
    const live = await phone.waitFor((e) => fromBot('wgpc')(e) && /✓ wgpc live/.test(bodyOf(e)), 20_000);
    await phone.waitFor((e) => e.type === 'm.room.member' && e.state_key === lab.operator.userId && e.room_id === live.room_id && (e.content as { membership?: string }).membership === 'join');
    const idx = phone.events.length;
    await phone.client.sendTextMessage(live.room_id, '!status');
    const reply = await phone.waitFor((e) => fromBot('wgpc')(e) && phone.events.indexOf(e) >= idx && /🖥 wgpc/.test(bodyOf(e)), 20_000);
    expect(bodyOf(reply)).toMatch(/🧾/);
    expect(bodyOf(reply)).not.toMatch(/unreachable|failed/);
    // The agent on the device audited it (its own JSONL chain).
    const deviceAudit = readFileSync(path.join(lab.dir, 'agents', 'wgpc', 'audit.jsonl'), 'utf8');
    expect(deviceAudit).toContain('"capability":"sys.info"');
    expect(lab.nsExec(lab.hubNs, 'wg', ['show', lab.hubIface, 'latest-handshakes'])).toMatch(/\t1\d{9}/);
  }, 90_000);

  it('re-running is a no-op that verifies; with the agent killed it restarts it', async () => {
    const again = await addPc('wgpc');
    expect(again.code).toBe(0);
    const skipped = again.events.filter((e) => e.type === 'step' && e.status === 'skipped').map((e) => e.step);
    expect(skipped).toEqual(['keys', 'ip', 'hub', 'target', 'agent', 'health', 'matrix', 'register']);
    // Kill the agent and its supervisor.
    const pid = readFileSync(path.join(lab.dir, 'agents', 'wgpc', 'agent.pid'), 'utf8').trim();
    lab.nsExec(lab.targets[0]!.ns, '/bin/kill', ['-9', '--', `-${pid}`]);
    await new Promise((r) => setTimeout(r, 300));
    const repaired = await addPc('wgpc');
    expect(repaired.code).toBe(0);
    expect(repaired.events.find((e) => e.type === 'step' && e.step === 'agent')?.['status']).toBe('running');
    expect(repaired.events.filter((e) => e.type === 'step' && e.step === 'agent').map((e) => e.status)).toEqual(['running', 'done']);
    expect(repaired.events.find((e) => e.type === 'result')).toMatchObject({ ok: true, status: 'live' });
  }, 60_000);

  const faults: Array<{ step: string; how: string; env?: Record<string, string>; before?: () => Promise<void>; after?: () => Promise<void>; code?: RegExp }> = [
    { step: 'keys', how: 'fail:keys', env: { MESHPILOT_ENROLL_FAULT: 'fail:keys' } },
    { step: 'ip', how: 'fail:ip', env: { MESHPILOT_ENROLL_FAULT: 'fail:ip' } },
    { step: 'hub', how: 'hub unreachable', before: async () => { await lab.hubSshd.kill(); }, after: async () => { await lab.hubSshd.restart(); }, code: /unreachable|cannot reach/ },
    { step: 'target', how: 'fail:target', env: { MESHPILOT_ENROLL_FAULT: 'fail:target' } },
    { step: 'agent', how: 'corrupted upload', env: { MESHPILOT_ENROLL_FAULT: 'corrupt-upload' }, code: /corrupted/ },
    { step: 'health', how: 'fail:health', env: { MESHPILOT_ENROLL_FAULT: 'fail:health' } },
    { step: 'matrix', how: 'Matrix down', before: async () => { lab.hs.setDown(true); }, after: async () => { lab.hs.setDown(false); } },
    { step: 'register', how: 'fail:register', env: { MESHPILOT_ENROLL_FAULT: 'fail:register' } },
  ];
  for (const [i, f] of faults.entries()) {
    it(`a fault at step ${f.step} (${f.how}) leaves nothing behind`, async () => {
      const name = `flt${i}`;
      await f.before?.();
      let r;
      try {
        r = await addPc(name, 1, [], f.env ?? {});
      } finally {
        await f.after?.();
      }
      const failed = r.events.find((e) => e.type === 'step' && e.status === 'failed');
      expect(failed?.['step']).toBe(f.step);
      if (f.code) expect(JSON.stringify(failed?.['error'])).toMatch(f.code);
      const result = r.events.find((e) => e.type === 'result');
      expect(result).toMatchObject({ ok: false, status: 'rolled_back', exit: 1 });
      expect(r.code).toBe(1);
      // It reports what it undid, in reverse order.
      const undone = r.events.filter((e) => e.type === 'undo').map((e) => [e.step, e.status]);
      expect(undone.every(([, s]) => s === 'done')).toBe(true);
      expect(undone.map(([s]) => s)[0]).toBe(f.step);
      expect(row(name)?.status).toBe('rolled_back');
      await expectClean(name, 1);
    }, 60_000);
  }

  it('kill -9 in the middle, then the next add-pc resumes and finishes', async () => {
    const t = lab.targets[1]!;
    const child = lab.spawnCli(['add-pc', 'k9pc', '--via', 'wg', '--ssh', t.spec, '--ssh-key', t.key, '--accept-host-key', t.sshd.hostKeyFingerprint, '--json']);
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error('never reached the agent step')), 40_000);
      child.stdout?.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('"step":"agent","title":"installing and starting the agent","status":"running"')) {
          clearTimeout(timer);
          child.kill('SIGKILL');
          resolve();
        }
      });
    });
    await new Promise((r) => child.once('close', r));
    expect(row('k9pc')?.status).toBe('running');
    const r = await addPc('k9pc', 1);
    expect(r.events.some((e) => e.type === 'info' && /resuming the interrupted enrollment of k9pc/.test(String(e['message'])))).toBe(true);
    expect(r.events.find((e) => e.type === 'start')?.['mode']).toBe('resume');
    expect(r.events.find((e) => e.type === 'result')).toMatchObject({ ok: true, status: 'live' });
    expect(r.code).toBe(0);
    // Steps done before the kill were checked, not redone.
    expect(r.events.filter((e) => e.type === 'step' && e.status === 'skipped').map((e) => e.step)).toEqual(expect.arrayContaining(['keys', 'ip', 'hub', 'target']));
  }, 90_000);

  it('revoke leaves no trace (and archives manifest and keys), and is idempotent', async () => {
    for (const [name, target] of [['wgpc', 0], ['k9pc', 1]] as const) {
      const r = await lab.runCli(['revoke', name, '--yes', '--json']);
      expect(r.events.find((e) => e.type === 'result')).toMatchObject({ ok: true, status: 'revoked', exit: 0 });
      expect(r.code).toBe(0);
      await expectClean(name, target);
      const message = String(r.events.find((e) => e.type === 'result')?.['message']);
      const archived = /archived in (\S+)$/.exec(message)?.[1];
      expect(archived, message).toBeDefined();
      expect(archived && existsSync(path.join(archived, 'manifest.yaml'))).toBe(true);
      expect(archived && existsSync(path.join(archived, 'keys', 'wg.key'))).toBe(true);
    }
    const again = await lab.runCli(['revoke', 'wgpc', '--yes', '--json']);
    expect(again.code).toBe(0);
    expect(String(again.events.find((e) => e.type === 'result')?.['message'])).toMatch(/nothing to revoke/);
    const db = new Database(path.join(lab.home, 'meshpilot.db'), { readonly: true });
    const audits = db.prepare("SELECT COUNT(*) AS n FROM audit WHERE device = 'wgpc' AND body LIKE '%device.revoke%'").get() as { n: number } | undefined;
    db.close();
    expect(audits?.n).toBe(1);
  }, 60_000);
});
