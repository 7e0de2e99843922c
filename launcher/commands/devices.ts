/**
 * `meshpilot devices`, `capabilities`, `cap` (run one capability through policy, approval and audit)
 * and `manifest check`. Declarations only at load; each handler imports what it runs.
 */
import * as os from 'node:os';
import { z } from 'zod';
import { defineCommand, defineGroup } from '../../capabilities/commands.js';
import type { ApprovalHook, InvokeResult } from '../../capabilities/invoke.js';
import { EXIT, UsageError, actorOf, unknownDevice, type CliEntry, type CliIo, type CommandContext } from './context.js';

function cliActor(): string {
  try { return `cli:${os.userInfo().username}`; } catch { return 'cli:unknown'; }
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

const cli = ['cli'] as const;
const cliHttp = ['cli', 'http'] as const;

export const DEVICE_COMMANDS: CliEntry[] = [
  defineCommand({
    name: 'devices', summary: 'list devices (a device exists when MESHPILOT_HOME/manifests/<device>.yaml exists)', permission: 'operator', surfaces: cliHttp,
    args: () => z.object({ json: z.boolean().optional().describe('print JSON') }),
    run: async (opts, ctx: CommandContext) => {
      const { io } = ctx;
      const r = await ctx.runtime();
      const { formatIssue } = await import('../../capabilities/manifest.js');
      const list = r.devices.list().filter((l) => !ctx.allowsDevice || ctx.allowsDevice(l.device));
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
    },
  }),
  defineCommand({
    name: 'capabilities', summary: 'list capabilities (or show one), optionally only those a device enables', permission: 'operator', surfaces: cli,
    args: () => z.object({
      name: z.string().optional().describe('a capability, e.g. fs.read'),
      device: z.string().optional().describe('only what this device enables'),
    }),
    positional: ['name'],
    cli: { aliases: ['caps'], flags: { device: '--device <device>' } },
    run: async ({ name, device }, ctx: CommandContext) => {
      const { io } = ctx;
      const r = await ctx.runtime();
      if (name) {
        const def = r.capabilities.get(name);
        if (!def) throw new UsageError(`unknown capability ${name}; known: ${r.capabilities.names().join(', ')}`);
        const { describeArgs } = await import('../../capabilities/args.js');
        io.out(`${def.name} (risk: ${def.risk})\n${def.description}\narguments:\n${describeArgs(def).map((l) => `  ${l}\n`).join('') || '  none\n'}`);
        return;
      }
      let defs = r.capabilities.all();
      if (device) {
        if (!r.devices.get(device)) throw new UsageError(unknownDevice(r, device));
        defs = r.invoker.allowedCapabilities(device);
      }
      for (const def of defs) io.out(`${def.name.padEnd(16)} ${def.risk.padEnd(6)} ${def.description.split('. ')[0]}\n`);
    },
  }),
  defineCommand({
    name: 'cap', summary: 'run a capability on a device through policy, approval and audit', permission: 'operator', surfaces: cli,
    args: () => z.object({
      device: z.string().describe('device name (see `meshpilot devices`)'),
      capability: z.string().describe('capability name (see `meshpilot capabilities`)'),
      args: z.array(z.string()).default([]).describe('arguments as key=value (numbers, true/false, lists as a,b,c)'),
      json: z.string().optional().describe('arguments as a JSON object (merged under key=value ones)'),
      output: z.enum(['text', 'json']).default('text').describe('output format'),
      yes: z.boolean().optional().describe('approve calls that need approval without asking'),
    }),
    positional: ['device', 'capability', 'args'],
    cli: { flags: { json: '--json <object>', output: '--output <format>', yes: '-y, --yes' } },
    run: async (opts, ctx: CommandContext) => {
      const { io } = ctx;
      const { device, capability } = opts;
      const approve: ApprovalHook = ctx.approve ?? (async (req) => {
        if (opts.yes) return { approved: true, by: `${cliActor()} (--yes)` };
        if (!io.isTTY || !io.ask) return { approved: false, by: 'cli', reason: 'it needs approval: run it in a terminal or pass --yes' };
        const answer = await io.ask(`${req.capability} on ${req.device} needs approval (${req.risk}): ${JSON.stringify(req.args)}\nRun it? [y/N] `);
        return /^y(es)?$/i.test(answer.trim()) ? { approved: true, by: cliActor() } : { approved: false, by: cliActor(), reason: 'answered no' };
      });
      // Only the transport this device uses is loaded (ssh2 or the agent client otherwise cost every call).
      const r = await ctx.runtime({ approve, transports: 'none' });
      const listing = r.devices.listing(device);
      if (!listing) throw new UsageError(unknownDevice(r, device));
      if (!listing.manifest) {
        const { formatIssue } = await import('../../capabilities/manifest.js');
        throw new UsageError(`device ${device} has an invalid manifest:\n${listing.issues?.map(formatIssue).join('\n')}`);
      }
      const { loadTransports } = await import('../runtime-core.js');
      await loadTransports([listing.manifest.transport.kind]);
      const def = r.capabilities.get(capability);
      if (!def) throw new UsageError(`unknown capability ${capability}; known: ${r.capabilities.names().join(', ')}`);
      let args: Record<string, unknown> = {};
      if (opts.json !== undefined) {
        let parsed: unknown;
        try { parsed = JSON.parse(opts.json); } catch { throw new UsageError('--json must be a JSON object, e.g. --json \'{"path":"/var/log"}\''); }
        if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new UsageError('--json must be a JSON object');
        args = parsed as Record<string, unknown>;
      }
      const { parseKeyValues } = await import('../../capabilities/args.js');
      const kv = parseKeyValues(def, opts.args);
      if (!kv.ok) throw new UsageError(kv.message);
      args = { ...args, ...kv.args };
      const result = await r.invoker.invoke({ device, capability, args, actor: actorOf(ctx) }, approve);
      if (opts.output === 'json') io.out(JSON.stringify(result, null, 2) + '\n');
      else formatResult(io, result);
      ctx.setExit(exitFor(result));
    },
  }),
  defineGroup('manifest', 'device manifests'),
  defineCommand({
    name: 'manifest check', summary: 'validate manifest files: prints ok or every error with file:line field', permission: 'operator', surfaces: cli,
    args: () => z.object({ files: z.array(z.string()).min(1) }),
    positional: ['files'],
    run: async ({ files }, ctx: CommandContext) => {
      const { formatIssue, loadManifest } = await import('../../capabilities/manifest.js');
      let bad = false;
      for (const file of files) {
        const parsed = loadManifest(file);
        if (parsed.ok) ctx.io.out(files.length > 1 ? `${file}: ok\n` : 'ok\n');
        else {
          bad = true;
          for (const issue of parsed.issues) ctx.io.err(`${formatIssue(issue)}\n`);
        }
      }
      ctx.setExit(bad ? EXIT.failed : EXIT.ok);
    },
  }),
];
