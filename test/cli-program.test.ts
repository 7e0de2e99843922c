/** The CLI surface of the command declarations (launcher/commands/program.ts), on a made-up family. */
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineCommand, defineGroup } from '../capabilities/commands.js';
import { UsageError, type CliEntry, type CommandContext } from '../launcher/commands/context.js';
import { registerCommands } from '../launcher/commands/program.js';

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
