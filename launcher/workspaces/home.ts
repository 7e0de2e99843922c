/**
 * A workspace's home, wherever it is, for the import and rm: does a path exist, write the role file,
 * delete a file, purge the home. Every operation is a capability call through `invoke` on the host
 * device, as the importing actor (checked and audited like any call; the operator approved the plan,
 * so no second ✅):
 * - on the device itself: fs.stat / fs.write / fs.delete / fs.list on the device's manifest;
 * - in one of its VMs: vm.exec of a short POSIX sh script, with every path and the role text passed
 *   as arguments (never spliced into the script). `~` is the VM's $HOME, as the vm transport sees it.
 */
import { autoApprove, type InvokeResult } from '../../capabilities/invoke.js';
import { MeshpilotError } from '../../capabilities/errors.js';
import type { WorkspaceEnv } from './env.js';

export const ROLE_FILE = 'ROLE.md';

/** vm.exec takes arguments of up to 8192 bytes: the role text goes in pieces (2,000 characters are at most 8,000 bytes). */
const ROLE_CHUNK_CHARS = 2000;
/** $1 → $p, with a leading ~ as the VM's home. */
const RESOLVE = 'p=$1; case $p in "~") p=$HOME;; "~/"*) p=$HOME/${p#"~/"};; esac';

export interface HomeOps {
  /** "on server", "in VM dev on server": for messages */
  readonly where: string;
  /** true / false; undefined when the device's manifest does not let us look (fs.stat not granted) */
  exists(p: string): Promise<boolean | undefined>;
  /** <home>/ROLE.md with this text (missing directories made) */
  writeRole(home: string, text: string): Promise<void>;
  /** deletes one file; gone already is fine */
  deleteFile(p: string): Promise<void>;
  /** rm --purge: what was deleted (notes) and what could not be (leftovers) */
  purge(home: string): Promise<{ notes: string[]; leftovers: string[] }>;
}

function callError(r: InvokeResult, what: string): MeshpilotError {
  const e = r.error ?? { code: 'internal' as const, message: 'failed' };
  return new MeshpilotError(e.code, `${what}: ${e.message}`);
}

export function homeOps(env: WorkspaceEnv, place: { device: string; vm?: string | null | undefined }, importId: string | undefined): HomeOps {
  const { device } = place;
  const call = (capability: string, args: Record<string, unknown>): Promise<InvokeResult> =>
    env.o.runtime.invoker.invoke({ device, capability, args, actor: env.actor, context: { workspace_import: importId ?? null } }, autoApprove);
  if (place.vm) return vmHome(place.vm, device, call);
  return {
    where: `on ${device}`,
    async exists(p) {
      const r = await call('fs.stat', { path: p });
      if (r.ok) return true;
      if (r.error?.code === 'not_found') return false;
      return undefined;
    },
    async writeRole(home, text) {
      const r = await call('fs.write', { path: `${home}/${ROLE_FILE}`, content: text, mode: '0644' });
      if (!r.ok) throw callError(r, `making its home ${home} on ${device} (fs.write ${ROLE_FILE})`);
    },
    async deleteFile(p) {
      const r = await call('fs.delete', { path: p });
      if (!r.ok && r.error?.code !== 'not_found') throw callError(r, `deleting ${p}`);
    },
    async purge(home) {
      // fs.delete removes files: the top level of the home goes, directories stay (and are named)
      const notes: string[] = [];
      const leftovers: string[] = [];
      const list = await call('fs.list', { path: home });
      let names: Array<{ name: string; type: string }> = [{ name: ROLE_FILE, type: 'file' }];
      if (list.ok) names = (list.result?.data as { entries?: Array<{ name: string; type: string }> } | undefined)?.entries ?? names;
      else if (list.error?.code === 'not_found') return { notes: [`home ${home} already gone`], leftovers };
      let deleted = 0;
      const dirs: string[] = [];
      for (const e of names) {
        if (e.type === 'dir') { dirs.push(e.name); continue; }
        const r = await call('fs.delete', { path: `${home}/${e.name}` });
        if (r.ok || r.error?.code === 'not_found') deleted++;
        else leftovers.push(`purging ${home}/${e.name}: ${r.error?.message ?? 'failed'}`);
      }
      notes.push(`home ${home} purged (${deleted} file${deleted === 1 ? '' : 's'} deleted${dirs.length ? `; directories left: ${dirs.join(', ')}` : ''})`);
      return { notes, leftovers };
    },
  };
}

function vmHome(vm: string, device: string, call: (capability: string, args: Record<string, unknown>) => Promise<InvokeResult>): HomeOps {
  const where = `in VM ${vm} on ${device}`;
  const sh = (script: string, ...args: string[]): Promise<InvokeResult> => call('vm.exec', { name: vm, argv: ['sh', '-c', `${RESOLVE}; ${script}`, 'sh', ...args] });
  return {
    where,
    async exists(p) {
      const r = await sh('test -e "$p" || test -L "$p"', p);
      if (r.ok) return true;
      if (r.result?.exitCode === 1) return false;
      throw callError(r, `looking for ${p} ${where} (vm.exec)`);
    },
    async writeRole(home, text) {
      const chunks: string[] = [];
      for (let i = 0; i < text.length; i += ROLE_CHUNK_CHARS) chunks.push(text.slice(i, i + ROLE_CHUNK_CHARS));
      const r = await sh(
        `mkdir -p -- "$p" && shift && { for c in "$@"; do printf %s "$c"; done; } > "$p/.${ROLE_FILE}.tmp" && mv -f -- "$p/.${ROLE_FILE}.tmp" "$p/${ROLE_FILE}"`,
        home, ...chunks,
      );
      if (!r.ok) throw callError(r, `making its home ${home} ${where} (vm.exec)${r.result?.stderr ? `: ${String(r.result.stderr).trim().slice(0, 300)}` : ''}`);
    },
    async deleteFile(p) {
      const r = await sh('rm -f -- "$p"', p);
      if (!r.ok) throw callError(r, `deleting ${p} ${where} (vm.exec)`);
    },
    async purge(home) {
      // The whole home goes: it is the workspace's own directory in the VM (never / or ~: derive.ts refuses those)
      const there = await this.exists(home).catch(() => undefined);
      if (there === false) return { notes: [`home ${home} ${where} already gone`], leftovers: [] };
      const r = await sh('rm -rf -- "$p"', home);
      return r.ok ? { notes: [`home ${home} ${where} deleted`], leftovers: [] } : { notes: [], leftovers: [`purging ${home} ${where}: ${r.error?.message ?? 'failed'}`] };
    },
  };
}
