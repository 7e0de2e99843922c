/** The CLI surface of the command declarations (launcher/commands/program.ts), on a made-up family. */
import { Command, CommanderError } from 'commander';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineCommand, defineGroup, isGroup } from '../capabilities/commands.js';
import { UsageError, type CliCommand, type CliEntry, type CommandContext } from '../launcher/commands/context.js';
import { CLI_COMMANDS } from '../launcher/commands/index.js';
import { commandTerms, registerCommands } from '../launcher/commands/program.js';

const N = '-n must be a whole number from 1 to 9';

function setup(): { program: Command; out: string[]; calls: unknown[] } {
  const out: string[] = [];
  const calls: unknown[] = [];
  const ctx: CommandContext = {
    io: { out: (t) => out.push(t), err: (t) => out.push(t), isTTY: false },
    runtime: () => Promise.reject(new Error('no runtime in this test')),
    setExit: () => undefined,
  };
  const family: CliEntry[] = [
    defineGroup('vm', 'virtual machines'),
    defineCommand({
      name: 'vm start', summary: 'start a VM', permission: 'operator', surfaces: ['cli'],
      args: z.object({
        name: z.string().describe('the VM'),
        disks: z.array(z.string()).default([]).describe('extra disks'),
        size: z.enum(['small', 'large']).default('small').describe('how big'),
        n: z.coerce.number({ error: N }).int({ error: N }).min(1, { error: N }).max(9, { error: N }).default(1).describe('how many'),
        host: z.string().describe('where'),
        dryRun: z.boolean().optional().describe('change nothing'),
        port: z.coerce.number().max(10).optional(),
      }),
      positional: ['name', 'disks'],
      cli: { flags: { n: '-n <count>', host: '--host <host>' }, aliases: ['run'], helpAfter: '\nExit codes: 0 ok\n' },
      run: (a, _c: CommandContext) => { calls.push(a); },
    }),
    defineCommand({
      name: 'chat-only', summary: 'not on the command line', permission: 'operator', surfaces: ['device-chat'],
      args: z.object({}), run: () => undefined,
    }),
  ];
  const program = new Command('meshpilot').exitOverride().configureOutput({ writeOut: (t) => out.push(t), writeErr: (t) => out.push(t) });
  registerCommands(program, family, ctx);
  return { program, out, calls };
}

describe('CLI derived from declarations', () => {
  it('registers groups, subcommands, aliases, arguments and options with their help', async () => {
    const { program, out } = setup();
    expect(program.commands.map((c) => c.name())).toEqual(['vm']);
    await expect(program.parseAsync(['vm', 'start', '--help'], { from: 'user' })).rejects.toMatchObject({ code: 'commander.helpDisplayed' });
    const help = out.join('');
    expect(help).toContain('Usage: meshpilot vm start|run [options] <name> [disks...]');
    expect(help).toMatch(/name\s+the VM/);
    expect(help).toMatch(/--size <size>\s+how big \(choices: "small", "large", default: "small"\)/);
    expect(help).toMatch(/-n <count>\s+how many \(default: 1\)/);
    expect(help).toMatch(/--host <host>\s+where/);
    expect(help).toMatch(/--dry-run\s+change nothing/);
    expect(help).toContain('Exit codes: 0 ok');
  });

  it('runs the handler with the validated, typed arguments', async () => {
    const { program, calls } = setup();
    await program.parseAsync(['vm', 'run', 'box', 'd1', 'd2', '--host', 'h', '-n', '3', '--dry-run'], { from: 'user' });
    expect(calls).toEqual([{ name: 'box', disks: ['d1', 'd2'], size: 'small', n: 3, host: 'h', dryRun: true }]);
  });

  it('commander refuses a missing mandatory option and a wrong choice before the handler', async () => {
    const { program, calls } = setup();
    await expect(program.parseAsync(['vm', 'start', 'box'], { from: 'user' })).rejects.toMatchObject({ code: 'commander.missingMandatoryOptionValue' });
    await expect(program.parseAsync(['vm', 'start', 'box', '--host', 'h', '--size', 'huge'], { from: 'user' })).rejects.toMatchObject({ code: 'commander.invalidArgument' });
    expect(calls).toEqual([]);
  });

  it('a value the schema refuses is a one-line usage error: its own message, or zod\'s beside the flag', async () => {
    const { program, calls } = setup();
    await expect(program.parseAsync(['vm', 'start', 'box', '--host', 'h', '-n', 'zero'], { from: 'user' })).rejects.toEqual(new UsageError(N));
    const e = await program.parseAsync(['vm', 'start', 'box', '--host', 'h', '--port', '99'], { from: 'user' }).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(UsageError);
    expect((e as Error).message).toMatch(/^--port: .*10/);
    expect((e as Error).message).not.toContain('\n');
    expect(calls).toEqual([]);
  });
});

describe('a command line builds only the commands it names (CLI bundle: launcher/cli.ts)', () => {
  /** The real table, each declaration's schema counted as it is built; the program prints into `out`. */
  function real(opts?: { argv: string[] }): { program: Command; out: string[]; built: string[] } {
    const out: string[] = [];
    const built: string[] = [];
    const entries = CLI_COMMANDS.map((e) => {
      if (isGroup(e)) return e;
      const copy = Object.create(e) as CliCommand;
      Object.defineProperty(copy, 'args', { get: () => { built.push(e.name); return e.args; } });
      return copy;
    });
    const ctx: CommandContext = {
      io: { out: (t) => out.push(t), err: (t) => out.push(t), isTTY: false },
      runtime: () => Promise.reject(new Error('no runtime in this test')),
      setExit: () => undefined,
    };
    const program = new Command('meshpilot').exitOverride().configureOutput({ writeOut: (t) => out.push(t), writeErr: (t) => out.push(t), getOutHelpWidth: () => 100, getErrHelpWidth: () => 100 });
    registerCommands(program, entries, ctx, opts ? { argv: opts.argv, terms: commandTerms(CLI_COMMANDS) } : {});
    return { program, out, built };
  }

  const help = async (argv: string[], lazy: boolean): Promise<{ text: string; built: string[] }> => {
    const { program, out, built } = real(lazy ? { argv } : undefined);
    await program.parseAsync(argv, { from: 'user' }).catch((e: unknown) => {
      if (!(e instanceof CommanderError)) throw e;
    });
    return { text: out.join(''), built };
  };

  it('--help builds no command and prints what building every one prints', async () => {
    const full = await help(['--help'], false);
    expect(full.built.length).toBeGreaterThan(20);
    const lazy = await help(['--help'], true);
    expect(lazy.built).toEqual([]);
    expect(lazy.text).toBe(full.text);
    expect(lazy.text).toContain('cap [options] <device> <capability> [args...]');
    expect(lazy.text).toContain('capabilities|caps [options] [name]');
  });

  it('a command (or its alias, or its group) builds its family only, and help for it is the same', async () => {
    for (const argv of [['cap', '--help'], ['caps', '--help'], ['vm', '--help'], ['vm', 'ls', '--help'], ['help', 'audit'], ['capp']]) {
      const full = await help(argv, false);
      const lazy = await help(argv, true);
      expect(lazy.text, argv.join(' ')).toBe(full.text);
      const first = argv[0] === 'help' ? argv[1]! : argv[0]!;
      expect(lazy.built.every((n) => n.split(' ')[0] === (first === 'caps' ? 'capabilities' : first)), `${argv.join(' ')}: ${lazy.built.join(', ')}`).toBe(true);
    }
    expect((await help(['cap', '--help'], true)).built).toEqual(['cap']);
    expect((await help(['capp'], true)).built).toEqual([]);
  });

  it('the named command runs with its own validation; commandTerms lists every top-level command', async () => {
    const { program, built } = real({ argv: ['manifest', 'check'] });
    await expect(program.parseAsync(['manifest', 'check'], { from: 'user' })).rejects.toMatchObject({ code: 'commander.missingArgument' });
    expect(built).toEqual(['manifest check']);
    const terms = commandTerms(CLI_COMMANDS);
    expect(Object.keys(terms)).toEqual(CLI_COMMANDS.filter((e) => e.surfaces.includes('cli') && !e.name.includes(' ')).map((e) => e.name));
    expect(terms['add-pc']).toMatch(/^add-pc \[options\] <name>$/);
  });
});
