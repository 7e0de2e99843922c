/**
 * Workspaces from the operator room (issue 18), as an operator runs it from Element: the launcher's
 * operator services against the real Synapse (when MESHPILOT_TEST_HOMESERVER is set; the fixture
 * otherwise), the operator's phone with matrix-js-sdk's Rust crypto in the encrypted room.
 * The phone uploads an org template as an encrypted attachment (AES-256-CTR, like Element), the bot
 * posts its plan, a non-operator's upload and ✅ do nothing, the operator's ✅ applies it (the
 * workspaces' rows, manifests, role files and Matrix accounts created; no launcher runs here, so their
 * bots are not started), `!org` shows the tree; a template with a problem gets `file:line path:
 * message` lines and one with `!include` is refused with its line.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigSchema, type Config } from '../capabilities/config.js';
import { roleHash, WorkspaceStore } from '../capabilities/workspace/store.js';
import { CONTROLLER_CHAIN } from '../launcher/workspaces/index.js';
import { startOperatorServices, type OperatorServices } from '../launcher/operator-room.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import type { ClientEvent, RegisteredUser } from './fixtures/homeserver.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';
import { startTestHomeserver, type TestHomeserver } from './helpers/test-homeserver.js';
import { tempDir } from './helpers/tmp.js';

let hs: TestHomeserver;
let operator: RegisteredUser;
let stranger: RegisteredUser;
let phone: PhoneHandle;
let svc: OperatorServices;
let rt: Runtime;
let root: string;
let room: string;

const b64 = (b: Buffer): string => b.toString('base64').replace(/=+$/, '');

async function upload(token: string, bytes: Buffer, contentType: string): Promise<string> {
  const res = await fetch(`${hs.url}/_matrix/media/v3/upload`, { method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': contentType }, body: bytes });
  expect(res.status).toBe(200);
  return ((await res.json()) as { content_uri: string }).content_uri;
}

/** The operator's phone sends `text` as an encrypted m.file attachment (the spec's EncryptedFile, as Element does). */
async function sendEncryptedFile(name: string, text: string, mimetype = 'application/yaml'): Promise<string> {
  const key = randomBytes(32);
  const iv = Buffer.concat([randomBytes(8), Buffer.alloc(8)]);
  const c = createCipheriv('aes-256-ctr', key, iv);
  const data = Buffer.concat([c.update(Buffer.from(text, 'utf8')), c.final()]);
  const url = await upload(operator.accessToken, data, 'application/octet-stream');
  const file = {
    url, v: 'v2', iv: b64(iv), hashes: { sha256: b64(createHash('sha256').update(data).digest()) },
    key: { kty: 'oct', alg: 'A256CTR', ext: true, key_ops: ['encrypt', 'decrypt'], k: key.toString('base64url') },
  };
  const r = await phone.client.sendMessage(room, { msgtype: 'm.file', body: name, filename: name, info: { mimetype, size: data.length }, file } as never);
  return r.event_id;
}

/** A plain (unencrypted) event from the stranger, straight through the client-server API. */
async function strangerSends(type: string, content: Record<string, unknown>): Promise<void> {
  const res = await fetch(`${hs.url}/_matrix/client/v3/rooms/${encodeURIComponent(room)}/send/${type}/${randomBytes(8).toString('hex')}`, {
    method: 'PUT', headers: { Authorization: `Bearer ${stranger.accessToken}`, 'Content-Type': 'application/json' }, body: JSON.stringify(content),
  });
  expect(res.status).toBe(200);
}

const react = (eventId: string, key = '✅') => phone.client.sendEvent(room, 'm.reaction' as never, { 'm.relates_to': { rel_type: 'm.annotation', event_id: eventId, key } } as never);

const botSays = (pred: (text: string) => boolean, from: number, ms = 30_000): Promise<ClientEvent> =>
  phone.waitFor((e) => e.room_id === room && e.sender === svc.userId && e.type === 'm.room.message' && pred(bodyOf(e)) && phone.events.indexOf(e) >= from, ms);

const botTexts = (from: number): string[] => phone.events.slice(from).filter((e) => e.room_id === room && e.sender === svc.userId && e.type === 'm.room.message').map(bodyOf);

const suffix = randomBytes(3).toString('hex');
const TEMPLATE = (): string => `name: lab-${suffix}
defaults: { device: server, capabilities: [fs.read] }
workspaces:
  - name: ops-lead
    role: Keeps the lab healthy.
    home: ${root}/w/ops-lead
    children:
      - { name: backup, role: Backups., home: ${root}/w/backup }
      - { name: media, role: Media., home: ${root}/w/media, spawning: false }
`;

beforeAll(async () => {
  hs = await startTestHomeserver();
  operator = await hs.registerUser('olga', 'pw-olga');
  stranger = await hs.registerUser('sam', 'pw-sam');
  phone = await startPhone(hs, operator, { crypto: true });
  root = tempDir('mp-oporg-');
  rt = openRuntime({ root: path.join(root, 'home') });
  writeFileSync(path.join(rt.home.manifests, 'server.yaml'), [
    'device: server', 'os: linux', 'transport: { kind: local }', 'capabilities:',
    ...['fs.read', 'fs.list', 'fs.stat', 'fs.write', 'fs.delete'].map((c) => `  ${c}: { paths_allowed: ["${root}/w/**"] }`), '',
  ].join('\n'));
  const config: Config = ConfigSchema.parse({
    matrix: {
      homeserver_url: hs.url, server_name: hs.serverName, registration_shared_secret: hs.registrationSharedSecret,
      operator_bot: hs.unique(`mp-org-${suffix}`), bot_prefix: `${hs.unique(`mpw${suffix}`)}-`,
    },
    operators: [operator.userId],
  });
  svc = await startOperatorServices({ runtime: rt, config, noSchedule: true, supervisor: { status: () => [] } });
  room = svc.roomId;
  await phone.waitFor((e) => e.room_id === room && e.type === 'm.room.member' && e.state_key === operator.userId && e.content['membership'] === 'join', 20_000);
  // The stranger is let into the room by the operator (a person who is no operator).
  await phone.client.invite(room, stranger.userId);
  const j = await fetch(`${hs.url}/_matrix/client/v3/join/${encodeURIComponent(room)}`, { method: 'POST', headers: { Authorization: `Bearer ${stranger.accessToken}`, 'Content-Type': 'application/json' }, body: '{}' });
  expect(j.status).toBe(200);
}, 90_000);

afterAll(async () => {
  await svc?.stop();
  await rt?.close();
  phone?.stop();
  await hs?.stop();
});

describe(`org templates in the operator room (${process.env['MESHPILOT_TEST_HOMESERVER'] ? 'real Synapse' : 'fixture homeserver'})`, () => {
  it('an encrypted upload gets its plan; a non-operator\'s upload and ✅ do nothing; the operator\'s ✅ creates the workspaces; !org shows them', async () => {
    let from = phone.events.length;
    // A non-operator's upload (plain, in the encrypted room) is ignored.
    const evil = await upload(stranger.accessToken, Buffer.from(TEMPLATE()), 'application/yaml');
    await strangerSends('m.room.message', { msgtype: 'm.file', body: 'evil.yaml', url: evil, info: { mimetype: 'application/yaml' } });

    await sendEncryptedFile('org.yaml', TEMPLATE());
    const plan = await botSays((t) => t.includes('org.yaml from'), from);
    const text = bodyOf(plan);
    expect(text).toContain(`org lab-${suffix} (merge): 2 create, 0 update, 0 unchanged, 1 skipped, 0 remove`);
    expect(text).toMatch(/^\+ ops-lead {2}create on server$/m);
    expect(text).toMatch(/├─ \+ backup {2}create on server/);
    expect(text).toMatch(/└─ · media {2}skip/);
    expect(text).toMatch(/react ✅ to apply \(or `!org apply [0-9a-f]{6}`\)/);
    expect(phone.raw.find((e) => e.event_id === plan.event_id)?.type).toBe('m.room.encrypted');
    expect(botTexts(from).some((t) => t.includes('evil.yaml'))).toBe(false);
    const id = /!org apply ([0-9a-f]{6})/.exec(text)![1]!;
    expect(svc.org.waiting().map((w) => w.id)).toEqual([id]);

    // The stranger's ✅ on the plan: nothing happens.
    from = phone.events.length;
    await strangerSends('m.reaction', { 'm.relates_to': { rel_type: 'm.annotation', event_id: plan.event_id, key: '✅' } });
    await new Promise((r) => setTimeout(r, 3_000));
    await svc.org.idle();
    expect(botTexts(from)).toEqual([]);
    const store = new WorkspaceStore(rt.db);
    expect(store.list()).toEqual([]);
    expect(svc.org.waiting().map((w) => w.id)).toEqual([id]);

    // The operator's ✅ applies it: one line per finished step, then the summary.
    from = phone.events.length;
    await react(plan.event_id);
    const done = await botSays((t) => /^(✅|✗) lab-/.test(t), from, 90_000);
    expect(bodyOf(done)).toBe(`✅ lab-${suffix}: done (2 created, 0 updated, 1 skipped, 0 removed)`);
    const said = botTexts(from);
    expect(said[0]).toMatch(new RegExp(`^Applying org plan ${id} \\(org.yaml, merge\\) for ${operator.userId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    expect(said.filter((t) => /^\[\d\/2\] \+ (ops-lead|backup) done/.test(t))).toHaveLength(2);
    expect(said.findIndex((t) => t.startsWith('[1/2] + ops-lead done'))).toBeLessThan(said.findIndex((t) => t.startsWith('[2/2] + backup done')));
    const rows = Object.fromEntries(store.list().map((r) => [r.name, r]));
    expect(Object.keys(rows).sort()).toEqual(['backup', 'ops-lead']);
    expect(rows['backup']).toMatchObject({ parent: 'ops-lead', device: 'server', home: `${root}/w/backup`, template: `lab-${suffix}` });
    for (const n of ['ops-lead', 'backup']) {
      expect(existsSync(path.join(rt.home.manifests, `${n}.yaml`))).toBe(true);
      expect(existsSync(path.join(rt.home.keys, n, 'matrix.json'))).toBe(true);
    }
    expect(readFileSync(path.join(root, 'w', 'ops-lead', 'ROLE.md'), 'utf8')).toContain('Keeps the lab healthy.');
    // Audited with the operator as actor.
    const audit = rt.audit.tail(50, CONTROLLER_CHAIN).filter((e) => e.capability === 'workspace.import');
    expect(audit.map((e) => (e.args as { event: string }).event)).toEqual(['started', 'completed']);
    expect(audit.every((e) => e.actor === operator.userId)).toBe(true);
    // Applied once: the plan is gone, a second ✅ does nothing more than say so.
    expect(svc.org.waiting()).toEqual([]);

    from = phone.events.length;
    await phone.client.sendTextMessage(room, '!org');
    const tree = bodyOf(await botSays((t) => t.startsWith('2 workspaces'), from));
    expect(tree).toMatch(/^ops-lead {2}pending {2}on server/m);
    expect(tree).toMatch(/└─ backup {2}pending {2}on server {2}\S+\/w\/backup {2}\(template lab-/m);

    // The same file again: nothing to do, nothing kept waiting.
    from = phone.events.length;
    await sendEncryptedFile('org.yaml', TEMPLATE());
    const again = bodyOf(await botSays((t) => t.includes('org.yaml from'), from));
    expect(again).toContain('0 create, 0 update, 2 unchanged, 1 skipped, 0 remove');
    expect(again).toContain('nothing to do: the workspaces match the template.');
    expect(svc.org.waiting()).toEqual([]);
  }, 180_000);

  it('problems come back as file:line path: message; !include is refused with its line; a changed org is planned again before applying', async () => {
    let from = phone.events.length;
    await sendEncryptedFile('bad.yml', `name: bad-${suffix}\nworkspaces:\n  - name: x1\n    role: R.\n    home: ${root}/w/x1\n    device: nowhere\n  - name: Bad_Name\n    role: R.\n`, 'text/plain');
    const bad = bodyOf(await botSays((t) => t.startsWith('✗ bad.yml'), from));
    expect(bad).toMatch(/^✗ bad\.yml: \d+ problems?, nothing planned:/);
    expect(bad).toMatch(/^bad\.yml:7 workspaces\[1\]\.name: /m);

    from = phone.events.length;
    await sendEncryptedFile('inc.yaml', `name: inc\nworkspaces:\n  - name: a\n    role: R.\n    children:\n      - !include teams/b.yaml\n`);
    const inc = bodyOf(await botSays((t) => t.startsWith('✗ inc.yaml'), from));
    expect(inc).toContain('uses !include (line 6)');
    expect(inc).toContain('meshpilot workspace import <dir>');

    // A plan shown, then the org changes underneath (the workspace it would create appears): ✅ shows the new plan instead.
    from = phone.events.length;
    const tpl = `name: lone-${suffix}\nworkspaces:\n  - { name: lone, role: Alone., home: ${root}/w/lone, device: server }\n`;
    await sendEncryptedFile('lone.yaml', tpl);
    const first = await botSays((t) => t.includes('lone.yaml from'), from);
    expect(bodyOf(first)).toContain('1 create');
    const store = new WorkspaceStore(rt.db);
    store.upsert({ name: 'lone', parent: null, device: 'server', home: `${root}/w/lone`, role_hash: roleHash('another role'), model: null, capabilities: [], template: `lone-${suffix}` }, 'live');
    from = phone.events.length;
    await react(first.event_id);
    const reEvent = await botSays((t) => t.startsWith('⚠ the org changed'), from);
    const re = bodyOf(reEvent);
    expect(re).toContain('nothing was applied');
    expect(re).toMatch(/^~ lone {2}update/m);
    expect(store.list().find((r) => r.name === 'lone')?.role_hash).toBe(roleHash('another role'));
    const newId = /!org apply ([0-9a-f]{6})/.exec(re)![1]!;
    expect(svc.org.waiting().map((w) => w.id)).toEqual([newId]);
    // ❌ drops it.
    from = phone.events.length;
    await react(reEvent.event_id, '❌');
    await botSays((t) => t.startsWith(`Org plan ${newId} (lone.yaml) dropped`), from);
    expect(svc.org.waiting()).toEqual([]);
  }, 120_000);
});
