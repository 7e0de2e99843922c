/**
 * The device bot's `!commands`, declared once (capabilities/commands.ts): its parser, dispatch and
 * `!help` derive from this table. Handlers call the bot through DeviceCommandHost (implemented by
 * DeviceBot for the message being answered), which keeps this file free of the bot's own imports.
 */
import { z } from 'zod';
import { defineCommand, type AnyCommand } from '../capabilities/commands.js';
import { vmChatCommands } from '../capabilities/vm/commands.js';

/** What the commands need from the bot, bound to the message being answered. */
export interface DeviceCommandContext {
  help(capability: string | undefined): Promise<void>;
  status(): Promise<void>;
  cap(capability: string | undefined, pairs: readonly string[]): Promise<void>;
  audit(n: number): Promise<void>;
  decide(id: string | undefined, approve: boolean): Promise<void>;
  reset(): Promise<void>;
  budget(): Promise<void>;
  dashboard(): Promise<void>;
}

const on = ['device-chat'] as const;
const N_RANGE = 'with n from 1 to 200';

export const DEVICE_COMMANDS: ReadonlyArray<AnyCommand<DeviceCommandContext>> = [
  defineCommand({
    name: 'help', summary: 'this list, or one capability\'s arguments', permission: 'user', surfaces: on,
    args: z.object({ capability: z.string().optional() }), positional: ['capability'],
    run: (a, c: DeviceCommandContext) => c.help(a.capability),
  }),
  defineCommand({
    name: 'status', summary: 'sys.info + sys.health of this device', permission: 'operator', surfaces: on,
    args: z.object({}),
    run: (_a, c: DeviceCommandContext) => c.status(),
  }),
  defineCommand({
    // The capability's own schema parses the key=value words (capabilities/args.ts), in the handler.
    name: 'cap', summary: 'run one capability, e.g. !cap fs.list path=/var/log', permission: 'user', surfaces: on,
    usage: '<capability> key=value …',
    args: z.object({ capability: z.string().optional(), pairs: z.array(z.string()) }), positional: ['capability', 'pairs'],
    run: (a, c: DeviceCommandContext) => c.cap(a.capability, a.pairs),
  }),
  defineCommand({
    name: 'audit', summary: 'the last n audit entries (default 10)', permission: 'operator', surfaces: on,
    args: z.object({
      n: z.coerce.number({ error: N_RANGE }).int({ error: N_RANGE }).min(1, { error: N_RANGE }).max(200, { error: N_RANGE }).default(10),
    }),
    positional: ['n'],
    run: (a, c: DeviceCommandContext) => c.audit(a.n),
  }),
  defineCommand({
    name: 'approve', summary: 'approve a pending request (or react ✅)', permission: 'operator', surfaces: on,
    args: z.object({ id: z.string().optional() }), positional: ['id'],
    run: (a, c: DeviceCommandContext) => c.decide(a.id, true),
  }),
  defineCommand({
    name: 'reject', summary: 'reject a pending request (or react ❌)', permission: 'operator', surfaces: on,
    args: z.object({ id: z.string().optional() }), positional: ['id'],
    run: (a, c: DeviceCommandContext) => c.decide(a.id, false),
  }),
  defineCommand({
    name: 'reset', summary: 'forget this conversation\'s history', permission: 'user', surfaces: on,
    args: z.object({}),
    run: (_a, c: DeviceCommandContext) => c.reset(),
  }),
  defineCommand({
    name: 'budget', summary: 'LLM tokens used today and the daily budget', permission: 'operator', surfaces: on,
    args: z.object({}),
    run: (_a, c: DeviceCommandContext) => c.budget(),
  }),
  defineCommand({
    name: 'dashboard', summary: 'a one-time login link for the web dashboard, sent to you in our DM (works once, for 5 minutes)', permission: 'operator', surfaces: on,
    args: z.object({}),
    run: (_a, c: DeviceCommandContext) => c.dashboard(),
  }),
  // `!vm new dev image=…`, `!vm ls`, …: thin commands over the vm.* capabilities (through !cap), which the manifest grants per level.
  ...vmChatCommands('user'),
];

/** `!approve` and `!reject`: the bot runs them outside the room's queue (a turn may be waiting for them). */
export const APPROVAL_COMMANDS = DEVICE_COMMANDS.filter((c) => c.name === 'approve' || c.name === 'reject');
