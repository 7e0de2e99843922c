/**
 * The `meshpilot` command line. Exit codes: 0 ok, 1 check failed (manifest check, audit verify),
 * 2 usage error (unknown device/capability included), 3 denied by policy or not approved,
 * 4 the capability ran and failed.
 */
import { createInterface } from 'node:readline/promises';
import * as os from 'node:os';
import { Command, CommanderError, Option } from 'commander';
import { describeArgs, parseKeyValues } from '../capabilities/args.js';
import type { AuditEntry } from '../capabilities/audit.js';
import { familyOf } from '../capabilities/capability.js';
import { formatIssue, loadManifest } from '../capabilities/manifest.js';
import type { ApprovalHook, InvokeResult } from '../capabilities/invoke.js';
import { openRuntime, type Runtime } from './runtime.js';
import { COMMAND_MODULES } from './commands/index.js';

export const EXIT = { ok: 0, failed: 1, usage: 2, denied: 3, capFailed: 4 } as const;

export interface CliIo {
  out: (text: string) => void;
  err: (text: string) => void;
  isTTY: boolean;
  ask?: (question: string) => Promise<string>;
}

const defaultIo: CliIo = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  isTTY: Boolean(process.stdin.isTTY && process.stdout.isTTY),
  ask: async (q) => {
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    try { return await rl.question(q); } finally { rl.close(); }
  },
};

/** A mistake in how the command was called: printed as one line, exit code 2. */
export class UsageError extends Error {}

/** What command modules (launcher/commands/*.ts) get to build their subcommands. */
export interface CommandContext {
  io: CliIo;
  runtime(approve?: ApprovalHook): Runtime;
  setExit(code: number): void;
}

function cliActor(): string {
  try { return `cli:${os.userInfo().username}`; } catch { return 'cli:unknown'; }
}

function printEntries(io: CliIo, entries: AuditEntry[]): void {
  for (const e of entries) {
    const exit = e.exit_code === null ? '' : ` exit=${e.exit_code}`;
    const dur = e.duration_ms === null ? '' : ` ${e.duration_ms}ms`;
    const reason = e.reason && e.outcome !== 'ok' ? ` — ${e.reason}` : '';
    io.out(`#${e.seq} ${e.ts} ${e.device} ${e.actor} ${e.capability} ${e.decision}/${e.outcome}${exit}${dur}${reason}\n`);
  }
}

function formatResult(io: CliIo, r: InvokeResult): void {
  const res = r.result;
  if (res) {
    if (res.stdout) io.out(res.stdout.endsWith('\n') ? res.stdout : res.stdout + '\n');
    else if (res.data !== undefined) io.out(JSON.stringify(res.data, null, 2) + '\n');
    if (res.stderr && !res.ok) io.err(res.stderr.endsWith('\n') ? res.stderr : res.stderr + '\n');
    if (res.truncated) io.err('(output truncated at the manifest limit)\n');
  }
  if (r.error) io.err(`error: ${r.error.message}\n`);
  if (r.audit) io.err(`🧾 audit ${r.device} #${r.audit.seq} ${r.capability} ${r.ok ? 'ok' : (r.error?.code ?? 'error')}\n`);
}

function exitFor(r: InvokeResult): number {
  if (r.ok) return EXIT.ok;
  if (r.decision === 'denied' || r.decision === 'rejected') {
    return r.error?.code === 'invalid_args' || r.error?.code === 'unknown_capability' || r.error?.code === 'unknown_device' ? EXIT.usage : EXIT.denied;
  }
  return EXIT.capFailed;
}

export function buildProgram(io: CliIo, setExit: (code: number) => void): Command {
  let rt: Runtime | undefined;
  const runtime = (approve?: ApprovalHook): Runtime => (rt ??= openRuntime(approve ? { approve } : {}));
  const program = new Command('meshpilot')
    .description('Run your machines from a Matrix chat: capabilities, manifests, audit.')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride();
  program.hook('postAction', async () => { if (rt) await rt.close(); rt = undefined; });

  program.command('up', { isDefault: false })
    .description('start meshpilot (what `npm start` runs): checks the data dir, devices and audit, then runs what is configured')
    .action(async () => {
      const { runUp } = await import('./up.js');
      setExit(await runUp(runtime(), io));
    });

  program.command('devices')
    .description('list devices (a device exists when MESHPILOT_HOME/manifests/<device>.yaml exists)')
    .option('--json', 'print JSON')
    .action((opts: { json?: boolean }) => {
      const r = runtime();
      const list = r.devices.list();
      if (opts.json) {
        io.out(JSON.stringify(list.map((l) => ({
          device: l.device, file: l.file, ok: !!l.manifest, os: l.manifest?.os, transport: l.manifest?.transport.kind,
          capabilities: l.manifest ? Object.keys(l.manifest.capabilities) : [], issues: l.issues?.map(formatIssue),
        })), null, 2) + '\n');
        return;
      }
      if (list.length === 0) io.out(`no devices: add a manifest under ${r.home.manifests}\n`);
      for (const l of list) {
        if (l.manifest) {
          io.out(`${l.device.padEnd(16)} ${l.manifest.transport.kind.padEnd(6)} ${l.manifest.os.padEnd(8)} ${Object.keys(l.manifest.capabilities).length} capabilities\n`);
        } else {
          io.out(`${l.device.padEnd(16)} INVALID  ${l.issues?.map(formatIssue).join('; ')}\n`);
        }
      }
    });

  program.command('capabilities')
    .alias('caps')
    .description('list capabilities (or show one), optionally only those a device enables')
    .argument('[name]', 'a capability, e.g. fs.read')
    .option('--device <device>', 'only what this device enables')
    .action((name: string | undefined, opts: { device?: string }) => {
      const r = runtime();
      if (name) {
        const def = r.capabilities.get(name);
        if (!def) throw new UsageError(`unknown capability ${name}; known: ${r.capabilities.names().join(', ')}`);
        io.out(`${def.name} (risk: ${def.risk})\n${def.description}\narguments:\n${describeArgs(def).map((l) => `  ${l}\n`).join('') || '  none\n'}`);
        return;
      }
      let defs = r.capabilities.all();
      if (opts.device) {
        if (!r.devices.get(opts.device)) throw new UsageError(unknownDevice(r, opts.device));
        defs = r.invoker.allowedCapabilities(opts.device);
      }
      let family = '';
      for (const def of defs) {
        if (familyOf(def.name) !== family) family = familyOf(def.name);
        io.out(`${def.name.padEnd(16)} ${def.risk.padEnd(6)} ${def.description.split('. ')[0]}\n`);
      }
    });

  program.command('cap')
    .description('run a capability on a device through policy, approval and audit')
    .argument('<device>', 'device name (see `meshpilot devices`)')
    .argument('<capability>', 'capability name (see `meshpilot capabilities`)')
    .argument('[args...]', 'arguments as key=value (numbers, true/false, lists as a,b,c)')
    .option('--json <object>', 'arguments as a JSON object (merged under key=value ones)')
    .addOption(new Option('--output <format>', 'output format').choices(['text', 'json']).default('text'))
    .option('-y, --yes', 'approve calls that need approval without asking')
    .action(async (device: string, capability: string, pairs: string[], opts: { json?: string; output: 'text' | 'json'; yes?: boolean }) => {
      const approve: ApprovalHook = async (req) => {
        if (opts.yes) return { approved: true, by: `${cliActor()} (--yes)` };
        if (!io.isTTY || !io.ask) return { approved: false, by: 'cli', reason: 'it needs approval: run it in a terminal or pass --yes' };
        const answer = await io.ask(`${req.capability} on ${req.device} needs approval (${req.risk}): ${JSON.stringify(req.args)}\nRun it? [y/N] `);
        return /^y(es)?$/i.test(answer.trim()) ? { approved: true, by: cliActor() } : { approved: false, by: cliActor(), reason: 'answered no' };
      };
      const r = runtime(approve);
      const listing = r.devices.listing(device);
      if (!listing) throw new UsageError(unknownDevice(r, device));
      if (!listing.manifest) throw new UsageError(`device ${device} has an invalid manifest:\n${listing.issues?.map(formatIssue).join('\n')}`);
      const def = r.capabilities.get(capability);
      if (!def) throw new UsageError(`unknown capability ${capability}; known: ${r.capabilities.names().join(', ')}`);
      let args: Record<string, unknown> = {};
      if (opts.json !== undefined) {
        let parsed: unknown;
        try { parsed = JSON.parse(opts.json); } catch { throw new UsageError('--json must be a JSON object, e.g. --json \'{"path":"/var/log"}\''); }
        if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new UsageError('--json must be a JSON object');
        args = parsed as Record<string, unknown>;
      }
      const kv = parseKeyValues(def, pairs);
      if (!kv.ok) throw new UsageError(kv.message);
      args = { ...args, ...kv.args };
      const result = await r.invoker.invoke({ device, capability, args, actor: cliActor() }, approve);
      if (opts.output === 'json') io.out(JSON.stringify(result, null, 2) + '\n');
      else formatResult(io, result);
      setExit(exitFor(result));
    });

  const manifest = program.command('manifest').description('device manifests');
  manifest.command('check')
    .description('validate manifest files: prints ok or every error with file:line field')
    .argument('<files...>')
    .action((files: string[]) => {
      let bad = false;
      for (const file of files) {
        const parsed = loadManifest(file);
        if (parsed.ok) io.out(files.length > 1 ? `${file}: ok\n` : 'ok\n');
        else {
          bad = true;
          for (const issue of parsed.issues) io.err(`${formatIssue(issue)}\n`);
        }
      }
      setExit(bad ? EXIT.failed : EXIT.ok);
    });

  const audit = program.command('audit').description('the hash-chained audit log');
  audit.command('verify')
    .description('walk the chain(s) and compare each device\'s with the newest head its bot anchored in Matrix: prints `ok N entries head=<hash>` or the first seq that disagrees and why')
    .option('--device <device>', 'only this device')
    .option('--require-anchors', 'exit 1 also when anchors could not be read from Matrix (homeserver down, token refused)')
    .action(async (opts: { device?: string; requireAnchors?: boolean }) => {
      const r = runtime();
      const devices = opts.device ? [opts.device] : r.audit.devices();
      if (devices.length === 0) { io.out('ok 0 entries (the audit log is empty)\n'); return; }
      const { checkChainAnchors } = await import('./audit-anchors.js');
      let bad = false;
      let unchecked = false;
      for (const d of devices) {
        const v = r.audit.verify(d);
        const prefix = devices.length > 1 || opts.device ? `${d}: ` : '';
        if (!v.ok) {
          bad = true;
          io.out(`${prefix}BROKEN at seq ${v.badSeq}: ${v.reason} (${v.count} entries verified before it)\n`);
          continue;
        }
        // A chain rewritten with every later hash recomputed verifies by itself: the anchors decide.
        const a = await checkChainAnchors(r.home.root, r.audit, d);
        if (a.kind === 'mismatch') {
          bad = true;
          io.out(`${d}: REWRITTEN at seq ${a.badSeq}: ${a.reason} (the chain verifies by itself: it was re-hashed after the anchor was written)\n`);
          continue;
        }
        io.out(`${prefix}ok ${v.count} entries head=${v.head?.hash ?? 'none'}${a.kind === 'matched' ? ` (anchor #${a.anchor.seq} in Matrix matches)` : ''}\n`);
        if (a.kind === 'unchecked') { unchecked = true; io.err(`${prefix || `${d}: `}Matrix anchors NOT checked: ${a.message}\n`); }
      }
      setExit(bad || (unchecked && opts.requireAnchors) ? EXIT.failed : EXIT.ok);
    });
  audit.command('tail')
    .description('the latest audit entries')
    .option('-n <count>', 'how many', '20')
    .option('--device <device>', 'only this device')
    .option('--json', 'one JSON entry per line')
    .action((opts: { n: string; device?: string; json?: boolean }) => {
      const n = Number(opts.n);
      if (!Number.isInteger(n) || n < 1 || n > 100000) throw new UsageError('-n must be a whole number from 1 to 100000');
      const entries = runtime().audit.tail(n, opts.device);
      if (opts.json) for (const e of entries) io.out(JSON.stringify(e) + '\n');
      else printEntries(io, entries);
    });

  const ctx: CommandContext = { io, runtime, setExit };
  for (const register of COMMAND_MODULES) register(program, ctx);
  return program;
}

function unknownDevice(r: Runtime, device: string): string {
  const names = r.devices.names();
  return `unknown device ${device}; known: ${names.length ? names.join(', ') : 'none'} (manifests live in ${r.home.manifests})`;
}

/** Runs the CLI; returns the exit code (never throws, never prints a stack trace). */
export async function runCli(argv: string[], io: CliIo = defaultIo): Promise<number> {
  let code: number = EXIT.ok;
  const program = buildProgram(io, (c) => { code = c; });
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
