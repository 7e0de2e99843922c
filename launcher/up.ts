/**
 * `meshpilot up` (`npm start`): checks the data directory, devices and audit log, then runs what
 * is configured: one bot process per device under the supervisor, the health monitor and the
 * operator room bot. Without a config it says exactly what to configure next.
 */
import type { AddPcFn, RevokeFn } from './operator-room.js';
import type { AddPcOptions, EnrollEvent } from './enroll/types.js';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { toMpError } from '../capabilities/errors.js';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { logger } from '../capabilities/log.js';
import { formatIssue } from '../capabilities/manifest.js';
import type { CliIo } from './commands/context.js';
import { loadConfig } from '../capabilities/config.js';
import type { Runtime } from './runtime.js';
import { BOT_BUNDLE, BOT_SOURCE, buildBotBundle } from './bundle.js';
import { removePidFile, writePidFile } from './pid-file.js';
import { Supervisor } from './supervisor.js';

/** Environment a bot child needs from the launcher's own (children get a scrubbed environment). */
const PASSED_TO_BOTS = ['ANTHROPIC_API_KEY', 'ANTHROPIC_BASE_URL', 'MESHPILOT_HOMESERVER'];

export interface UpOptions {
  /** Resolves when the launcher should stop (default: SIGINT / SIGTERM). */
  until?: Promise<void>;
}

export async function runUp(rt: Runtime, io: CliIo, opts: UpOptions = {}): Promise<number> {
  io.out(`meshpilot 0.1.0 · home ${rt.home.root}\n`);
  if (rt.created) io.out(`created ${rt.home.root} (database, manifests/, keys/)\n`);
  if (rt.enrolledLocal) io.out(`enrolled this machine as device "local" with the read-only template: ${rt.home.manifests}/local.yaml\n`);
  const list = rt.devices.list();
  for (const l of list) {
    if (l.manifest) io.out(`device ${l.device}: ${l.manifest.transport.kind}, ${l.manifest.os}, ${Object.keys(l.manifest.capabilities).length} capabilities\n`);
    else io.out(`device ${l.device}: INVALID manifest (no bot until fixed)\n${l.issues?.map((i) => `  ${formatIssue(i)}\n`).join('')}`);
  }
  if (rt.devices.get('local')) {
    const r = await rt.invoker.invoke({ device: 'local', capability: 'sys.health', args: {}, actor: 'launcher' });
    io.out(`local health: ${r.ok ? (r.result?.stdout.trim() ?? 'ok') : r.error?.message}\n`);
  }
  let broken = false;
  const { checkChainAnchors } = await import('./audit-anchors.js');
  for (const [d, v] of rt.audit.verifyAll()) {
    // A chain re-hashed after a rewrite verifies by itself: its bot's anchor in Matrix decides.
    const a = v.ok ? await checkChainAnchors(rt.home.root, rt.audit, d) : undefined;
    if (!v.ok) {
      broken = true;
      io.out(`AUDIT BROKEN for ${d} at seq ${v.badSeq}: ${v.reason}\n`);
    } else if (a?.kind === 'mismatch') {
      broken = true;
      io.out(`AUDIT REWRITTEN for ${d}: seq ${a.badSeq} disagrees with the head anchored in Matrix (${a.reason})\n`);
    } else io.out(`audit ${d}: ok ${v.count} entries${a?.kind === 'matched' ? `, anchor #${a.anchor.seq} in Matrix matches` : a?.kind === 'unchecked' ? ` (Matrix anchor not checked: ${a.message})` : ''}\n`);
  }

  // A workspace import killed part-way left a `started` without its end: closed here as failed.
  const { closeInterruptedImports } = await import('./workspaces/index.js');
  for (const line of closeInterruptedImports({ runtime: rt, actor: 'launcher' })) io.out(`workspaces: ${line}\n`);

  const cfg = loadConfig(rt.home.config);
  if (!cfg.ok) {
    if (!cfg.missing) {
      io.err(`config ${rt.home.config} is invalid:\n${cfg.errors.map((e) => `  ${e}\n`).join('')}fix it and run \`npm start\` again (\`npx meshpilot doctor\` checks everything).\n`);
      return 2;
    }
    io.out([
      '',
      'Matrix is not configured yet, so no device bots are running. Next:',
      `  1. npx meshpilot init            # homeserver URL, your Matrix ID, registration secret, Anthropic key -> ${rt.home.config}`,
      '  2. npm start                     # one bot per device; DM @meshpilot-local from Element',
      '  3. npx meshpilot doctor          # checks each dependency',
      'Meanwhile, from this terminal:',
      '  npx meshpilot cap local sys.info',
      '  npx meshpilot cap local fs.list path=/var/log',
      '  npx meshpilot audit verify',
      '',
    ].join('\n'));
    // The embedded default: the dashboard and the API serve this machine meanwhile (launcher/http/).
    const { serveEmbedded } = await import('./http/embedded.js');
    const served = await serveEmbedded(rt, io, opts.until);
    return served !== 0 ? served : broken ? 1 : 0;
  }
  const config = cfg.config;
  const log = logger('launcher');
  try {
    writePidFile(rt.home.root);
  } catch (err) {
    io.err(`${toMpError(err).message}\n`);
    return 2;
  }
  const env: Record<string, string> = {};
  for (const k of PASSED_TO_BOTS) if (process.env[k]) env[k] = process.env[k]!;
  // With encryption off the crypto shim needn't even load its WebAssembly bindings (less memory per bot).
  if (config.matrix.encryption === 'off') env['MESHPILOT_MATRIX_E2EE'] = 'off';
  const entry = await botEntry(io);
  const supervisor = new Supervisor({
    entry,
    home: rt.home.root,
    manifestsDir: rt.home.manifests,
    desiredDevices: () => rt.devices.list().filter((l) => l.manifest).map((l) => l.device),
    manifestHash: (d) => rt.devices.get(d)?.hash,
    settings: { maxCrashes: config.supervisor.max_crashes, crashWindowS: config.supervisor.crash_window_s, backoffMaxS: config.supervisor.backoff_max_s },
    env,
    handleSighup: true,
    logger: log.child({ component: 'supervisor' }),
  });
  supervisor.on('ready', (e: { device: string; pid: number }) => io.out(`bot ${e.device}: running (pid ${e.pid})\n`));
  supervisor.on('failed', (e: { device: string; message: string }) => io.out(`bot ${e.device}: FAILED: ${e.message}\n`));
  supervisor.on('crash-loop', (e: { device: string; crashesInWindow: number; stderrTail: string[] }) =>
    io.out(`bot ${e.device}: crash-looping (${e.crashesInWindow} crashes), not restarting; last output:\n${e.stderrTail.map((l) => `  ${l}\n`).join('')}`));

  let ops: { stop(): Promise<void> } | undefined;
  let web: { close(): Promise<void> } | undefined;
  try {
    await supervisor.start();
    web = await (await import('./http/embedded.js')).startBeside(rt, io, config, supervisor);
    try {
      const { startOperatorServices } = await import('./operator-room.js');
      const enroll = await loadEnrollment(rt);
      ops = await startOperatorServices({ runtime: rt, config, supervisor, logger: log.child({ component: 'operator' }), ...enroll });
      io.out('operator room: health alerts and !devices, !health, !audit, !revoke, !add-pc\n');
    } catch (err) {
      io.out(`operator room not started: ${toMpError(err).message} (device bots run anyway)\n`);
    }
    io.out(`launcher running (pid ${process.pid}); \`meshpilot reload\` picks up manifest changes; Ctrl-C stops\n`);
    await (opts.until ?? new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    }));
    io.out('stopping: bots finish their current call…\n');
  } finally {
    const t0 = Date.now();
    await web?.close().catch(() => undefined);
    await ops?.stop().catch(() => undefined);
    const t1 = Date.now();
    await supervisor.stop();
    log.debug({ operatorMs: t1 - t0, botsMs: Date.now() - t1 }, 'stopped');
    removePidFile(rt.home.root, process.pid);
  }
  io.out('stopped\n');
  return broken ? 1 : 0;
}

declare const __MESHPILOT_CLI_BUNDLE__: boolean | undefined;

/**
 * What bots are forked from: one pre-built file per bot process instead of transpiling the sources in
 * each one. A launcher running from dist/meshpilot.cjs was built together with dist/device-bot.mjs from
 * the same sources (launcher/bundle.ts buildBundles), so it uses that as is: no esbuild in `up`. Run from
 * the sources (tests, tsx), it builds the bot bundle first; buildBotBundle stops esbuild's service after.
 */
async function botEntry(io: CliIo): Promise<string> {
  if (typeof __MESHPILOT_CLI_BUNDLE__ !== 'undefined' && existsSync(BOT_BUNDLE)) return BOT_BUNDLE;
  try {
    const b = await buildBotBundle();
    io.out(`built the device bot bundle (${Math.round(b.bytes / 1024)} KiB) in ${(b.ms / 1000).toFixed(1)} s\n`);
    return b.file;
  } catch (err) {
    io.out(`could not bundle the device bot (${toMpError(err).message.split('\n')[0]}); running it from the sources\n`);
    return BOT_SOURCE;
  }
}

/** add-pc / revoke for the operator room (`!add-pc <name> --via wg|ssh --ssh <target> …`, `!revoke <name>`). */
async function loadEnrollment(rt: Runtime): Promise<{ addPc: AddPcFn; revoke: RevokeFn }> {
  const { runAddPc } = await import('./enroll/index.js');
  const { runRevoke } = await import('./revoke.js');
  const progressLine = (e: EnrollEvent): string | undefined => {
    if (e.type === 'step' && e.status !== 'running') return `[${e.index}/${e.total}] ${e.title} ${e.status === 'failed' ? `FAILED: ${e.error?.message ?? ''}` : e.status === 'skipped' ? '(already done)' : `${((e.ms ?? 0) / 1000).toFixed(1)} s`}`;
    if (e.type === 'undo') return `undo ${e.title}: ${e.status}${e.message ? ` (${e.message})` : ''}`;
    if (e.type === 'info' || e.type === 'warn' || e.type === 'start') return e.message;
    return undefined;
  };
  const addPc: AddPcFn = async (args, ctx) => {
    const parsed = parseAddPcArgs(args);
    if (typeof parsed === 'string') return parsed;
    const lines: Promise<void>[] = [];
    const result = await runAddPc({ ...parsed, home: rt.home.root, actor: ctx.by }, (e) => {
      const line = progressLine(e);
      if (line) lines.push(ctx.progress(line).catch(() => undefined));
    });
    await Promise.all(lines);
    return result.ok ? `✓ ${parsed.name}: ${result.message}` : `✗ ${parsed.name}: ${result.message}`;
  };
  const revoke: RevokeFn = async (device, ctx) => {
    const result = await runRevoke({ name: device, yes: true, home: rt.home.root, actor: ctx.by });
    return result.ok ? `✓ ${device}: ${result.message}` : `✗ ${device}: ${result.message}`;
  };
  return { addPc, revoke };
}

/** `<name> --via wg|ssh --ssh <alias|user@host[:port]> [--accept-host-key SHA256:…] [--profile readonly|operator] [--dry-run]` */
export function parseAddPcArgs(args: readonly string[]): AddPcOptions | string {
  const usage = 'usage: !add-pc <name> --via wg|ssh --ssh <alias|user@host[:port]> [--accept-host-key SHA256:…] [--profile readonly|operator] [--dry-run]';
  const [name, ...rest] = args;
  if (!name || name.startsWith('-')) return usage;
  const o: Partial<AddPcOptions> & { name: string } = { name };
  for (let i = 0; i < rest.length; i++) {
    const flag = rest[i];
    const value = rest[i + 1];
    if (flag === '--dry-run') { o.dryRun = true; continue; }
    if (value === undefined) return usage;
    if (flag === '--via' && (value === 'wg' || value === 'ssh')) o.via = value;
    else if (flag === '--ssh') o.ssh = value;
    else if (flag === '--accept-host-key') o.acceptHostKey = value;
    else if (flag === '--profile' && (value === 'readonly' || value === 'operator')) o.profile = value;
    else return usage;
    i++;
  }
  if (!o.via || !o.ssh) return usage;
  return o as AddPcOptions;
}
