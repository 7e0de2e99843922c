/**
 * The enrollment engine behind `meshpilot add-pc` (and, undone in reverse, `meshpilot revoke`).
 *
 * An enrollment is a list of steps; each has
 *   check(ctx)  is it already done? (re-runs and resumes skip what is in place)
 *   apply(ctx)  do it (idempotent: it may run again after a crash half-way through)
 *   undo(ctx)   take it away (tolerant: what is already gone is fine)
 * Progress goes to `onEvent` (one object per event: the CLI prints lines or JSON, the operator
 * room bot can forward them). Secrets never appear in events, the database or the log.
 *
 * State: one row per device in MESHPILOT_HOME/meshpilot.db `enrollments` (status, options, the
 * non-secret data steps learned — mesh IP, OS, public key, manifest text — and the state of each
 * step), plus `mesh_ips` (one row per allocated mesh address; UNIQUE, freed on undo/revoke).
 * Secrets live in MESHPILOT_HOME/keys/<device>/ (0600).
 *
 * A failing step undoes every step it touched, in reverse order, and reports each undo. A run that
 * was interrupted (Ctrl-C, kill -9, power cut) is picked up by the next `add-pc <device>`: resumed
 * when it names the same target, rolled back first otherwise. An enrollment that completed is
 * verified by a re-run (each step's check; what is broken, e.g. a stopped agent, is applied again)
 * and never rolled back.
 *
 * The step lists come from wg.ts and ssh.ts (index.ts hands them in); the steps run shell
 * scripts through remote.ts. Every enrollment and revocation is written to the controller's
 * audit log.
 */
import { existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SqliteAuditLog } from '../../capabilities/audit-sqlite.js';
import { openDatabase, type Db } from '../../capabilities/db.js';
import { MeshpilotError, toMpError, type ErrorCode } from '../../capabilities/errors.js';
import { ensureHome, resolveHome, type HomeLayout } from '../../capabilities/home.js';
import { logger } from '../../capabilities/log.js';
import { DeviceNameSchema } from '../../capabilities/manifest.js';
import { botUserId, loadConfigOrThrow, type Config } from '../../capabilities/config.js';
import { processStartTicks } from '../pid-file.js';
import type { EnrollContext, Step, StepsFor } from './context.js';
import { parseSshSpec, sshRemote, type Remote } from './remote.js';
import { EnrollStore, type EnrollRow } from './store.js';
import { ENROLL_EXIT, type AddPcOptions, type EnrollEvent, type EnrollResult, type OnEvent, type StepState } from './types.js';

const log = logger('enroll');

function pidAlive(pid: number | null, start: string | null): boolean {
  if (!pid) return false;
  try { process.kill(pid, 0); } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false; }
  const now = processStartTicks(pid) ?? null;
  return start === null || now === null || now === start;
}

function cliActor(): string {
  try { return `cli:${os.userInfo().username}`; } catch { return 'cli:unknown'; }
}

export interface Session {
  home: HomeLayout;
  config: Config;
  db: Db;
  store: EnrollStore;
  audit: SqliteAuditLog;
  close(): void;
}

export function openSession(homeRoot?: string): Session {
  const { home } = ensureHome(homeRoot ?? resolveHome());
  const config = loadConfigOrThrow(home.config);
  const db = openDatabase(home.db);
  return { home, config, db, store: new EnrollStore(db), audit: new SqliteAuditLog(db), close: () => db.close() };
}

export function makeContext(s: Session, row: EnrollRow, opts: AddPcOptions, emit: OnEvent, revoking: boolean): EnrollContext {
  let target: Remote | undefined;
  const transport = parseSshSpec(row.opts.ssh, row.opts.sshKey);
  const ctx: EnrollContext = {
    device: row.device, via: row.via, opts, home: s.home, config: s.config, store: s.store, data: row.data,
    save: () => { row.data = ctx.data; s.store.put(row); },
    emit,
    info: (message) => emit({ type: 'info', device: row.device, message }),
    warn: (message) => emit({ type: 'warn', device: row.device, message }),
    targetTransport: transport,
    target: () => (target ??= sshRemote(row.device, transport, () => ctx.data.sudo === true)),
    revoking,
    close: async () => { await target?.close(); },
  };
  return ctx;
}

function audit(s: Session, device: string, actor: string, capability: string, args: Record<string, unknown>, ok: boolean, reason: string | null, code: ErrorCode | null): void {
  try {
    s.audit.append({
      device, actor, request_id: null, capability, args, decision: 'allowed', outcome: ok ? 'ok' : 'error',
      exit_code: null, output_sha256: null, duration_ms: null, error_code: code, reason, context: null,
    });
  } catch (err) {
    log.warn({ err: toMpError(err).message }, 'could not write the audit entry');
  }
}
export { audit as auditEnrollment };

/** Undoes the steps of `row` that were touched, in reverse order. Returns what was undone and what is left. */
export async function undoSteps(ctx: EnrollContext, steps: readonly Step[], row: EnrollRow, s: Session, opts: { continueOnError: boolean }): Promise<{ undone: string[]; leftovers: string[] }> {
  const undone: string[] = [];
  const leftovers: string[] = [];
  for (const step of [...steps].reverse()) {
    const st = row.steps[step.id] ?? 'pending';
    if (st === 'pending' || st === 'undone') continue;
    try {
      const msg = await step.undo(ctx);
      row.steps[step.id] = 'undone';
      undone.push(step.id);
      ctx.emit({ type: 'undo', device: ctx.device, step: step.id, title: step.title, status: 'done', ...(msg ? { message: msg } : {}) });
    } catch (err) {
      const e = toMpError(err);
      row.steps[step.id] = 'undo_failed';
      leftovers.push(`${step.id}: ${e.message}`);
      ctx.emit({ type: 'undo', device: ctx.device, step: step.id, title: step.title, status: 'failed', message: e.message });
      if (!opts.continueOnError) break;
    }
    row.data = ctx.data;
    s.store.put(row);
  }
  return { undone, leftovers };
}

/**
 * Runs (or resumes, or verifies) the enrollment of opts.name. `stepsFor` gives the step list for
 * the transport (wg.ts / ssh.ts, through index.ts). Never throws: the result carries the exit code.
 */
export async function runEnrollment(opts: AddPcOptions, stepsFor: StepsFor, onEvent: OnEvent): Promise<EnrollResult> {
  const device = opts.name;
  const finish = (r: Omit<Extract<EnrollEvent, { type: 'result' }>, 'type' | 'device'>): EnrollResult => {
    onEvent({ type: 'result', device, ...r });
    return { ok: r.ok, exit: r.exit, status: r.status, message: r.message };
  };
  if (!DeviceNameSchema.safeParse(device).success) {
    return finish({ ok: false, status: 'rolled_back', exit: ENROLL_EXIT.usage, message: `"${device.slice(0, 40)}" is not a valid device name: 1-32 characters of a-z, 0-9 and -, not starting with -`, error: { code: 'usage', message: 'invalid device name' } });
  }
  let s: Session;
  try {
    s = openSession(opts.home);
    if (opts.via === 'wg' && !s.config.mesh) throw new MeshpilotError('config', 'add-pc --via wg needs a `mesh` section in config.yaml (hub interface, address/subnet, endpoint, ssh or local)');
    parseSshSpec(opts.ssh, opts.sshKey);
  } catch (err) {
    const e = toMpError(err);
    return finish({ ok: false, status: 'rolled_back', exit: ENROLL_EXIT.usage, message: e.message, error: e });
  }
  const actor = opts.actor ?? cliActor();
  const steps = stepsFor(opts.via, s.config);
  const total = steps.length;
  const rowOpts = { via: opts.via, ssh: opts.ssh, ...(opts.sshKey ? { sshKey: path.resolve(opts.sshKey) } : {}), ...(opts.os ? { os: opts.os } : {}), ...(opts.arch ? { arch: opts.arch } : {}), ...(opts.profile ? { profile: opts.profile } : {}) };
  let mode: 'new' | 'resume' | 'verify' = 'new';
  let row = s.store.get(device);
  const contexts: EnrollContext[] = [];
  try {
    if (row && row.status === 'running' && pidAlive(row.pid, row.pidStart) && row.pid !== process.pid) {
      return finish({ ok: false, status: 'running', exit: ENROLL_EXIT.usage, message: `another add-pc for ${device} is running (pid ${row.pid}); wait for it, or stop it`, error: { code: 'usage', message: 'already running' } });
    }
    const sameTarget = row !== undefined && row.via === opts.via && row.opts.ssh === opts.ssh;
    if (row && (row.status === 'live' || row.status === 'registered')) {
      if (!sameTarget) return finish({ ok: false, status: row.status, exit: ENROLL_EXIT.usage, message: `${device} is already enrolled (via ${row.via}, ${row.opts.ssh}): revoke it first (meshpilot revoke ${device})`, error: { code: 'usage', message: 'name taken' } });
      mode = 'verify';
    } else if (row && (row.status === 'running' || row.status === 'interrupted' || row.status === 'failed')) {
      if (sameTarget) {
        mode = 'resume';
        const done = steps.filter((st) => row!.steps[st.id] === 'done').length;
        onEvent({ type: 'info', device, message: `resuming the interrupted enrollment of ${device} (${done} of ${total} steps were done; each is checked again)` });
      } else {
        onEvent({ type: 'info', device, message: `rolling back the interrupted enrollment of ${device} (it was for ${row.via} ${row.opts.ssh}) before starting again` });
        const old = row;
        const octx = makeContext(s, old, opts, onEvent, false);
        contexts.push(octx);
        const r = await undoSteps(octx, stepsFor(old.via, s.config), old, s, { continueOnError: true });
        if (r.leftovers.length) {
          old.status = 'failed';
          s.store.put(old);
          return finish({ ok: false, status: 'failed', exit: ENROLL_EXIT.partial, message: `could not roll back the earlier enrollment of ${device}: ${r.leftovers.join('; ')}`, leftovers: r.leftovers, undone: r.undone });
        }
        s.store.freeIp(device);
        row = undefined;
      }
    }
    if (mode === 'new') {
      const manifestFile = path.join(s.home.manifests, `${device}.yaml`);
      if (existsSync(manifestFile)) {
        return finish({ ok: false, status: 'rolled_back', exit: ENROLL_EXIT.usage, message: `a device named ${device} already exists (${manifestFile}); pick another name, or revoke it first`, error: { code: 'usage', message: 'name taken' } });
      }
      if (s.store.ipOf(device) && !row) s.store.freeIp(device);
    }
    if (opts.dryRun) {
      onEvent({ type: 'start', device, via: opts.via, mode, total, message: `dry run: would ${mode === 'new' ? 'enroll' : mode} ${device} via ${opts.via} (${opts.ssh})` });
      steps.forEach((st, i) => onEvent({ type: 'step', device, index: i + 1, total, step: st.id, title: st.title, status: 'skipped', detail: 'dry run' }));
      return finish({ ok: true, status: row?.status ?? 'rolled_back', exit: ENROLL_EXIT.ok, message: `dry run: nothing was changed (${total} steps would run)` });
    }
    const wasLive = mode === 'verify';
    row = {
      device, via: opts.via, status: 'running', opts: rowOpts, data: mode === 'new' ? {} : row!.data,
      steps: mode === 'new' ? Object.fromEntries(steps.map((st) => [st.id, 'pending' as StepState])) : row!.steps,
      pid: process.pid, pidStart: processStartTicks(process.pid) ?? null, startedAt: mode === 'new' ? new Date().toISOString() : row!.startedAt, updatedAt: '', error: null,
    };
    const prevStatus = wasLive ? (s.store.get(device)?.status ?? 'live') : 'running';
    s.store.put(row);
    const ctx = makeContext(s, row, opts, onEvent, false);
    contexts.push(ctx);
    onEvent({ type: 'start', device, via: opts.via, mode, total, message: mode === 'verify' ? `${device} is enrolled: verifying each step` : mode === 'resume' ? `resuming ${device}` : `enrolling ${device} via ${opts.via} (${opts.ssh})` });
    const timings: Record<string, number> = {};
    for (let i = 0; i < steps.length; i++) {
      const step = steps[i]!;
      if (opts.signal?.aborted) {
        row.status = wasLive ? prevStatus : 'interrupted';
        row.pid = null;
        s.store.put(row);
        return finish({ ok: false, status: row.status, exit: ENROLL_EXIT.interrupted, message: `interrupted before step ${i + 1} (${step.title}): run the same add-pc again to resume, or \`meshpilot revoke ${device}\` to undo what was done` });
      }
      const t0 = performance.now();
      onEvent({ type: 'step', device, index: i + 1, total, step: step.id, title: step.title, status: 'running' });
      try {
        let skipped = false;
        let detail: string | void = undefined;
        if (!step.always && (mode !== 'new' || row.steps[step.id] !== 'pending') && (await step.check(ctx))) skipped = true;
        if (!skipped) {
          row.steps[step.id] = 'running';
          s.store.put(row);
          detail = await step.apply(ctx);
          const fault = opts.fault;
          if (fault === `fail:${step.id}`) throw new MeshpilotError('exec_failed', `injected fault after step ${step.id}`);
        }
        row.steps[step.id] = 'done';
        ctx.save();
        const ms = Math.round(performance.now() - t0);
        timings[step.id] = ms;
        onEvent({ type: 'step', device, index: i + 1, total, step: step.id, title: step.title, status: skipped ? 'skipped' : 'done', ms, ...(skipped ? { detail: 'already done' } : detail ? { detail } : {}) });
      } catch (err) {
        const e = toMpError(err);
        const ms = Math.round(performance.now() - t0);
        if (row.steps[step.id] === 'running') row.steps[step.id] = 'failed';
        row.error = e.message;
        ctx.save();
        onEvent({ type: 'step', device, index: i + 1, total, step: step.id, title: step.title, status: 'failed', ms, error: e });
        const exitFor = e.code === 'host_key' ? ENROLL_EXIT.hostKey : ENROLL_EXIT.failed;
        if (wasLive) {
          row.status = prevStatus;
          row.pid = null;
          if (row.steps[step.id] === 'failed') row.steps[step.id] = 'done';
          s.store.put(row);
          audit(s, device, actor, 'device.enroll', { via: opts.via, check: 'verify' }, false, e.message, e.code);
          return finish({ ok: false, status: row.status, exit: ENROLL_EXIT.failed, message: `${device} is enrolled but step ${i + 1} (${step.title}) is broken and could not be repaired: ${e.message}`, error: e });
        }
        const r = await undoSteps(ctx, steps, row, s, { continueOnError: true });
        if (r.leftovers.length === 0) {
          s.store.freeIp(device);
          row.status = 'rolled_back';
          row.pid = null;
          s.store.put(row);
          audit(s, device, actor, 'device.enroll', { via: opts.via, target: opts.ssh, failed_step: step.id, undone: r.undone }, false, e.message, e.code);
          return finish({ ok: false, status: 'rolled_back', exit: exitFor, message: `step ${i + 1} (${step.title}) failed: ${e.message}. ${r.undone.length ? `Undone: ${r.undone.join(', ')}.` : 'Nothing had been changed.'}`, undone: r.undone, error: e });
        }
        row.status = 'failed';
        row.pid = null;
        s.store.put(row);
        audit(s, device, actor, 'device.enroll', { via: opts.via, target: opts.ssh, failed_step: step.id, leftovers: r.leftovers }, false, e.message, e.code);
        return finish({ ok: false, status: 'failed', exit: ENROLL_EXIT.partial, message: `step ${i + 1} (${step.title}) failed: ${e.message}. The cleanup is incomplete: ${r.leftovers.join('; ')}. Run the same add-pc again to retry, or \`meshpilot revoke ${device}\``, undone: r.undone, leftovers: r.leftovers, error: e });
      }
    }
    row.status = ctx.data.live ? 'live' : 'registered';
    row.pid = null;
    row.error = null;
    s.store.put(row);
    audit(s, device, actor, 'device.enroll', { via: opts.via, target: opts.ssh, mode, ...(ctx.data.ip ? { ip: ctx.data.ip } : {}) }, true, null, null);
    const botId = ctx.data.botUserId ?? botUserId(s.config, device);
    const message = row.status === 'live'
      ? `✓ ${device} live. DM @${botId.slice(1).split(':')[0]} from your Matrix client.`
      : `${device} is registered, but no launcher is running: run \`npm start\` and its bot (${botId}) will greet you in a DM.`;
    return finish({ ok: true, status: row.status, exit: ENROLL_EXIT.ok, message, timings: { ...timings, ...(ctx.data.installMs !== undefined ? { install: ctx.data.installMs } : {}) } });
  } catch (err) {
    const e = toMpError(err);
    if (row) { row.status = 'failed'; row.pid = null; row.error = e.message; s.store.put(row); }
    return finish({ ok: false, status: 'failed', exit: ENROLL_EXIT.partial, message: `add-pc stopped unexpectedly: ${e.message}`, error: e });
  } finally {
    for (const c of contexts) await c.close().catch(() => undefined);
    s.close();
  }
}
