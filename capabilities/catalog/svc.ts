/**
 * svc: systemd services (status, restart, journal). systemd only; elsewhere the capabilities say so
 * plainly instead of passing on systemctl's "Failed to connect to bus".
 */
import { z } from 'zod';
import { defineCapability, failResult, fromExec, okResult, type AnyCapability, type CapabilityContext, type CapabilityResult } from '../capability.js';
import type { ExecOutcome } from '../transports/types.js';
import { execFailure, execOn, guarded, keyLine } from './shared.js';

const SERVICE = /^[a-zA-Z0-9][a-zA-Z0-9@._:-]{0,127}$/;
const serviceArg = z
  .string()
  .max(128)
  .regex(SERVICE, 'service must be a unit name like nginx or nginx.service (not starting with -)')
  .describe('systemd unit name, e.g. nginx or nginx.service.');
const serviceScope = { kind: 'names', option: 'services', args: ['service'] } as const;

const PROPERTIES = [
  'Id', 'Description', 'LoadState', 'ActiveState', 'SubState', 'UnitFileState',
  'MainPID', 'ActiveEnterTimestamp', 'ExecMainStatus', 'NRestarts', 'MemoryCurrent',
];

function noSystemdMessage(device: string): string {
  return `systemd is not running on ${device} (it was not booted with systemd, e.g. it is a container), so services cannot be managed`;
}

/** Non-Linux devices have no systemd at all: say so before running anything. */
function notLinux(ctx: CapabilityContext): CapabilityResult | null {
  if (ctx.os === 'linux') return null;
  return failResult({ code: 'tool_missing', message: `svc.* needs systemd; ${ctx.device} runs ${ctx.os}` });
}

function svcFailure(outcome: ExecOutcome, ctx: CapabilityContext, service: string, what: string): CapabilityResult {
  if (outcome.timedOut) return fromExec(outcome);
  const err = outcome.stderr.toString('utf8');
  if (/not been booted with systemd|Failed to connect to bus|System has not been booted/i.test(err))
    return execFailure(outcome, 'tool_missing', noSystemdMessage(ctx.device));
  if (/not found|could not be found|not loaded/i.test(err) && /unit/i.test(err))
    return execFailure(outcome, 'not_found', `service ${service} not found on ${ctx.device}`);
  if (/Access denied|Interactive authentication required|Permission denied/i.test(err))
    return execFailure(outcome, 'permission', `${what}: permission denied on ${ctx.device} (needs root or a polkit rule)`);
  const line = keyLine(err);
  return execFailure(outcome, 'exec_failed', `${what} failed${line ? `: ${line}` : ` with exit code ${outcome.exitCode}`}`);
}

function parseShow(text: string): Record<string, string> {
  const props: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) props[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return props;
}

function summary(service: string, p: Record<string, string>): string {
  const parts = [`${p['ActiveState'] ?? '?'} (${p['SubState'] ?? '?'})`];
  if (p['UnitFileState']) parts.push(p['UnitFileState']);
  if (p['MainPID'] && p['MainPID'] !== '0') parts.push(`pid ${p['MainPID']}`);
  if (p['ActiveEnterTimestamp']) parts.push(`since ${p['ActiveEnterTimestamp']}`);
  if (p['NRestarts'] && p['NRestarts'] !== '0') parts.push(`${p['NRestarts']} restarts`);
  return `${p['Id'] || service}: ${parts.join(', ')}`;
}

async function show(ctx: CapabilityContext, service: string): Promise<ExecOutcome> {
  return execOn(ctx, ['systemctl', 'show', '--no-pager', `--property=${PROPERTIES.join(',')}`, '--', service]);
}

const svcStatus = defineCapability({
  name: 'svc.status',
  description: 'Shows whether a systemd service is active, enabled, its main PID and since when, plus its last few log lines.',
  input: z.object({ service: serviceArg }).strict(),
  risk: 'read',
  scope: serviceScope,
  run: (args, ctx) =>
    guarded(async () => {
      const early = notLinux(ctx);
      if (early) return early;
      const out = await show(ctx, args.service);
      if (out.exitCode !== 0 || out.timedOut) return svcFailure(out, ctx, args.service, 'systemctl show');
      const props = parseShow(out.stdout.toString('utf8'));
      if (props['LoadState'] === 'not-found')
        return execFailure(out, 'not_found', `service ${args.service} not found on ${ctx.device}`);
      // `status` exits 3 for an inactive unit, which is an answer and not a failure: keep its text regardless.
      const st = await execOn(ctx, ['systemctl', 'status', '--no-pager', '--full', '--lines=5', '--', args.service]);
      const text = st.stdout.toString('utf8').trim();
      return okResult({
        durationMs: out.durationMs + st.durationMs,
        truncated: out.truncated || st.truncated,
        exitCode: 0,
        stdout: text ? `${summary(args.service, props)}\n\n${text}` : summary(args.service, props),
        data: props,
      });
    }),
});

const svcRestart = defineCapability({
  name: 'svc.restart',
  description: 'Restarts a systemd service and returns its state afterwards.',
  input: z.object({ service: serviceArg }).strict(),
  risk: 'write',
  scope: serviceScope,
  run: (args, ctx) =>
    guarded(async () => {
      const early = notLinux(ctx);
      if (early) return early;
      // --no-ask-password: fail at once rather than wait on a polkit prompt nobody will answer.
      const out = await execOn(ctx, ['systemctl', '--no-ask-password', 'restart', '--', args.service]);
      if (out.exitCode !== 0 || out.timedOut) return svcFailure(out, ctx, args.service, `restart ${args.service}`);
      const after = await show(ctx, args.service);
      const props = after.exitCode === 0 ? parseShow(after.stdout.toString('utf8')) : {};
      return okResult({
        durationMs: out.durationMs + after.durationMs,
        exitCode: 0,
        stdout: `restarted ${args.service}; now ${summary(args.service, props)}`,
        data: props,
      });
    }),
});

const svcLogs = defineCapability({
  name: 'svc.logs',
  description: "Returns the last lines of a systemd service's journal, with ISO timestamps.",
  input: z
    .object({
      service: serviceArg,
      lines: z.number().int().min(1).max(5000).default(100).describe('How many lines from the end (default 100).'),
    })
    .strict(),
  risk: 'read',
  scope: serviceScope,
  run: (args, ctx) =>
    guarded(async () => {
      const early = notLinux(ctx);
      if (early) return early;
      const out = await execOn(ctx, ['journalctl', '-u', args.service, '-n', String(args.lines), '--no-pager', '-o', 'short-iso']);
      if (out.exitCode !== 0 || out.timedOut) return svcFailure(out, ctx, args.service, 'journalctl');
      return fromExec(out, { service: args.service, lines: args.lines });
    }),
});

export const svcCapabilities: AnyCapability[] = [svcStatus, svcRestart, svcLogs];
