/**
 * The `vm` command family, declared once (capabilities/commands.ts) from the vm.* capabilities'
 * argument schemas (capabilities/vm/args.ts): on the device bot `!vm new dev image=… cpus=2`, in the
 * CLI `meshpilot vm new <device> dev --image …` (launcher/commands/vm.ts). Each command is thin: it
 * runs its capability through invoke (the bot's !cap path, or the CLI's), so policy, approval, quota
 * and audit are the capability's own. This file imports only zod and the schemas (CLI start).
 */
import { z } from 'zod';
import { defineCommand, type AnyCommand, type Permission } from '../commands.js';
import { VmExecInput, VmImageImportInput, VmLogsInput, VmLsInput, VmNameInput, VmNewInput, VmRmInput, VmShareInput, VmUnshareInput } from './args.js';

export interface VmVerb {
  /** The words after `vm`: `new`, `image import`. */
  readonly verb: string;
  readonly capability: string;
  readonly summary: string;
  readonly args: z.ZodObject;
  readonly positional: readonly string[];
}

export const VM_VERBS: readonly VmVerb[] = [
  { verb: 'new', capability: 'vm.new', args: VmNewInput, positional: ['name'], summary: 'create and start a VM' },
  { verb: 'ls', capability: 'vm.ls', args: VmLsInput, positional: [], summary: 'list the VMs with owner, ports and expiry' },
  { verb: 'exec', capability: 'vm.exec', args: VmExecInput, positional: ['name', 'argv'], summary: 'run a program in a VM (argv, no shell)' },
  { verb: 'stop', capability: 'vm.stop', args: VmNameInput, positional: ['name'], summary: 'stop a VM (its disk stays)' },
  { verb: 'start', capability: 'vm.start', args: VmNameInput, positional: ['name'], summary: 'start a stopped VM' },
  { verb: 'logs', capability: 'vm.logs', args: VmLogsInput, positional: ['name'], summary: 'the last lines of a VM\'s output' },
  { verb: 'rm', capability: 'vm.rm', args: VmRmInput, positional: ['name'], summary: 'remove a VM (already gone counts as removed)' },
  { verb: 'share', capability: 'vm.share', args: VmShareInput, positional: ['name', 'port'], summary: 'share a VM port through the launcher (/s/<id>/): public, or to people who get a login link' },
  { verb: 'unshare', capability: 'vm.unshare', args: VmUnshareInput, positional: ['name', 'port'], summary: 'stop sharing a VM port (the link answers 404 at once)' },
  { verb: 'image import', capability: 'vm.image.import', args: VmImageImportInput, positional: ['path', 'image'], summary: 'make an image from a rootfs tarball on the device' },
];

/** Validated arguments back to the `key=value` words the capability's own parser reads (!cap). */
export function toPairs(args: Record<string, unknown>): string[] {
  return Object.entries(args)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
}

/** What a chat surface gives the vm commands: the bot's `!cap` (policy, approval, audit footer). */
export interface VmChatContext {
  cap(capability: string | undefined, pairs: readonly string[]): Promise<void>;
}

/** `!vm new …`, `!vm ls`, … on a device bot (the device is the bot's own). */
export function vmChatCommands(permission: Permission = 'operator'): Array<AnyCommand<VmChatContext>> {
  return VM_VERBS.map((v) => defineCommand({
    name: `vm ${v.verb}`, summary: v.summary, permission, capability: v.capability, surfaces: ['device-chat'],
    args: v.args, positional: v.positional as never,
    run: (a: Record<string, unknown>, c: VmChatContext) => c.cap(v.capability, toPairs(a)),
  }) as AnyCommand<VmChatContext>);
}
