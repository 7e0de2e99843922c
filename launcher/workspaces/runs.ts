/**
 * `workspace.import` runs and their audit entries. An import writes `started` on the controller's
 * chain (`_controller`: no device can have that name) once its template parsed, then `completed` or
 * `failed` with mode, counts {created, updated, skipped, removed}, duration and error; each create
 * and remove is audited on the same chain with the import's id as request id.
 *
 * Every `started` gets its `completed` or `failed`, even when the process is killed: a row in
 * `workspace_imports` (meshpilot.db) marks the run in progress with its pid and that process's start
 * time, and the next `workspace import` (or `meshpilot up`) closes a run whose process is gone as
 * failed ("interrupted: the process ended"). The table is created here (IF NOT EXISTS), not by a
 * registered migration: the launcher may open the database before this module loads.
 */
import { randomUUID } from 'node:crypto';
import type { AuditSink } from '../../capabilities/audit-sqlite.js';
import type { Db } from '../../capabilities/db.js';
import type { ErrorCode } from '../../capabilities/errors.js';
import { pidAlive, processStartTicks } from '../pid-file.js';

/** The audit chain of controller-level events (imports): not a device name (those are a-z, 0-9, -). */
export const CONTROLLER_CHAIN = '_controller';
export const IMPORT_CAPABILITY = 'workspace.import';
export const INTERRUPTED = 'interrupted: the process ended';

export interface ImportCounts {
  created: number;
  updated: number;
  skipped: number;
  removed: number;
  failed: number;
}

export const zeroCounts = (): ImportCounts => ({ created: 0, updated: 0, skipped: 0, removed: 0, failed: 0 });

export interface ImportRun {
  id: string;
  template: string;
  mode: string;
  actor: string;
  startedAt: number;
  counts: ImportCounts;
}

interface RunRow {
  id: string;
  template: string;
  mode: string;
  actor: string;
  pid: number;
  pid_start: string | null;
  started_at: number;
  counts: string;
}

export interface ClosedRun {
  id: string;
  template: string;
  pid: number;
}

export class ImportRuns {
  private readonly stmts;

  constructor(db: Db, private readonly audit: AuditSink) {
    db.exec(`CREATE TABLE IF NOT EXISTS workspace_imports (
      id TEXT PRIMARY KEY,
      template TEXT NOT NULL,
      mode TEXT NOT NULL,
      actor TEXT NOT NULL,
      pid INTEGER NOT NULL,
      pid_start TEXT,
      started_at INTEGER NOT NULL,
      counts TEXT NOT NULL,
      state TEXT NOT NULL,
      finished_at INTEGER
    )`);
    this.stmts = {
      insert: db.prepare('INSERT INTO workspace_imports (id, template, mode, actor, pid, pid_start, started_at, counts, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, \'running\')'),
      progress: db.prepare('UPDATE workspace_imports SET counts = ? WHERE id = ?'),
      finish: db.prepare('UPDATE workspace_imports SET state = ?, counts = ?, finished_at = ? WHERE id = ? AND state = \'running\''),
      running: db.prepare('SELECT id, template, mode, actor, pid, pid_start, started_at, counts FROM workspace_imports WHERE state = \'running\' ORDER BY started_at'),
    };
  }

  private entry(run: Pick<ImportRun, 'id' | 'actor'>, args: Record<string, unknown>, outcome: 'started' | 'ok' | 'error', extra: { duration?: number; code?: ErrorCode | null; reason?: string | null } = {}): void {
    this.audit.append({
      device: CONTROLLER_CHAIN, actor: run.actor.slice(0, 256), request_id: run.id, capability: IMPORT_CAPABILITY, args,
      decision: 'allowed', outcome, exit_code: null, output_sha256: null, duration_ms: extra.duration ?? null,
      error_code: extra.code ?? null, reason: extra.reason?.slice(0, 2000) ?? null, context: null,
    });
  }

  /** Marks a run in progress and writes its `started` entry. */
  begin(template: string, mode: string, actor: string, source: string): ImportRun {
    const run: ImportRun = { id: randomUUID(), template, mode, actor, startedAt: Date.now(), counts: zeroCounts() };
    this.stmts.insert.run(run.id, template, mode, actor, process.pid, processStartTicks(process.pid) ?? null, run.startedAt, JSON.stringify(run.counts));
    this.entry(run, { event: 'started', template, mode, source }, 'started');
    return run;
  }

  /** Persists the counts so far (an interrupted run is closed with them). */
  progress(run: ImportRun): void {
    this.stmts.progress.run(JSON.stringify(run.counts), run.id);
  }

  /** `completed` (error null) or `failed` (with the error), once. */
  finish(run: ImportRun, error: { code: ErrorCode; message: string } | null, extra: Record<string, unknown> = {}): void {
    const duration = Date.now() - run.startedAt;
    const changed = this.stmts.finish.run(error ? 'failed' : 'completed', JSON.stringify(run.counts), Date.now(), run.id).changes;
    if (changed === 0) return;
    this.entry(run, { event: error ? 'failed' : 'completed', template: run.template, mode: run.mode, counts: run.counts, duration_ms: duration, error: error?.message ?? null, ...extra },
      error ? 'error' : 'ok', { duration, code: error?.code ?? null, reason: error?.message ?? null });
  }

  /** Audits one workspace's create or remove as part of the run. */
  step(run: Pick<ImportRun, 'id' | 'actor'>, capability: 'workspace.create' | 'workspace.remove' | 'workspace.update', args: Record<string, unknown>, error: { code: ErrorCode; message: string } | null, duration: number): void {
    this.audit.append({
      device: CONTROLLER_CHAIN, actor: run.actor.slice(0, 256), request_id: run.id, capability, args,
      decision: 'allowed', outcome: error ? 'error' : 'ok', exit_code: null, output_sha256: null, duration_ms: Math.round(duration),
      error_code: error?.code ?? null, reason: error?.message.slice(0, 2000) ?? null, context: null,
    });
  }

  /** A run still in progress in a live process (another import), if any. */
  activeElsewhere(): { id: string; pid: number; template: string } | undefined {
    for (const r of this.stmts.running.all() as RunRow[]) {
      if (r.pid !== process.pid && this.alive(r)) return { id: r.id, pid: r.pid, template: r.template };
    }
    return undefined;
  }

  private alive(r: RunRow): boolean {
    if (!pidAlive(r.pid)) return false;
    const now = processStartTicks(r.pid);
    return r.pid_start === null || now === undefined || now === r.pid_start;
  }

  /** Closes every run whose process is gone as failed ("interrupted: the process ended"). */
  closeInterrupted(): ClosedRun[] {
    const closed: ClosedRun[] = [];
    for (const r of this.stmts.running.all() as RunRow[]) {
      if (r.pid === process.pid || this.alive(r)) continue;
      let counts: ImportCounts = zeroCounts();
      try { counts = { ...zeroCounts(), ...(JSON.parse(r.counts) as Partial<ImportCounts>) }; } catch { /* keep zeros */ }
      this.finish({ id: r.id, template: r.template, mode: r.mode, actor: r.actor, startedAt: r.started_at, counts }, { code: 'internal', message: INTERRUPTED }, { pid: r.pid });
      closed.push({ id: r.id, template: r.template, pid: r.pid });
    }
    return closed;
  }
}
