/**
 * The arguments of the workspace commands, import-free (zod only) so every surface's declarations
 * can share them without loading the engine: the CLI (launcher/commands/workspace.ts), the operator
 * room's `!org`, the HTTP API.
 */
import { z } from 'zod';

/** Same values as capabilities/workspace/plan.ts PLAN_MODES (not imported: that module loads SQLite). */
export const ImportModeSchema = z.enum(['merge', 'reconcile']);

const Name = z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/, 'a workspace name: 1-32 of a-z, 0-9 and -, not starting with -');

export const WorkspaceImportArgs = z.object({
  source: z.string().min(1).max(4096).describe('the org template: a directory (its org.yaml) or a YAML file'),
  mode: ImportModeSchema.default('merge').describe('merge: add and update; reconcile: also remove what this template created and no longer names'),
  dryRun: z.boolean().optional().describe('print the plan; change nothing'),
  yes: z.boolean().optional().describe('apply without asking'),
  json: z.boolean().optional().describe('one JSON object per line (plan, progress, result)'),
});

export const WorkspaceLsArgs = z.object({
  json: z.boolean().optional().describe('print JSON'),
});

export const WorkspaceRmArgs = z.object({
  name: Name.describe('the workspace (its descendants go first)'),
  purge: z.boolean().optional().describe("also delete its home's files (through fs.delete on its device)"),
  yes: z.boolean().optional().describe('do not ask for confirmation'),
});
