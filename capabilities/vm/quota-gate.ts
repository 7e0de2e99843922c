/**
 * The VM gate: quotas and ownership for vm.*, run by the Invoker after the policy (CallGate in
 * capabilities/invoke.ts), before the device is contacted, so a refusal is audited like any denial.
 * - vm.new: reserves against the caller's level quota (atomic), sets `owner` to the caller; a create
 *   that fails (or is denied, rejected, unreachable) releases the reservation.
 * - vm.ls: below operator, `owner` is set to the caller, so they list their own VMs only.
 * - every other vm.* naming a VM: below operator, only the caller's own VMs; vm.rm that succeeded
 *   (a VM already gone counts as removed) releases the reservation.
 * - vm.share / vm.unshare (same ownership rule): on a mesh device they run in the agent, which has no
 *   meshpilot.db; settle records (or removes) the share here from the agent's answer
 *   (capabilities/catalog/vm-share.ts completeShare), and vm.ls's answer gets each VM's shares here (an
 *   agent lists without them: catalog/vm.ts withShares). vm.rm that succeeded removes the VM's shares here
 *   too, whatever the transport, so no link outlives its VM (a later VM could get its port).
 * Operators and admins act on every VM (the reaper calls as an operator).
 */
import { z } from 'zod';
import type { CallGate, GateAdmission } from '../invoke.js';
import { isStaff, type Caller } from '../levels.js';
import type { AnyCapability } from '../capability.js';
import { withShares } from '../catalog/vm.js';
import { completeShare, completeUnshare } from '../catalog/vm-share.js';
import { ownerOf } from './quota.js';
import { shareStore } from './shares.js';
import type { Level } from '../levels.js';

/** What one VM takes from its owner's quota. */
export interface Reservation {
  cpus: number;
  memory_mb: number;
  disk_mb: number;
  ttl_h: number;
}

/** `quota`: over the level's quota; `policy_denied`: a VM of that name is already recorded on the device. */
export type ReservationVerdict = { ok: true } | { ok: false; code: 'quota' | 'policy_denied'; message: string };

/** The record of meshpilot's VMs, their owners and what they take (capabilities/vm/quota-sqlite.ts). */
export interface VmReservations {
  /** Checks the level's quota against the owner's use on every device and records the VM, atomically. */
  reserve(level: Level, owner: string, device: string, name: string, request: Reservation): ReservationVerdict;
  /** Frees the VM's reservation (removed, reaped or failed to create); a VM without one is fine. */
  release(device: string, name: string): void;
  /** Who the VM was created for, when meshpilot created it. */
  ownerOf(device: string, name: string): string | undefined;
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

/** Sets `owner` when the capability declares it (the vm.* contract in quota.ts); the caller's own value never counts. */
function withOwner(def: AnyCapability, args: Record<string, unknown>, owner: string): Record<string, unknown> {
  const declares = def.input instanceof z.ZodObject && 'owner' in def.input.shape;
  return declares ? { ...args, owner } : args;
}

export class VmGate implements CallGate {
  constructor(private readonly quota: VmReservations) {}

  admit({ device, def, args, caller }: { device: string; def: AnyCapability; args: Record<string, unknown>; caller: Caller }): GateAdmission {
    if (!def.name.startsWith('vm.')) return { ok: true, args };
    const staff = isStaff(caller.level);
    const name = typeof args['name'] === 'string' ? args['name'] : undefined;

    if (def.name === 'vm.new') {
      if (!name) return { ok: false, code: 'invalid_args', message: 'vm.new: name is missing' };
      if (caller.level === null) return { ok: false, code: 'policy_denied', message: 'vm.new: strangers have no quota' };
      const r = this.quota.reserve(caller.level, caller.user, device, name, {
        cpus: num(args['cpus']), memory_mb: num(args['memory_mb']), disk_mb: num(args['disk_mb']), ttl_h: num(args['ttl_h']),
      });
      if (!r.ok) return { ok: false, code: r.code, message: `vm.new ${name} refused: ${r.message}` };
      return { ok: true, args: withOwner(def, args, caller.user), settle: (ok) => { if (!ok) this.quota.release(device, name); } };
    }
    if (def.name === 'vm.ls') {
      const listed = staff ? args : withOwner(def, args, caller.user);
      const owner = typeof listed['owner'] === 'string' ? listed['owner'] : undefined;
      return { ok: true, args: listed, settle: (ok, result) => (ok ? withShares(device, result, owner) : undefined) };
    }
    if (name === undefined) {
      // Not about one VM (vm.image.import and the like): the manifest's tiers decide alone.
      return { ok: true, args };
    }
    if (!staff) {
      const owner = this.quota.ownerOf(device, name);
      if (owner !== caller.user) return { ok: false, code: 'policy_denied', message: `${def.name} ${name} denied: ${name} is not one of your VMs on ${device}` };
    }
    if (def.name === 'vm.rm') {
      return { ok: true, args, settle: (ok) => {
        if (!ok) return;
        this.quota.release(device, name);
        shareStore()?.unshare(device, name);
      } };
    }
    if (def.name === 'vm.share') return { ok: true, args, settle: (ok, result) => (ok ? completeShare(device, ownerOf(caller.user), result) : undefined) };
    if (def.name === 'vm.unshare') return { ok: true, args, settle: (ok, result) => (ok ? completeUnshare(device, result) : undefined) };
    return { ok: true, args };
  }
}
