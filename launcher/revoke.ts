/**
 * `meshpilot revoke <name>`: takes a device away, the enrollment undone in reverse.
 *
 *   1 stops its bot: the manifest leaves MESHPILOT_HOME/manifests/ (the launcher's supervisor
 *     stops the bot; a running launcher also gets SIGHUP)
 *   2 deactivates its Matrix user (Synapse admin API, meshpilot's own admin account)
 *   3 stops and removes the agent, its service and its WireGuard config on the device, when the
 *     device is reachable (and says so when it is not: that is not an error)
 *   4 removes the hub's peer (live and in the hub's config file), frees the mesh IP
 *   5 archives manifest and keys under MESHPILOT_HOME/archive/<name>-<timestamp>/ (0700)
 *   6 writes a `device.revoke` audit entry
 * Idempotent: revoking again finishes what an earlier revoke could not, or says there is nothing left.
 * Confirmation (two questions: yes, then the device name typed) unless `yes` is set.
 */
import { cpSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { toMpError } from '../capabilities/errors.js';
import { DeviceNameSchema, loadManifest } from '../capabilities/manifest.js';
import { credentialsFile } from '../bots/credentials.js';
import { registerStep } from './enroll/common-steps.js';
import { keysDir } from './enroll/context.js';
import { auditEnrollment, makeContext, openSession, undoSteps, type Session } from './enroll/engine.js';
import { stepsFor } from './enroll/index.js';
import { matrixStep } from './enroll/matrix.js';
import type { EnrollRow } from './enroll/store.js';
import { ENROLL_EXIT, type EnrollResult, type OnEvent, type StepState } from './enroll/types.js';

export interface RevokeOptions {
  name: string;
  /** Skip the confirmation questions. */
  yes?: boolean;
  ask?: (question: string) => Promise<string>;
  home?: string;
  actor?: string;
}

const TARGET_STEPS = new Set(['target', 'agent']);

export async function runRevoke(opts: RevokeOptions, onEvent: OnEvent = () => undefined): Promise<EnrollResult> {
  const device = opts.name;
  const finish = (ok: boolean, exit: number, status: EnrollRow['status'], message: string, extra: { undone?: string[]; leftovers?: string[] } = {}): EnrollResult => {
    onEvent({ type: 'result', device, ok, status, exit, message, ...extra });
    return { ok, exit, status, message };
  };
  if (!DeviceNameSchema.safeParse(device).success) return finish(false, ENROLL_EXIT.usage, 'revoked', `"${device.slice(0, 40)}" is not a valid device name`);
  let s: Session;
  try {
    s = openSession(opts.home);
  } catch (err) {
    return finish(false, ENROLL_EXIT.usage, 'revoked', toMpError(err).message);
  }
  try {
    const manifestFile = path.join(s.home.manifests, `${device}.yaml`);
    let row = s.store.get(device);
    const hasKeys = existsSync(keysDir({ home: s.home, device }));
    const hasIp = s.store.ipOf(device) !== undefined;
    const rowActive = row !== undefined && row.status !== 'revoked' && row.status !== 'rolled_back';
    if (!rowActive && !existsSync(manifestFile) && !hasKeys && !hasIp) {
      return finish(true, ENROLL_EXIT.ok, 'revoked', `${device} is not enrolled: nothing to revoke`);
    }
    if (!opts.yes) {
      if (!opts.ask) return finish(false, ENROLL_EXIT.usage, row?.status ?? 'live', `revoking ${device} needs confirmation: run it in a terminal, or pass --yes`);
      const a1 = await opts.ask(`Revoke ${device}? Its bot stops, its Matrix user is deactivated, its agent, WireGuard peer and mesh IP are removed. [y/N] `);
      if (!/^y(es)?$/i.test(a1.trim())) return finish(false, ENROLL_EXIT.failed, row?.status ?? 'live', 'not revoked (answered no)');
      const a2 = await opts.ask(`Type the device name (${device}) to confirm: `);
      if (a2.trim() !== device) return finish(false, ENROLL_EXIT.failed, row?.status ?? 'live', 'not revoked (the name did not match)');
    }
    // Archive first: what revoke removes can still be looked at.
    const ts = new Date().toISOString().replace(/[:.]/g, '-');
    const archive = path.join(s.home.archive, `${device}-${ts}`);
    mkdirSync(archive, { recursive: true, mode: 0o700 });
    if (existsSync(manifestFile)) cpSync(manifestFile, path.join(archive, 'manifest.yaml'));
    if (hasKeys) cpSync(keysDir({ home: s.home, device }), path.join(archive, 'keys'), { recursive: true });

    let steps;
    if (rowActive && row) {
      steps = stepsFor(row.via, s.config);
      for (const st of steps) if ((row.steps[st.id] ?? 'pending') === 'pending' && st.id === 'register' && existsSync(manifestFile)) row.steps[st.id] = 'done';
    } else {
      // Enrolled by hand (or only leftovers): stop the bot, deactivate its user.
      const m = loadManifest(manifestFile);
      const via = m.ok && m.manifest.transport.kind === 'mesh' ? 'wg' : 'ssh';
      const st: Record<string, StepState> = { matrix: existsSync(credentialsFile(s.home.keys, device)) ? 'done' : 'pending', register: 'done' };
      row = { device, via, status: 'live', opts: { via, ssh: 'localhost' }, data: { matrixTouched: st['matrix'] === 'done' }, steps: st, pid: null, pidStart: null, startedAt: new Date().toISOString(), updatedAt: '', error: null };
      steps = [matrixStep, registerStep];
    }
    const ctx = makeContext(s, row, { name: device, via: row.via, ssh: row.opts.ssh }, onEvent, true);
    const unreachable: string[] = [];
    let r: { undone: string[]; leftovers: string[] };
    try {
      // Target steps whose device cannot be reached are reported, not fatal.
      const wrapped = steps.map((st) => (TARGET_STEPS.has(st.id) ? {
        ...st,
        undo: async (c: typeof ctx) => {
          try {
            return await st.undo(c);
          } catch (err) {
            const e = toMpError(err);
            if (e.code === 'unreachable' || e.code === 'host_key' || e.code === 'auth' || e.code === 'timeout') {
              unreachable.push(`${st.id}: ${e.message}`);
              onEvent({ type: 'warn', device, message: `${device} is not reachable, so its ${st.id === 'agent' ? 'agent and service' : 'WireGuard config'} stay on it (${e.message}); remove them by hand or revoke again once it is back` });
              return 'device unreachable: left in place';
            }
            throw err;
          }
        },
      } : st));
      r = await undoSteps(ctx, wrapped, row, s, { continueOnError: true });
    } finally {
      await ctx.close();
    }
    const actor = opts.actor ?? (() => { try { return `cli:${os.userInfo().username}`; } catch { return 'cli:unknown'; } })();
    if (r.leftovers.length) {
      row.status = 'failed';
      s.store.put(row);
      auditEnrollment(s, device, actor, 'device.revoke', { archive, leftovers: r.leftovers }, false, r.leftovers.join('; ').slice(0, 1000), 'exec_failed');
      return finish(false, ENROLL_EXIT.partial, 'failed', `revoke of ${device} is incomplete: ${r.leftovers.join('; ')}. Run \`meshpilot revoke ${device}\` again once that is fixed.`, r);
    }
    s.store.freeIp(device);
    rmSync(keysDir({ home: s.home, device }), { recursive: true, force: true });
    rmSync(path.join(s.home.bots, device), { recursive: true, force: true });
    rmSync(manifestFile, { force: true });
    row.status = 'revoked';
    row.pid = null;
    s.store.put(row);
    auditEnrollment(s, device, actor, 'device.revoke', { via: row.via, archive, undone: r.undone, ...(unreachable.length ? { left_on_device: unreachable } : {}) }, true, null, null);
    return finish(true, ENROLL_EXIT.ok, 'revoked', `${device} revoked${unreachable.length ? ' (the device was unreachable: its agent/WireGuard config are still on it)' : ''}; archived in ${archive}`, r);
  } catch (err) {
    const e = toMpError(err);
    return finish(false, ENROLL_EXIT.partial, 'failed', `revoke of ${device} stopped: ${e.message}`);
  } finally {
    s.close();
  }
}
