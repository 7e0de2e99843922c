/**
 * Workspaces over HTTP (issue 18), the `workspace` command family's engine (launcher/workspaces/) with
 * the same arguments (launcher/workspaces/args.ts: the import modes, the name rule):
 *   GET    /v1/workspaces                    the org tree with states (the workspaces in the token's device scope)
 *   GET    /v1/workspaces/<name>             one workspace and what removing it removes (children first)
 *   POST   /v1/workspaces/import             {yaml, mode, dry_run, filename?}: the plan, and unless a dry run the
 *                                            import's result (done / partly done with which failed / failed)
 *   DELETE /v1/workspaces/<name>?confirm=<name>  the workspace and its descendants, children first: an alias of
 *                                            POST /v1/commands/workspace/rm {name, yes: true} (the same declaration
 *                                            and run), answering {ok, removed, message}
 * GET /v1/workspaces is `workspace ls` as JSON (the same engine call and scoping, launcher/commands/workspace.ts);
 * POST /v1/commands/workspace/ls answers the CLI's text.
 * The template is one file (`!include` cannot come with it). The token needs the capability
 * `workspace.import` (`workspace.rm` to remove), and every workspace the plan touches, and each device
 * it creates one on, in its device globs (a `*` token has all). Actor: `api:<token name>`.
 */
import { Hono } from 'hono';
import { z } from 'zod';
import type { HttpDeps } from '../types.js';
import { httpError } from '../errors.js';
import { stageTemplate } from '../../org-upload.js';
import { ImportModeSchema, WorkspaceRmArgs } from '../../workspaces/args.js';
import type { WorkspaceListing, WorkspaceOptions } from '../../workspaces/index.js';
import { isGroup } from '../../../capabilities/commands.js';
import { EXIT, type CliCommand } from '../../commands/context.js';
import { WORKSPACE_COMMANDS, scopedList } from '../../commands/workspace.js';
import type { ApiEnv } from './auth.js';
import { jsonBody, query } from './body.js';
import { commandAnswer, runCommand } from './commands.js';

export const WORKSPACE_IMPORT = 'workspace.import';
export const WORKSPACE_RM = 'workspace.rm';

const Name = WorkspaceRmArgs.shape.name;

export const WorkspaceImportRequestSchema = z.object({
  yaml: z.string().min(1).max(256 * 1024).describe('the org template: one YAML file (no !include)'),
  mode: ImportModeSchema.default('merge'),
  dry_run: z.boolean().default(false).describe('answer the plan only; change nothing'),
  filename: z.string().max(200).optional().describe('the name problems are reported under (default org.yaml)'),
}).strict().meta({ id: 'WorkspaceImportRequest' });

export const WorkspaceNodeSchema = z.object({
  name: z.string(),
  parent: z.string().nullable(),
  device: z.string(),
  home: z.string(),
  /** pending, live, failed, stopped, removing, or `manifest only` (a workspace manifest the table does not know) */
  state: z.string(),
  /** the template that created it; null: by hand */
  template: z.string().nullable(),
  /** its bot's state, when a launcher runs */
  bot: z.string().optional(),
  get children(): z.ZodArray<typeof WorkspaceNodeSchema> {
    return z.array(WorkspaceNodeSchema);
  },
}).meta({ id: 'WorkspaceNode' });

export const WorkspaceListSchema = z.object({
  count: z.number().int(),
  launcher: z.number().int().nullable(),
  workspaces: z.array(WorkspaceNodeSchema),
  text: z.string(),
}).meta({ id: 'WorkspaceList' });

export const WorkspaceDetailSchema = z.object({
  workspace: WorkspaceNodeSchema,
  /** removing it removes these, children first (itself last) */
  removal_order: z.array(z.string()),
}).meta({ id: 'WorkspaceDetail' });

const Counts = z.object({ created: z.number().int(), updated: z.number().int(), skipped: z.number().int(), removed: z.number().int(), failed: z.number().int() });

export const WorkspacePlanSchema = z.object({
  template: z.string(),
  mode: ImportModeSchema,
  create: z.array(z.string()),
  update: z.array(z.string()),
  unchanged: z.array(z.string()),
  skipped: z.array(z.string()),
  remove: z.array(z.string()),
  blocked: z.array(z.string()),
  noop: z.boolean(),
  /** the tree, as `meshpilot workspace import --dry-run` prints it */
  text: z.string(),
}).meta({ id: 'WorkspacePlan' });

export const WorkspaceImportResultSchema = z.object({
  ok: z.boolean(),
  plan: WorkspacePlanSchema,
  result: z.object({
    ok: z.boolean(),
    status: z.enum(['done', 'partly done', 'failed', 'nothing to do', 'dry run']),
    message: z.string(),
    counts: Counts,
    failures: z.array(z.object({ name: z.string(), action: z.enum(['create', 'update', 'remove']), error: z.object({ code: z.string(), message: z.string() }), undone: z.array(z.string()), leftovers: z.array(z.string()) })),
    import_id: z.string().nullable(),
    duration_ms: z.number(),
  }),
}).meta({ id: 'WorkspaceImportResult' });

export const WorkspaceTemplateErrorSchema = z.object({
  code: z.string(),
  message: z.string(),
  /** the template's problems, each as `file:line path: message` (absent for a bad body) */
  issues: z.array(z.string()).optional(),
}).meta({ id: 'WorkspaceTemplateError' });

export const WorkspaceRemoveQuerySchema = z.object({
  confirm: z.string().max(64).optional().describe('repeat the workspace name'),
  purge: z.enum(['true', 'false']).optional().describe("also delete its home's files"),
});

export const WorkspaceRemoveResultSchema = z.object({
  ok: z.boolean(),
  /** children first */
  removed: z.array(z.string()),
  message: z.string(),
}).meta({ id: 'WorkspaceRemoveResult' });

/** The engine's options for a request: the launcher's runtime and config, the token as actor, the bots' states. */
export function workspaceOptions(deps: HttpDeps, actor: string): WorkspaceOptions {
  const sup = deps.supervisor;
  return {
    runtime: deps.runtime, config: deps.config, actor, logger: deps.logger.child({ component: 'workspaces' }),
    ...(sup ? { bots: () => sup.status().map((b) => ({ device: b.device, state: b.state, pid: b.pid ?? null })) } : {}),
  };
}

function find(nodes: readonly WorkspaceListing[], name: string): WorkspaceListing | undefined {
  for (const n of nodes) {
    if (n.name === name) return n;
    const f = find(n.children, name);
    if (f) return f;
  }
  return undefined;
}

/** The `workspace rm` declaration DELETE runs (launcher/commands/workspace.ts), as POST /v1/commands/workspace/rm does. */
const RM_COMMAND = WORKSPACE_COMMANDS.find((e): e is CliCommand => !isGroup(e) && e.name === 'workspace rm');

export function workspaceRoutes(deps: HttpDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();

  app.get('/workspaces', async (c) => {
    const p = c.get('principal');
    const { listWorkspaces, renderList } = await import('../../workspaces/index.js');
    // The tree `workspace ls` prints, scoped the same way (launcher/commands/workspace.ts scopedList), as JSON.
    const l = scopedList(listWorkspaces(workspaceOptions(deps, p.actor)), (n) => p.allowsDevice(n), renderList);
    return c.json({ count: l.count, launcher: l.launcher ?? null, workspaces: l.roots, text: l.text }, 200);
  });

  app.get('/workspaces/:name', async (c) => {
    const name = c.req.param('name');
    const p = c.get('principal');
    const { listWorkspaces, removalOrder } = await import('../../workspaces/index.js');
    const o = workspaceOptions(deps, p.actor);
    const ws = Name.safeParse(name).success && p.allowsDevice(name) ? find(listWorkspaces(o).roots, name) : undefined;
    if (!ws) return httpError(c, 'not_found', `no workspace ${name.slice(0, 64)}`);
    return c.json({ workspace: ws, removal_order: removalOrder(name, o) }, 200);
  });

  app.post('/workspaces/import', async (c) => {
    const body = await jsonBody(c, WorkspaceImportRequestSchema);
    if (!body.ok) return body.res;
    const b = body.data;
    const p = c.get('principal');
    if (!p.allowsCapability(WORKSPACE_IMPORT)) return httpError(c, 'forbidden', `token ${p.name} may not import workspaces (needs ${WORKSPACE_IMPORT})`);
    const st = stageTemplate(b.yaml, b.filename ?? 'org.yaml');
    if (!st.ok) return c.json({ code: 'usage', message: st.message, issues: [st.message] }, 400);
    try {
      const { applyImport, planImport } = await import('../../workspaces/index.js');
      const o = workspaceOptions(deps, p.actor);
      const prepared = planImport(st.staged.file, { ...o, mode: b.mode });
      if (!prepared.ok) return c.json({ code: prepared.error.code, message: prepared.error.message, issues: prepared.issues }, 400);
      const plan = prepared.plan;
      // Every workspace the plan writes or removes, and each device it creates one on, must be in the token's scope.
      const hosts = prepared.template.all.filter((w) => plan.create.includes(w.name)).map((w) => w.device ?? '');
      const out = [...plan.create, ...plan.update, ...plan.removals, ...hosts].filter((n) => !p.allowsDevice(n));
      if (out.length > 0) return httpError(c, 'forbidden', `token ${p.name} may not touch ${[...new Set(out)].slice(0, 10).join(', ')} (not in its device scope)`);
      const r = await applyImport(prepared, { ...o, ...(b.dry_run ? { dryRun: true } : {}) });
      const planOut = { template: plan.template, mode: plan.mode, create: plan.create, update: plan.update, unchanged: plan.unchanged, skipped: plan.skipped, remove: plan.removals, blocked: plan.blocked, noop: plan.noop, text: prepared.text };
      const result = { ok: r.ok, status: r.status, message: r.message, counts: r.counts, failures: r.failures, import_id: r.importId ?? null, duration_ms: r.durationMs };
      // A blocked plan or one that failed before any change is the caller's to fix (409); a partly done import is 500 with its failures.
      const status = r.ok ? 200 : plan.blocked.length > 0 ? 409 : r.status === 'partly done' || r.failures.length > 0 ? 500 : 409;
      return c.json({ ok: r.ok, plan: planOut, result }, status);
    } finally {
      st.staged.remove();
    }
  });

  app.delete('/workspaces/:name', async (c) => {
    const name = c.req.param('name');
    const q = query(c, WorkspaceRemoveQuerySchema);
    if (!q.ok) return q.res;
    const p = c.get('principal');
    if (!Name.safeParse(name).success) return httpError(c, 'usage', `not a workspace name: ${name.slice(0, 64)}`);
    const { removalOrder } = await import('../../workspaces/index.js');
    const names = removalOrder(name, workspaceOptions(deps, p.actor));
    if (!p.allowsCapability(WORKSPACE_RM) || names.some((n) => !p.allowsDevice(n))) {
      return httpError(c, 'forbidden', `token ${p.name} may not remove ${names.join(', ').slice(0, 300)} (needs ${WORKSPACE_RM} and every name in its device scope)`);
    }
    const others = names.filter((n) => n !== name);
    if (q.data.confirm !== name) {
      return httpError(c, 'usage', `removing ${name} also removes ${others.length ? `its ${others.length} descendant${others.length === 1 ? '' : 's'} (${others.join(', ')}), first` : 'nothing else (no descendants)'}: repeat its name, ?confirm=${name}`);
    }
    // ?confirm is the HTTP form of the terminal's question: from here on it is `workspace rm <name> --yes`, the declaration's own run.
    if (!RM_COMMAND) return httpError(c, 'internal', 'the workspace rm command is not declared');
    const r = await runCommand(RM_COMMAND, { name, yes: true, ...(q.data.purge === 'true' ? { purge: true } : {}) }, deps, { actor: p.actor, allowsDevice: (d) => p.allowsDevice(d) });
    const last = (t: string): string => t.split('\n').map((l) => l.replace(/^(error: |✗ )/, '').trim()).filter(Boolean).pop() ?? '';
    if (r.exitCode !== EXIT.ok) {
      const a = commandAnswer(RM_COMMAND, r);
      return a.status === 200 ? httpError(c, 'exec_failed', last(r.stderr) || 'the removal failed', 500) : c.json({ code: a.body['code'], message: a.body['message'] }, a.status);
    }
    return c.json({ ok: true, removed: names, message: last(r.stdout) }, 200);
  });

  return app;
}
