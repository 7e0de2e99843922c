/**
 * `workspace ls`: the org tree from the workspaces table (and workspace manifests made by hand,
 * which the table does not know), each with its state, device, home, owner and, when a launcher
 * runs, its bot's state (the supervisor's own when the caller is the launcher, else its process).
 */
import type { WorkspaceRow } from '../../capabilities/workspace/store.js';
import { botProcesses } from './bot-process.js';
import { workspaceEnv, type WorkspaceOptions } from './env.js';

export interface WorkspaceListing {
  name: string;
  parent: string | null;
  device: string;
  /** the VM of the device it lives in */
  vm?: string;
  home: string;
  /** the table's state; `manifest only` for a workspace manifest the table does not know */
  state: WorkspaceRow['state'] | 'manifest only';
  template: string | null;
  /** running / stopped / the supervisor's state; undefined when no launcher runs or it cannot be told */
  bot?: string;
  children: WorkspaceListing[];
}

export interface WorkspaceList {
  roots: WorkspaceListing[];
  count: number;
  /** the launcher's pid, when one runs */
  launcher?: number;
  text: string;
}

export function listWorkspaces(opts: WorkspaceOptions): WorkspaceList {
  const env = workspaceEnv(opts);
  const rows = env.store.list();
  const items = new Map<string, WorkspaceListing>();
  for (const r of rows) items.set(r.name, { name: r.name, parent: r.parent, device: r.device, ...(r.vm ? { vm: r.vm } : {}), home: r.home, state: r.state, template: r.template, children: [] });
  const devices = opts.runtime.devices;
  for (const d of devices.names()) {
    if (items.has(d)) continue;
    const m = devices.get(d);
    if (m?.workspace) items.set(d, { name: d, parent: m.workspace.parent, device: m.workspace.host, ...(m.workspace.vm ? { vm: m.workspace.vm } : {}), home: m.workspace.home, state: 'manifest only', template: m.workspace.template, children: [] });
  }
  const launcher = env.launcher();
  if (launcher) {
    const own = opts.bots?.();
    const procs = own ? undefined : botProcesses(opts.runtime.home.root, launcher.pid);
    for (const it of items.values()) {
      if (own) {
        const b = own.find((x) => x.device === it.name);
        it.bot = b ? b.state : 'not started';
      } else if (procs) it.bot = procs.has(it.name) ? `running (pid ${procs.get(it.name)})` : 'not running';
    }
  }
  const roots: WorkspaceListing[] = [];
  const byCode = (a: WorkspaceListing, b: WorkspaceListing): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  for (const it of [...items.values()].sort(byCode)) {
    const p = it.parent ? items.get(it.parent) : undefined;
    if (p && p !== it) p.children.push(it);
    else roots.push(it);
  }
  return { roots, count: items.size, ...(launcher ? { launcher: launcher.pid } : {}), text: renderList(roots, items.size, launcher?.pid) };
}

export function renderList(roots: readonly WorkspaceListing[], count: number, launcherPid?: number): string {
  if (count === 0) return 'no workspaces: import an org template with `meshpilot workspace import <dir|file>`';
  const lines = [`${count} workspace${count === 1 ? '' : 's'}${launcherPid ? ` (launcher pid ${launcherPid})` : ' (no launcher running: bots are not started)'}`];
  const walk = (nodes: readonly WorkspaceListing[], prefix: string, top: boolean): void => {
    nodes.forEach((n, i) => {
      const last = i === nodes.length - 1;
      const branch = top ? '' : last ? '└─ ' : '├─ ';
      const owner = n.template ? `template ${n.template}` : 'by hand';
      lines.push(`${prefix}${branch}${n.name}  ${n.state}  ${n.vm ? `in VM ${n.vm} ` : ''}on ${n.device}  ${n.home}  (${owner}${n.bot ? `; bot ${n.bot}` : ''})`);
      walk(n.children, top ? prefix : prefix + (last ? '   ' : '│  '), false);
    });
  };
  walk(roots, '', true);
  return lines.join('\n');
}
