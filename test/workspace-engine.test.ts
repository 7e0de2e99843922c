/**
 * The workspace engine without Matrix: `workspace.import` runs and their audit entries (started, then
 * completed or failed with counts; a run whose process ended closed as failed by the next start, its
 * pending workspaces marked failed), the plan and the org tree as text, an import refused before any
 * side effect (no Matrix config, a blocked plan, a dry run), and the CLI's derived usage.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { roleHash, WorkspaceStore } from '../capabilities/workspace/store.js';
import { openRuntime, type Runtime } from '../launcher/runtime-core.js';
import { applyImport, closeInterruptedImports, CONTROLLER_CHAIN, INTERRUPTED, listWorkspaces, planImport, removeWorkspace, renderList } from '../launcher/workspaces/index.js';
import { ImportRuns } from '../launcher/workspaces/runs.js';
import { tempDir } from './helpers/tmp.js';

let root: string;
let rt: Runtime;

beforeEach(() => {
  root = tempDir('mp-ws-engine-');
  rt = openRuntime({ root: path.join(root, 'home') });
  writeFileSync(path.join(rt.home.manifests, 'server.yaml'), `device: server\nos: linux\ntransport: { kind: local }\ncapabilities:\n  fs.read: { paths_allowed: ["${root}/**"] }\n  fs.list: { paths_allowed: ["${root}/**"] }\n`);
});
afterEach(async () => {
  await rt.close();
});

function template(files: Record<string, string>): string {
  const dir = path.join(root, 'tpl');
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    writeFileSync(path.join(dir, rel), text);
  }
  return dir;
}

const LAB = (): Record<string, string> => ({
  'org.yaml': `name: home-lab\ndefaults: { device: server, capabilities: [fs.read] }\nworkspaces:\n  - name: ops-lead\n    role: Leads.\n    home: ${root}/w/ops-lead\n    children:\n      - !include teams/backup.yaml\n      - { name: media, spawning: false }\n`,
  'teams/backup.yaml': `name: backup\nrole: Backups.\nhome: ${root}/w/backup\nchildren:\n  - { name: restic, role: Restic., home: ${root}/w/restic }\n`,
});

const chain = () => new SqliteAuditLog(rt.db).tail(100, CONTROLLER_CHAIN);

/** A pid that existed and is gone now. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(r.stdout);
}

describe('workspace.import runs and their audit entries', () => {
  it('started, then completed with mode, counts and duration, once', () => {
    const runs = new ImportRuns(rt.db, rt.audit);
    const run = runs.begin('home-lab', 'merge', 'cli:test', '/tpl');
    run.counts.created = 3;
    run.counts.skipped = 1;
    runs.finish(run, null);
    runs.finish(run, { code: 'internal', message: 'late' });
    const e = chain();
    expect(e.map((x) => [x.capability, x.outcome, (x.args as { event: string }).event])).toEqual([['workspace.import', 'started', 'started'], ['workspace.import', 'ok', 'completed']]);
    expect(e[0]!.args).toEqual({ event: 'started', template: 'home-lab', mode: 'merge', source: '/tpl' });
    expect(e[1]!.args).toMatchObject({ event: 'completed', template: 'home-lab', mode: 'merge', counts: { created: 3, updated: 0, skipped: 1, removed: 0, failed: 0 }, error: null });
    expect(e[1]!.request_id).toBe(run.id);
    expect(e[1]!.actor).toBe('cli:test');
    expect(typeof e[1]!.duration_ms).toBe('number');
  });

  it('a failed run carries its error; a run whose process ended is closed as failed with its last counts; a live one is not', () => {
    const runs = new ImportRuns(rt.db, rt.audit);
    const run = runs.begin('a', 'reconcile', 'cli:test', '/a');
    runs.finish(run, { code: 'exec_failed', message: 'a: partly done (x failed)' });
    const failed = chain().pop()!;
    expect([failed.outcome, failed.error_code, failed.reason]).toEqual(['error', 'exec_failed', 'a: partly done (x failed)']);
    expect(failed.args).toMatchObject({ event: 'failed', error: 'a: partly done (x failed)' });

    const pid = deadPid();
    const dead = { id: 'dead-run', started: Date.now() - 5000 };
    rt.db.prepare("INSERT INTO workspace_imports (id, template, mode, actor, pid, pid_start, started_at, counts, state) VALUES (?, 'home-lab', 'merge', 'cli:bob', ?, NULL, ?, ?, 'running')")
      .run(dead.id, pid, dead.started, JSON.stringify({ created: 2, updated: 0, skipped: 0, removed: 0, failed: 0 }));
    // a live process that is not this one: pid 1
    rt.db.prepare("INSERT INTO workspace_imports (id, template, mode, actor, pid, pid_start, started_at, counts, state) VALUES ('live-run', 'other', 'merge', 'cli:eve', 1, NULL, 0, '{}', 'running')").run();
    const store = new WorkspaceStore(rt.db);
    store.upsert({ name: 'half', parent: null, device: 'server', home: '/x', role_hash: roleHash('r'), model: null, capabilities: [], template: 'home-lab' }, 'pending');
    store.upsert({ name: 'other-half', parent: null, device: 'server', home: '/y', role_hash: roleHash('r'), model: null, capabilities: [], template: 'other' }, 'pending');

    const lines = closeInterruptedImports({ runtime: rt });
    expect(lines).toEqual([`closed the interrupted import dead-run of home-lab (its process ${pid} ended) as failed`]);
    const closed = chain().pop()!;
    expect(closed.request_id).toBe('dead-run');
    expect(closed.actor).toBe('cli:bob');
    expect([closed.outcome, closed.reason]).toEqual(['error', INTERRUPTED]);
    expect(closed.args).toMatchObject({ event: 'failed', template: 'home-lab', counts: { created: 2 }, error: INTERRUPTED, pid });
    expect(Object.fromEntries(store.list().map((r) => [r.name, r.state]))).toEqual({ half: 'failed', 'other-half': 'pending' });
    expect(closeInterruptedImports({ runtime: rt })).toEqual([]);
    expect(new ImportRuns(rt.db, rt.audit).activeElsewhere()).toMatchObject({ id: 'live-run', pid: 1 });
  });
});

describe('import refused before any side effect', () => {
  it('a dry run writes nothing, not even an audit entry', async () => {
    const p = planImport(template(LAB()), { runtime: rt });
    expect(p.ok).toBe(true);
    const r = await applyImport(p, { runtime: rt, dryRun: true });
    expect(r).toMatchObject({ ok: true, status: 'dry run', counts: { created: 0, skipped: 1 } });
    expect(chain()).toEqual([]);
    expect(new WorkspaceStore(rt.db).list()).toEqual([]);
  });

  it('without Matrix config: failed at once, audited started → failed, nothing created', async () => {
    const p = planImport(template(LAB()), { runtime: rt });
    const r = await applyImport(p, { runtime: rt, actor: 'cli:test' });
    expect(r.ok).toBe(false);
    expect(r.status).toBe('failed');
    expect(r.message).toMatch(/Matrix is not configured/);
    expect(chain().map((e) => (e.args as { event: string }).event)).toEqual(['started', 'failed']);
    expect(new WorkspaceStore(rt.db).list()).toEqual([]);
  });

  it('an invalid template: its issues with file:line, nothing written', async () => {
    const p = planImport(template({ 'org.yaml': 'name: bad\nworkspaces:\n  - name: x\n    role: R.\n    home: /tmp/x\n    device: nowhere\n' }), { runtime: rt });
    expect(p.ok).toBe(false);
    if (p.ok) return;
    expect(p.issues).toEqual(['org.yaml:6 workspaces[0].device: unknown device "nowhere" (known: local, server)']);
    const r = await applyImport(p, { runtime: rt });
    expect(r.status).toBe('failed');
    expect(chain()).toEqual([]);
  });

  it('a blocked plan (a name taken by a hand-made workspace) changes nothing', async () => {
    new WorkspaceStore(rt.db).upsert({ name: 'backup', parent: null, device: 'server', home: '/elsewhere', role_hash: roleHash('x'), model: null, capabilities: [], template: null }, 'live');
    const p = planImport(template(LAB()), { runtime: rt });
    if (!p.ok) throw new Error(p.error.message);
    expect(p.text).toContain('! backup  conflict (a workspace backup already exists (created by hand))');
    const r = await applyImport(p, { runtime: rt });
    expect(r).toMatchObject({ ok: false, status: 'failed' });
    expect(r.message).toMatch(/^the plan is blocked, nothing was changed:\n {2}backup: a workspace backup already exists \(created by hand\)/);
    expect(chain()).toEqual([]);
  });
});

describe('the plan and the org tree as text', () => {
  it('plan: a tree with marks, the skip reason, the creates on their device', () => {
    const p = planImport(template(LAB()), { runtime: rt });
    if (!p.ok) throw new Error(p.error.message);
    expect(p.text).toBe([
      'org home-lab (merge): 3 create, 0 update, 0 unchanged, 1 skipped, 0 remove',
      '+ ops-lead  create on server',
      '├─ + backup  create on server',
      '│  └─ + restic  create on server',
      '└─ · media  skip (spawning: false at org.yaml:9)',
    ].join('\n'));
  });

  it('plan: a workspace whose create failed is created again', () => {
    const store = new WorkspaceStore(rt.db);
    store.upsert({ name: 'ops-lead', parent: null, device: 'server', home: `${root}/w/ops-lead`, role_hash: roleHash('Leads.'), model: null, capabilities: ['fs.read'], template: 'home-lab' }, 'failed');
    const p = planImport(template(LAB()), { runtime: rt });
    if (!p.ok) throw new Error(p.error.message);
    expect(p.text.split('\n')[1]).toBe('+ ops-lead  create on server (again: its last create failed)');
    store.setState('ops-lead', 'live');
    const q = planImport(template(LAB()), { runtime: rt });
    if (!q.ok) throw new Error(q.error.message);
    expect(q.text.split('\n')[1]).toBe('= ops-lead  unchanged');
  });

  it('ls: the tree with states, devices, homes and owners; a workspace manifest the table does not know is shown too', () => {
    const store = new WorkspaceStore(rt.db);
    const row = (name: string, parent: string | null, template: string | null) => ({ name, parent, device: 'server', home: `/w/${name}`, role_hash: roleHash(name), model: null, capabilities: [], template });
    store.upsert(row('lead', null, 'lab'), 'live');
    store.upsert(row('b', 'lead', 'lab'), 'failed');
    store.upsert(row('a', 'lead', 'lab'), 'live');
    store.upsert(row('a1', 'a', 'lab'), 'removing');
    writeFileSync(path.join(rt.home.manifests, 'solo.yaml'), 'device: solo\nos: linux\ntransport: { kind: local }\ncapabilities: {}\nworkspace: { host: server, home: /w/solo, role: Alone. }\n');
    const l = listWorkspaces({ runtime: rt, launcher: () => undefined });
    expect(l.count).toBe(5);
    expect(l.text).toBe([
      '5 workspaces (no launcher running: bots are not started)',
      'lead  live  on server  /w/lead  (template lab)',
      '├─ a  live  on server  /w/a  (template lab)',
      '│  └─ a1  removing  on server  /w/a1  (template lab)',
      '└─ b  failed  on server  /w/b  (template lab)',
      'solo  manifest only  on server  /w/solo  (by hand)',
    ].join('\n'));
    const withBots = listWorkspaces({ runtime: rt, launcher: () => ({ pid: 4242, file: 'x', alive: true }), bots: () => [{ device: 'lead', state: 'running', pid: 7 }] });
    expect(withBots.text.split('\n')[0]).toBe('5 workspaces (launcher pid 4242)');
    expect(withBots.text.split('\n')[1]).toBe('lead  live  on server  /w/lead  (template lab; bot running)');
    expect(withBots.text.split('\n')[2]).toBe('├─ a  live  on server  /w/a  (template lab; bot not started)');
    expect(renderList([], 0)).toMatch(/^no workspaces: import an org template/);
  });

  it('rm of a device is refused; of an unknown name, nothing to remove', async () => {
    const dev = await removeWorkspace('server', { runtime: rt, launcher: () => undefined });
    expect(dev.ok).toBe(false);
    expect(dev.message).toMatch(/server is a device, not a workspace \(revoke it with `meshpilot revoke server`\)/);
    const none = await removeWorkspace('ghost', { runtime: rt, launcher: () => undefined });
    expect(none).toMatchObject({ ok: true, names: ['ghost'], message: 'ghost: nothing to remove (already gone)' });
  });
});
