/**
 * The `meshpilot` command line: the program's setup only. The commands are declared in
 * launcher/commands/*.ts (capabilities/commands.ts), registered by launcher/commands/program.ts, and
 * each loads its own code when it runs. Exit codes: 0 ok, 1 check failed (manifest check, audit
 * verify), 2 usage error (unknown device/capability included), 3 denied by policy or not approved,
 * 4 the capability ran and failed.
 */
import { Command, CommanderError } from 'commander';
import { CLI_COMMANDS } from './commands/index.js';
import { EXIT, UsageError, type CliIo, type CommandContext, type RuntimeOptions } from './commands/context.js';
import { registerCommands, type CommandTerms } from './commands/program.js';
import { helpOutput, stdioWriter } from './stdio.js';
import type { Runtime } from './runtime-core.js';

export { EXIT, UsageError, type CliIo, type CommandContext } from './commands/context.js';

const defaultIo: CliIo = {
  // fs.writeSync until the stream is made (launcher/stdio.ts; the stream's write when main.ts did not set that up)
  out: stdioWriter('stdout'),
  err: stdioWriter('stderr'),
  // Read when a command asks: process.stdin is made on first access (a stream, ~5 ms that only prompts need).
  get isTTY() { return Boolean(process.stdin.isTTY && process.stdout.isTTY); },
  ask: async (q) => {
    const { createInterface } = await import('node:readline/promises');
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    try { return await rl.question(q); } finally { rl.close(); }
  },
};

/**
 * The bundle's table of every top-level command's help term (launcher/bundle.ts, from commandTerms() of
 * these declarations at build time): with it, a command line builds only the commands it names. Run from
 * the sources there is none, and every command is built.
 */
declare const __MESHPILOT_CLI_TERMS__: CommandTerms | undefined;
const BUNDLED_TERMS = typeof __MESHPILOT_CLI_TERMS__ === 'undefined' ? undefined : __MESHPILOT_CLI_TERMS__;

/** `argv`: the command line about to be parsed, when only the commands it names need building. */
export function buildProgram(io: CliIo, setExit: (code: number) => void, argv?: readonly string[]): Command {
  let rt: Runtime | undefined;
  const runtime = async (opts: RuntimeOptions = {}): Promise<Runtime> => {
    if (rt) return rt;
    const core = await import('./runtime-core.js');
    if ((opts.transports ?? 'all') === 'all') await core.loadTransports(['ssh', 'mesh', 'vm']);
    rt = core.openRuntime(opts.approve ? { approve: opts.approve } : {});
    return rt;
  };
  const program = new Command('meshpilot')
    .description('Run your machines from a Matrix chat: capabilities, manifests, audit.')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    // width and colours without making process.stdout for output that goes to no terminal (launcher/stdio.ts)
    .configureOutput({ writeOut: io.out, writeErr: io.err, ...helpOutput() })
    .exitOverride();
  program.hook('postAction', async () => { if (rt) await rt.close(); rt = undefined; });
  const ctx: CommandContext = { io, runtime, setExit };
  registerCommands(program, CLI_COMMANDS, ctx, argv && BUNDLED_TERMS ? { argv, terms: BUNDLED_TERMS } : {});
  return program;
}

/** Runs the CLI; returns the exit code (never throws, never prints a stack trace). */
export async function runCli(argv: string[], io: CliIo = defaultIo): Promise<number> {
  let code: number = EXIT.ok;
  const program = buildProgram(io, (c) => { code = c; }, argv);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return EXIT.ok;
      return EXIT.usage;
    }
    if (err instanceof UsageError) {
      io.err(`error: ${err.message}\n`);
      return EXIT.usage;
    }
    const e = err as { code?: string; message?: string };
    io.err(`error: ${e.message ?? String(err)}\n`);
    return e.code === 'manifest_invalid' || e.code === 'config' ? EXIT.usage : EXIT.failed;
  }
}
