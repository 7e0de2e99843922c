/**
 * The operator room's org plans without Matrix (launcher/operator-room-org.ts): which uploads count,
 * the staged file's name, a plan expiring after 15 minutes, a size over the limit refused before the
 * download, reconcile's removals named beside a merge plan and applied by `!org apply <id> reconcile`
 * (the real engine on a real SQLite home; removals need no Matrix), ❌ dropping a plan.
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { roleHash, WorkspaceStore } from '../capabilities/workspace/store.js';
import { isOrgUpload, ORG_PLAN_TTL_MS, OrgRoom } from '../launcher/operator-room-org.js';
import { includeLines, stagedName } from '../launcher/org-upload.js';
import { openRuntime, type Runtime } from '../launcher/runtime-core.js';
import { tempDir } from './helpers/tmp.js';

let root: string;
let rt: Runtime;
let said: string[];
let downloads: number;
let clock: number;
let files: Map<string, string>;
let org: OrgRoom;
const OP = '@op:example.org';

beforeEach(() => {
  root = tempDir('mp-oporg-unit-');
  rt = openRuntime({ root: path.join(root, 'home') });
  writeFileSync(path.join(rt.home.manifests, 'server.yaml'), `device: server\nos: linux\ntransport: { kind: local }\ncapabilities:\n  fs.read: { paths_allowed: ["${root}/**"] }\n`);
  said = [];
  downloads = 0;
  clock = 1_000_000;
  files = new Map();
  let n = 0;
  org = new OrgRoom({
    chat: {
      say: async (t) => { said.push(t); return `$say${n++}`; },
      pre: async (t) => { said.push(t); return `$pre${n++}`; },
      download: async (mxc) => { downloads++; return { bytes: Buffer.from(files.get(mxc) ?? '') }; },
    },
    isOperator: (u) => u === OP,
    workspaces: (actor) => ({ runtime: rt, actor }),
    now: () => clock,
    logger: pino({ level: 'silent' }),
  });
});
afterEach(async () => {
  org.stop();
  await rt.close();
});

function upload(name: string, text: string, sender = OP, size?: number) {
  const mxc = `mxc://example.org/${name.replace(/\W/g, '')}${files.size}`;
  files.set(mxc, text);
  return org.onUpload({ roomId: '!r:example.org', sender, msgtype: 'm.file', body: name, filename: name, mxc, info: { mimetype: 'application/octet-stream', ...(size !== undefined ? { size } : {}) } });
}

const row = (name: string, parent: string | null, template: string | null) =>
  ({ name, parent, device: 'server', home: `${root}/w/${name}`, role_hash: roleHash(`${name}.`), model: null, capabilities: ['fs.read'], template });

describe('org uploads', () => {
  it('an m.file named .yaml/.yml or with a YAML mimetype counts; the staged name is safe', () => {
    const m = { roomId: '!r:x', sender: OP, body: 'x', mxc: 'mxc://x/y' };
    expect(isOrgUpload({ ...m, msgtype: 'm.file', body: 'Org.YML' })).toBe(true);
    expect(isOrgUpload({ ...m, msgtype: 'm.file', body: 'notes', info: { mimetype: 'text/yaml; charset=utf-8' } })).toBe(true);
    expect(isOrgUpload({ ...m, msgtype: 'm.file', body: 'org.txt', info: { mimetype: 'text/plain' } })).toBe(false);
    expect(isOrgUpload({ ...m, msgtype: 'm.text', body: 'org.yaml' })).toBe(false);
    expect(isOrgUpload({ roomId: '!r:x', sender: OP, msgtype: 'm.file', body: 'org.yaml' })).toBe(false);
    expect(stagedName('../../etc/passwd')).toBe('passwd.yaml');
    expect(stagedName('my org (v2).yml')).toBe('my_org_v2_.yml');
    expect(stagedName('..')).toBe('org.yaml');
    expect(includeLines('a: 1\nw:\n  - !include x.yaml\n  - b\n  - !include y.yaml\n')).toEqual([3, 5]);
  });

  it('over the size limit: refused before the download; a plan expires after 15 minutes', async () => {
    await upload('big.yaml', 'x', OP, 300 * 1024);
    expect(downloads).toBe(0);
    expect(said.pop()).toBe('✗ big.yaml: 307200 bytes; an org template file may have at most 262144 (256 KiB).');

    await upload('one.yaml', `name: one\nworkspaces:\n  - { name: solo, role: Alone., home: ${root}/w/solo, device: server }\n`);
    const [p] = org.waiting();
    expect(said.pop()).toContain(`react ✅ to apply (or \`!org apply ${p!.id}\`)`);
    clock += ORG_PLAN_TTL_MS + 1;
    expect(org.onReaction('@eve:example.org', p!.eventId!, '✅')).toBe(false);
    expect(org.onReaction(OP, p!.eventId!, '✅')).toBe(true);
    await org.idle();
    expect(said.pop()).toBe(`Org plan ${p!.id} expired (plans wait 15 min): upload the file again.`);
    await org.command(OP, 'apply', p!.id, undefined);
    expect(said.pop()).toMatch(new RegExp(`^No org plan ${p!.id} is waiting \\(applied, dropped or expired after 15 min\\)`));
    expect(new WorkspaceStore(rt.db).list()).toEqual([]);
  });

  it('a merge plan names what reconcile would remove; !org apply <id> reconcile removes it; ❌ drops a plan', async () => {
    const store = new WorkspaceStore(rt.db);
    store.upsert(row('keep', null, 'lab'), 'live');
    store.upsert(row('gone', 'keep', 'lab'), 'live');
    store.upsert(row('mine', null, null), 'live');
    await upload('lab.yaml', `name: lab\nworkspaces:\n  - { name: keep, role: keep., home: ${root}/w/keep, device: server, capabilities: [fs.read] }\n`);
    const text = said.pop()!;
    expect(text).toContain('nothing to do in merge mode.');
    const [p] = org.waiting();
    expect(text).toContain(`reconcile would also REMOVE 1: gone (\`!org apply ${p!.id} reconcile\`)`);
    // A non-operator's ✅: ignored.
    expect(org.onReaction('@eve:example.org', p!.eventId!, '✅')).toBe(false);
    await org.command(OP, 'apply', p!.id, 'reconcile');
    await org.idle();
    expect(said.at(-1)).toBe('✅ lab: done (0 created, 0 updated, 0 skipped, 1 removed)');
    expect(said.some((l) => /^\[1\/1\] - gone done/.test(l))).toBe(true);
    expect(store.list().map((r) => r.name).sort()).toEqual(['keep', 'mine']);

    await upload('lab2.yaml', `name: lab2\nworkspaces:\n  - { name: other, role: O., home: ${root}/w/other, device: server }\n`);
    const [q] = org.waiting();
    expect(org.onReaction(OP, q!.eventId!, '❌')).toBe(true);
    await org.idle();
    expect(said.at(-1)).toBe(`Org plan ${q!.id} (lab2.yaml) dropped; nothing was changed.`);
    expect(org.waiting()).toEqual([]);
  });
});
