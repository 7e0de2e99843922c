/**
 * Enrollment state in MESHPILOT_HOME/meshpilot.db: one `enrollments` row per device (status,
 * options, the non-secret data steps learned, the state of each step) and `mesh_ips` (one row per
 * allocated mesh address; UNIQUE, freed on undo/revoke). Secrets never go here.
 */
import { z } from 'zod';
import type { Db } from '../../capabilities/db.js';
import type { EnrollStatus, StepState, Via } from './types.js';

/** Non-secret facts the steps learn, persisted after every step (so a resume has them). */
export const EnrollDataSchema = z.object({
  os: z.enum(['linux', 'darwin']).optional(),
  arch: z.string().max(32).optional(),
  home: z.string().max(1024).optional(),
  uid: z.number().int().optional(),
  sudo: z.boolean().optional(),
  systemd: z.boolean().optional(),
  node: z.string().max(1024).optional(),
  sshTransport: z.record(z.string(), z.unknown()).optional(),
  hostKeyAdded: z.object({ pattern: z.string(), keyType: z.string(), fingerprint: z.string() }).optional(),
  publicKey: z.string().max(64).optional(),
  hubPublicKey: z.string().max(64).optional(),
  hubTouched: z.boolean().optional(),
  ip: z.string().max(64).optional(),
  iface: z.string().max(15).optional(),
  installDir: z.string().max(1024).optional(),
  manifestText: z.string().max(256 * 1024).optional(),
  matrixTouched: z.boolean().optional(),
  botUserId: z.string().max(255).optional(),
  registeredAt: z.number().optional(),
  live: z.boolean().optional(),
  installMs: z.number().optional(),
}).strict();
export type EnrollData = z.infer<typeof EnrollDataSchema>;

const RowOptsSchema = z.object({ via: z.enum(['wg', 'ssh']), ssh: z.string(), sshKey: z.string().optional(), os: z.string().optional(), arch: z.string().optional(), profile: z.string().optional() });

export interface EnrollRow {
  device: string;
  via: Via;
  status: EnrollStatus;
  opts: z.infer<typeof RowOptsSchema>;
  data: EnrollData;
  steps: Record<string, StepState>;
  pid: number | null;
  pidStart: string | null;
  startedAt: string;
  updatedAt: string;
  error: string | null;
}

export class EnrollStore {
  constructor(readonly db: Db) {
    db.exec(`
      CREATE TABLE IF NOT EXISTS enrollments (
        device TEXT PRIMARY KEY, via TEXT NOT NULL, status TEXT NOT NULL, opts TEXT NOT NULL, data TEXT NOT NULL,
        steps TEXT NOT NULL, pid INTEGER, pid_start TEXT, started_at TEXT NOT NULL, updated_at TEXT NOT NULL, error TEXT);
      CREATE TABLE IF NOT EXISTS mesh_ips (ip TEXT PRIMARY KEY, device TEXT NOT NULL UNIQUE, allocated_at TEXT NOT NULL);
    `);
  }

  get(device: string): EnrollRow | undefined {
    const r = this.db.prepare('SELECT * FROM enrollments WHERE device = ?').get(device) as Record<string, unknown> | undefined;
    if (!r) return undefined;
    const data = EnrollDataSchema.safeParse(JSON.parse(String(r['data'])));
    return {
      device: String(r['device']), via: r['via'] as Via, status: r['status'] as EnrollStatus,
      opts: RowOptsSchema.parse(JSON.parse(String(r['opts']))), data: data.success ? data.data : {},
      steps: JSON.parse(String(r['steps'])) as Record<string, StepState>,
      pid: typeof r['pid'] === 'number' ? r['pid'] : null, pidStart: typeof r['pid_start'] === 'string' ? r['pid_start'] : null,
      startedAt: String(r['started_at']), updatedAt: String(r['updated_at']), error: typeof r['error'] === 'string' ? r['error'] : null,
    };
  }

  put(row: EnrollRow): void {
    this.db.prepare(`INSERT INTO enrollments (device, via, status, opts, data, steps, pid, pid_start, started_at, updated_at, error)
      VALUES (@device, @via, @status, @opts, @data, @steps, @pid, @pid_start, @started_at, @updated_at, @error)
      ON CONFLICT(device) DO UPDATE SET via=excluded.via, status=excluded.status, opts=excluded.opts, data=excluded.data, steps=excluded.steps,
        pid=excluded.pid, pid_start=excluded.pid_start, started_at=excluded.started_at, updated_at=excluded.updated_at, error=excluded.error`).run({
      device: row.device, via: row.via, status: row.status, opts: JSON.stringify(row.opts), data: JSON.stringify(row.data),
      steps: JSON.stringify(row.steps), pid: row.pid, pid_start: row.pidStart, started_at: row.startedAt, updated_at: new Date().toISOString(), error: row.error,
    });
  }

  ipOf(device: string): string | undefined {
    const r = this.db.prepare('SELECT ip FROM mesh_ips WHERE device = ?').get(device) as { ip: string } | undefined;
    return r?.ip;
  }

  /** Takes the first free address of `candidates` for `device` (UNIQUE makes two enrollments never share one). */
  allocateIp(device: string, candidates: Iterable<string>, taken: Set<string>): string | undefined {
    return this.db.transaction(() => {
      const mine = this.ipOf(device);
      if (mine) return mine;
      const used = new Set((this.db.prepare('SELECT ip FROM mesh_ips').all() as Array<{ ip: string }>).map((r) => r.ip));
      for (const ip of candidates) {
        if (used.has(ip) || taken.has(ip)) continue;
        this.db.prepare('INSERT INTO mesh_ips (ip, device, allocated_at) VALUES (?, ?, ?)').run(ip, device, new Date().toISOString());
        return ip;
      }
      return undefined;
    }).immediate();
  }

  freeIp(device: string): void {
    this.db.prepare('DELETE FROM mesh_ips WHERE device = ?').run(device);
  }
}
