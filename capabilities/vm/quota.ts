/**
 * The quota seam: vm.new asks the gate to reserve what the VM will use before the backend creates
 * it, and releases the reservation when creation fails or the VM is removed (vm.rm, the reaper).
 * The default lets everything through; trust levels and quotas (capabilities/levels.ts and the quota
 * store) plug a real gate in with setQuotaGate. The gate runs where the capability runs: in the
 * launcher for local and ssh devices, in the device agent for mesh devices. *
 * Trust levels use the Invoker's gate instead (capabilities/vm/quota-gate.ts, CallGate in invoke.ts):
 * it reserves on the controller for every transport (mesh too), knows the caller's level, and its
 * refusals are audited as denials before the device is contacted; it releases after vm.rm and failed
 * creates. So setQuotaGate stays unset (no-op) in the launcher and the bots. The gate sets `owner` in the
 * arguments of vm.new and, below operator, of vm.ls when the capability declares that field: vm.ls
 * with `owner` lists only that owner's VMs.
 */
import type { MpError } from '../errors.js';

export interface QuotaRequest {
  /** The invoking actor (InvokeRequest.actor), e.g. `@ann:example.org` or `llm:@ann:example.org`. */
  actor: string;
  /** The VM's owner label (the actor without an `llm:`/`voice:` prefix). */
  owner: string;
  device: string;
  name: string;
  cpus: number;
  memory_mb: number;
  disk_mb: number;
  ttl_h: number;
}

export type QuotaVerdict = { ok: true } | { ok: false; error: MpError };

export interface QuotaGate {
  /** Checks and reserves atomically; a refusal names the quota and the current use. */
  reserve(req: QuotaRequest): Promise<QuotaVerdict>;
  /** Gives back what `name` on `device` holds (no-op when nothing is reserved). */
  release(device: string, name: string, owner: string): Promise<void>;
}

export const noQuota: QuotaGate = {
  reserve: async () => ({ ok: true }),
  release: async () => undefined,
};

let gate: QuotaGate = noQuota;

export function setQuotaGate(g: QuotaGate | undefined): void {
  gate = g ?? noQuota;
}

export function quotaGate(): QuotaGate {
  return gate;
}

/** The person behind an actor: `llm:@ann:x` and `voice:@ann:x` are `@ann:x`. */
export function ownerOf(actor: string): string {
  return actor.replace(/^(llm|voice):/, '');
}
