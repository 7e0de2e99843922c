/**
 * `meshpilot vm new <device> <name> --image …`, `vm ls <device>`, `vm exec <device> <name> -- ls -la`, …:
 * the CLI surface of the vm command family (capabilities/vm/commands.ts VM_VERBS). Each runs its
 * capability through `meshpilot cap` (policy, approval on the TTY or --yes, audit, exit codes).
 * The options are the capability's arguments; commander hands them over as strings, which the
 * capability's own schema turns into numbers and lists (capabilities/args.ts) before invoke validates.
 */
import { z } from 'zod';
import { defineCommand, defineGroup } from '../../capabilities/commands.js';
import { VM_VERBS, type VmVerb } from '../../capabilities/vm/commands.js';
import { DeviceNameSchema } from '../../capabilities/names.js';
import { UsageError, type CliCommand, type CliEntry, type CommandContext } from './context.js';
import { DEVICE_COMMANDS } from './devices.js';

function unwrap(s: z.ZodType): z.ZodType {
  let t: z.ZodType = s;
  while (t instanceof z.ZodOptional || t instanceof z.ZodDefault) t = t.unwrap() as z.ZodType;
  return t;
}

/** The CLI form of a capability argument: strings (and lists of strings) that the capability's schema coerces. */
function cliField(field: z.ZodType, positional: boolean): z.ZodType {
  const inner = unwrap(field);
  const optional = Boolean(field._zod.optin);
  if (inner instanceof z.ZodBoolean) return field;
  if (positional) return field;
  let description = field.description ?? inner.description ?? '';
  if (field instanceof z.ZodDefault) {
    const d: unknown = (field as z.ZodDefault<z.ZodType>).def.defaultValue;
    description += ` (default ${Array.isArray(d) ? d.join(',') || 'none' : String(d)})`;
  }
  const base = inner instanceof z.ZodArray ? z.array(z.string()) : z.string();
  return (optional ? base.optional() : base).describe(description);
}

/** The CLI command's arguments: the device, the capability's own (as strings), --yes, --output. */
function cliArgs(v: VmVerb): z.ZodObject {
  const shape: Record<string, z.ZodType> = { device: DeviceNameSchema.describe('the device it runs on (see `meshpilot devices`)') };
  for (const [k, f] of Object.entries(v.args.shape as Record<string, z.ZodType>)) shape[k] = cliField(f, v.positional.includes(k));
  shape['yes'] = z.boolean().optional().describe('approve without asking when the manifest wants approval (CLI only: over HTTP the device\'s operators approve, through POST /v1/exec)');
  shape['output'] = z.enum(['text', 'json']).default('text').describe('output format');
  return z.object(shape);
}

function cliCommand(v: VmVerb): CliCommand {
  return defineCommand({
    name: `vm ${v.verb}`, summary: v.summary, permission: 'operator', capability: v.capability, surfaces: ['cli', 'http'],
    args: () => cliArgs(v), positional: ['device', ...v.positional] as never,
    cli: { flags: { yes: '-y, --yes', output: '--output <format>' } as never, ...(v.verb === 'exec' ? { helpAfter: '\nPut -- before a program with options: meshpilot vm exec nas dev -- ls -la /' } : {}) },
    run: async (a: Record<string, unknown>, ctx: CommandContext) => {
      const { coerceArg } = await import('../../capabilities/args.js');
      const fields = v.args.shape as Record<string, z.ZodType>;
      const args: Record<string, unknown> = {};
      for (const [k, f] of Object.entries(fields)) {
        const val = a[k];
        if (val === undefined) continue;
        const inner = unwrap(f);
        if (Array.isArray(val) && inner instanceof z.ZodArray) args[k] = val.map((x) => (typeof x === 'string' ? coerceArg(inner.element as z.ZodType, x) : x));
        else args[k] = typeof val === 'string' ? coerceArg(f, val) : val;
      }
      const cap = DEVICE_COMMANDS.find((c): c is CliCommand => c.name === 'cap' && !('group' in c));
      if (!cap) throw new UsageError('meshpilot cap is missing');
      await cap.run({ device: a['device'], capability: v.capability, args: [], json: JSON.stringify(args), output: a['output'], yes: a['yes'] }, ctx);
    },
  }) as CliCommand;
}

export const VM_COMMANDS: CliEntry[] = [
  defineGroup('vm', 'sandboxed VMs on a device (vm.* capabilities: podman)'),
  ...VM_VERBS.filter((v) => !v.verb.includes(' ')).map(cliCommand),
  defineGroup('vm image', 'VM images'),
  ...VM_VERBS.filter((v) => v.verb.includes(' ')).map(cliCommand),
];
