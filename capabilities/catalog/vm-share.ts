/**
 * `vm.share` / `vm.unshare`: a VM's published port behind the launcher's share gateway (`/s/<id>/`,
 * launcher/http/share.ts), as exe.dev's `share`. The share is a row in meshpilot.db
 * (capabilities/vm/shares.ts) with a 128-bit random id; the VM gate's ownership rules apply as to every
 * vm.* call naming a VM (only the owner, or staff, shares it). A private share's result carries `to`:
 * the device bot DMs each of them a one-time dashboard login link (bots/device-bot.ts).
 *
 * Where it runs: the share is the controller's (meshpilot.db), the port is the device's. On local and
 * ssh devices the capability runs in the launcher (or a bot) and does both. On a mesh device it runs in
 * the device agent, which has no meshpilot.db: it answers where the port is published (`pending`) and
 * the VM gate on the controller records the share from that answer (completeShare, completeUnshare,
 * called from capabilities/vm/quota-gate.ts), so the result the caller sees and the audit records is
 * the same on every transport.
 */
import { z } from 'zod';
import { defineCapability, failResult, okResult, type AnyCapability, type CapabilityResult } from '../capability.js';
import type { VmEndpoint } from '../vm/backend.js';
import { MatrixIdSchema, VmShareInput, VmUnshareInput } from '../vm/args.js';
import { backendFor } from '../vm/podman.js';
import { ownerOf } from '../vm/quota.js';
import { shareStore, shareUrl, type ShareStore, type VmShare } from '../vm/shares.js';
import { guarded } from './shared.js';

function noStore(): CapabilityResult {
  return failResult({ code: 'config', message: 'vm.share needs meshpilot.db (the launcher, a device bot or the CLI on the controller); this process has none' });
}

/** `  shared :8080 public http://…/s/<id>/` or `… to @friend:x`, for vm.ls and vm.share. */
export function shareLine(s: VmShare): string {
  return `  shared :${s.port} ${s.public ? 'public' : `to ${[s.owner, ...s.grantees.filter((g) => g !== s.owner)].join(', ')}`} ${shareUrl(s.id)}`;
}


type ShareArgs = z.infer<typeof VmShareInput>;

/** Records the share of an endpoint the device answered, and the result vm.share answers. */
function record(store: ShareStore, device: string, owner: string, args: ShareArgs, at: VmEndpoint, durationMs: number): CapabilityResult {
  const to = args.to === undefined ? [] : typeof args.to === 'string' ? [args.to] : [...new Set(args.to)];
  const { share, created } = store.share({ device, vm: args.name, port: args.port, address: at.address, hostPort: at.port, public: args.public, grantees: to, owner });
  const lines = [`${created ? 'shared' : 'updated the share of'} ${args.name}:${args.port} on ${device} (${share.public ? 'public: anyone with the link' : `private: ${[owner, ...share.grantees.filter((g) => g !== owner)].join(', ')}`})`, shareUrl(share.id)];
  if (to.length) lines.push(`a one-time login link goes to ${to.join(', ')} in a DM from the ${device} bot`);
  return okResult({
    durationMs, exitCode: 0, stdout: lines.join('\n'),
    data: { id: share.id, url: shareUrl(share.id), path: `/s/${share.id}/`, name: args.name, port: args.port, public: share.public, grantees: share.grantees, to, owner, created },
  });
}

/** What a device agent answers for vm.share (it has no meshpilot.db): where the port is, and the request. */
const PendingShare = z.object({
  pending: z.literal('vm.share'),
  endpoint: z.object({ address: z.string().min(1).max(64), port: z.number().int().min(1).max(65535), via: z.enum(['loopback', 'mesh', 'bridge']) }),
  name: z.string().max(64),
  port: z.number().int().min(1).max(65535),
  public: z.boolean(),
  to: z.array(MatrixIdSchema).max(16),
});
const PendingUnshare = z.object({ pending: z.literal('vm.unshare'), name: z.string().max(64), port: z.number().int().min(1).max(65535).optional() });

/**
 * On the controller, after vm.share ran on a device that has no meshpilot.db (a mesh device's agent):
 * records the share the agent's answer describes and answers the result vm.share gives everywhere.
 * Any other result is left as it is (undefined).
 */
export function completeShare(device: string, owner: string, result: CapabilityResult | undefined): CapabilityResult | undefined {
  const p = result?.ok ? PendingShare.safeParse(result.data) : undefined;
  if (!p?.success) return undefined;
  const store = shareStore();
  if (!store) return noStore();
  const d = p.data;
  return record(store, device, owner, { name: d.name, port: d.port, public: d.public, to: d.to }, d.endpoint, result!.durationMs);
}

/** On the controller, after vm.unshare ran on a device agent: removes the rows (see completeShare). */
export function completeUnshare(device: string, result: CapabilityResult | undefined): CapabilityResult | undefined {
  const p = result?.ok ? PendingUnshare.safeParse(result.data) : undefined;
  if (!p?.success) return undefined;
  const store = shareStore();
  if (!store) return noStore();
  return unshareResult(store, device, p.data.name, p.data.port, result!.durationMs);
}

function unshareResult(store: ShareStore, device: string, name: string, port: number | undefined, durationMs: number): CapabilityResult {
  const gone = store.unshare(device, name, port);
  const what = port === undefined ? `${name}` : `${name}:${port}`;
  const text = gone.length ? `unshared ${gone.map((s) => `${s.vm}:${s.port}`).join(', ')} on ${device}` : `${what} on ${device} was not shared (nothing to do)`;
  return okResult({ durationMs, exitCode: 0, stdout: text, data: { removed: gone.map((s) => ({ id: s.id, port: s.port })) } });
}

const vmShare = defineCapability({
  name: 'vm.share',
  description:
    'Shares a VM\'s published guest port through the launcher\'s web server at /s/<id>/ (an unguessable link). public=true: anyone with the link; ' +
    'otherwise only the people in `to` (Matrix IDs), who get a one-time login link from the device bot. vm.unshare ends it.',
  input: VmShareInput,
  risk: 'write',
  run: (args, ctx) =>
    guarded(async () => {
      const store = shareStore();
      const t0 = performance.now();
      // Where the device reaches the port: its published port (loopback, or the mesh address on a mesh device), else the VM's bridge address.
      const at = await backendFor(ctx).publish(args.name, args.port);
      if (!at.ok) return failResult(at.error, Math.round(at.durationMs));
      const durationMs = Math.round(performance.now() - t0);
      if (!store) {
        // A device agent: the controller records the share from this answer (completeShare).
        const to = args.to === undefined ? [] : typeof args.to === 'string' ? [args.to] : [...new Set(args.to)];
        return okResult({
          durationMs, exitCode: 0, stdout: `${args.name}:${args.port} is published at ${at.value.address}:${at.value.port} on ${ctx.device} (${at.value.via}); the controller records the share`,
          data: { pending: 'vm.share', endpoint: at.value, name: args.name, port: args.port, public: args.public, to },
        });
      }
      return record(store, ctx.device, ownerOf(ctx.actor ?? 'unknown'), args, at.value, durationMs);
    }),
});

const vmUnshare = defineCapability({
  name: 'vm.unshare',
  description: 'Stops sharing a VM port (or, without port, every share of the VM): its link answers 404 at once.',
  input: VmUnshareInput,
  risk: 'write',
  run: (args, ctx) =>
    guarded(async () => {
      const store = shareStore();
      if (!store) {
        // A device agent: nothing to do on the device; the controller removes the rows (completeUnshare).
        return okResult({ durationMs: 0, exitCode: 0, stdout: `the controller ends the share of ${args.name}${args.port === undefined ? '' : `:${args.port}`}`, data: { pending: 'vm.unshare', name: args.name, ...(args.port === undefined ? {} : { port: args.port }) } });
      }
      const t0 = performance.now();
      return unshareResult(store, ctx.device, args.name, args.port, Math.round(performance.now() - t0));
    }),
});

export const vmShareCapabilities: AnyCapability[] = [vmShare, vmUnshare];
