/**
 * Planning an import: the parsed template against the workspaces table gives create / update /
 * unchanged / skip / remove, as a tree. `merge` (default) only adds and updates. `reconcile` also
 * removes the workspaces this template created before (their ownership label is the template's
 * identity) and that it no longer names, children first; never one created by hand or by another
 * template. A name already taken by someone else's workspace is a conflict, and a plan that would
 * remove every workspace of the template while keeping none is refused (the empty-plan guard).
 * Pure: no I/O. WorkspaceStore.record writes the outcome.
 */
import type { OrgTemplate, TemplateWorkspace } from './schema.js';
import { roleHash, type PlanRecord, type WorkspaceRow } from './store.js';

export const PLAN_MODES = ['merge', 'reconcile'] as const;
export type PlanMode = (typeof PLAN_MODES)[number];
export type PlanAction = 'create' | 'update' | 'unchanged' | 'skip' | 'remove' | 'conflict';

export type DesiredRow = Omit<WorkspaceRow, 'state'>;

export interface PlanNode {
  name: string;
  action: PlanAction;
  /** for update: the fields that differ; for skip/conflict/remove: why */
  detail?: string;
  device?: string;
  /** the VM of the device it lives in */
  vm?: string;
  children: PlanNode[];
}

export interface WorkspacePlan extends PlanRecord {
  /** the ownership label written on the rows this template creates */
  template: string;
  mode: PlanMode;
  tree: PlanNode[];
  create: string[];
  update: string[];
  unchanged: string[];
  skipped: string[];
  /** children first */
  removals: string[];
  conflicts: string[];
  /** workspaces of this template it no longer names, left alone in merge mode */
  orphans: string[];
  /** reasons the plan must not be applied (conflicts, the empty-plan guard) */
  blocked: string[];
  /** true when applying it changes nothing */
  noop: boolean;
}

/** The ownership label of a template: its name. */
export function templateIdentity(t: Pick<OrgTemplate, 'name'>): string {
  return t.name;
}

function desired(ws: TemplateWorkspace, template: string): DesiredRow {
  return {
    name: ws.name, parent: ws.parent, device: ws.device ?? '', vm: ws.vm ?? null, home: ws.home, role_hash: roleHash(ws.role),
    model: ws.model ?? null, capabilities: [...new Set(ws.capabilities)].sort(), template,
  };
}

function changedFields(want: DesiredRow, have: WorkspaceRow): string[] {
  const out: string[] = [];
  if (want.parent !== have.parent) out.push(`parent ${have.parent ?? '—'} → ${want.parent ?? '—'}`);
  if (want.device !== have.device) out.push(`device ${have.device} → ${want.device}`);
  if ((want.vm ?? null) !== (have.vm ?? null)) out.push(`vm ${have.vm ?? '—'} → ${want.vm ?? '—'}`);
  if (want.home !== have.home) out.push(`home ${have.home} → ${want.home}`);
  if (want.role_hash !== have.role_hash) out.push('role');
  if (want.model !== have.model) out.push(`model ${have.model ?? '—'} → ${want.model ?? '—'}`);
  const a = [...have.capabilities].sort().join(',');
  if (a !== want.capabilities.join(',')) {
    const added = want.capabilities.filter((c) => !have.capabilities.includes(c));
    const dropped = have.capabilities.filter((c) => !want.capabilities.includes(c));
    out.push(`capabilities${added.length ? ' +' + added.join(' +') : ''}${dropped.length ? ' -' + dropped.join(' -') : ''}`);
  }
  return out;
}

const owner = (row: WorkspaceRow): string => (row.template === null ? 'created by hand' : `of template ${row.template}`);

export function planImport(t: OrgTemplate, current: WorkspaceRow[], mode: PlanMode = 'merge'): WorkspacePlan {
  const label = templateIdentity(t);
  const byName = new Map(current.map((r) => [r.name, r]));
  const plan: WorkspacePlan = {
    template: label, mode, tree: [], create: [], update: [], unchanged: [], skipped: [], removals: [],
    conflicts: [], orphans: [], blocked: [], upserts: [], noop: true,
  };

  const visit = (ws: TemplateWorkspace): PlanNode => {
    const have = byName.get(ws.name);
    const node: PlanNode = { name: ws.name, action: 'unchanged', children: [], ...(ws.device ? { device: ws.device } : {}), ...(ws.vm ? { vm: ws.vm } : {}) };
    if (!ws.spawning) {
      node.action = 'skip';
      node.detail = `spawning: false at ${ws.skippedBy ?? '?'}${have ? '; the existing workspace is left as is' : ''}`;
      plan.skipped.push(ws.name);
    } else if (have && have.template !== label) {
      node.action = 'conflict';
      node.detail = `a workspace ${ws.name} already exists (${owner(have)})`;
      plan.conflicts.push(ws.name);
      plan.blocked.push(`${ws.name}: ${node.detail}; rename it in the template or remove that workspace`);
    } else {
      const want = desired(ws, label);
      if (!have || have.state === 'failed') {
        // A create that failed (rolled back, or cut short when its import's process ended) is made again.
        node.action = 'create';
        if (have) node.detail = 'again: its last create failed';
        plan.create.push(ws.name);
        plan.upserts.push(want);
      } else {
        const changes = changedFields(want, have);
        if (changes.length > 0) {
          node.action = 'update';
          node.detail = changes.join(', ');
          plan.update.push(ws.name);
          plan.upserts.push(want);
        } else plan.unchanged.push(ws.name);
      }
    }
    node.children = ws.children.map(visit);
    return node;
  };
  plan.tree = t.workspaces.map(visit);

  // Workspaces this template created before and no longer names (skipped ones are still named).
  const named = new Set(t.all.map((w) => w.name));
  const gone = current.filter((r) => r.template === label && !named.has(r.name));
  if (mode === 'merge') plan.orphans = gone.map((r) => r.name).sort();
  else if (gone.length > 0) {
    const goneSet = new Set(gone.map((r) => r.name));
    const depth = (r: WorkspaceRow): number => {
      let d = 0;
      for (let p = r.parent, seen = new Set<string>(); p && !seen.has(p); p = byName.get(p)?.parent ?? null) {
        seen.add(p);
        d++;
      }
      return d;
    };
    plan.removals = [...gone].sort((a, b) => depth(b) - depth(a) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((r) => r.name);
    // A workspace that stays must not be left reporting to a removed one (the template may move it: then its parent changes).
    const newParent = new Map(plan.upserts.map((u) => [u.name, u.parent]));
    for (const r of current) {
      if (goneSet.has(r.name) || !r.parent || !goneSet.has(r.parent)) continue;
      const parentAfter = newParent.has(r.name) ? newParent.get(r.name) : r.parent;
      if (parentAfter && goneSet.has(parentAfter)) {
        plan.blocked.push(`cannot remove ${r.parent}: ${r.name} (${owner(r)}) reports to it`);
      }
    }
    // Removed subtrees as trees (a removed workspace under a removed parent nests there).
    const nodes = new Map<string, PlanNode>(gone.map((r) => [r.name, { name: r.name, action: 'remove', device: r.device, ...(r.vm ? { vm: r.vm } : {}), detail: 'no longer in the template', children: [] }]));
    for (const r of [...gone].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const n = nodes.get(r.name)!;
      const parentNode = r.parent ? nodes.get(r.parent) : undefined;
      if (parentNode) parentNode.children.push(n);
      else plan.tree.push(n);
    }
    // The empty-plan guard: never remove everything this template owns while keeping nothing.
    const keeps = plan.create.length + plan.update.length + plan.unchanged.length;
    const owned = current.filter((r) => r.template === label).length;
    if (keeps === 0 && plan.removals.length >= owned) {
      plan.blocked.push(`the template ${label} keeps no workspace and would remove all ${owned} of its workspaces; refusing (an empty plan never removes everything)`);
    }
  }
  plan.noop = plan.upserts.length === 0 && plan.removals.length === 0;
  return plan;
}

const MARK: Record<PlanAction, string> = { create: '+', update: '~', unchanged: '=', skip: '·', remove: '-', conflict: '!' };

/** The plan as a text tree: a summary line, then one line per workspace with its mark and detail. */
export function renderPlan(plan: WorkspacePlan): string {
  const lines = [
    `org ${plan.template} (${plan.mode}): ${plan.create.length} create, ${plan.update.length} update, `
      + `${plan.unchanged.length} unchanged, ${plan.skipped.length} skipped, ${plan.removals.length} remove`
      + (plan.conflicts.length ? `, ${plan.conflicts.length} conflict` : '')
      + (plan.noop && plan.blocked.length === 0 ? ' — nothing to do' : ''),
  ];
  const walk = (nodes: PlanNode[], prefix: string, top: boolean): void => {
    nodes.forEach((n, i) => {
      const last = i === nodes.length - 1;
      const branch = top ? '' : last ? '└─ ' : '├─ ';
      const on = n.device && (n.action === 'create' || n.action === 'remove') ? `${n.vm ? ` in VM ${n.vm}` : ''} on ${n.device}` : '';
      lines.push(`${prefix}${branch}${MARK[n.action]} ${n.name}  ${n.action}${on}${n.detail ? ` (${n.detail})` : ''}`);
      walk(n.children, top ? prefix : prefix + (last ? '   ' : '│  '), false);
    });
  };
  walk(plan.tree, '', true);
  if (plan.mode === 'merge' && plan.orphans.length > 0) lines.push(`not in the template (kept in merge; reconcile removes them): ${plan.orphans.join(', ')}`);
  if (plan.removals.length > 0) lines.push(`removal order (children first): ${plan.removals.join(', ')}`);
  for (const b of plan.blocked) lines.push(`blocked: ${b}`);
  return lines.join('\n');
}
