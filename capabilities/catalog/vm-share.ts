/**
 * `vm.share` / `vm.unshare`: a VM's published port behind the launcher's share gateway (`/s/<id>/`,
 * launcher/http/share.ts), as exe.dev's `share`. The share is a row in meshpilot.db
 * (capabilities/vm/shares.ts) with a 128-bit random id; the VM gate's ownership rules apply as to every
 * vm.* call naming a VM (only the owner, or staff, shares it). A private share's result carries `to`:
 * the device bot DMs each of them a one-time dashboard login link (bots/device-bot.ts).
 */
import { defineCapability, failResult, okResult, type AnyCapability } from '../capability.js';
import { VmShareInput, VmUnshareInput } from '../vm/args.js';
import { backendFor } from '../vm/podman.js';
import { ownerOf } from '../vm/quota.js';
import { shareStore, shareUrl, type VmShare } from '../vm/shares.js';
import { guarded } from './shared.js';

function noStore(): ReturnType<typeof failResult> {
  return failResult({ code: 'config', message: 'vm.share needs meshpilot.db (the launcher, a device bot or the CLI on the controller); this process has none' });
}

/** `  shared :8080 public http://…/s/<id>/` or `… to @friend:x`, for vm.ls and vm.share. */
export function shareLine(s: VmShare): string {
  return `  shared :${s.port} ${s.public ? 'public' : `to ${[s.owner, ...s.grantees.filter((g) => g !== s.owner)].join(', ')}`} ${shareUrl(s.id)}`;
}

/** The shares of this device's VMs, for vm.ls (empty when this process has no store). */
export function sharesOf(device: string): VmShare[] {
  return shareStore()?.list(device) ?? [];
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
      if (!store) return noStore();
      const t0 = performance.now();
      // Where the device reaches the port: its published loopback port, else the VM's bridge address.
      const at = await backendFor(ctx).publish(args.name, args.port);
      if (!at.ok) return failResult(at.error, Math.round(at.durationMs));
      const to = args.to === undefined ? [] : typeof args.to === 'string' ? [args.to] : [...new Set(args.to)];
      const owner = ownerOf(ctx.actor ?? 'unknown');
      const { share, created } = store.share({ device: ctx.device, vm: args.name, port: args.port, address: at.value.address, hostPort: at.value.port, public: args.public, grantees: to, owner });
      const lines = [`${created ? 'shared' : 'updated the share of'} ${args.name}:${args.port} on ${ctx.device} (${share.public ? 'public: anyone with the link' : `private: ${[owner, ...share.grantees.filter((g) => g !== owner)].join(', ')}`})`, shareUrl(share.id)];
      if (to.length) lines.push(`a one-time login link goes to ${to.join(', ')} in a DM from the ${ctx.device} bot`);
      return okResult({
        durationMs: Math.round(performance.now() - t0), exitCode: 0, stdout: lines.join('\n'),
        data: { id: share.id, url: shareUrl(share.id), path: `/s/${share.id}/`, name: args.name, port: args.port, public: share.public, grantees: share.grantees, to, owner, created },
      });
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
      if (!store) return noStore();
      const t0 = performance.now();
      const gone = store.unshare(ctx.device, args.name, args.port);
      const what = args.port === undefined ? `${args.name}` : `${args.name}:${args.port}`;
      const text = gone.length ? `unshared ${gone.map((s) => `${s.vm}:${s.port}`).join(', ')} on ${ctx.device}` : `${what} on ${ctx.device} was not shared (nothing to do)`;
      return okResult({ durationMs: Math.round(performance.now() - t0), exitCode: 0, stdout: text, data: { removed: gone.map((s) => ({ id: s.id, port: s.port })) } });
    }),
});

export const vmShareCapabilities: AnyCapability[] = [vmShare, vmUnshare];
