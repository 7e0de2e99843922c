/**
 * Removing workspaces: a workspace and its descendants, children first. For each:
 *   1 its row marked `removing`
 *   2 its manifest and keys archived in MESHPILOT_HOME/archive/<name>-<timestamp>/ (0700)
 *   3 its manifest removed: the launcher's supervisor stops its bot (SIGHUP too); we wait for the
 *     bot's process to be gone
 *   4 its Matrix account deactivated, its keys and bot state removed
 *   5 its home kept, unless `purge`: then its files are deleted through invoke (home.ts: fs.delete
 *     on the host device, directories stay; in a VM the whole home goes, by vm.exec)
 *   6 its row deleted, the remove audited
 * Something already gone counts as removed (never wedged on not-found).
 */
import { cpSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { botUserId } from '../../capabilities/config.js';
import { toMpError, type MpError } from '../../capabilities/errors.js';
import type { WorkspaceRow } from '../../capabilities/workspace/store.js';
import { readCredentials } from '../../bots/credentials.js';
import { botProcesses } from './bot-process.js';
import type { StepResult } from './create.js';
import { homeOps } from './home.js';
import { pokeLauncher, type WorkspaceEnv } from './env.js';

export interface RemoveOneOptions {
  purge?: boolean;
  importId?: string;
}

/** The workspace and its descendants (from the table), children first; names not in the table are left to the caller. */
export function descendantsFirst(rows: readonly WorkspaceRow[], name: string): string[] {
  const kids = new Map<string, string[]>();
  for (const r of rows) if (r.parent) kids.set(r.parent, [...(kids.get(r.parent) ?? []), r.name]);
  const out: string[] = [];
  const seen = new Set<string>();
  const walk = (n: string): void => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const c of [...(kids.get(n) ?? [])].sort()) walk(c);
    out.push(n);
  };
  walk(name);
  return out;
}

async function waitBotGone(env: WorkspaceEnv, name: string): Promise<string | undefined> {
  const l = env.launcher();
  if (!l) return undefined;
  const deadline = Date.now() + (env.o.stopTimeoutMs ?? 40_000);
  for (;;) {
    let running: boolean | undefined;
    const own = env.o.bots?.();
    if (own) running = own.some((b) => b.device === name && b.state !== 'stopped' && b.pid !== null);
    else running = botProcesses(env.o.runtime.home.root, l.pid)?.has(name);
    if (running === undefined) return 'bot state unknown here (no /proc): the launcher stops it';
    if (!running) return undefined;
    if (Date.now() > deadline) return `its bot was still running after ${Math.round((env.o.stopTimeoutMs ?? 40_000) / 1000)} s`;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Removes one workspace (not its children: see removeWorkspace). Never throws. */
export async function removeOne(env: WorkspaceEnv, name: string, opts: RemoveOneOptions = {}): Promise<StepResult & { archive?: string }> {
  const t0 = performance.now();
  const ms = (): number => Math.round(performance.now() - t0);
  const rt = env.o.runtime;
  const row = env.store.list().find((r) => r.name === name);
  const manifestFile = rt.devices.fileFor(name);
  const manifest = rt.devices.get(name);
  if (manifest && !manifest.workspace) {
    return { ok: false, name, error: { code: 'usage', message: `${name} is a device, not a workspace (revoke it with \`meshpilot revoke ${name}\`)` }, undone: [], leftovers: [], ms: ms() };
  }
  const keys = path.join(rt.home.keys, name);
  const notes: string[] = [];
  const leftovers: string[] = [];
  try {
    if (row) env.store.setState(name, 'removing');
    // 2: archive first, so what goes can still be looked at
    let archive: string | undefined;
    if (existsSync(manifestFile) || existsSync(keys)) {
      const ts = new Date().toISOString().replace(/[:.]/g, '-');
      archive = path.join(rt.home.archive, `${name}-${ts}`);
      mkdirSync(archive, { recursive: true, mode: 0o700 });
      if (existsSync(manifestFile)) cpSync(manifestFile, path.join(archive, 'manifest.yaml'));
      if (existsSync(keys)) cpSync(keys, path.join(archive, 'keys'), { recursive: true });
    }
    // 3: the bot stops when its manifest goes
    if (existsSync(manifestFile)) {
      rmSync(manifestFile, { force: true });
      pokeLauncher(env);
      const w = await waitBotGone(env, name);
      if (w) notes.push(w);
    }
    // 4: the account
    const config = env.o.config;
    if (config) {
      const userId = readCredentials(rt.home.keys, name)?.userId ?? botUserId(config, name);
      try {
        const { deactivateBotAccount } = await import('../enroll/matrix.js');
        if (await deactivateBotAccount({ home: rt.home, config, userId })) notes.push(`${userId} deactivated`);
      } catch (err) {
        leftovers.push(`deactivating ${userId}: ${toMpError(err).message}`);
      }
    } else notes.push('no Matrix config: its account (if any) is left as is');
    if (leftovers.length === 0) {
      rmSync(keys, { recursive: true, force: true });
      rmSync(path.join(rt.home.bots, name), { recursive: true, force: true });
    }
    // 5: the home
    const device = row?.device ?? manifest?.workspace?.host;
    const home = (row?.home ?? manifest?.workspace?.home)?.replace(/\/+$/, '');
    const vm = row?.vm ?? manifest?.workspace?.vm;
    if (opts.purge && device && home && rt.devices.get(device)) {
      const purged = await homeOps(env, { device, vm }, opts.importId).purge(home);
      notes.push(...purged.notes);
      leftovers.push(...purged.leftovers);
    } else if (home) notes.push(`home ${home} kept${opts.purge ? ` (device ${device ?? '?'} unknown: nothing purged)` : ''}`);
    if (leftovers.length > 0) {
      if (row) env.store.setState(name, 'failed');
      const error: MpError = { code: 'exec_failed', message: `${name}: removal incomplete: ${leftovers.join('; ')}` };
      env.runs.step({ id: opts.importId ?? `rm-${name}`, actor: env.actor }, 'workspace.remove', { workspace: name, archive: archive ?? null, leftovers }, error, ms());
      return { ok: false, name, error, undone: notes, leftovers, ms: ms() };
    }
    env.store.remove(name);
    env.runs.step({ id: opts.importId ?? `rm-${name}`, actor: env.actor }, 'workspace.remove', { workspace: name, device: device ?? null, archive: archive ?? null, purge: opts.purge === true, notes }, null, ms());
    const what = row || archive ? `${name} removed${archive ? `; archived in ${archive}` : ''}` : `${name} was already gone`;
    return { ok: true, name, live: false, message: `${what}${notes.length ? ` (${notes.join('; ')})` : ''}`, ms: ms(), ...(archive ? { archive } : {}) };
  } catch (err) {
    const error = toMpError(err);
    if (row) env.store.setState(name, 'failed');
    env.runs.step({ id: opts.importId ?? `rm-${name}`, actor: env.actor }, 'workspace.remove', { workspace: name }, error, ms());
    return { ok: false, name, error, undone: notes, leftovers, ms: ms() };
  }
}

/** The workspace and its descendants, children first; stops at the first failure (a parent never goes before its children). */
export async function removeTree(env: WorkspaceEnv, names: readonly string[], opts: RemoveOneOptions, onStep?: (r: StepResult, index: number, total: number) => void): Promise<StepResult[]> {
  const out: StepResult[] = [];
  const failed = new Set<string>();
  const rows = new Map(env.store.list().map((r) => [r.name, r]));
  for (const [i, name] of names.entries()) {
    // a parent whose child could not be removed stays (nothing may report to a removed workspace)
    const blockedBy = [...failed].find((f) => rows.get(f)?.parent === name);
    const r: StepResult = blockedBy
      ? { ok: false, name, error: { code: 'exec_failed', message: `${name} kept: its child ${blockedBy} could not be removed` }, undone: [], leftovers: [], ms: 0 }
      : await removeOne(env, name, opts);
    if (!r.ok) failed.add(name);
    out.push(r);
    onStep?.(r, i + 1, names.length);
  }
  return out;
}
