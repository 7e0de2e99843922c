/**
 * The VM reaper: on the health monitor's schedule, finds expired VMs on each device that enables
 * vm.ls and vm.rm and removes them, each through invoke (actor `reaper`, so every removal is in the
 * device's audit chain). It only sees what vm.ls lists, which is only what carries meshpilot's
 * labels: a container meshpilot did not create is never touched. A VM already gone counts as removed.
 *
 * To keep the audit readable it does not list every device every minute: after a listing it looks
 * again when the earliest expiry it saw has passed, or after `listEveryMs` (default 10 min) for VMs
 * created since.
 */
import type { Logger } from 'pino';
import type { ApprovalHook, InvokeRequest, InvokeResult } from '../invoke.js';
import type { Manifest } from '../manifest.js';
import type { VmInfo } from './backend.js';

export const REAPER_ACTOR = 'reaper';

/** An expired VM's removal needs no human: its owner chose the TTL. The verdict names the reaper. */
const reaperApproves: ApprovalHook = async () => ({ approved: true, by: REAPER_ACTOR, reason: 'expired' });

export interface ReaperOptions {
  invoker: { invoke(req: InvokeRequest, approve?: ApprovalHook): Promise<InvokeResult> };
  /** The devices' manifests, read at each run. */
  manifests: () => Manifest[];
  listEveryMs?: number;
  logger?: Logger;
}

export interface ReapOutcome {
  device: string;
  name: string;
  ok: boolean;
  gone?: boolean;
  error?: string;
  auditSeq?: number;
}

export class VmReaper {
  private readonly nextList = new Map<string, number>();
  private readonly listEveryMs: number;

  constructor(private readonly o: ReaperOptions) {
    this.listEveryMs = o.listEveryMs ?? 10 * 60_000;
  }

  /** One pass over every device (all of them when `force`); returns what it removed or failed to. */
  async run(now = Date.now(), force = false): Promise<ReapOutcome[]> {
    const out: ReapOutcome[] = [];
    const devices = this.o.manifests().filter((m) => m.capabilities['vm.ls'] !== undefined && m.capabilities['vm.rm'] !== undefined);
    for (const m of devices) {
      if (!force && now < (this.nextList.get(m.device) ?? 0)) continue;
      const ls = await this.o.invoker.invoke({ device: m.device, capability: 'vm.ls', args: { all: true }, actor: REAPER_ACTOR });
      if (!ls.ok) {
        this.o.logger?.warn({ device: m.device, err: ls.error?.message }, 'reaper: cannot list VMs');
        this.nextList.set(m.device, now + this.listEveryMs);
        continue;
      }
      const vms = (ls.result?.data ?? []) as VmInfo[];
      let next = now + this.listEveryMs;
      for (const vm of vms) {
        if (vm.expiresAt === null) continue;
        if (vm.expiresAt > now) {
          next = Math.min(next, vm.expiresAt);
          continue;
        }
        const rm = await this.o.invoker.invoke(
          { device: m.device, capability: 'vm.rm', args: { name: vm.name, expired_before: new Date(now).toISOString() }, actor: REAPER_ACTOR, context: { reason: 'expired', expired_at: new Date(vm.expiresAt).toISOString(), owner: vm.owner } },
          reaperApproves,
        );
        const data = rm.result?.data as { gone?: boolean } | undefined;
        const r: ReapOutcome = { device: m.device, name: vm.name, ok: rm.ok };
        if (data?.gone !== undefined) r.gone = data.gone;
        if (rm.error) r.error = rm.error.message;
        if (rm.audit) r.auditSeq = rm.audit.seq;
        out.push(r);
        this.o.logger?.[rm.ok ? 'info' : 'warn']({ device: m.device, vm: vm.name, owner: vm.owner, err: rm.error?.message }, rm.ok ? 'reaper: removed an expired VM' : 'reaper: could not remove an expired VM');
        if (!rm.ok) next = Math.min(next, now + 60_000);
      }
      this.nextList.set(m.device, next);
    }
    return out;
  }
}

/** The reaper as a health-monitor job (HealthMonitorOptions.afterCycle) over the launcher's runtime. */
export function vmReaperJob(
  rt: { invoker: ReaperOptions['invoker']; devices: { list(): Array<{ manifest?: Manifest | undefined }> } },
  logger?: Logger,
): { name: string; run(now: number): Promise<ReapOutcome[]> } {
  const reaper = new VmReaper({
    invoker: rt.invoker,
    manifests: () => rt.devices.list().flatMap((l) => (l.manifest ? [l.manifest] : [])),
    ...(logger ? { logger } : {}),
  });
  return { name: 'vm-reaper', run: (now) => reaper.run(now) };
}
