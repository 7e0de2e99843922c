/**
 * Import plans from real template files against the real workspaces table (SQLite, meshpilot.db
 * migrations): merge and reconcile, children-first removal, workspaces created by hand or by another
 * template untouched, idempotence (a re-run is a no-op), conflicts and the empty-plan guard.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openDatabase, type Db } from '../capabilities/db.js';
import { DeviceRegistry } from '../capabilities/device-registry.js';
import { planImport, renderPlan, type PlanMode, type WorkspacePlan } from '../capabilities/workspace/plan.js';
import { roleHash, WorkspaceStore } from '../capabilities/workspace/store.js';
import { formatTemplateIssue } from '../capabilities/workspace/template.js';
import { loadOrgTemplate } from '../capabilities/workspace/validate.js';

let tmp: string;
let db: Db;
let store: WorkspaceStore;
let devices: DeviceRegistry;

beforeEach(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'mp-ws-plan-'));
  mkdirSync(path.join(tmp, 'manifests'));
  writeFileSync(path.join(tmp, 'manifests', 'server.yaml'), 'device: server\ncapabilities:\n  fs.read: { paths_allowed: ["~/**"] }\n  fs.list: { paths_allowed: ["~/**"] }\n');
  devices = new DeviceRegistry(path.join(tmp, 'manifests'));
  db = openDatabase(path.join(tmp, 'meshpilot.db'));
  store = new WorkspaceStore(db);
});
afterEach(() => {
  db.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** Writes a template directory and returns the plan of importing it now. */
function plan(name: string, files: Record<string, string>, mode: PlanMode = 'merge'): WorkspacePlan {
  const dir = path.join(tmp, name);
  rmSync(dir, { recursive: true, force: true });
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    writeFileSync(path.join(dir, rel), text);
  }
  const t = loadOrgTemplate(dir, { devices });
  if (!t.ok) throw new Error(t.issues.map((i) => formatTemplateIssue(i, dir)).join('\n'));
  return planImport(t.template, store.list(), mode);
}

const LAB = (extra = '', leadRole = 'Keeps the lab healthy.'): Record<string, string> => ({
  'org.yaml': `name: home-lab
defaults: { device: server, model: small, capabilities: [fs.read, fs.list] }
workspaces:
  - name: ops-lead
    role: ${leadRole}
    children:
      - !include teams/backup.yaml
      - name: media
        spawning: false
        children: [{ name: plex }]
${extra}`,
  'teams/backup.yaml': `name: backup
role: Watches the backups.
children:
  - name: restic
    role: Checks restic.
  - name: borg
    role: Checks borg.
`,
});

const names = (p: WorkspacePlan) => ({ create: p.create, update: p.update, unchanged: p.unchanged, skipped: p.skipped, removals: p.removals });

describe('workspace import plans', () => {
  it('a first merge creates the tree, counts the skipped subtree, renders a tree; a re-run is a no-op', () => {
    const p = plan('lab', LAB());
    expect(names(p)).toEqual({ create: ['ops-lead', 'backup', 'restic', 'borg'], update: [], unchanged: [], skipped: ['media', 'plex'], removals: [] });
    expect(p.blocked).toEqual([]);
    expect(p.noop).toBe(false);
    expect(renderPlan(p)).toBe([
      'org home-lab (merge): 4 create, 0 update, 0 unchanged, 2 skipped, 0 remove',
      '+ ops-lead  create on server',
      '├─ + backup  create on server',
      '│  ├─ + restic  create on server',
      '│  └─ + borg  create on server',
      '└─ · media  skip (spawning: false at org.yaml:9)',
      '   └─ · plex  skip (spawning: false at org.yaml:9)',
    ].join('\n'));
    expect(store.record(p)).toEqual({ ok: true, written: 4, removed: 0 });
    const rows = store.list();
    expect(rows.map((r) => [r.name, r.parent, r.template, r.state])).toEqual([
      ['backup', 'ops-lead', 'home-lab', 'pending'], ['borg', 'backup', 'home-lab', 'pending'],
      ['ops-lead', null, 'home-lab', 'pending'], ['restic', 'backup', 'home-lab', 'pending'],
    ]);
    expect(rows.find((r) => r.name === 'borg')).toMatchObject({ device: 'server', home: '~/workspaces/borg', model: 'small', capabilities: ['fs.list', 'fs.read'], role_hash: roleHash('Checks borg.') });

    for (const mode of ['merge', 'reconcile'] as const) {
      const again = plan('lab', LAB(), mode);
      expect(again.noop).toBe(true);
      expect(names(again)).toEqual({ create: [], update: [], unchanged: ['ops-lead', 'backup', 'restic', 'borg'], skipped: ['media', 'plex'], removals: [] });
      expect(renderPlan(again).split('\n')[0]).toBe(`org home-lab (${mode}): 0 create, 0 update, 4 unchanged, 2 skipped, 0 remove — nothing to do`);
      expect(store.record(again)).toEqual({ ok: true, written: 0, removed: 0 });
    }
  });

  it('updates name the fields that changed and keep the row state', () => {
    store.record(plan('lab', LAB()));
    store.setState('ops-lead', 'live');
    const files = LAB('', 'Keeps the lab healthy and tidy.');
    files['teams/backup.yaml'] = files['teams/backup.yaml']!.replace('  - name: borg\n    role: Checks borg.\n', '  - name: borg\n    role: Checks borg.\n    model: large\n    capabilities: [fs.list]\n    home: /srv/borg\n');
    const p = plan('lab', files);
    expect(names(p)).toMatchObject({ create: [], update: ['ops-lead', 'borg'], unchanged: ['backup', 'restic'] });
    const text = renderPlan(p);
    expect(text).toContain('~ ops-lead  update (role)');
    expect(text).toContain('└─ ~ borg  update (home ~/workspaces/borg → /srv/borg, model small → large, capabilities -fs.read)');
    store.record(p);
    expect(store.list().find((r) => r.name === 'ops-lead')?.state).toBe('live');
    expect(plan('lab', files).noop).toBe(true);
  });

  it('merge keeps a workspace the template dropped (and says reconcile would remove it)', () => {
    store.record(plan('lab', LAB()));
    const files = LAB();
    files['teams/backup.yaml'] = 'name: backup\nrole: Watches the backups.\n';
    const p = plan('lab', files);
    expect(p.removals).toEqual([]);
    expect(p.orphans).toEqual(['borg', 'restic']);
    expect(renderPlan(p)).toContain('not in the template (kept in merge; reconcile removes them): borg, restic');
    store.record(p);
    expect(store.list().map((r) => r.name)).toEqual(['backup', 'borg', 'ops-lead', 'restic']);
  });

  it('reconcile removes the dropped subtree children first, never a workspace made by hand or by another template', () => {
    store.record(plan('lab', LAB()));
    // another template's tree and a hand-made workspace, one of each with a name this template used to have nearby
    store.record(plan('other', { 'org.yaml': 'name: garden\ndefaults: { device: server }\nworkspaces:\n  - name: sprinkler\n    role: Waters.\n    children: [{ name: soil, role: Measures. }]\n' }));
    store.upsert({ name: 'scratch', parent: null, device: 'server', home: '~/scratch', role_hash: roleHash('mine'), model: null, capabilities: [], template: null });
    const files = LAB();
    files['org.yaml'] = files['org.yaml']!.replace('      - !include teams/backup.yaml\n', '');
    const p = plan('lab', files, 'reconcile');
    expect(names(p)).toEqual({ create: [], update: [], unchanged: ['ops-lead'], skipped: ['media', 'plex'], removals: ['borg', 'restic', 'backup'] });
    expect(p.blocked).toEqual([]);
    expect(renderPlan(p)).toBe([
      'org home-lab (reconcile): 0 create, 0 update, 1 unchanged, 2 skipped, 3 remove',
      '= ops-lead  unchanged',
      '└─ · media  skip (spawning: false at org.yaml:8)',
      '   └─ · plex  skip (spawning: false at org.yaml:8)',
      '- backup  remove on server (no longer in the template)',
      '├─ - borg  remove on server (no longer in the template)',
      '└─ - restic  remove on server (no longer in the template)',
      'removal order (children first): borg, restic, backup',
    ].join('\n'));
    expect(store.record(p)).toEqual({ ok: true, written: 0, removed: 3 });
    expect(store.list().map((r) => `${r.name}:${r.template ?? 'hand'}`)).toEqual(['ops-lead:home-lab', 'scratch:hand', 'soil:garden', 'sprinkler:garden']);
    // a second reconcile is a no-op
    const again = plan('lab', files, 'reconcile');
    expect(again.noop).toBe(true);
    expect(again.removals).toEqual([]);
  });

  it('a skipped workspace that exists is left as is by reconcile (the template still names it)', () => {
    const files = LAB();
    files['org.yaml'] = files['org.yaml']!.replace('        spawning: false\n', '        role: Media.\n').replace('[{ name: plex }]', '[{ name: plex, role: Plex. }]');
    store.record(plan('lab', files));
    expect(store.list().map((r) => r.name)).toContain('plex');
    const p = plan('lab', LAB(), 'reconcile');
    expect(p.removals).toEqual([]);
    expect(p.skipped).toEqual(['media', 'plex']);
    expect(renderPlan(p)).toContain('· plex  skip (spawning: false at org.yaml:9; the existing workspace is left as is)');
  });

  it('a name taken by a hand-made or another template\'s workspace is a conflict, and the plan is not recorded', () => {
    store.upsert({ name: 'borg', parent: null, device: 'server', home: '~/borg', role_hash: roleHash('x'), model: null, capabilities: [], template: null });
    store.record(plan('other', { 'org.yaml': 'name: garden\ndefaults: { device: server }\nworkspaces:\n  - name: restic\n    role: Not the same.\n' }));
    const p = plan('lab', LAB());
    expect(p.conflicts).toEqual(['restic', 'borg']);
    expect(p.blocked).toEqual([
      'restic: a workspace restic already exists (of template garden); rename it in the template or remove that workspace',
      'borg: a workspace borg already exists (created by hand); rename it in the template or remove that workspace',
    ]);
    expect(renderPlan(p)).toContain('! borg  conflict (a workspace borg already exists (created by hand))');
    const r = store.record(p);
    expect(r.ok).toBe(false);
    expect(store.list().map((x) => x.name)).toEqual(['borg', 'restic']);
  });

  it('reconcile refuses to leave a workspace reporting to a removed one', () => {
    store.record(plan('lab', LAB()));
    store.upsert({ name: 'helper', parent: 'backup', device: 'server', home: '~/helper', role_hash: roleHash('h'), model: null, capabilities: [], template: null });
    const files = LAB();
    files['org.yaml'] = files['org.yaml']!.replace('      - !include teams/backup.yaml\n', '');
    const p = plan('lab', files, 'reconcile');
    expect(p.blocked).toEqual(['cannot remove backup: helper (created by hand) reports to it']);
    expect(store.record(p).ok).toBe(false);
    expect(store.list()).toHaveLength(5);
  });

  it('the empty-plan guard: a reconcile that would keep nothing never removes everything', () => {
    store.record(plan('lab', LAB()));
    const p = plan('lab', { 'org.yaml': 'name: home-lab\ndefaults: { device: server }\nworkspaces:\n  - name: parked\n    spawning: false\n' }, 'reconcile');
    expect(p.removals).toEqual(['borg', 'restic', 'backup', 'ops-lead']);
    expect(p.blocked).toEqual(['the template home-lab keeps no workspace and would remove all 4 of its workspaces; refusing (an empty plan never removes everything)']);
    expect(renderPlan(p)).toContain('blocked: the template home-lab keeps no workspace');
    const r = store.record(p);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.code).toBe('usage');
    expect(store.list()).toHaveLength(4);
    // the same template in merge mode removes nothing at all
    const m = plan('lab', { 'org.yaml': 'name: home-lab\ndefaults: { device: server }\nworkspaces:\n  - name: parked\n    spawning: false\n' });
    expect(m.noop).toBe(true);
    expect(m.blocked).toEqual([]);
  });
});
