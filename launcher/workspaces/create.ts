/**
 * Creating (or updating) one workspace:
 *   1 derive its manifest from its device's (capabilities/workspace/derive.ts: refused when the
 *     device does not allow what the template grants, e.g. a home outside its paths_allowed)
 *   2 make its home on the device through `invoke` (fs.write of <home>/ROLE.md with the role, on the
 *     host device's manifest, as the importing actor: checked and audited like any call)
 *   3 its Matrix account, as add-pc makes a device bot's (enroll/matrix.ts ensureBotAccount)
 *   4 its manifest in MESHPILOT_HOME/manifests/<name>.yaml, staged beside it and renamed over
 *   5 the running launcher picks it up (SIGHUP, and its folder watch) and its bot says
 *     "✓ <name> live (reports to …)"
 * Steps 1-4 are prepareWorkspace, step 5 its finish(): an import prepares the tree parents first and
 * starts each finish() as soon as that workspace is made (its bot starts while the next are made).
 * A failure part-way undoes what this workspace's create did, in reverse (manifest removed, account
 * deactivated, role file deleted and the home left only if it was there before) and says what it
 * undid; the import goes on with the others. An update rewrites the role file and the manifest: the
 * supervisor restarts the bot when its manifest's hash changes.
 */
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { MeshpilotError, toMpError, type MpError } from '../../capabilities/errors.js';
import { deriveWorkspaceManifest } from '../../capabilities/workspace/derive.js';
import type { WorkspaceRow } from '../../capabilities/workspace/store.js';
import { readCredentials } from '../../bots/credentials.js';
import { pokeLauncher, type WorkspaceEnv } from './env.js';
import { homeOps, ROLE_FILE } from './home.js';

export { ROLE_FILE };

/** What a create or update needs: the row to write, and the role itself (the row keeps only its hash). */
export interface WorkspaceSpecRow extends Omit<WorkspaceRow, 'state'> {
  role: string;
}

export type StepResult =
  | { ok: true; name: string; live: boolean; message: string; ms: number }
  | { ok: false; name: string; error: MpError; undone: string[]; leftovers: string[]; ms: number };

/** The table's row of a spec (the role itself is not stored: its hash is). */
export function rowOf(ws: WorkspaceSpecRow): Omit<WorkspaceRow, 'state'> {
  const { role: _role, ...row } = ws;
  return row;
}

export function roleText(ws: Pick<WorkspaceSpecRow, 'name' | 'role' | 'parent' | 'template'>): string {
  return `# ${ws.name}\n\n${ws.role.trim()}\n\n<!-- meshpilot: the role of workspace ${ws.name} (reports to ${ws.parent ?? '—'}${ws.template ? `, template ${ws.template}` : ''}); the import rewrites this file -->\n`;
}

/** The derived manifest's text, or the reason it cannot be (nothing is created then). */
function derive(env: WorkspaceEnv, ws: WorkspaceSpecRow): { ok: true; text: string } | { ok: false; error: MpError } {
  const devices = env.o.runtime.devices;
  const host = devices.get(ws.device);
  if (!host) return { ok: false, error: { code: 'unknown_device', message: `${ws.name}: unknown device ${ws.device}` } };
  const existing = devices.get(ws.name);
  if (existing && !existing.workspace) return { ok: false, error: { code: 'usage', message: `${ws.name}: a device of that name exists (${devices.fileFor(ws.name)})` } };
  if (!existing && existsSync(devices.fileFor(ws.name))) return { ok: false, error: { code: 'usage', message: `${ws.name}: ${devices.fileFor(ws.name)} exists and is not a valid workspace manifest` } };
  const d = deriveWorkspaceManifest(host, { name: ws.name, home: ws.home, vm: ws.vm, role: ws.role, model: ws.model, parent: ws.parent, template: ws.template, capabilities: ws.capabilities }, { file: devices.fileFor(ws.name), registry: env.o.runtime.invoker.registry });
  return d.ok ? { ok: true, text: d.text } : d;
}

/** Stage → rename: the supervisor never reads half a manifest. */
function writeManifest(env: WorkspaceEnv, name: string, text: string): void {
  const file = env.o.runtime.devices.fileFor(name);
  const tmp = path.join(path.dirname(file), `.${name}.yaml.${process.pid}.tmp`);
  writeFileSync(tmp, text, { mode: 0o600 });
  renameSync(tmp, file);
}

async function waitLive(env: WorkspaceEnv, name: string, sinceTs: number): Promise<void> {
  const { waitForLiveMessage } = await import('../enroll/matrix.js');
  const creds = readCredentials(env.o.runtime.home.keys, name);
  if (!creds) throw new MeshpilotError('internal', `${name}: its Matrix credentials are missing`);
  const timeoutMs = env.o.liveTimeoutMs ?? (env.o.config?.mesh?.live_timeout_s ?? 60) * 1000;
  await (env.o.waitLive ?? waitForLiveMessage)({
    device: name, homeserverUrl: creds.homeserverUrl ?? env.o.config?.matrix.homeserver_url ?? '', botUserId: creds.userId, botToken: creds.accessToken,
    sinceTs, timeoutMs, ...(env.o.signal ? { signal: env.o.signal } : {}),
  });
}

/** A workspace made up to its manifest, its bot not yet live: finish() waits for it, rollback() undoes it. */
export interface PreparedWorkspace {
  name: string;
  ws: WorkspaceSpecRow;
  /** undoes what the create did, in reverse; the result is the failed step */
  rollback(error: MpError): Promise<Extract<StepResult, { ok: false }>>;
  /** waits for its bot's "live" (rolled back when it does not come); never throws */
  finish(): Promise<StepResult>;
}

/** Steps 1-4 of a create (derive, home, account, manifest). Never throws: a failure comes back rolled back. */
export async function prepareWorkspace(env: WorkspaceEnv, ws: WorkspaceSpecRow, importId?: string): Promise<{ ok: true; prepared: PreparedWorkspace } | { ok: false; result: StepResult }> {
  const t0 = performance.now();
  const ms = (): number => Math.round(performance.now() - t0);
  const derived = derive(env, ws);
  if (!derived.ok) {
    env.store.upsert(rowOf(ws), 'failed');
    env.store.setState(ws.name, 'failed');
    return { ok: false, result: { ok: false, name: ws.name, error: derived.error, undone: [], leftovers: [], ms: ms() } };
  }
  const config = env.o.config;
  if (!config) {
    return { ok: false, result: { ok: false, name: ws.name, error: { code: 'config', message: `${ws.name}: Matrix is not configured (run \`meshpilot init\`): a workspace needs a bot account` }, undone: [], leftovers: [], ms: ms() } };
  }
  env.store.upsert(rowOf(ws), 'pending');
  env.store.setState(ws.name, 'pending');
  const home = ws.home.replace(/\/+$/, '');
  const roleFile = `${home}/${ROLE_FILE}`;
  const place = homeOps(env, ws, importId);
  const done = { role: false, roleExisted: true, homeExisted: true, account: false, userId: '', manifest: false };
  const keysHad = existsSync(path.join(env.o.runtime.home.keys, ws.name, 'matrix.json'));
  let sinceTs = Date.now();
  const rollback = async (error: MpError): Promise<Extract<StepResult, { ok: false }>> => {
    const undone: string[] = [];
    const leftovers: string[] = [];
    const undo = async (what: string, fn: () => Promise<void> | void): Promise<void> => {
      try { await fn(); undone.push(what); } catch (e) { leftovers.push(`${what}: ${toMpError(e).message}`); }
    };
    if (done.manifest) {
      await undo('manifest removed', () => {
        rmSync(env.o.runtime.devices.fileFor(ws.name), { force: true });
        pokeLauncher(env);
      });
    }
    if (done.account && done.userId) {
      await undo(`account ${done.userId} deactivated`, async () => {
        const { deactivateBotAccount, removeBotKeys } = await import('../enroll/matrix.js');
        await deactivateBotAccount({ home: env.o.runtime.home, config, userId: done.userId });
        if (!keysHad) removeBotKeys(env.o.runtime.home, ws.name);
      });
    }
    if (done.role && !done.roleExisted) {
      await undo(`${ROLE_FILE} deleted`, async () => {
        await place.deleteFile(roleFile);
      });
      if (!done.homeExisted) leftovers.push(`the empty home ${home} stays ${place.where}${ws.vm ? '' : ' (fs.delete removes files, not directories)'}`);
    }
    env.store.setState(ws.name, 'failed');
    return { ok: false, name: ws.name, error, undone, leftovers, ms: ms() };
  };
  try {
    // 2: the home, through invoke on the host device
    const homeExisted = await place.exists(home);
    done.homeExisted = homeExisted !== false;
    done.roleExisted = done.homeExisted ? (await place.exists(roleFile)) !== false : false;
    await place.writeRole(home, roleText(ws));
    done.role = true;
    // 3: the Matrix account
    const { ensureBotAccount } = await import('../enroll/matrix.js');
    const acct = await ensureBotAccount({
      home: env.o.runtime.home, config, name: ws.name, displayname: `👤 ${ws.name}`,
      touched: (userId) => { done.account = true; done.userId = userId; },
      info: (m) => env.log.info({ workspace: ws.name }, m), warn: (m) => env.log.warn({ workspace: ws.name }, m),
    });
    done.userId = acct.userId;
    // 4: the manifest (stage → rename)
    const file = env.o.runtime.devices.fileFor(ws.name);
    // The same manifest already there (a create cut short after this step): its bot may have said live before now.
    if (existsSync(file) && readFileSync(file, 'utf8') === derived.text) sinceTs = 0;
    writeManifest(env, ws.name, derived.text);
    done.manifest = true;
    if (env.o.fault === `after-manifest:${ws.name}`) throw new MeshpilotError('exec_failed', `injected fault after the manifest of ${ws.name}`);
  } catch (err) {
    return { ok: false, result: await rollback(toMpError(err)) };
  }
  const finish = async (): Promise<StepResult> => {
    try {
      // 5: the launcher picks it up; its bot says live
      if (!pokeLauncher(env)) {
        return { ok: true, name: ws.name, live: false, message: `${ws.name} registered; no launcher is running: its bot starts with \`meshpilot up\``, ms: ms() };
      }
      if (env.o.fault === `no-live:${ws.name}`) throw new MeshpilotError('timeout', `injected fault: ${ws.name} did not say live`);
      await waitLive(env, ws.name, sinceTs);
      env.store.setState(ws.name, 'live');
      return { ok: true, name: ws.name, live: true, message: `✓ ${ws.name} live (reports to ${ws.parent ?? '—'})`, ms: ms() };
    } catch (err) {
      return rollback(toMpError(err));
    }
  };
  return { ok: true, prepared: { name: ws.name, ws, rollback, finish } };
}

/** Creates one workspace (see the file's head). Never throws. */
export async function createWorkspace(env: WorkspaceEnv, ws: WorkspaceSpecRow, importId?: string): Promise<StepResult> {
  const p = await prepareWorkspace(env, ws, importId);
  return p.ok ? p.prepared.finish() : p.result;
}

/** Updates one workspace: role file and manifest rewritten (the bot restarts on its manifest's change). Never throws. */
export async function updateWorkspace(env: WorkspaceEnv, ws: WorkspaceSpecRow, importId?: string): Promise<StepResult> {
  const t0 = performance.now();
  const ms = (): number => Math.round(performance.now() - t0);
  const derived = derive(env, ws);
  if (!derived.ok) return { ok: false, name: ws.name, error: derived.error, undone: [], leftovers: [], ms: ms() };
  try {
    await homeOps(env, ws, importId).writeRole(ws.home.replace(/\/+$/, ''), roleText(ws));
    const file = env.o.runtime.devices.fileFor(ws.name);
    const before = existsSync(file) ? readFileSync(file, 'utf8') : undefined;
    if (before !== derived.text) writeManifest(env, ws.name, derived.text);
    env.store.upsert(rowOf(ws));
    pokeLauncher(env);
    return { ok: true, name: ws.name, live: false, message: before !== derived.text ? `${ws.name} updated (its bot restarts)` : `${ws.name} updated (role file)`, ms: ms() };
  } catch (err) {
    return { ok: false, name: ws.name, error: toMpError(err), undone: [], leftovers: [], ms: ms() };
  }
}
