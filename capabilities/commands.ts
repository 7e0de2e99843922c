/**
 * Commands are declared once, as capabilities are (capabilities/capability.ts): name, help, zod
 * arguments, who may run them, the surfaces they appear on, and a handler that gets a typed context.
 * Every surface derives from the declarations: the chat parser, dispatch and `!help` (here, used by the
 * device bot and the operator room), the CLI's commander registration and `--help`
 * (launcher/commands/program.ts), the HTTP API's POST /v1/commands/… (launcher/http/api/commands.ts),
 * and next the dashboard. A new command family is one
 * file of declarations plus its tests. Modelled on matrix-hookshot's BotCommands.ts, with a zod schema
 * where hookshot has decorators and argument-name lists.
 *
 * Arguments: the fields of `args` named in `positional` are taken by position (the last one may be an
 * array: it takes the remaining words); the other fields are `key=value` words in chat and `--key`
 * options in the CLI. Values arrive as strings and are coerced by the field's schema (numbers,
 * booleans, lists as a,b,c: capabilities/args.ts), then the whole object is validated.
 */
import { z } from 'zod';
import { coerceArg } from './args.js';

/**
 * Who may run a command: `operator` (operators and admins), or `user`: anyone a device bot talks to
 * (a user whose trust level the device grants a capability: capabilities/levels.ts).
 */
export const PermissionSchema = z.enum(['operator', 'user']);
export type Permission = z.infer<typeof PermissionSchema>;

/** Where a command appears. */
export const SurfaceSchema = z.enum(['device-chat', 'operator-chat', 'cli', 'http']);
export type Surface = z.infer<typeof SurfaceSchema>;

/** Every command's arguments are one object; a command without arguments has `z.object({})`. */
export type ArgsSchema = z.ZodObject;

/** Options only the CLI needs to render a command the way its users know it. */
export interface CliHints<S extends ArgsSchema> {
  /** commander flags for a field when `--<kebab-name> <kebab-name>` is not it, e.g. `-n <count>`, `-y, --yes`. */
  readonly flags?: Partial<Record<keyof z.input<S> & string, string>>;
  readonly aliases?: readonly string[];
  /** Text printed after the generated `--help` (exit codes, examples). */
  readonly helpAfter?: string;
}

export interface CommandDefinition<S extends ArgsSchema, C> {
  /** The words that call it: `status`, `add-pc`, `audit tail` (a group, then its subcommand). */
  readonly name: string;
  /** One line for help: what it does. */
  readonly summary: string;
  /** The arguments' schema (built on first read when the declaration gives a function: defineCommand). */
  readonly args: S;
  /** Fields taken by position, in order; only the last may be an array (it takes the remaining words). */
  readonly positional?: ReadonlyArray<keyof z.input<S> & string>;
  /** The usage shown after the name when the derived one is not what users should read, e.g. `<capability> key=value …`. */
  readonly usage?: string;
  readonly permission: Permission;
  /** The capability the command runs, when it is one (`!vm new` → vm.new): help lists it only to callers granted that capability. */
  readonly capability?: string;
  readonly surfaces: readonly Surface[];
  readonly cli?: CliHints<S>;
  /** Runs after the arguments validated and the caller's permission was checked. */
  run(args: z.output<S>, ctx: C): Promise<void> | void;
}

/** A group of subcommands with no action of its own (`meshpilot audit …`): a name and its help. */
export interface CommandGroup {
  readonly group: true;
  readonly name: string;
  readonly summary: string;
  readonly surfaces: readonly Surface[];
}

/**
 * What a declaration file writes: `args` is the schema, or a function that builds it. The function runs
 * on the first read of `args` (once): `meshpilot --help` and any one command build no other command's
 * schema (launcher/commands/program.ts), which was ~10 ms of zod work at every CLI start.
 */
export type CommandDeclaration<S extends ArgsSchema, C> = Omit<CommandDefinition<S, C>, 'args'> & { readonly args: S | (() => S) };

/** Keeps `args` typed from the schema inside `run`; a schema given as a function is built on first use. */
export function defineCommand<S extends ArgsSchema, C>(def: CommandDeclaration<S, C>): CommandDefinition<S, C> {
  const { args } = def;
  if (typeof args !== 'function') return def as CommandDefinition<S, C>;
  let built: S | undefined;
  return Object.defineProperty({ ...def }, 'args', { get: () => (built ??= args()), enumerable: true }) as CommandDefinition<S, C>;
}

export function defineGroup(name: string, summary: string, surfaces: readonly Surface[] = ['cli']): CommandGroup {
  return { group: true, name, summary, surfaces };
}

/** The erased form a surface's table holds; `run` receives arguments that already passed `args`. */
export type AnyCommand<C> = CommandDefinition<ArgsSchema, C>;
export type CommandEntry<C> = AnyCommand<C> | CommandGroup;

export function isGroup<C>(e: CommandEntry<C>): e is CommandGroup {
  return 'group' in e;
}

export function forSurface<C>(entries: readonly CommandEntry<C>[], surface: Surface): CommandEntry<C>[] {
  return entries.filter((e) => e.surfaces.includes(surface));
}

// ---- schema introspection ---------------------------------------------------------------------

function unwrap(s: z.ZodType): z.ZodType {
  let t: z.ZodType = s;
  while (t instanceof z.ZodOptional || t instanceof z.ZodDefault || t instanceof z.ZodNullable || t instanceof z.ZodPrefault) t = t.unwrap() as z.ZodType;
  return t;
}

/** What a surface needs to know about one argument. */
export interface ArgInfo {
  name: string;
  positional: boolean;
  required: boolean;
  list: boolean;
  boolean: boolean;
  choices?: readonly string[];
  default?: unknown;
  description?: string;
}

export function argInfos(def: AnyCommand<unknown>): ArgInfo[] {
  const shape = def.args.shape as Record<string, z.ZodType>;
  const positional = new Set<string>(def.positional ?? []);
  const order = [...(def.positional ?? []), ...Object.keys(shape).filter((k) => !positional.has(k))];
  return order.map((name) => {
    const field = shape[name];
    if (!field) throw new Error(`command ${def.name}: positional "${name}" is not a field of its args`);
    const inner = unwrap(field);
    const info: ArgInfo = {
      name,
      positional: positional.has(name),
      // zod marks optional and defaulted fields (optin); cheaper than parsing undefined at every CLI start.
      required: !field._zod.optin,
      list: inner instanceof z.ZodArray,
      boolean: inner instanceof z.ZodBoolean,
    };
    if (inner instanceof z.ZodEnum) info.choices = inner.options.map(String);
    if (field instanceof z.ZodDefault) info.default = (field as z.ZodDefault<z.ZodType>).def.defaultValue;
    const description = field.description ?? inner.description;
    if (description) info.description = description;
    return info;
  });
}

/** `<device> [n]`: positional arguments, required in <>, optional in [], lists with …; then `key=value` ones. */
export function usageOf(def: AnyCommand<unknown>): string {
  if (def.usage !== undefined) return def.usage;
  return argInfos(def).map((a) => {
    const inner = a.positional ? `${a.name}${a.list ? '…' : ''}` : `${a.name}=…`;
    return a.required ? `<${inner}>` : `[${inner}]`;
  }).join(' ');
}

// ---- validation -----------------------------------------------------------------------------------

/** Marks messages zod wrote itself (the schema gave none), so surfaces can name the argument they are about. */
const GENERIC = '\u0000';

export interface ArgIssue {
  /** The argument it is about ('' for the whole object). */
  arg: string;
  /** A required argument is missing. */
  missing: boolean;
  /** The schema's own message (written to be read as is) or zod's, which needs the argument's name beside it. */
  message: string;
  custom: boolean;
}

export type Validated<T> = { ok: true; args: T } | { ok: false; issue: ArgIssue };

/** Validates raw arguments (strings from chat or commander, or JSON from HTTP) against the declaration. */
export function validateArgs<S extends ArgsSchema>(def: CommandDefinition<S, never> | AnyCommand<unknown>, raw: Record<string, unknown>): Validated<z.output<S>> {
  const r = def.args.safeParse(raw, { error: (iss) => {
    const msg = z.config().localeError?.(iss);
    return `${GENERIC}${typeof msg === 'string' ? msg : msg?.message ?? iss.message ?? 'invalid'}`;
  } });
  if (r.success) return { ok: true, args: r.data as z.output<S> };
  const iss = r.error.issues[0]!;
  const arg = String(iss.path[0] ?? '');
  const custom = !iss.message.startsWith(GENERIC);
  const missing = arg !== '' && raw[arg] === undefined && iss.code === 'invalid_type';
  return { ok: false, issue: { arg, missing, custom, message: custom ? iss.message : iss.message.slice(GENERIC.length) } };
}

// ---- chat: parser, dispatch, help -------------------------------------------------------------------

export type ChatParse = { ok: true; args: Record<string, unknown> } | { ok: false; message: string };

/**
 * Parses the words after `!name` by the declaration. Words beyond the positional ones are ignored, as
 * the hand-written parsers did. A failure is one line: `Usage: !audit <device> [n]`, followed by what
 * was wrong unless a required argument was simply missing (or the schema's message for it is '').
 */
export function parseChatArgs(def: AnyCommand<unknown>, words: readonly string[], prefix = '!'): ChatParse {
  const shape = def.args.shape as Record<string, z.ZodType>;
  const infos = argInfos(def);
  const keyed = new Map(infos.filter((a) => !a.positional).map((a) => [a.name, a]));
  const positional = infos.filter((a) => a.positional);
  const raw: Record<string, unknown> = {};
  const rest: string[] = [];
  for (const w of words) {
    const eq = w.indexOf('=');
    const key = eq > 0 ? w.slice(0, eq) : '';
    if (keyed.has(key)) raw[key] = coerceArg(shape[key]!, w.slice(eq + 1));
    else rest.push(w);
  }
  positional.forEach((a, i) => {
    if (a.list && i === positional.length - 1) raw[a.name] = rest.slice(i).map((w) => coerceArg((unwrap(shape[a.name]!) as z.ZodArray<z.ZodType>).element, w));
    else if (rest[i] !== undefined) raw[a.name] = coerceArg(shape[a.name]!, rest[i]);
  });
  const v = validateArgs(def, raw);
  if (v.ok) return { ok: true, args: v.args };
  const usage = `Usage: ${prefix}${def.name}${usageOf(def) ? ` ${usageOf(def)}` : ''}`;
  // A schema message '' means the usage line says it all (`!audit <device>` given a malformed device).
  if (v.issue.missing || v.issue.message === '') return { ok: false, message: usage };
  return { ok: false, message: v.issue.custom ? `${usage} ${v.issue.message}` : `${usage} (${v.issue.arg || 'arguments'}: ${v.issue.message})` };
}

/** One help line per command: `!audit [n] — the last n audit entries (default 10)`. */
export function chatHelpLines(commands: readonly AnyCommand<never>[], prefix = '!'): string[] {
  return commands.map((c) => {
    const usage = usageOf(c as AnyCommand<unknown>);
    return `${prefix}${c.name}${usage ? ` ${usage}` : ''} — ${c.summary}`;
  });
}

export interface ChatCaller {
  /** Whether the sender holds this permission (checked before the handler runs). */
  may(p: Permission): boolean;
  /** Where parse errors, refusals and unknown commands are answered. */
  reply(text: string): Promise<unknown>;
}

/**
 * Runs one `!command` message against a surface's table: finds the command by its first word, checks
 * the permission, parses the arguments, then runs the handler. Returns false when the text is no command.
 */
export async function dispatchChat<C>(commands: readonly AnyCommand<C>[], text: string, caller: ChatCaller, ctx: C, prefix = '!'): Promise<boolean> {
  if (!text.startsWith(prefix)) return false;
  const all = text.slice(prefix.length).split(/\s+/).filter(Boolean);
  const word = all[0] ?? '';
  // A name may be several words (`vm new`): the longest one the message starts with.
  let cmd: AnyCommand<C> | undefined;
  let used = 1;
  for (const c of commands) {
    const n = c.name.split(' ');
    if ((!cmd || n.length > used) && n.every((w, i) => all[i]?.toLowerCase() === w)) { cmd = c; used = n.length; }
  }
  const words = all.slice(used);
  if (!cmd) {
    const family = commands.filter((c) => c.name.startsWith(`${word.toLowerCase()} `)).map((c) => c.name.slice(word.length + 1));
    if (word && family.length) await caller.reply(`Usage: ${prefix}${word.toLowerCase()} ${family.join('|')} … (send ${prefix}help for each one's arguments)`);
    else await caller.reply(`Unknown command ${prefix}${word.slice(0, 40)}. Send ${prefix}help for the list.`);
    return true;
  }
  if (!caller.may(cmd.permission)) {
    await caller.reply(`${prefix}${cmd.name} needs the ${cmd.permission} permission.`);
    return true;
  }
  const parsed = parseChatArgs(cmd as AnyCommand<unknown>, words, prefix);
  if (!parsed.ok) {
    await caller.reply(parsed.message);
    return true;
  }
  await cmd.run(parsed.args, ctx);
  return true;
}
