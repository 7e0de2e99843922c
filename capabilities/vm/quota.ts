/**
 * The seam between the vm.* capabilities and trust levels: quotas and ownership.
 *
 * Contract (so the vm capabilities and the gate agree):
 * - The Invoker runs a CallGate (capabilities/invoke.ts) before the transport; the VM gate
 *   (capabilities/vm/quota-gate.ts) reserves a vm.new against the caller's quota (QuotaGate.reserve,
 *   atomic: capabilities/vm/quota-sqlite.ts), releases it when the create fails, when vm.rm succeeds,
 *   and when the reaper removes the VM (release). vm.new itself does not call reserve.
 * - The gate sets `owner` in the arguments of vm.new (always, from the caller: nobody chooses it) and of
 *   vm.ls for callers below operator (they list only their own VMs). So vm.new and vm.ls declare
 *   `owner: z.string().max(256).optional()`; vm.new labels the VM with it, vm.ls with it filters on
 *   that label.
 * - vm.rm / exec / stop / start / logs / share / unshare name a VM with `name`; below operator, the gate
 *   denies a VM whose reservation belongs to someone else (or to no one), audited as a denial.
 */
import type { Level } from '../levels.js';

/** What one VM takes from its owner's quota. */
export interface VmRequest {
  cpus: number;
  memory_mb: number;
  disk_mb: number;
  ttl_h: number;
}

export type QuotaVerdict = { ok: true } | { ok: false; code: 'quota'; message: string };

export interface QuotaGate {
  /** Checks the level's quota against the owner's current use on every device and records the VM, atomically. */
  reserve(level: Level, owner: string, device: string, name: string, request: VmRequest): QuotaVerdict;
  /** Frees the VM's reservation (removed, reaped or failed to create); a VM without one is fine. */
  release(device: string, name: string): void;
  /** Who the VM was created for, when meshpilot created it. */
  ownerOf(device: string, name: string): string | undefined;
}

/** No quotas and no owners: every reservation succeeds, no VM has a known owner. */
export const noQuotaGate: QuotaGate = {
  reserve: () => ({ ok: true }),
  release: () => undefined,
  ownerOf: () => undefined,
};
