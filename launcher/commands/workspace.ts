/**
 * `meshpilot workspace import <dir|file> [--mode merge|reconcile] [--dry-run] [--yes]`, `workspace ls`,
 * `workspace rm <name> [--purge] [--yes]` (engine: launcher/workspaces/). The import prints its plan as
 * a tree, then applies it with one line per workspace; `rm` names the descendants it removes first and
 * asks on a terminal. Exit codes: 0 ok (or nothing to do), 1 failed or partly done, 2 usage (an invalid
 * template, a blocked plan, no confirmation).
 * Declarations only at load; the engine loads when a command runs.
 */
import { defineCommand, defineGroup } from '../../capabilities/commands.js';
import { WorkspaceImportArgs, WorkspaceLsArgs, WorkspaceRmArgs } from '../workspaces/args.js';
import type { WorkspaceList, WorkspaceListing } from '../workspaces/list.js';
import { EXIT, UsageError, type CliEntry, type CommandContext } from './context.js';

const cli = ['cli'] as const;
/** `workspace import` stays CLI-only: its source is a path on the controller; over HTTP the template is the body (POST /v1/workspaces/import). */
const cliHttp = ['cli', 'http'] as const;

async function options(ctx: CommandContext) {
  const rt = await ctx.runtime();
  const { loadConfig } = await import('../../capabilities/config.js');
  const c = loadConfig(rt.home.config);
  if (!c.ok && !c.missing) throw new UsageError(`config ${rt.home.config} is invalid: ${c.errors.join('; ')}`);
  return { runtime: rt, config: c.ok ? c.config : undefined, ...(ctx.actor ? { actor: ctx.actor } : {}) };
}

/**
 * The tree as a caller scoped to some devices sees it (an API token's device globs): a workspace out of
 * scope is left out with its subtree (its children are reached through it). `render` is the engine's.
 */
export function scopedList(l: WorkspaceList, keep: (name: string) => boolean, render: (roots: WorkspaceListing[], count: number, launcher?: number) => string): WorkspaceList {
  const prune = (nodes: readonly WorkspaceListing[]): WorkspaceListing[] => nodes.filter((n) => keep(n.name)).map((n) => ({ ...n, children: prune(n.children) }));
  const count = (ns: readonly WorkspaceListing[]): number => ns.reduce((s, n) => s + 1 + count(n.children), 0);
  const roots = prune(l.roots);
  const n = count(roots);
  return { roots, count: n, ...(l.launcher !== undefined ? { launcher: l.launcher } : {}), text: n === l.count ? l.text : render(roots, n, l.launcher) };
}

function secs(ms: number | undefined): string {
  return ms === undefined ? '' : ` ${(ms / 1000).toFixed(1)} s`;
}

export const WORKSPACE_COMMANDS: CliEntry[] = [
  defineGroup('workspace', 'workspaces: an org of agents (one bot each) on your devices, imported from a template'),
  defineCommand({
    name: 'workspace import', summary: 'print the plan of an org template (create / update / unchanged / skip / remove), then apply it', permission: 'operator', surfaces: cli,
    args: WorkspaceImportArgs,
    positional: ['source'],
    cli: {
      flags: { mode: '--mode <mode>', yes: '-y, --yes' },
      helpAfter: '\nExit codes: 0 done (or nothing to do, or a dry run), 1 failed or partly done (the failed workspaces are rolled back\nand named), 2 an invalid template, a blocked plan, or no confirmation.\n',
    },
    run: async (a, ctx: CommandContext) => {
      const { io } = ctx;
      const o = await options(ctx);
      const { applyImport, planImport } = await import('../workspaces/index.js');
      const json = a.json === true;
      const emit = (obj: Record<string, unknown>): void => io.out(`${JSON.stringify(obj)}\n`);
      const prepared = planImport(a.source, { ...o, mode: a.mode });
      if (!prepared.ok) {
        if (json) emit({ type: 'result', ok: false, status: 'failed', message: prepared.error.message, issues: prepared.issues });
        else io.err(`${prepared.error.message}\n`);
        ctx.setExit(EXIT.usage);
        return;
      }
      for (const line of prepared.closed) json ? emit({ type: 'info', message: line }) : io.out(`${line}\n`);
      const p = prepared.plan;
      if (json) emit({ type: 'plan', template: p.template, mode: p.mode, create: p.create, update: p.update, unchanged: p.unchanged, skipped: p.skipped, remove: p.removals, blocked: p.blocked, noop: p.noop, text: prepared.text });
      else io.out(`${prepared.text}\n`);
      if (p.blocked.length > 0) {
        if (!json) io.err('✗ the plan is blocked: nothing was changed\n');
        ctx.setExit(EXIT.usage);
        return;
      }
      if (!a.dryRun && !a.yes && !p.noop) {
        const what = `${p.create.length} to create, ${p.update.length} to update${p.removals.length ? `, ${p.removals.length} to REMOVE (${p.removals.join(', ')})` : ''}`;
        if (io.isTTY && io.ask && !json) {
          const ans = await io.ask(`Apply this plan (${what})? [y/N] `);
          if (!/^y(es)?$/i.test(ans.trim())) {
            io.err('not applied (answered no)\n');
            ctx.setExit(EXIT.failed);
            return;
          }
        } else if (p.removals.length > 0) {
          io.err(`✗ this plan removes workspaces (${p.removals.join(', ')}): run it in a terminal to confirm, or pass --yes\n`);
          ctx.setExit(EXIT.usage);
          return;
        }
      }
      const fault = process.env['MESHPILOT_WORKSPACE_FAULT'];
      const r = await applyImport(prepared, { ...o, ...(a.dryRun ? { dryRun: true } : {}), ...(fault ? { fault } : {}) }, (e) => {
        if (json) return emit(e as unknown as Record<string, unknown>);
        if (e.type === 'info') io.out(`${e.message}\n`);
        else if (e.type === 'start') io.out(`applying ${e.template} (${e.mode}, import ${e.id.slice(0, 8)}): ${e.total} step${e.total === 1 ? '' : 's'}\n`);
        else if (e.type === 'step') {
          const mark = e.action === 'create' ? '+' : e.action === 'update' ? '~' : '-';
          const head = `[${e.index}/${e.total}] ${mark} ${e.name}`;
          if (e.status === 'running') io.out(`${head} ${e.message ?? ''} …\n`);
          else if (e.status === 'done') io.out(`${head} done${secs(e.ms)}: ${e.message ?? ''}\n`);
          else io.out(`${head} ${e.status === 'skipped' ? 'SKIPPED' : 'FAILED'}${secs(e.ms)}: ${e.message ?? ''}\n`);
        }
      });
      if (json) emit({ type: 'result', ...r });
      else if (r.ok) io.out(`${r.message}\n`);
      else io.err(`✗ ${r.message}\n`);
      ctx.setExit(r.ok ? EXIT.ok : EXIT.failed);
    },
  }),
  defineCommand({
    name: 'workspace ls', summary: 'the org tree: each workspace with its state, device, home, and its bot when a launcher runs', permission: 'operator', surfaces: cliHttp,
    args: WorkspaceLsArgs,
    run: async (a, ctx: CommandContext) => {
      const o = await options(ctx);
      const { listWorkspaces, renderList } = await import('../workspaces/index.js');
      const all = listWorkspaces(o);
      const l = ctx.allowsDevice ? scopedList(all, ctx.allowsDevice, renderList) : all;
      ctx.io.out(a.json ? `${JSON.stringify({ count: l.count, launcher: l.launcher ?? null, workspaces: l.roots }, null, 2)}\n` : `${l.text}\n`);
    },
  }),
  defineCommand({
    name: 'workspace rm', summary: 'remove a workspace and its descendants (children first): bots stopped, accounts deactivated, manifests and keys archived, homes kept unless --purge', permission: 'operator', surfaces: cliHttp,
    args: WorkspaceRmArgs,
    positional: ['name'],
    cli: { flags: { yes: '-y, --yes' } },
    run: async (a, ctx: CommandContext) => {
      const { io } = ctx;
      const o = await options(ctx);
      const { removalOrder, removeWorkspace } = await import('../workspaces/index.js');
      const names = removalOrder(a.name, o);
      const others = names.filter((n) => n !== a.name);
      const scope = ctx.allowsDevice;
      const outside = scope ? names.filter((n) => !scope(n)) : [];
      if (outside.length > 0) {
        io.err(`may not remove ${names.join(', ')}: ${outside.join(', ')} not in the caller's device scope\n`);
        ctx.setExit(EXIT.denied);
        return;
      }
      if (!a.yes) {
        const what = `Remove ${a.name}${others.length ? ` and its ${others.length} descendant${others.length === 1 ? '' : 's'} (${others.join(', ')})` : ''}? `
          + `${names.length === 1 ? 'Its bot stops, its account is deactivated' : 'Their bots stop, their accounts are deactivated'}, manifests and keys are archived; `
          + `${a.purge ? 'homes are PURGED' : 'homes are kept'}. [y/N] `;
        if (!io.isTTY || !io.ask) throw new UsageError(`removing ${a.name}${others.length ? ` (and ${others.join(', ')})` : ''} needs confirmation: run it in a terminal, or pass --yes`);
        const ans = await io.ask(what);
        if (!/^y(es)?$/i.test(ans.trim())) {
          io.err('not removed (answered no)\n');
          ctx.setExit(EXIT.failed);
          return;
        }
      }
      const r = await removeWorkspace(a.name, { ...o, ...(a.purge ? { purge: true } : {}) }, (s, i, total) => {
        io.out(`[${i}/${total}] - ${s.name} ${s.ok ? `done${secs(s.ms)}: ${s.message}` : `FAILED: ${s.error.message}`}\n`);
      });
      if (r.ok) io.out(`${r.message}\n`);
      else io.err(`✗ ${r.message}\n`);
      ctx.setExit(r.ok ? EXIT.ok : EXIT.failed);
    },
  }),
];
