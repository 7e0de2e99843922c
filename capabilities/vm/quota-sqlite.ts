/**
 * VM quotas in meshpilot.db: one row per VM meshpilot created (or is creating), with its owner and
 * what it takes. A reservation reads the owner's use and inserts the new row in one BEGIN IMMEDIATE
 * transaction, so concurrent vm.new calls (in one process or in several bots) can never exceed the
 * quota: the second waits for the first's write lock, then sees its row. The rows are also the owner
 * record the VM gate checks for vm.rm/exec/… (capabilities/vm/quota-gate.ts).
 */
import type { Logger } from 'pino';
import type { Quotas, QuotaLimits } from '../config.js';
import { registerMigration, type Db } from '../db.js';
import type { Level } from '../levels.js';
import { logger as makeLogger } from '../log.js';
import type { Reservation, ReservationVerdict, VmReservations } from './quota-gate.js';

registerMigration('capabilities.vm_reservations.v1', `
  CREATE TABLE vm_reservations (
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    level TEXT NOT NULL,
    cpus REAL NOT NULL,
    memory_mb INTEGER NOT NULL,
    disk_mb INTEGER NOT NULL,
    ttl_h REAL NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (device, name)
  );
  CREATE INDEX vm_reservations_owner ON vm_reservations (owner);
`);

export interface QuotaUse {
  vms: number;
  cpus: number;
  memory_mb: number;
  disk_mb: number;
}

const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

/** The first limit the request would cross, as a sentence that names the quota and the current use; null when it fits. */
export function quotaRefusal(level: Level, limits: QuotaLimits, use: QuotaUse, req: Reservation): string | null {
  const q = `${level} quota`;
  if (use.vms + 1 > limits.vms) return `${q}: ${plural(limits.vms, 'VM')}, you have ${use.vms}`;
  if (req.ttl_h > limits.max_ttl_h) return `${q}: VMs live at most ${limits.max_ttl_h} h, you asked for ${req.ttl_h} h`;
  if (use.cpus + req.cpus > limits.cpus) return `${q}: ${plural(limits.cpus, 'CPU')}, you use ${use.cpus} and asked for ${req.cpus} more`;
  if (use.memory_mb + req.memory_mb > limits.memory_mb) return `${q}: ${limits.memory_mb} MB of memory, you use ${use.memory_mb} MB and asked for ${req.memory_mb} MB more`;
  if (use.disk_mb + req.disk_mb > limits.disk_mb) return `${q}: ${limits.disk_mb} MB of disk, you use ${use.disk_mb} MB and asked for ${req.disk_mb} MB more`;
  return null;
}

export class SqliteQuotaStore implements VmReservations {
  private readonly log: Logger;
  private readonly stmts;

  constructor(private readonly db: Db, private readonly quotas: Quotas, logger?: Logger) {
    this.log = logger ?? makeLogger('quota');
    this.stmts = {
      use: db.prepare('SELECT COUNT(*) AS vms, COALESCE(SUM(cpus), 0) AS cpus, COALESCE(SUM(memory_mb), 0) AS memory_mb, COALESCE(SUM(disk_mb), 0) AS disk_mb FROM vm_reservations WHERE owner = ?'),
      get: db.prepare('SELECT owner FROM vm_reservations WHERE device = ? AND name = ?'),
      insert: db.prepare('INSERT INTO vm_reservations (device, name, owner, level, cpus, memory_mb, disk_mb, ttl_h, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)'),
      remove: db.prepare('DELETE FROM vm_reservations WHERE device = ? AND name = ?'),
    };
  }

  /** What the owner's VMs take, on every device. */
  use(owner: string): QuotaUse {
    return this.stmts.use.get(owner) as QuotaUse;
  }

  reserve(level: Level, owner: string, device: string, name: string, req: Reservation): ReservationVerdict {
    const limits = this.quotas[level];
    const verdict = this.db.transaction((): ReservationVerdict => {
      const taken = this.stmts.get.get(device, name) as { owner: string } | undefined;
      if (taken) return { ok: false, code: 'policy_denied', message: `a VM named ${name} already exists on ${device}` };
      if (limits) {
        const refusal = quotaRefusal(level, limits, this.use(owner), req);
        if (refusal) return { ok: false, code: 'quota', message: refusal };
      }
      this.stmts.insert.run(device, name, owner, level, req.cpus, req.memory_mb, req.disk_mb, req.ttl_h, Date.now());
      return { ok: true };
    }).immediate(); // the write lock before the read: two reservations never both see the old use
    this.log.debug({ owner, level, device, name, ok: verdict.ok }, 'vm reservation');
    return verdict;
  }

  release(device: string, name: string): void {
    this.stmts.remove.run(device, name);
  }

  ownerOf(device: string, name: string): string | undefined {
    return (this.stmts.get.get(device, name) as { owner: string } | undefined)?.owner;
  }
}
