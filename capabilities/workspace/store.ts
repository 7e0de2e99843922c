/**
 * The workspaces table in meshpilot.db: one row per workspace meshpilot knows, with its place in the
 * org tree (parent), its device and home, a hash of its role, its model and capabilities (so a plan
 * can tell unchanged from updated), the ownership label (the identity of the template that created
 * it; NULL when created by hand) and its state. Reconcile removes only rows carrying its own label.
 * `record` writes a plan's outcome in one transaction; the side effects of creating a workspace
 * (home, bot, account) are not here.
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { z } from 'zod';
import { applyNamedMigrations, registerMigration, type Db } from '../db.js';
import type { MpError } from '../errors.js';
import { logger as makeLogger } from '../log.js';
import { WorkspaceNameSchema } from './schema.js';

registerMigration('capabilities.workspaces.v1', `
  CREATE TABLE workspaces (
    name TEXT PRIMARY KEY,
    parent TEXT,
    device TEXT NOT NULL,
    home TEXT NOT NULL,
    role_hash TEXT NOT NULL,
    model TEXT,
    capabilities TEXT NOT NULL,
    template TEXT,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
  );
  CREATE INDEX workspaces_template ON workspaces (template);
  CREATE INDEX workspaces_parent ON workspaces (parent);
`);

// The VM of the device a workspace lives in (NULL: on the device itself).
registerMigration('capabilities.workspaces.v2', 'ALTER TABLE workspaces ADD COLUMN vm TEXT;');

export const WorkspaceStateSchema = z.enum(['pending', 'live', 'failed', 'stopped', 'removing']);
export type WorkspaceState = z.infer<typeof WorkspaceStateSchema>;

/** A row as read back (validated: the table is written by several processes and by hand). */
export const WorkspaceRowSchema = z.object({
  name: WorkspaceNameSchema,
  parent: WorkspaceNameSchema.nullable(),
  device: z.string().min(1).max(64),
  /** the VM of that device it lives in; null (or absent) = on the device itself */
  vm: z.string().min(1).max(64).nullable().optional(),
  home: z.string().min(1).max(1024),
  role_hash: z.string().regex(/^[0-9a-f]{64}$/),
  model: z.string().max(200).nullable(),
  /** sorted, unique */
  capabilities: z.array(z.string().max(128)).max(64),
  /** ownership label: the template identity that created it; null = by hand */
  template: z.string().max(64).nullable(),
  state: WorkspaceStateSchema,
});
export type WorkspaceRow = z.infer<typeof WorkspaceRowSchema>;

export function roleHash(role: string): string {
  return createHash('sha256').update(role).digest('hex');
}

/** What record() needs of a plan (plan.ts): rows to write, names to delete children first. */
export interface PlanRecord {
  template: string;
  upserts: Array<Omit<WorkspaceRow, 'state'>>;
  /** children first */
  removals: string[];
  blocked: string[];
}

export class WorkspaceStore {
  private readonly log: Logger;
  private readonly stmts;

  constructor(private readonly db: Db, logger?: Logger) {
    this.log = logger ?? makeLogger('workspaces');
    // this module may load after the database opened (the CLI opens it first): its table then comes now
    applyNamedMigrations(db);
    this.stmts = {
      all: db.prepare('SELECT name, parent, device, vm, home, role_hash, model, capabilities, template, state FROM workspaces ORDER BY name'),
      insert: db.prepare(`INSERT INTO workspaces (name, parent, device, vm, home, role_hash, model, capabilities, template, state, created_at, updated_at)
        VALUES (@name, @parent, @device, @vm, @home, @role_hash, @model, @capabilities, @template, @state, @now, @now)
        ON CONFLICT (name) DO UPDATE SET parent = @parent, device = @device, vm = @vm, home = @home, role_hash = @role_hash,
          model = @model, capabilities = @capabilities, template = @template, updated_at = @now`),
      remove: db.prepare('DELETE FROM workspaces WHERE name = ?'),
      setState: db.prepare('UPDATE workspaces SET state = ?, updated_at = ? WHERE name = ?'),
    };
  }

  list(): WorkspaceRow[] {
    const out: WorkspaceRow[] = [];
    for (const raw of this.stmts.all.all() as Array<Record<string, unknown>>) {
      let caps: unknown;
      try {
        caps = JSON.parse(String(raw.capabilities));
      } catch {
        caps = null;
      }
      const row = WorkspaceRowSchema.safeParse({ ...raw, capabilities: caps });
      if (row.success) out.push(row.data);
      else this.log.warn({ name: raw.name, issues: row.error.issues.map((i) => i.message) }, 'workspaces: unreadable row skipped');
    }
    return out;
  }

  /** Inserts or updates one row (a new row gets `state`; an update keeps the row's state). */
  upsert(row: Omit<WorkspaceRow, 'state'>, state: WorkspaceState = 'pending'): void {
    this.stmts.insert.run({ ...row, vm: row.vm ?? null, capabilities: JSON.stringify([...new Set(row.capabilities)].sort()), state, now: Date.now() });
  }

  remove(name: string): boolean {
    return this.stmts.remove.run(name).changes > 0;
  }

  setState(name: string, state: WorkspaceState): boolean {
    return this.stmts.setState.run(state, Date.now(), name).changes > 0;
  }

  /** Writes a plan's rows in one transaction: upserts parents first, then removals children first. A blocked plan writes nothing. */
  record(plan: PlanRecord): { ok: true; written: number; removed: number } | { ok: false; error: MpError } {
    if (plan.blocked.length > 0) return { ok: false, error: { code: 'usage', message: plan.blocked.join('\n') } };
    let removed = 0;
    this.db.transaction(() => {
      for (const row of plan.upserts) this.upsert(row);
      for (const name of plan.removals) if (this.remove(name)) removed++;
    }).immediate();
    this.log.info({ template: plan.template, written: plan.upserts.length, removed }, 'workspaces: plan recorded');
    return { ok: true, written: plan.upserts.length, removed };
  }
}
