/**
 * The import engine: parse and validate the template (loadOrgTemplate, against the device registry),
 * plan it against the workspaces table (plan.ts: create / update / unchanged / skip / remove, the
 * empty-plan guard), render the plan as a tree, then, unless it is a dry run, apply it with progress:
 * creates and updates parents before children (homes, accounts and manifests a tree level at a
 * time; each new bot is started as soon as its own workspace is made, and every "live" is awaited
 * once the tree is made), removals children first. A workspace whose
 * create fails is rolled back alone (create.ts), with its descendants (a child never reports to a
 * workspace that is not there); the others go on and the import says "partly done" with exactly
 * which failed and why. A re-run with no changes is a no-op.
 * Audit: `workspace.import` started / completed / failed, and each create, update and remove (runs.ts).
 */
import { statSync } from 'node:fs';
import * as path from 'node:path';
import { MeshpilotError, toMpError, type MpError } from '../../capabilities/errors.js';
import { planImport as planRows, renderPlan, type PlanMode, type WorkspacePlan } from '../../capabilities/workspace/plan.js';
import type { OrgTemplate, TemplateWorkspace } from '../../capabilities/workspace/schema.js';
import { formatTemplateIssue } from '../../capabilities/workspace/template.js';
import { loadOrgTemplate } from '../../capabilities/workspace/validate.js';
import { roleHash } from '../../capabilities/workspace/store.js';
import { prepareWorkspace, updateWorkspace, type PreparedWorkspace, type StepResult, type WorkspaceSpecRow } from './create.js';
import { closeInterrupted, workspaceEnv, type WorkspaceOptions } from './env.js';
import { removeTree } from './remove.js';
import type { ImportCounts } from './runs.js';

/** Workspaces of one tree level prepared side by side (home, account, manifest). */
const CONCURRENCY = 4;

export interface PlanOptions extends WorkspaceOptions {
  mode?: PlanMode;
}

export type PreparedImport =
  /** closed: imports found interrupted (their process ended) and closed as failed */
  | { ok: true; source: string; template: OrgTemplate; plan: WorkspacePlan; text: string; closed: string[] }
  | { ok: false; source: string; error: MpError; issues: string[] };

/** Parse, validate and plan; nothing is written. */
export function planImport(source: string, opts: PlanOptions): PreparedImport {
  const src = path.resolve(source);
  const env = workspaceEnv(opts);
  let loaded;
  try {
    loaded = loadOrgTemplate(src, { devices: opts.runtime.devices, registry: opts.runtime.invoker.registry });
  } catch (err) {
    const e = toMpError(err);
    return { ok: false, source: src, error: e, issues: [e.message] };
  }
  if (!loaded.ok) {
    const root = (() => { try { return statSync(src).isDirectory() ? src : path.dirname(src); } catch { return path.dirname(src); } })();
    const issues = loaded.issues.map((i) => formatTemplateIssue(i, root));
    return { ok: false, source: src, error: { code: 'manifest_invalid', message: `${issues.length} problem${issues.length === 1 ? '' : 's'} in the template:\n${issues.join('\n')}` }, issues };
  }
  const closed = closeInterrupted(env);
  const plan = planRows(loaded.template, env.store.list(), opts.mode ?? 'merge');
  return { ok: true, source: src, template: loaded.template, plan, text: renderPlan(plan), closed };
}

export type ImportProgress =
  | { type: 'start'; id: string; template: string; mode: PlanMode; total: number }
  | { type: 'step'; index: number; total: number; action: 'create' | 'update' | 'remove'; name: string; status: 'running' | 'done' | 'failed' | 'skipped'; message?: string; ms?: number }
  | { type: 'info'; message: string };

export interface ImportResult {
  ok: boolean;
  /** done: everything applied; partly done: some workspaces failed (see failures); failed: nothing applied; nothing to do; dry run */
  status: 'done' | 'partly done' | 'failed' | 'nothing to do' | 'dry run';
  message: string;
  counts: ImportCounts;
  failures: Array<{ name: string; action: 'create' | 'update' | 'remove'; error: MpError; undone: string[]; leftovers: string[] }>;
  importId?: string;
  durationMs: number;
}

export interface ApplyOptions extends WorkspaceOptions {
  dryRun?: boolean;
}

function spec(ws: TemplateWorkspace, label: string): WorkspaceSpecRow {
  return {
    name: ws.name, parent: ws.parent, device: ws.device ?? '', vm: ws.vm ?? null, home: ws.home, role_hash: roleHash(ws.role), role: ws.role,
    model: ws.model ?? null, capabilities: [...new Set(ws.capabilities)].sort(), template: label,
  };
}

/** Applies a prepared plan (or only reports it, on a dry run). Never throws. */
export async function applyImport(prepared: PreparedImport, opts: ApplyOptions, onProgress: (p: ImportProgress) => void = () => undefined): Promise<ImportResult> {
  const t0 = Date.now();
  const counts: ImportCounts = { created: 0, updated: 0, skipped: 0, removed: 0, failed: 0 };
  const result = (r: Omit<ImportResult, 'durationMs' | 'counts'>): ImportResult => ({ ...r, counts, durationMs: Date.now() - t0 });
  if (!prepared.ok) return result({ ok: false, status: 'failed', message: prepared.error.message, failures: [] });
  const { plan, template } = prepared;
  counts.skipped = plan.skipped.length;
  if (plan.blocked.length > 0) {
    return result({ ok: false, status: 'failed', message: `the plan is blocked, nothing was changed:\n${plan.blocked.map((b) => `  ${b}`).join('\n')}`, failures: [] });
  }
  if (opts.dryRun) return result({ ok: true, status: 'dry run', message: `dry run: nothing was changed${plan.noop ? ' (and there is nothing to do)' : ''}`, failures: [] });
  const env = workspaceEnv(opts);
  for (const line of closeInterrupted(env)) onProgress({ type: 'info', message: line });
  const other = env.runs.activeElsewhere();
  if (other) return result({ ok: false, status: 'failed', message: `another import (${other.template}, pid ${other.pid}) is running; wait for it`, failures: [] });
  const run = env.runs.begin(plan.template, plan.mode, env.actor, prepared.source);
  run.counts = counts;
  const failures: ImportResult['failures'] = [];
  try {
    // Re-plan under the marker: the table may have changed since the preview (another import, a rm).
    const current = planRows(template, env.store.list(), plan.mode);
    if (current.blocked.length > 0) throw new MeshpilotError('usage', `the plan is blocked now: ${current.blocked.join('; ')}`);
    if (current.create.length > 0 && !env.o.config) throw new MeshpilotError('config', 'Matrix is not configured (run `meshpilot init`): each workspace gets its own bot account');
    if (current.create.length > 0 && env.o.config) {
      // meshpilot's admin account, made on first use: once here, not by the creates running side by side
      const { adminToken } = await import('../enroll/matrix.js');
      await adminToken(opts.runtime.home, env.o.config);
    }
    const creates = new Set(current.create);
    const updates = new Set(current.update);
    const work = template.all.filter((w) => creates.has(w.name) || updates.has(w.name));
    const total = work.length + current.removals.length;
    onProgress({ type: 'start', id: run.id, template: plan.template, mode: plan.mode, total });
    if (current.noop) {
      env.runs.finish(run, null, { noop: true });
      return result({ ok: true, status: 'nothing to do', message: `${plan.template}: nothing to do (the workspaces match the template)`, failures, importId: run.id });
    }
    const failedNames = new Set<string>();
    const indexOf = new Map<string, number>();
    let index = 0;
    const specs = new Map<string, WorkspaceSpecRow>();
    const prepared: Array<{ p: PreparedWorkspace; live: Promise<StepResult> }> = [];
    const report = (ws: WorkspaceSpecRow, action: 'create' | 'update', r: StepResult): void => {
      const i = indexOf.get(ws.name) ?? 0;
      env.runs.step(run, action === 'create' ? 'workspace.create' : 'workspace.update', {
        workspace: ws.name, device: ws.device, home: ws.home, parent: ws.parent, template: plan.template,
        ...(r.ok ? { live: r.live } : { undone: r.undone, leftovers: r.leftovers }),
      }, r.ok ? null : r.error, r.ms);
      if (r.ok) {
        if (action === 'create') counts.created++;
        else counts.updated++;
        onProgress({ type: 'step', index: i, total, action, name: ws.name, status: 'done', message: r.message, ms: r.ms });
      } else {
        failedNames.add(ws.name);
        counts.failed++;
        failures.push({ name: ws.name, action, error: r.error, undone: r.undone, leftovers: r.leftovers });
        const undo = r.undone.length ? `; undone: ${r.undone.join(', ')}` : '';
        const left = r.leftovers.length ? `; left: ${r.leftovers.join('; ')}` : '';
        onProgress({ type: 'step', index: i, total, action, name: ws.name, status: 'failed', message: `${r.error.message}${undo}${left}`, ms: r.ms });
      }
      env.runs.progress(run);
    };
    // Steps 1-4 of each (derive, home, account, manifest; an update all of its work), parents before
    // children: one tree level at a time, a few side by side. A child of a failed parent is not made.
    const one = async (ws: TemplateWorkspace): Promise<void> => {
      const i = ++index;
      indexOf.set(ws.name, i);
      const action = creates.has(ws.name) ? 'create' : 'update';
      const s = spec(ws, plan.template);
      specs.set(ws.name, s);
      if (ws.parent && failedNames.has(ws.parent)) {
        failedNames.add(ws.name);
        const error: MpError = { code: 'exec_failed', message: `not ${action}d: its parent ${ws.parent} failed` };
        failures.push({ name: ws.name, action, error, undone: [], leftovers: [] });
        counts.failed++;
        onProgress({ type: 'step', index: i, total, action, name: ws.name, status: 'skipped', message: error.message });
        return;
      }
      onProgress({ type: 'step', index: i, total, action, name: ws.name, status: 'running', message: `${action === 'create' ? 'creating' : 'updating'} on ${s.device} (home ${s.home})` });
      if (action === 'update') return report(s, 'update', await updateWorkspace(env, s, run.id));
      const p = await prepareWorkspace(env, s, run.id);
      if (!p.ok) return report(s, 'create', p.result);
      // Step 5 starts now: the launcher starts this bot while the next workspaces are being made.
      prepared.push({ p: p.prepared, live: p.prepared.finish() });
    };
    const levels = new Map<number, TemplateWorkspace[]>();
    for (const ws of work) levels.set(ws.depth, [...(levels.get(ws.depth) ?? []), ws]);
    for (const depth of [...levels.keys()].sort((a, b) => a - b)) {
      const queue = [...levels.get(depth)!];
      const lane = async (): Promise<void> => { for (let ws = queue.shift(); ws; ws = queue.shift()) await one(ws); };
      await Promise.all(Array.from({ length: Math.min(CONCURRENCY, queue.length) }, lane));
    }
    // Step 5: each bot was started as soon as its workspace was made; each says live or is rolled back.
    if (prepared.length > 0) onProgress({ type: 'info', message: `${prepared.length} workspace${prepared.length === 1 ? '' : 's'} made (homes, accounts, manifests) in ${((Date.now() - run.startedAt) / 1000).toFixed(1)} s; waiting for ${prepared.length === 1 ? 'its bot' : 'their bots'} to say live …` });
    const finished = await Promise.all(prepared.map(async ({ p, live }) => ({ p, r: await live })));
    // A workspace whose parent did not come up is rolled back too: nothing reports to a workspace that is not there.
    const down = new Set(finished.filter((f) => !f.r.ok).map((f) => f.p.name));
    for (const f of finished) {
      if (!f.r.ok) continue;
      const chain: string[] = [];
      for (let p = f.p.ws.parent; p; p = specs.get(p)?.parent ?? null) chain.push(p);
      const gone = chain.find((p) => down.has(p));
      if (gone) {
        f.r = await f.p.rollback({ code: 'exec_failed', message: `rolled back: its parent ${f.p.ws.parent} did not come up (${gone} failed)` });
        down.add(f.p.name);
      }
    }
    for (const f of finished) report(f.p.ws, 'create', f.r);
    await removeTree(env, current.removals, { importId: run.id }, (r, i) => {
      if (r.ok) counts.removed++;
      else {
        counts.failed++;
        failures.push({ name: r.name, action: 'remove', error: r.error, undone: r.undone, leftovers: r.leftovers });
      }
      env.runs.progress(run);
      onProgress({ type: 'step', index: work.length + i, total, action: 'remove', name: r.name, status: r.ok ? 'done' : 'failed', message: r.ok ? r.message : r.error.message, ms: r.ms });
    });
    const summary = `${counts.created} created, ${counts.updated} updated, ${counts.skipped} skipped, ${counts.removed} removed`;
    if (failures.length === 0) {
      env.runs.finish(run, null);
      return result({ ok: true, status: 'done', message: `${plan.template}: done (${summary})`, failures, importId: run.id });
    }
    const which = failures.map((f) => `${f.name} (${f.action}: ${f.error.message})`).join('; ');
    const anyDone = counts.created + counts.updated + counts.removed > 0;
    const message = `${plan.template}: ${anyDone ? 'partly done' : 'failed'} (${summary}, ${counts.failed} failed): ${which}`;
    env.runs.finish(run, { code: 'exec_failed', message }, { failed: failures.map((f) => f.name) });
    return result({ ok: false, status: anyDone ? 'partly done' : 'failed', message, failures, importId: run.id });
  } catch (err) {
    const e = toMpError(err);
    env.runs.finish(run, e);
    return result({ ok: false, status: 'failed', message: `${plan.template}: failed: ${e.message}`, failures, importId: run.id });
  }
}
