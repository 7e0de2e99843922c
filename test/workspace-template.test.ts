/**
 * Org templates from real files on disk: `!include` (relative to the including file, inside the
 * template's directory, lexically and through symlinks), cycles, the depth cap, missing files,
 * `spawning: false` at depth, and every validation error with its file and line, against a real
 * DeviceRegistry over manifest files.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DeviceRegistry } from '../capabilities/device-registry.js';
import { formatTemplateIssue, parseTemplate } from '../capabilities/workspace/template.js';
import { loadOrgTemplate } from '../capabilities/workspace/validate.js';
import type { TemplateIssue } from '../capabilities/workspace/schema.js';

let tmp: string;
let dir: string;
let devices: DeviceRegistry;

function write(files: Record<string, string>, base = dir): void {
  for (const [rel, text] of Object.entries(files)) {
    const f = path.join(base, rel);
    mkdirSync(path.dirname(f), { recursive: true });
    writeFileSync(f, text);
  }
}

const SERVER = `device: server
capabilities:
  fs.read: { paths_allowed: ["~/**"] }
  fs.list: { paths_allowed: ["~/**"] }
  git.status: { paths_allowed: ["~/**"] }
`;
const NAS = `device: nas
capabilities:
  fs.list: { paths_allowed: ["~/**"] }
`;

beforeEach(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'mp-ws-tpl-'));
  dir = path.join(tmp, 'org');
  mkdirSync(dir);
  write({ 'server.yaml': SERVER, 'nas.yaml': NAS }, path.join(tmp, 'manifests'));
  devices = new DeviceRegistry(path.join(tmp, 'manifests'));
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

function issuesOf(target = dir): string[] {
  const r = loadOrgTemplate(target, { devices });
  expect(r.ok, r.ok ? 'parsed' : '').toBe(false);
  return r.ok ? [] : r.issues.map((i: TemplateIssue) => formatTemplateIssue(i, dir));
}

const HEAD = `name: home-lab
defaults: { device: server, model: small, capabilities: [fs.read, fs.list, git.status] }
`;

describe('org template parsing', () => {
  it('reads the issue example: nested includes relative to the including file, spawning: false skips the subtree', () => {
    write({
      'org.yaml': `${HEAD}workspaces:
  - name: ops-lead
    role: Keeps the home lab healthy; asks its team for details.
    home: ~/workspaces/ops-lead
    children:
      - !include teams/backup.yaml
      - name: media
        spawning: false          # skipped, with its whole subtree
        children:
          - name: plex
            children:
              - name: plex-logs
`,
      'teams/backup.yaml': `name: backup
role: Watches the backups.
device: nas
capabilities: [fs.list]
children:
  - !include members/restic.yaml
`,
      'teams/members/restic.yaml': `- name: restic
  role: Checks restic snapshots.
- name: borg
  role: Checks borg archives.
  model: large
`,
    });
    const r = loadOrgTemplate(dir, { devices });
    if (!r.ok) throw new Error(r.issues.map((i) => formatTemplateIssue(i, dir)).join('\n'));
    const t = r.template;
    expect(t.name).toBe('home-lab');
    expect(t.all.map((w) => w.name)).toEqual(['ops-lead', 'backup', 'restic', 'borg', 'media', 'plex', 'plex-logs']);
    const by = new Map(t.all.map((w) => [w.name, w]));
    expect(by.get('backup')).toMatchObject({ parent: 'ops-lead', device: 'nas', capabilities: ['fs.list'], depth: 1, spawning: true });
    expect(by.get('restic')).toMatchObject({ parent: 'backup', device: 'server', model: 'small', home: '~/workspaces/restic', capabilities: ['fs.read', 'fs.list', 'git.status'] });
    expect(by.get('borg')?.model).toBe('large');
    expect(by.get('restic')?.source.file).toBe(path.join(dir, 'teams/members/restic.yaml'));
    expect(by.get('borg')?.source.line).toBe(3);
    // spawning: false at depth 1 reaches the grandchildren, with where it was written
    for (const n of ['media', 'plex', 'plex-logs']) expect(by.get(n)).toMatchObject({ spawning: false, skippedBy: 'org.yaml:10' });
    expect(by.get('plex-logs')?.depth).toBe(3);
    expect(t.files.map((f) => path.relative(dir, f))).toEqual(['org.yaml', 'teams/backup.yaml', 'teams/members/restic.yaml']);
  });

  it('spawning: false deep in an included file skips only that subtree, and skipped workspaces need no role or device', () => {
    write({
      'org.yaml': `name: deep\nworkspaces:\n  - name: a\n    role: r\n    device: server\n    children: [!include b.yaml]\n`,
      'b.yaml': `name: b\nrole: r\ndevice: server\nchildren:\n  - name: c\n    role: r\n    device: server\n    children:\n      - name: d\n        spawning: false\n        device: mars\n        capabilities: [fs.write]\n        children: [{ name: e }]\n      - name: f\n        role: r\n        device: server\n`,
    });
    const r = loadOrgTemplate(dir, { devices });
    if (!r.ok) throw new Error(r.issues.map((i) => formatTemplateIssue(i, dir)).join('\n'));
    const sp = Object.fromEntries(r.template.all.map((w) => [w.name, w.spawning]));
    expect(sp).toEqual({ a: true, b: true, c: true, d: false, e: false, f: true });
    expect(r.template.all.find((w) => w.name === 'e')?.skippedBy).toBe('b.yaml:10');
  });

  it('a missing include fails naming the file and the line', () => {
    write({ 'org.yaml': `${HEAD}workspaces:\n  - name: ops\n    role: r\n    children:\n      - !include teams/nope.yaml\n` });
    expect(issuesOf()).toEqual(['org.yaml:7 workspaces[0].children[0]: !include teams/nope.yaml: file not found']);
  });

  it('!include anywhere but a workspace item is refused, not read as a string', () => {
    write({ 'org.yaml': `name: !include n.yaml\nworkspaces:\n  - name: a\n    role: !include role.md\n    children:\n      - name: b\n        role: r\n        capabilities: [fs.read, !include caps.yaml]\n` });
    expect(issuesOf()).toEqual(['org.yaml:1 name: !include works only for an item of workspaces or children']);
    write({ 'org.yaml': `name: lab\nworkspaces:\n  - name: a\n    role: !include role.md\n    children:\n      - name: b\n        role: r\n        capabilities: [fs.read, !include caps.yaml]\n` });
    expect(issuesOf()).toEqual([
      'org.yaml:4 workspaces[0].role: !include works only for an item of workspaces or children',
    ]);
    write({ 'org.yaml': `name: lab\nworkspaces:\n  - name: a\n    role: r\n    children:\n      - name: b\n        role: r\n        capabilities: [fs.read, !include caps.yaml]\n` });
    expect(issuesOf()).toEqual(['org.yaml:8 workspaces[0].children[0].capabilities: !include works only for an item of workspaces or children']);
  });

  it('an include of a directory (even the template directory itself) is refused as not a file', () => {
    write({ 'org.yaml': `${HEAD}workspaces:\n  - !include teams\n  - !include .\n`, 'teams/a.yaml': 'name: a\nrole: r\n' });
    expect(issuesOf()).toEqual(['org.yaml:4 workspaces[0]: !include teams: not a file', 'org.yaml:5 workspaces[1]: !include .: not a file']);
  });

  it('a missing include inside an included file names that file', () => {
    write({ 'org.yaml': `${HEAD}workspaces:\n  - !include teams/a.yaml\n`, 'teams/a.yaml': `name: a\nrole: r\nchildren:\n\n  - !include gone.yaml\n` });
    expect(issuesOf()).toEqual(['teams/a.yaml:5 children[0]: !include gone.yaml: file not found']);
  });

  it('refuses include cycles, naming the chain', () => {
    write({
      'org.yaml': `${HEAD}workspaces:\n  - !include teams/a.yaml\n`,
      'teams/a.yaml': `name: a\nrole: r\nchildren: [!include b.yaml]\n`,
      'teams/b.yaml': `name: b\nrole: r\nchildren:\n  - !include a.yaml\n`,
    });
    expect(issuesOf()).toEqual(['teams/b.yaml:4 children[0]: !include a.yaml: include cycle teams/a.yaml → teams/b.yaml → teams/a.yaml']);
  });

  it('a file including itself is a cycle', () => {
    write({ 'org.yaml': `${HEAD}workspaces:\n  - !include org.yaml\n` });
    expect(issuesOf()).toEqual(['org.yaml:4 workspaces[0]: !include org.yaml: include cycle org.yaml → org.yaml']);
  });

  it('caps include depth at 16', () => {
    const chain = (n: number): Record<string, string> => {
      const files: Record<string, string> = { 'org.yaml': `${HEAD}workspaces:\n  - !include l1.yaml\n` };
      for (let i = 1; i <= n; i++) files[`l${i}.yaml`] = `name: w${i}\nrole: r\n${i < n ? `children: [!include l${i + 1}.yaml]\n` : ''}`;
      return files;
    };
    write(chain(16));
    const ok = loadOrgTemplate(dir, { devices });
    expect(ok.ok).toBe(true);
    if (ok.ok) expect(ok.template.all).toHaveLength(16);
    rmSync(dir, { recursive: true });
    mkdirSync(dir);
    write(chain(17));
    expect(issuesOf()).toEqual(['l16.yaml:3 children[0]: !include l17.yaml: includes nested deeper than 16']);
  });

  it('keeps includes inside the template directory: ../, absolute paths and symlinks out are refused', () => {
    write({ 'outside.yaml': 'name: x\nrole: r\n', 'secret/team.yaml': 'name: y\nrole: r\n' }, tmp);
    symlinkSync(path.join(tmp, 'outside.yaml'), path.join(dir, 'link.yaml'));
    symlinkSync(path.join(tmp, 'secret'), path.join(dir, 'linked-dir'));
    write({
      'org.yaml': `${HEAD}workspaces:
  - !include ../outside.yaml
  - !include teams/../../outside.yaml
  - !include ${path.join(tmp, 'outside.yaml')}
  - !include link.yaml
  - !include linked-dir/team.yaml
`,
    });
    expect(issuesOf()).toEqual([
      'org.yaml:4 workspaces[0]: !include ../outside.yaml: outside the template\'s directory',
      'org.yaml:5 workspaces[1]: !include teams/../../outside.yaml: outside the template\'s directory',
      `org.yaml:6 workspaces[2]: !include ${path.join(tmp, 'outside.yaml')}: must be relative to the including file`,
      `org.yaml:7 workspaces[3]: !include link.yaml: outside the template's directory (a link to ${path.join(tmp, 'outside.yaml')})`,
      `org.yaml:8 workspaces[4]: !include linked-dir/team.yaml: outside the template's directory (a link to ${path.join(tmp, 'secret/team.yaml')})`,
    ]);
  });

  it('a symlink that stays inside the directory is fine', () => {
    write({ 'org.yaml': `${HEAD}workspaces:\n  - !include alias.yaml\n`, 'teams/real.yaml': 'name: real\nrole: r\n' });
    symlinkSync(path.join(dir, 'teams/real.yaml'), path.join(dir, 'alias.yaml'));
    const r = loadOrgTemplate(dir, { devices });
    expect(r.ok).toBe(true);
  });

  it('a template given as a file takes its directory as the include root', () => {
    write({ 'lab.yaml': `${HEAD}workspaces:\n  - !include t.yaml\n`, 't.yaml': 'name: t\nrole: r\n' });
    const r = parseTemplate(path.join(dir, 'lab.yaml'));
    expect(r.ok && r.template.all.map((w) => w.name)).toEqual(['t']);
  });
});

describe('org template validation errors, each with its file and line', () => {
  it('names: traversal, separators, bad characters; unique across files', () => {
    write({
      'org.yaml': `${HEAD}workspaces:
  - name: ../etc
    role: r
  - name: a/b
    role: r
  - name: Ops
    role: r
  - name: ops
    role: r
    children: [!include t.yaml]
`,
      't.yaml': '\nname: ops\nrole: r\n',
    });
    expect(issuesOf()).toEqual([
      'org.yaml:4 workspaces[0].name: must be 1-32 characters of a-z, 0-9 and -, not starting with -',
      'org.yaml:6 workspaces[1].name: must be 1-32 characters of a-z, 0-9 and -, not starting with -',
      'org.yaml:8 workspaces[2].name: must be 1-32 characters of a-z, 0-9 and -, not starting with -',
    ]);
    // with the bad names fixed, the duplicate across files shows
    write({ 'org.yaml': `${HEAD}workspaces:\n  - name: ops\n    role: r\n    children: [!include t.yaml]\n` });
    expect(issuesOf()).toEqual(['t.yaml:2 name: "ops" is already a workspace at org.yaml:4; names are unique']);
  });

  it('unknown fields, wrong types, bad homes and a missing role', () => {
    write({
      'org.yaml': `${HEAD}workspaces:
  - name: a
    role: r
    colour: blue
  - name: b
    role: r
    home: ~/../etc
  - name: c
    role: r
    spawning: maybe
  - name: d
`,
    });
    expect(issuesOf()).toEqual([
      'org.yaml:6 workspaces[0].colour: unknown field',
      'org.yaml:9 workspaces[1].home: must be an absolute path or ~/…, without . or .. segments or wildcards',
      'org.yaml:12 workspaces[2].spawning: Invalid input: expected boolean, received string',
    ]);
    write({ 'org.yaml': `${HEAD}workspaces:\n  - name: d\n` });
    expect(issuesOf()).toEqual(['org.yaml:4 workspaces[0].role: a workspace needs a role (its system prompt)']);
  });

  it('the template head: name, unknown keys, empty workspaces', () => {
    write({ 'org.yaml': 'name: Home Lab\nowner: me\nworkspaces: []\n' });
    expect(issuesOf()).toEqual([
      'org.yaml:1 name: must be 1-64 characters of a-z, 0-9, ., _ and -, not starting with . _ or -',
      'org.yaml:2 owner: unknown field',
      'org.yaml:3 workspaces: a template needs at least one workspace',
    ]);
  });

  it('devices: unknown, none given, the same home twice on one device', () => {
    write({
      'org.yaml': `name: lab
workspaces:
  - name: a
    role: r
    device: mars
  - name: b
    role: r
  - name: c
    role: r
    device: server
    home: /srv/ws
  - name: d
    role: r
    device: server
    home: /srv/ws
`,
    });
    expect(issuesOf()).toEqual([
      'org.yaml:5 workspaces[0].device: unknown device "mars" (known: nas, server)',
      'org.yaml:6 workspaces[1].device: no device: set device here or in defaults.device',
      'org.yaml:12 workspaces[3].home: /srv/ws on server is already the home of c (org.yaml:8)',
    ]);
  });

  it('a workspace in a VM: the device must grant vm.exec and be reached over local or ssh, the home is a directory of its own', () => {
    write({
      'vmhost.yaml': 'device: vmhost\ncapabilities:\n  fs.read: { paths_allowed: ["/srv/**"] }\n  vm.exec: {}\n',
      'meshbox.yaml': 'device: meshbox\ntransport: { kind: mesh, address: 10.0.0.2, port: 7700 }\ncapabilities:\n  vm.exec: {}\n',
    }, path.join(tmp, 'manifests'));
    write({
      'org.yaml': `name: lab
workspaces:
  - name: a
    role: r
    device: vmhost
    vm: dev
    home: ~/ws/a
    capabilities: [fs.read]
  - name: b
    role: r
    device: server
    vm: dev
  - name: c
    role: r
    device: vmhost
    vm: dev
    home: "~/"
  - name: d
    role: r
    device: vmhost
    vm: dev
    home: ~/ws/a
`,
    });
    const issues = issuesOf();
    expect(issues).toContain('org.yaml:12 workspaces[1].vm: VM dev: a workspace in a VM needs vm.exec on server (its calls run inside the VM as vm.exec\'s do), and server\'s manifest does not grant it');
    expect(issues).toContain('org.yaml:16 workspaces[2].vm: VM dev: the home ~/ would be the whole VM; give the workspace a directory of its own (e.g. ~/workspaces/<name>)');
    expect(issues).toContain('org.yaml:18 workspaces[3].home: ~/ws/a in VM dev on vmhost is already the home of a (org.yaml:3)');
    // a's home is outside vmhost's fs.read paths (/srv/**): inside a VM that is no objection
    expect(issues.filter((i) => i.includes('workspaces[0]'))).toEqual([]);
    expect(devices.get('meshbox')?.transport.kind).toBe('mesh');
    write({ 'org.yaml': 'name: lab\nworkspaces:\n  - name: m\n    role: r\n    device: meshbox\n    vm: dev\n' });
    expect(issuesOf()).toEqual(['org.yaml:6 workspaces[0].vm: VM dev: a workspace in a VM needs its device reached over local or ssh; meshbox is reached over mesh']);
    write({ 'org.yaml': 'name: lab\nworkspaces:\n  - name: e\n    role: r\n    device: vmhost\n    vm: Bad_Name\n' });
    expect(issuesOf()[0]).toMatch(/^org\.yaml:6 workspaces\[0\]\.vm: a VM name is/);
  });

  it('a device with an invalid manifest says so', () => {
    write({ 'broken.yaml': 'device: broken\nbogus: 1\n' }, path.join(tmp, 'manifests'));
    write({ 'org.yaml': 'name: lab\nworkspaces:\n  - name: a\n    role: r\n    device: broken\n' });
    expect(issuesOf()).toEqual(['org.yaml:5 workspaces[0].device: device "broken" has an invalid manifest: broken.yaml:2 bogus: unknown field']);
  });

  it('capabilities must be a subset of what the device manifest grants (own list and defaults)', () => {
    write({
      'org.yaml': `name: lab
defaults: { device: server, capabilities: [fs.read, fs.write] }
workspaces:
  - name: a
    role: r
    device: nas
    capabilities:
      - fs.list
      - fs.read
      - fs.teleport
      - not-a-name
  - name: b
    role: r
`,
    });
    expect(issuesOf()).toEqual([
      'org.yaml:11 workspaces[0].capabilities[3]: must be a capability name like fs.read',
    ]);
    write({ 'org.yaml': `name: lab
defaults: { device: server, capabilities: [fs.read, fs.write] }
workspaces:
  - name: a
    role: r
    device: nas
    capabilities:
      - fs.list
      - fs.read
      - fs.teleport
  - name: b
    role: r
` });
    expect(issuesOf()).toEqual([
      'org.yaml:9 workspaces[0].capabilities[1]: fs.read is not allowed on nas: its manifest does not grant it',
      'org.yaml:10 workspaces[0].capabilities[2]: unknown capability fs.teleport',
      'org.yaml:11 workspaces[1].capabilities: fs.write (from defaults.capabilities) is not allowed on server: its manifest does not grant it',
    ]);
  });

  it('YAML syntax errors and an unknown tag (a mistyped !include)', () => {
    write({ 'org.yaml': `${HEAD}workspaces:\n  - name: a\n    role: [unclosed\n` });
    const syntax = issuesOf();
    expect(syntax.length).toBeGreaterThan(0);
    expect(syntax[0]).toMatch(/^org\.yaml:\d+ YAML syntax: /);
    write({ 'org.yaml': `${HEAD}workspaces:\n  - !inclde t.yaml\n` });
    expect(issuesOf()[0]).toMatch(/^org\.yaml:4 YAML: .*!inclde/);
  });

  it('size limits: file bytes, workspaces per template, a template directory without org.yaml', () => {
    write({ 'org.yaml': `${HEAD}workspaces:\n  - !include big.yaml\n`, 'big.yaml': `name: big\nrole: "${'x'.repeat(300 * 1024)}"\n` });
    expect(issuesOf()).toEqual([`org.yaml:4 workspaces[0]: !include big.yaml: ${300 * 1024 + 19} bytes; a template file may have at most 262144`]);
    const many = Array.from({ length: 6 }, (_, i) => `  - name: w${i}\n    role: r\n`).join('');
    write({ 'org.yaml': `${HEAD}workspaces:\n${many}` });
    const r = loadOrgTemplate(dir, { devices, limits: { workspaces: 5 } });
    expect(r.ok ? [] : r.issues.map((i) => formatTemplateIssue(i, dir))).toEqual(['org.yaml:14 workspaces[5]: more than 5 workspaces in one template']);
    write({ 'org.yaml': `${HEAD}workspaces:\n  - !include a.yaml\n  - !include b.yaml\n`, 'a.yaml': 'name: a\nrole: r\n', 'b.yaml': 'name: b\nrole: r\n' });
    const files = loadOrgTemplate(dir, { devices, limits: { files: 2 } });
    expect(files.ok ? [] : files.issues.map((i) => formatTemplateIssue(i, dir))).toEqual(['org.yaml:5 workspaces[1]: !include b.yaml: more than 2 files in one template']);
    const kids = Array.from({ length: 101 }, (_, i) => `{ name: k${i}, role: r }`).join(', ');
    write({ 'org.yaml': `${HEAD}workspaces:\n  - name: big\n    role: r\n    children: [${kids}]\n` });
    expect(issuesOf()).toEqual(['org.yaml:6 workspaces[0].children: Too big: expected array to have <=100 items']);
    const empty = path.join(tmp, 'empty');
    mkdirSync(empty);
    expect(issuesOf(empty)[0]).toMatch(/a template directory needs org\.yaml or org\.yml$/);
  });
});
