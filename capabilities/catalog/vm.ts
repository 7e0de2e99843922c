/**
 * `vm.*`: sandboxed machines on a device (podman containers today, behind capabilities/vm/backend.ts).
 * Declared once like every family: the manifest enables each verb, `vm.new` only for images matching
 * its `images` globs, `vm.image.import` only from `paths_allowed`. Each VM carries meshpilot's labels
 * (id, owner = the invoking person, expiry); nothing here touches a container without them.
 * The quota gate (capabilities/vm/quota.ts) reserves before vm.new creates and releases on vm.rm.
 */
import { defineCapability, failResult, okResult, type AnyCapability, type CapabilityContext, type CapabilityResult } from '../capability.js';
import type { BackendResult, ExecOutput, VmInfo } from '../vm/backend.js';
import { VmExecInput, VmImageImportInput, VmLogsInput, VmLsInput, VmNameInput, VmNewInput, VmRmInput } from '../vm/args.js';
import { backendFor } from '../vm/podman.js';
import { ownerOf, quotaGate } from '../vm/quota.js';
import { capText, guarded } from './shared.js';
import { shareLine } from './vm-share.js';
import { shareStore, type VmShare } from '../vm/shares.js';

function failed<T>(r: BackendResult<T> & { ok: false }): CapabilityResult {
  return failResult(r.error, Math.round(r.durationMs), r.stderr ? { stderr: r.stderr } : {});
}

function ago(ms: number): string {
  const m = Math.round(Math.abs(ms) / 60_000);
  const text = m < 60 ? `${m} min` : m < 48 * 60 ? `${Math.round(m / 60)} h` : `${Math.round(m / 1440)} d`;
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}

/** One line per VM: `dev  running  localhost/base:latest  1 cpu 512M  127.0.0.1:40001->80  @ann:x  expires in 23 h` (with sizes: `disk 12/2048M`). */
export function vmLine(v: VmInfo, now = Date.now()): string {
  const ports = v.ports.filter((p) => p.host !== null).map((p) => `${p.hostIp ?? '127.0.0.1'}:${p.host}->${p.guest}`).join(',');
  const size = [v.cpus !== null ? `${v.cpus} cpu` : '', v.memoryMb !== null ? `${v.memoryMb}M` : '',
    v.diskUsedMb !== undefined ? `disk ${v.diskUsedMb}/${v.diskMb ?? '?'}M` : ''].filter(Boolean).join(' ');
  const expiry = v.expiresAt === null ? 'no expiry' : v.expiresAt <= now ? `expired ${ago(v.expiresAt - now)}` : `expires ${ago(v.expiresAt - now)}`;
  return [v.name, v.state, v.image, size, ports, v.owner, expiry].filter(Boolean).join('  ');
}

function execResult(o: ExecOutput, durationMs: number, data: Record<string, unknown>, max: number): CapabilityResult {
  const out = capText(o.stdout, max);
  const err = capText(o.stderr, max);
  const res: CapabilityResult = {
    ok: o.exitCode === 0 && !o.timedOut, stdout: out.text, stderr: err.text,
    truncated: o.truncated || out.truncated || err.truncated, durationMs: Math.round(durationMs), data,
  };
  if (o.exitCode !== null) res.exitCode = o.exitCode;
  if (o.timedOut) res.error = { code: 'timeout', message: `timed out after ${Math.round(durationMs / 1000)} s and was killed` };
  else if (o.exitCode !== 0) res.error = { code: 'exec_failed', message: `exited with code ${o.exitCode}` };
  return res;
}

const vmNew = defineCapability({
  name: 'vm.new',
  description:
    'Creates and starts a sandboxed VM (a container) on this device from an image, with CPU, memory and disk limits and a time to live ' +
    '(the reaper removes it after ttl_h hours). Guest ports in `ports` are published on the device\'s loopback. Use vm.exec to run commands in it.',
  input: VmNewInput,
  risk: 'exec',
  scope: { kind: 'names', option: 'images', args: ['image'], required: true },
  run: (args, ctx) =>
    guarded(async () => {
      const actor = ctx.actor ?? 'unknown';
      const owner = ownerOf(actor);
      const gate = quotaGate();
      const verdict = await gate.reserve({ actor, owner, device: ctx.device, name: args.name, cpus: args.cpus, memory_mb: args.memory_mb, disk_mb: args.disk_mb, ttl_h: args.ttl_h });
      if (!verdict.ok) return failResult(verdict.error);
      const backend = backendFor(ctx);
      let r: Awaited<ReturnType<typeof backend.create>>;
      try {
        r = await backend.create({
          name: args.name, image: args.image, cpus: args.cpus, memoryMb: args.memory_mb, diskMb: args.disk_mb,
          expiresAt: Date.now() + Math.round(args.ttl_h * 3_600_000), owner, ports: args.ports,
          ...(args.command ? { command: args.command } : {}),
        });
      } catch (err) {
        await gate.release(ctx.device, args.name, owner);
        throw err;
      }
      if (!r.ok) {
        await gate.release(ctx.device, args.name, owner);
        return failed(r);
      }
      const v = r.value;
      const lines = [`created ${v.name} on ${ctx.device} (${v.image}, ${v.cpus} cpu, ${v.memoryMb} MiB, expires ${new Date(v.expiresAt ?? 0).toISOString()})`];
      for (const p of v.ports) if (p.host !== null) lines.push(`port ${p.guest} -> ${p.hostIp ?? '127.0.0.1'}:${p.host} on ${ctx.device}`);
      if (!v.diskEnforced) lines.push(`disk ${args.disk_mb} MiB: the storage driver on ${ctx.device} cannot cap it, so the reaper stops ${v.name} when it has written more`);
      return okResult({ durationMs: Math.round(r.durationMs), exitCode: 0, stdout: lines.join('\n'), data: v });
    }),
});

const vmLs = defineCapability({
  name: 'vm.ls',
  description: 'Lists the VMs meshpilot created on this device: name, state, image, limits, published ports, owner and expiry (size=true: and each one\'s disk use).',
  input: VmLsInput,
  risk: 'read',
  run: (args, ctx) =>
    guarded(async () => {
      const r = await backendFor(ctx).list(args.all, { size: args.size });
      if (!r.ok) return failed(r);
      // `owner`: set by the VM gate for callers below operator (capabilities/vm/quota-gate.ts), who see only their own.
      const vms = args.owner === undefined ? r.value : r.value.filter((v) => v.owner === args.owner);
      // The shares are the controller's: a device agent (no meshpilot.db) lists without them, and the VM gate adds them (withShares).
      const store = shareStore();
      const text = lsText(store ? withShareRows(vms, store.list(ctx.device)) : vms, ctx.device, args.owner);
      const out = capText(text.stdout, ctx.limits.maxOutputBytes);
      return okResult({ durationMs: Math.round(r.durationMs), exitCode: 0, stdout: out.text, truncated: out.truncated, data: text.data });
    }),
});

type ListedVm = VmInfo & { shares?: VmShare[] };

function withShareRows(vms: readonly VmInfo[], shares: readonly VmShare[]): Array<VmInfo & { shares: VmShare[] }> {
  return vms.map((v) => ({ ...v, shares: shares.filter((s) => s.vm === v.name) }));
}

/** vm.ls's text: a line per VM, each share (vm.share) on the lines under it. */
function lsText(vms: readonly ListedVm[], device: string, owner: string | undefined): { stdout: string; data: ListedVm[] } {
  const now = Date.now();
  const stdout = vms.length
    ? vms.map((v) => [vmLine(v, now), ...(v.shares ?? []).map(shareLine)].join('\n')).join('\n')
    : `no VMs on ${device}${owner === undefined ? '' : ` for ${owner}`}`;
  return { stdout, data: [...vms] };
}

/**
 * On the controller, after vm.ls ran in a device agent (which lists without shares): the result with each
 * VM's shares from meshpilot.db, as vm.ls answers on other devices. Other results: undefined (unchanged).
 */
export function withShares(device: string, result: CapabilityResult | undefined, owner?: string): CapabilityResult | undefined {
  const store = shareStore();
  if (!store || !result?.ok || !Array.isArray(result.data)) return undefined;
  const vms = result.data as ListedVm[];
  if (vms.length === 0 || vms.some((v) => typeof v !== 'object' || v === null || typeof v.name !== 'string' || v.shares !== undefined)) return undefined;
  const text = lsText(withShareRows(vms, store.list(device)), device, owner);
  return { ...result, stdout: text.stdout, data: text.data };
}

const vmRm = defineCapability({
  name: 'vm.rm',
  description: 'Stops and removes a VM and everything in it. A VM that is already gone counts as removed.',
  input: VmRmInput,
  risk: 'write',
  run: (args, ctx) =>
    guarded(async () => {
      const backend = backendFor(ctx);
      if (args.expired_before !== undefined) {
        const cutoff = Date.parse(args.expired_before);
        const cur = await backend.get(args.name);
        if (!cur.ok) return failed(cur);
        if (cur.value && (cur.value.expiresAt === null || cur.value.expiresAt > cutoff)) {
          return failResult({ code: 'invalid_args', message: `${args.name} has not expired (expires ${cur.value.expiresAt === null ? 'never' : new Date(cur.value.expiresAt).toISOString()}); kept` }, Math.round(cur.durationMs));
        }
      }
      const r = await backend.remove(args.name);
      if (!r.ok) return failed(r);
      const owner = r.value.info?.owner;
      await quotaGate().release(ctx.device, args.name, owner ?? ownerOf(ctx.actor ?? ''));
      shareStore()?.unshare(ctx.device, args.name); // its links answer 404 from now on
      const text = r.value.gone ? `${args.name} is already gone from ${ctx.device} (counts as removed)` : `removed ${args.name} from ${ctx.device}`;
      return okResult({ durationMs: Math.round(r.durationMs), exitCode: 0, stdout: text, data: { name: args.name, gone: r.value.gone, owner: owner ?? null } });
    }),
});

function lifecycle(verb: 'stop' | 'start', description: string, past: string) {
  return defineCapability({
    name: `vm.${verb}`,
    description,
    input: VmNameInput,
    risk: 'write',
    run: (args: { name: string }, ctx: CapabilityContext) =>
      guarded(async () => {
        const backend = backendFor(ctx);
        const r = verb === 'stop' ? await backend.stop(args.name) : await backend.start(args.name);
        if (!r.ok) return failed(r);
        return okResult({ durationMs: Math.round(r.durationMs), exitCode: 0, stdout: `${past} ${args.name} (${r.value.state})`, data: r.value });
      }),
  });
}

const vmLogs = defineCapability({
  name: 'vm.logs',
  description: 'The last lines of what the VM\'s main process wrote (stdout in stdout, stderr in stderr).',
  input: VmLogsInput,
  risk: 'read',
  run: (args, ctx) =>
    guarded(async () => {
      const r = await backendFor(ctx).logs(args.name, args.tail);
      if (!r.ok) return failed(r);
      return execResult(r.value, r.durationMs, { name: args.name, tail: args.tail }, ctx.limits.maxOutputBytes);
    }),
});

const vmExec = defineCapability({
  name: 'vm.exec',
  description: 'Runs one program inside a VM with an argument list (no shell) and returns its exit code, stdout and stderr (capped like shell.exec).',
  input: VmExecInput,
  risk: 'exec',
  run: (args, ctx) =>
    guarded(async () => {
      const r = await backendFor(ctx).exec(args.name, args.argv, args.timeout_s !== undefined ? args.timeout_s * 1000 : undefined);
      if (!r.ok) return failed(r);
      return execResult(r.value, r.durationMs, { name: args.name }, ctx.limits.maxOutputBytes);
    }),
});

const vmImageImport = defineCapability({
  name: 'vm.image.import',
  description: 'Creates an image from a root filesystem tarball on the device (no registry needed), for vm.new. The image runs a shell that stays up unless vm.new gives a command.',
  input: VmImageImportInput,
  risk: 'write',
  scope: { kind: 'paths', args: ['path'] },
  run: (args, ctx) =>
    guarded(async () => {
      const r = await backendFor(ctx).importImage(args.path, args.image);
      if (!r.ok) return failed(r);
      return okResult({ durationMs: Math.round(r.durationMs), exitCode: 0, stdout: `imported ${args.path} as ${r.value.image} (${r.value.id})`, data: r.value });
    }),
});

export const vmCapabilities: AnyCapability[] = [
  vmNew,
  vmLs,
  vmRm,
  lifecycle('stop', 'Stops a running VM (SIGTERM, then SIGKILL after 5 s); its disk stays until vm.rm.', 'stopped'),
  lifecycle('start', 'Starts a stopped VM again.', 'started'),
  vmLogs,
  vmExec,
  vmImageImport,
];
