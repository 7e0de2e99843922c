/**
 * add-pc --via ssh (nothing installed on the device) and revoke, end to end on a real host in a
 * network namespace with its own sshd, the homeserver fixture and the real launcher + device bot
 * (test/fixtures/netns-lab.ts). Also: host-key confirmation, usage errors, Matrix down at the
 * Matrix step, re-run idempotency, revoke + re-enroll (the deactivated bot user comes back).
 */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLab, labAvailable, type Lab } from './fixtures/netns-lab.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';

const avail = labAvailable();
let lab: Lab;
let phone: PhoneHandle;

function addPc(name: string, extra: string[] = [], env: Record<string, string> = {}) {
  const t = lab.targets[0]!;
  return lab.runCli(['add-pc', name, '--via', 'ssh', '--ssh', t.spec, '--ssh-key', t.key, '--json', ...extra], env);
}

const result = (r: { events: Array<Record<string, unknown>> }) => r.events.find((e) => e.type === 'result');
const fromBot = (name: string) => (e: ClientEvent): boolean => e.sender === `@${lab.botPrefix}${name}:${lab.hs.serverName}` && e.type === 'm.room.message';

function status(name: string): string | undefined {
  const db = new Database(path.join(lab.home, 'meshpilot.db'), { readonly: true });
  try {
    return (db.prepare('SELECT status FROM enrollments WHERE device = ?').get(name) as { status: string } | undefined)?.status;
  } finally {
    db.close();
  }
}

beforeAll(async () => {
  if (!avail.ok) return;
  lab = await createLab({ targets: 1 });
  await lab.startLauncher();
  phone = await startPhone(lab.hs, lab.operator, { crypto: true });
}, 90_000);

afterAll(async () => {
  phone?.stop();
  await lab?.teardown();
}, 60_000);

describe.skipIf(!avail.ok)('add-pc --via ssh and revoke', () => {
  it('refuses bad names and unknown flags with exit 2, changing nothing', async () => {
    const bad = await addPc('Bad_Name');
    expect(bad.code).toBe(2);
    expect(String(result(bad)?.['message'])).toMatch(/not a valid device name/);
    const noVia = await lab.runCli(['add-pc', 'x1', '--ssh', 'root@10.233.0.10']);
    expect(noVia.code).toBe(2);
    expect(existsSync(path.join(lab.home, 'manifests', 'x1.yaml'))).toBe(false);
  }, 30_000);

  it('an unknown host key stops it (exit 5) until the operator passes the fingerprint; nothing is left', async () => {
    const r = await addPc('sshpc');
    expect(r.code).toBe(5);
    const msg = String(result(r)?.['message']);
    expect(msg).toContain(lab.targets[0]!.sshd.hostKeyFingerprint);
    expect(msg).toMatch(/--accept-host-key/);
    const wrong = await addPc('sshpc', ['--accept-host-key', 'SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA']);
    expect(wrong.code).toBe(5);
    expect(existsSync(path.join(lab.home, 'manifests', 'sshpc.yaml'))).toBe(false);
    expect(readFileSync(path.join(lab.home, 'known_hosts'), 'utf8')).not.toContain(lab.targets[0]!.ip);
    expect((await lab.matrixUser('sshpc')).exists).toBe(false);
  }, 30_000);

  it('--dry-run changes nothing', async () => {
    const r = await addPc('sshpc', ['--dry-run']);
    expect(r.code).toBe(0);
    expect(r.events.filter((e) => e.type === 'step').every((e) => e.status === 'skipped')).toBe(true);
    expect(existsSync(path.join(lab.home, 'manifests', 'sshpc.yaml'))).toBe(false);
    expect(status('sshpc')).not.toBe('live');
  }, 30_000);

  it('enrolls over plain ssh: live, the bot answers !status through the ssh transport, audit on the controller', async () => {
    const t0 = Date.now();
    const r = await addPc('sshpc', ['--accept-host-key', lab.targets[0]!.sshd.hostKeyFingerprint]);
    expect(result(r)).toMatchObject({ ok: true, status: 'live', exit: 0, message: `✓ sshpc live. DM @${lab.botPrefix}sshpc from your Matrix client.` });
    expect(r.code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(30_000);
    const manifest = readFileSync(path.join(lab.home, 'manifests', 'sshpc.yaml'), 'utf8');
    expect((parseYaml(manifest) as { transport: unknown }).transport).toEqual({ kind: 'ssh', host: '10.233.0.10', port: 22, user: 'root', key: lab.targets[0]!.key });
    // Human output (not --json) ends with the live line too: checked through the event message above.
    const live = await phone.waitFor((e) => fromBot('sshpc')(e) && /✓ sshpc live/.test(bodyOf(e)), 20_000);
    await phone.waitFor((e) => e.type === 'm.room.member' && e.state_key === lab.operator.userId && e.room_id === live.room_id && (e.content as { membership?: string }).membership === 'join');
    const idx = phone.events.length;
    await phone.client.sendTextMessage(live.room_id, '!status');
    const reply = await phone.waitFor((e) => fromBot('sshpc')(e) && phone.events.indexOf(e) >= idx && /🖥 sshpc/.test(bodyOf(e)), 20_000);
    expect(bodyOf(reply)).toMatch(/🧾/);
    expect(bodyOf(reply)).not.toMatch(/unreachable|failed/);
    const db = new Database(path.join(lab.home, 'meshpilot.db'), { readonly: true });
    const rows = db.prepare("SELECT body FROM audit WHERE device = 'sshpc'").all() as Array<{ body: string }>;
    db.close();
    expect(rows.some((x) => x.body.includes('sys.info'))).toBe(true);
    expect(rows.some((x) => x.body.includes('device.enroll'))).toBe(true);
  }, 60_000);

  it('re-running for the healthy device is a no-op that verifies', async () => {
    const r = await addPc('sshpc');
    expect(r.code).toBe(0);
    expect(r.events.find((e) => e.type === 'start')?.['mode']).toBe('verify');
    expect(r.events.filter((e) => e.type === 'step' && e.status === 'skipped').map((e) => e.step)).toEqual(['manifest', 'matrix', 'register']);
    const other = await lab.runCli(['add-pc', 'sshpc', '--via', 'wg', '--ssh', lab.targets[0]!.spec, '--json']);
    expect(other.code).toBe(2);
    expect(String(result(other)?.['message'])).toMatch(/already enrolled/);
  }, 30_000);

  it('Matrix down at the Matrix step: rolled back, no manifest, no user, no credentials', async () => {
    lab.hs.setDown(true);
    let r;
    try {
      r = await addPc('mxdown');
    } finally {
      lab.hs.setDown(false);
    }
    expect(r.code).toBe(1);
    expect(r.events.find((e) => e.type === 'step' && e.status === 'failed')?.['step']).toBe('matrix');
    expect(r.events.filter((e) => e.type === 'undo').map((e) => e.step)).toEqual(['matrix', 'manifest', 'preflight']);
    expect(status('mxdown')).toBe('rolled_back');
    expect(existsSync(path.join(lab.home, 'manifests', 'mxdown.yaml'))).toBe(false);
    expect(existsSync(path.join(lab.home, 'keys', 'mxdown'))).toBe(false);
    const u = await lab.matrixUser('mxdown');
    expect(!u.exists || u.deactivated).toBe(true);
  }, 30_000);

  it('revoke asks twice unless --yes; revoke stops the bot, deactivates the user, archives, audits; again is a no-op', async () => {
    const noTty = await lab.runCli(['revoke', 'sshpc', '--json']);
    expect(noTty.code).toBe(2);
    expect(existsSync(path.join(lab.home, 'manifests', 'sshpc.yaml'))).toBe(true);
    const creds = JSON.parse(readFileSync(path.join(lab.home, 'keys', 'sshpc', 'matrix.json'), 'utf8')) as { accessToken: string };
    const r = await lab.runCli(['revoke', 'sshpc', '--yes', '--json']);
    expect(result(r)).toMatchObject({ ok: true, status: 'revoked', exit: 0 });
    expect(existsSync(path.join(lab.home, 'manifests', 'sshpc.yaml'))).toBe(false);
    expect(existsSync(path.join(lab.home, 'keys', 'sshpc'))).toBe(false);
    expect((await lab.matrixUser('sshpc')).deactivated).toBe(true);
    const who = await fetch(`${lab.hs.url}/_matrix/client/v3/account/whoami`, { headers: { authorization: `Bearer ${creds.accessToken}` } });
    expect(who.status).toBe(401);
    const archived = /archived in (\S+)$/.exec(String(result(r)?.['message']))?.[1];
    expect(archived).toBeDefined();
    expect(readFileSync(path.join(archived!, 'manifest.yaml'), 'utf8')).toMatch(/kind: ssh/);
    expect(existsSync(path.join(archived!, 'keys', 'matrix.json'))).toBe(true);
    expect(status('sshpc')).toBe('revoked');
    const db = new Database(path.join(lab.home, 'meshpilot.db'), { readonly: true });
    const n = (db.prepare("SELECT COUNT(*) AS n FROM audit WHERE device = 'sshpc' AND body LIKE '%device.revoke%'").get() as { n: number }).n;
    db.close();
    expect(n).toBe(1);
    const again = await lab.runCli(['revoke', 'sshpc', '--yes', '--json']);
    expect(again.code).toBe(0);
    expect(String(result(again)?.['message'])).toMatch(/nothing to revoke/);
  }, 60_000);

  it('a revoked name can be enrolled again (its Matrix user is reactivated) and says live', async () => {
    const r = await addPc('sshpc', ['--accept-host-key', lab.targets[0]!.sshd.hostKeyFingerprint]);
    expect(result(r)).toMatchObject({ ok: true, status: 'live' });
    expect(r.events.some((e) => e.type === 'info' && /reactivated/.test(String(e['message'])))).toBe(true);
    expect((await lab.matrixUser('sshpc')).deactivated).toBe(false);
    const back = await lab.runCli(['revoke', 'sshpc', '--yes']);
    expect(back.code).toBe(0);
    expect(back.stdout).toMatch(/sshpc revoked; archived in/);
  }, 60_000);
});
