/**
 * The VM reaper: on the health monitor's schedule, finds expired VMs on each device that enables
 * vm.ls and vm.rm and removes them, each through invoke (actor `reaper`, so every removal is in the
 * device's audit chain). It only sees what vm.ls lists, which is only what carries meshpilot's
 * labels: a container meshpilot did not create is never touched. A VM already gone counts as removed.
 *
 * It also enforces disk_mb. Podman's `--storage-opt size=` needs overlay on XFS with project quotas;
 * on ext4 (and most machines) it is refused, so the limit would only be counted. Instead the reaper
 * lists with sizes (vm.ls size=true: `podman ps --size`, each VM's writable layer, i.e. what it wrote)
 * and stops, through invoke (vm.stop, actor `reaper`, audited with the sizes in its context), every
 * running VM over its disk_mb, and says so (`notify`: the operator room): "dev on nas stopped: disk
 * 612 MB > 512 MB". The VM's disk stays (vm.rm frees it); started again, it is stopped again at the
 * next check while it stays over. A VM can write past its limit between two checks: the check
 * interval (diskEveryMs) bounds for how long.
 *
 * To keep the audit readable it does not list every device every minute: after a listing it looks
 * again when the earliest expiry it saw has passed, after `diskEveryMs` (default 2 min) while running
 * VMs have a disk limit, or after `listEveryMs` (default 10 min) for VMs created since.
 */
import type { Logger } from 'pino';
import type { ApprovalHook, InvokeRequest, InvokeResult } from '../invoke.js';
import type { Manifest } from '../manifest.js';
import type { VmInfo } from './backend.js';

export const REAPER_ACTOR = 'reaper';

/** An expired VM's removal needs no human: its owner chose the TTL. The verdict names the reaper. */
const reaperApproves: ApprovalHook = async () => ({ approved: true, by: REAPER_ACTOR, reason: 'expired' });
/** Nor does stopping a VM over its disk limit: its owner chose the limit. */
const diskApproves: ApprovalHook = async () => ({ approved: true, by: REAPER_ACTOR, reason: 'over its disk limit' });

export interface ReaperOptions {
  invoker: { invoke(req: InvokeRequest, approve?: ApprovalHook): Promise<InvokeResult> };
  /** The devices' manifests, read at each run. */
  manifests: () => Manifest[];
  listEveryMs?: number;
  /** How often devices with running VMs that have a disk limit are checked (default 2 min). */
  diskEveryMs?: number;
  /** Where a VM stopped for its disk is told (the operator room); a failure is logged. */
  notify?: (text: string) => Promise<unknown>;
  logger?: Logger;
}

export interface ReapOutcome {
  device: string;
  name: string;
  /** `removed`: expired; `stopped`: over its disk limit. */
  action: 'removed' | 'stopped';
  ok: boolean;
  gone?: boolean;
  error?: string;
  auditSeq?: number;
  /** For `stopped`: what it wrote and its limit (MiB). */
  diskUsedMb?: number;
  diskMb?: number;
}

/** `dev on nas stopped: disk 612 MB > 512 MB`. */
export function diskStopText(device: string, vm: VmInfo): string {
  return `${vm.name} on ${device} stopped: disk ${Math.round(vm.diskUsedMb ?? 0)} MB > ${vm.diskMb} MB (owner ${vm.owner || 'unknown'}; vm.rm frees it)`;
}

/** Running, with a disk limit, and it wrote more. */
function overDisk(vm: VmInfo): boolean {
  return vm.state === 'running' && vm.diskMb !== null && vm.diskUsedMb !== undefined && vm.diskUsedMb > vm.diskMb;
}

export class VmReaper {
  private readonly nextList = new Map<string, number>();
  private readonly listEveryMs: number;
  private readonly diskEveryMs: number;

  constructor(private readonly o: ReaperOptions) {
    this.listEveryMs = o.listEveryMs ?? 10 * 60_000;
    this.diskEveryMs = o.diskEveryMs ?? 2 * 60_000;
  }

  /** One pass over every device (all of them when `force`); returns what it removed or stopped, or failed to. */
  async run(now = Date.now(), force = false): Promise<ReapOutcome[]> {
    const out: ReapOutcome[] = [];
    const devices = this.o.manifests().filter((m) => m.capabilities['vm.ls'] !== undefined && m.capabilities['vm.rm'] !== undefined);
    for (const m of devices) {
      if (!force && now < (this.nextList.get(m.device) ?? 0)) continue;
      const ls = await this.o.invoker.invoke({ device: m.device, capability: 'vm.ls', args: { all: true, size: true }, actor: REAPER_ACTOR });
      if (!ls.ok) {
        this.o.logger?.warn({ device: m.device, err: ls.error?.message }, 'reaper: cannot list VMs');
        this.nextList.set(m.device, now + this.listEveryMs);
        continue;
      }
      const vms = (ls.result?.data ?? []) as VmInfo[];
      let next = now + this.listEveryMs;
      for (const vm of vms) {
        if (vm.expiresAt === null || vm.expiresAt > now) {
          if (vm.expiresAt !== null) next = Math.min(next, vm.expiresAt);
          if (overDisk(vm)) {
            const r = await this.stopForDisk(m, vm);
            out.push(r);
            if (!r.ok) next = Math.min(next, now + 60_000);
          }
          // Still running with a limit: check its disk again soon (a stopped VM cannot write).
          if (vm.state === 'running' && vm.diskMb !== null) next = Math.min(next, now + this.diskEveryMs);
          continue;
        }
        const rm = await this.o.invoker.invoke(
          { device: m.device, capability: 'vm.rm', args: { name: vm.name, expired_before: new Date(now).toISOString() }, actor: REAPER_ACTOR, context: { reason: 'expired', expired_at: new Date(vm.expiresAt).toISOString(), owner: vm.owner } },
          reaperApproves,
        );
        const data = rm.result?.data as { gone?: boolean } | undefined;
        const r: ReapOutcome = { device: m.device, name: vm.name, action: 'removed', ok: rm.ok };
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

  /** Stops a VM that wrote more than its disk_mb (audited through invoke), and tells the operators. */
  private async stopForDisk(m: Manifest, vm: VmInfo): Promise<ReapOutcome> {
    const r: ReapOutcome = { device: m.device, name: vm.name, action: 'stopped', ok: false, diskUsedMb: vm.diskUsedMb ?? 0, diskMb: vm.diskMb ?? 0 };
    if (m.capabilities['vm.stop'] === undefined) {
      r.error = `vm.stop is not enabled on ${m.device}: cannot stop ${vm.name}, which is over its disk limit`;
      this.o.logger?.warn({ device: m.device, vm: vm.name, used: vm.diskUsedMb, limit: vm.diskMb }, 'reaper: a VM is over its disk limit and vm.stop is not enabled');
      return r;
    }
    const stop = await this.o.invoker.invoke(
      { device: m.device, capability: 'vm.stop', args: { name: vm.name }, actor: REAPER_ACTOR, context: { reason: 'disk', disk_used_mb: vm.diskUsedMb, disk_mb: vm.diskMb, owner: vm.owner } },
      diskApproves,
    );
    r.ok = stop.ok;
    if (stop.error) r.error = stop.error.message;
    if (stop.audit) r.auditSeq = stop.audit.seq;
    const text = stop.ok ? diskStopText(m.device, vm) : `${vm.name} on ${m.device} is over its disk limit (${Math.round(vm.diskUsedMb ?? 0)} MB > ${vm.diskMb} MB) and could not be stopped: ${stop.error?.message ?? 'failed'}`;
    this.o.logger?.[stop.ok ? 'info' : 'warn']({ device: m.device, vm: vm.name, owner: vm.owner, used: vm.diskUsedMb, limit: vm.diskMb, err: stop.error?.message }, `reaper: ${text}`);
    if (this.o.notify) await this.o.notify(text).catch((err: unknown) => this.o.logger?.warn({ err: String(err) }, 'reaper: could not send the notice'));
    return r;
  }
}

/** The reaper as a health-monitor job (HealthMonitorOptions.afterCycle) over the launcher's runtime. */
export function vmReaperJob(
  rt: { invoker: ReaperOptions['invoker']; devices: { list(): Array<{ manifest?: Manifest | undefined }> } },
  logger?: Logger,
  notify?: ReaperOptions['notify'],
): { name: string; run(now: number): Promise<ReapOutcome[]> } {
  const reaper = new VmReaper({
    invoker: rt.invoker,
    manifests: () => rt.devices.list().flatMap((l) => (l.manifest ? [l.manifest] : [])),
    ...(logger ? { logger } : {}),
    ...(notify ? { notify } : {}),
  });
  return { name: 'vm-reaper', run: (now) => reaper.run(now) };
}
