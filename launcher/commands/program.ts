/**
 * The CLI surface of the command declarations (capabilities/commands.ts): each declaration becomes a
 * commander command, with its positional arguments, its options (derived from the zod fields: booleans
 * are flags, enums are choices, defaults and descriptions shown by `--help`, required fields mandatory),
 * and an action that validates with the same schema, then runs the handler. The handler imports its
 * own code, so starting the CLI loads commander and the declarations only.
 */
import { Command, Option } from 'commander';
import { argInfos, isGroup, validateArgs, type ArgIssue } from '../../capabilities/commands.js';
import { UsageError, type CliCommand, type CliEntry, type CommandContext } from './context.js';

const kebab = (name: string): string => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** The flags commander shows for an option field: `--dry-run`, `--ssh-key <ssh-key>`, or the declaration's own. */
function flagsOf(def: CliCommand, name: string, boolean: boolean, list: boolean): string {
  const own = def.cli?.flags?.[name];
  if (own) return own;
  return boolean ? `--${kebab(name)}` : `--${kebab(name)} <${kebab(name)}${list ? '...' : ''}>`;
}

/** One line: the schema's own message as it is, zod's with the argument it is about. */
function cliMessage(def: CliCommand, issue: ArgIssue): string {
  if (issue.custom && issue.message) return issue.message;
  const info = argInfos(def).find((a) => a.name === issue.arg);
  const what = !info ? 'arguments' : info.positional ? `<${info.name}>` : (flagsOf(def, info.name, info.boolean, info.list).split(/[ ,]+/).find((f) => f.startsWith('--')) ?? info.name);
  return `${what}: ${issue.message || 'invalid'}`;
}

function addCommand(parent: Command, word: string, def: CliCommand, ctx: CommandContext): Command {
  const cmd = parent.command(word).description(def.summary);
  for (const alias of def.cli?.aliases ?? []) cmd.alias(alias);
  if (def.cli?.helpAfter) cmd.addHelpText('after', def.cli.helpAfter);
  const infos = argInfos(def);
  for (const a of infos) {
    if (a.positional) {
      const label = `${a.name}${a.list ? '...' : ''}`;
      cmd.argument(a.required ? `<${label}>` : `[${label}]`, a.description ?? '');
      continue;
    }
    const opt = new Option(flagsOf(def, a.name, a.boolean, a.list), a.description ?? '');
    if (a.choices) opt.choices(a.choices);
    if (a.default !== undefined) opt.default(a.default);
    if (a.required && !a.boolean) opt.makeOptionMandatory();
    cmd.addOption(opt);
  }
  const positional = infos.filter((a) => a.positional);
  cmd.action(async (...params: unknown[]) => {
    const self = params[params.length - 1] as Command;
    const raw: Record<string, unknown> = { ...self.opts() };
    positional.forEach((a, i) => { if (self.processedArgs[i] !== undefined) raw[a.name] = self.processedArgs[i]; });
    const v = validateArgs(def, raw);
    if (!v.ok) throw new UsageError(cliMessage(def, v.issue));
    // The local account runs the CLI: it holds the operator permission (trust levels would be checked here).
    await def.run(v.args, ctx);
  });
  return cmd;
}

/** How the program's help shows each top-level command it has not built: `cap [options] <device> <capability> [args...]`. */
export type CommandTerms = Readonly<Record<string, string>>;

export interface RegisterOptions {
  /**
   * The command line about to be parsed. With `terms`, only the declarations whose first word (or alias)
   * it holds are built as commander commands, schema and all; every other top-level command is its name,
   * summary and term (commander can dispatch only to a word the command line holds). Without: all built.
   */
  argv?: readonly string[];
  /** commandTerms() of the same declarations (the CLI bundle carries them: launcher/bundle.ts). */
  terms?: CommandTerms;
}

/** Registers the declarations on the program, groups before their subcommands (`audit` before `audit tail`). */
export function registerCommands(program: Command, entries: readonly CliEntry[], ctx: CommandContext, opts: RegisterOptions = {}): void {
  const { argv, terms } = opts;
  const words = argv && terms ? new Set(argv) : undefined;
  const stubTerms = new Map<Command, string>();
  if (words) {
    const base = program.createHelp();
    program.configureHelp({ ...program.configureHelp(), subcommandTerm: (cmd) => stubTerms.get(cmd) ?? base.subcommandTerm(cmd) });
  }
  // on the command line: its first word, or a top-level command's alias (`caps`)
  const named = (e: CliEntry, path: readonly string[]): boolean =>
    !words || words.has(path[0]!) || (path.length === 1 && !isGroup(e) && (e.cli?.aliases ?? []).some((a) => words.has(a)));
  const byName = new Map<string, Command>([['', program]]);
  for (const e of entries) {
    if (!e.surfaces.includes('cli')) continue;
    const path = e.name.split(' ');
    const term = terms?.[e.name];
    if (!named(e, path)) {
      if (path.length > 1) continue; // inside a group the command line does not name: nothing can reach it
      if (term !== undefined) {
        const stub = program.command(path[0]!).description(e.summary);
        for (const alias of isGroup(e) ? [] : e.cli?.aliases ?? []) stub.alias(alias);
        stub.action(() => { throw new Error(`command "${e.name}" was not built (launcher/commands/program.ts)`); });
        stubTerms.set(stub, term);
        continue;
      }
    }
    const parent = byName.get(path.slice(0, -1).join(' '));
    if (!parent) throw new Error(`command "${e.name}": declare "${path.slice(0, -1).join(' ')}" before it`);
    const word = path[path.length - 1]!;
    byName.set(e.name, isGroup(e) ? parent.command(word).description(e.summary) : addCommand(parent, word, e, ctx));
  }
}

/** Each top-level command's term in the program's help, from the declarations built in full. */
export function commandTerms(entries: readonly CliEntry[]): Record<string, string> {
  const program = new Command('meshpilot');
  const unused = (): never => { throw new Error('commandTerms builds commands, it runs none'); };
  registerCommands(program, entries, { io: { out: unused, err: unused, isTTY: false }, runtime: unused, setExit: unused });
  const help = program.createHelp();
  return Object.fromEntries(program.commands.map((c) => [c.name(), help.subcommandTerm(c)]));
}
