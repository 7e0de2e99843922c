/**
 * The operator room's `!commands`, declared once (capabilities/commands.ts): the room's parser, dispatch
 * and `!help` derive from this table. Handlers call the operator bot through OperatorCommandContext
 * (implemented by OperatorBot in operator-room.ts, bound to the sender).
 */
import { z } from 'zod';
import { chatHelpLines, defineCommand, type AnyCommand } from '../capabilities/commands.js';
import { DEVICE_NAME } from '../capabilities/names.js';
import { ImportModeSchema } from './workspaces/args.js';

/** What the commands need from the operator bot, bound to the operator who sent the command. */
export interface OperatorCommandContext {
  help(): Promise<void>;
  devices(): Promise<void>;
  health(device: string | undefined): Promise<void>;
  audit(device: string, n: number): Promise<void>;
  revoke(device: string, confirm: string | undefined): Promise<void>;
  addPc(words: readonly string[]): Promise<void>;
  /** `!org`: the tree; `!org apply|cancel <plan> [mode]`: an uploaded template's plan (operator-room-org.ts). */
  org(action: 'ls' | 'apply' | 'cancel', plan: string | undefined, mode: 'merge' | 'reconcile' | undefined): Promise<void>;
}

const on = ['operator-chat'] as const;
const N_RANGE = 'with n from 1 to 200';
// A malformed name gets the usage line alone, as an absent one does ('' : see parseChatArgs).
const device = z.string().regex(DEVICE_NAME, { error: '' });

export const OPERATOR_COMMANDS: ReadonlyArray<AnyCommand<OperatorCommandContext>> = [
  defineCommand({
    name: 'devices', summary: 'every device: state, transport, mesh IP, last handshake, last command, chain', permission: 'operator', surfaces: on,
    args: z.object({}),
    run: (_a, c: OperatorCommandContext) => c.devices(),
  }),
  defineCommand({
    // Any word: a name that is no device gets "Unknown device …" from the handler.
    name: 'health', summary: 'run a health check now, or one device\'s health and history', permission: 'operator', surfaces: on,
    args: z.object({ device: z.string().optional() }), positional: ['device'],
    run: (a, c: OperatorCommandContext) => c.health(a.device),
  }),
  defineCommand({
    name: 'audit', summary: 'the last n audit entries (default 10) and the agent chain status', permission: 'operator', surfaces: on,
    args: z.object({
      device,
      n: z.coerce.number({ error: N_RANGE }).int({ error: N_RANGE }).min(1, { error: N_RANGE }).max(200, { error: N_RANGE }).default(10),
    }),
    positional: ['device', 'n'],
    run: (a, c: OperatorCommandContext) => c.audit(a.device, a.n),
  }),
  defineCommand({
    // `!revoke <device> confirm` is the second step the first one asks for: not part of the usage line.
    name: 'revoke', summary: 'revoke a device (asks for confirmation)', permission: 'operator', surfaces: on, usage: '<device>',
    args: z.object({ device, confirm: z.string().optional() }), positional: ['device', 'confirm'],
    run: (a, c: OperatorCommandContext) => c.revoke(a.device, a.confirm),
  }),
  defineCommand({
    // The words go to the injected add-pc flow as they are (its own parser); bounded here.
    name: 'add-pc', summary: 'enroll a new machine, with progress here', permission: 'operator', surfaces: on, usage: '…',
    args: z.object({ words: z.array(z.string()) }), positional: ['words'],
    run: (a, c: OperatorCommandContext) => c.addPc(a.words.slice(0, 32).map((w) => w.slice(0, 512))),
  }),
  defineCommand({
    // Upload an org template (.yaml) into the room for a plan; ✅ on it applies it, as `!org apply` does.
    name: 'org', summary: 'the workspaces\' org tree; upload an org template (.yaml) here for its plan, ✅ applies it', permission: 'operator', surfaces: on,
    usage: '[apply <plan> [merge|reconcile] | cancel <plan>]',
    args: z.object({
      action: z.enum(['ls', 'apply', 'cancel']).default('ls'),
      plan: z.string().regex(/^[0-9a-f]{6}$/, { error: 'a plan id is the 6 characters the plan message names' }).optional(),
      mode: ImportModeSchema.optional(),
    }),
    positional: ['action', 'plan', 'mode'],
    run: (a, c: OperatorCommandContext) => c.org(a.action, a.plan, a.mode),
  }),
  defineCommand({
    name: 'help', summary: 'this list', permission: 'operator', surfaces: on,
    args: z.object({}),
    run: (_a, c: OperatorCommandContext) => c.help(),
  }),
];

/** The room's `!help`, derived from the table. */
export function operatorHelp(): string {
  return ['Operator commands:', ...chatHelpLines(OPERATOR_COMMANDS)].join('\n');
}
