/**
 * Workspaces, the launcher side (issue 18): the API the CLI (`meshpilot workspace …`), the operator
 * room (`!org`, an uploaded template) and the dashboard build on.
 *
 *   planImport(source, opts)            parse + validate + plan: { plan, text (the tree) } or the issues
 *   applyImport(prepared, opts, onProgress)  apply it (or a dry run): counts, failures, "partly done"
 *   removeWorkspace(name, opts)         the workspace and its descendants, children first
 *   removalOrder(name, opts)            what removeWorkspace would remove (for a confirmation)
 *   listWorkspaces(opts)                the org tree with states (and bot states when a launcher runs)
 *   closeInterruptedImports(opts)       close imports whose process ended as failed (`up` calls it)
 *
 * Every function takes WorkspaceOptions (env.ts): the runtime, the config, the actor, and the seams
 * (live wait, launcher, bot states). Errors are values; none of these throws.
 */
import { toMpError, type MpError } from '../../capabilities/errors.js';
import { closeInterrupted, workspaceEnv, type WorkspaceOptions } from './env.js';
import { descendantsFirst, removeTree } from './remove.js';
import type { StepResult } from './create.js';

export { applyImport, planImport, type ApplyOptions, type ImportProgress, type ImportResult, type PlanOptions, type PreparedImport } from './import.js';
export { listWorkspaces, renderList, type WorkspaceList, type WorkspaceListing } from './list.js';
export { CONTROLLER_CHAIN, IMPORT_CAPABILITY, INTERRUPTED, type ImportCounts } from './runs.js';
export { cliActor, type WorkspaceOptions } from './env.js';
export type { StepResult } from './create.js';

export interface RemoveOptions extends WorkspaceOptions {
  purge?: boolean;
}

export interface RemoveResult {
  ok: boolean;
  /** children first */
  names: string[];
  steps: StepResult[];
  message: string;
  error?: MpError;
}

/** The workspace and its descendants, children first (the table's tree; a manifest-only workspace is itself). */
export function removalOrder(name: string, opts: WorkspaceOptions): string[] {
  return descendantsFirst(workspaceEnv(opts).store.list(), name);
}

export async function removeWorkspace(name: string, opts: RemoveOptions, onStep?: (r: StepResult, index: number, total: number) => void): Promise<RemoveResult> {
  try {
    const env = workspaceEnv(opts);
    const names = descendantsFirst(env.store.list(), name);
    const steps = await removeTree(env, names, { ...(opts.purge ? { purge: true } : {}) }, onStep);
    const failed = steps.filter((s): s is Extract<StepResult, { ok: false }> => !s.ok);
    if (failed.length === 0) {
      const gone = steps.length === 1 && steps[0]!.ok && /already gone/.test(steps[0]!.message);
      return { ok: true, names, steps, message: gone ? `${name}: nothing to remove (already gone)` : `removed ${names.length} workspace${names.length === 1 ? '' : 's'}: ${names.join(', ')}` };
    }
    const message = `removal of ${name} incomplete: ${failed.map((f) => f.error.message).join('; ')}`;
    return { ok: false, names, steps, message, error: { code: 'exec_failed', message } };
  } catch (err) {
    const e = toMpError(err);
    return { ok: false, names: [name], steps: [], message: e.message, error: e };
  }
}

/** Closes imports interrupted by the end of their process (each `started` gets its `failed`); one line per run closed. */
export function closeInterruptedImports(opts: WorkspaceOptions): string[] {
  return closeInterrupted(workspaceEnv(opts));
}
