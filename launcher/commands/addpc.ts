/**
 * `meshpilot add-pc` and `meshpilot revoke` (engine: launcher/enroll/, revoke.ts).
 *
 *   meshpilot add-pc <name> --via wg  --ssh <alias|user@host[:port]> [--ssh-key F] [--os linux|darwin] [--arch A]
 *                           [--profile readonly|operator] [--dry-run] [--accept-host-key SHA256:…] [--json]
 *   meshpilot add-pc <name> --via ssh --ssh <alias|user@host[:port]> [--ssh-key F] [--dry-run] [--accept-host-key …] [--json]
 *   meshpilot revoke <name> [--yes] [--json]
 *
 * Output: one line per step, `[3/9] allocating a mesh IP … 0.4 s (10.99.0.2)`, then
 * `✓ <name> live. DM @meshpilot-<name> from your Matrix client.`; with --json one JSON object per
 * line (start, step, undo, info, warn, result) for the dashboard.
 * Exit codes (ENROLL_EXIT): 0 ok, 1 failed and rolled back, 2 usage, 5 host key not trusted,
 * 6 failed and the cleanup is incomplete, 130 interrupted.
 * Declarations only at load; the enrollment engine loads when a command runs.
 */
import { z } from 'zod';
import { defineCommand } from '../../capabilities/commands.js';
import type { EnrollEvent, OnEvent } from '../enroll/types.js';
import type { CliEntry, CommandContext } from './context.js';

function fmtMs(ms: number | undefined): string {
  return ms === undefined ? '' : `${(ms / 1000).toFixed(1)} s`;
}

export function printer(ctx: Pick<CommandContext, 'io'>, json: boolean): OnEvent {
  const { io } = ctx;
  return (e: EnrollEvent) => {
    if (json) {
      io.out(`${JSON.stringify(e)}\n`);
      return;
    }
    switch (e.type) {
      case 'start':
        io.out(`${e.message}\n`);
        break;
      case 'step': {
        const head = `[${e.index}/${e.total}] ${e.title} …`;
        if (e.status === 'running') break;
        if (e.status === 'done') io.out(`${head} ${fmtMs(e.ms)}${e.detail ? ` (${e.detail})` : ''}\n`);
        else if (e.status === 'skipped') io.out(`${head} ${e.detail ?? 'already done'}${e.ms !== undefined ? ` ${fmtMs(e.ms)}` : ''}\n`);
        else io.out(`${head} FAILED after ${fmtMs(e.ms)}: ${e.error?.message ?? ''}\n`);
        break;
      }
      case 'undo':
        io.out(e.status === 'done' ? `  ↺ undone ${e.step}${e.message ? `: ${e.message}` : ''}\n` : `  ✗ could not undo ${e.step}: ${e.message ?? ''}\n`);
        break;
      case 'info':
        io.out(`${e.message}\n`);
        break;
      case 'warn':
        io.err(`! ${e.message}\n`);
        break;
      case 'result':
        if (e.ok) io.out(`${e.message}\n`);
        else io.err(`✗ ${e.message}\n`);
        break;
    }
  };
}

const cli = ['cli'] as const;

export const ENROLL_COMMANDS: CliEntry[] = [
  defineCommand({
    name: 'add-pc', summary: 'enroll a machine: WireGuard + agent (--via wg) or plain ssh (--via ssh), its Matrix bot, its manifest', permission: 'operator', surfaces: cli,
    args: () => z.object({
      name: z.string().describe('device name: 1-32 of a-z, 0-9, -'),
      via: z.enum(['wg', 'ssh']).describe('wg: mesh + agent on the device; ssh: nothing installed'),
      ssh: z.string().describe('how to reach it now: an ~/.ssh/config alias or user@host[:port]'),
      sshKey: z.string().optional().describe('private key for that ssh connection'),
      os: z.enum(['linux', 'darwin']).optional().describe('override the detected OS'),
      arch: z.string().optional().describe('override the detected architecture'),
      profile: z.enum(['readonly', 'operator']).default('readonly').describe('manifest template for --via wg'),
      dryRun: z.boolean().optional().describe('say what would happen; change nothing'),
      acceptHostKey: z.string().optional().describe('trust the target ssh host key if it is exactly this SHA256:… fingerprint'),
      json: z.boolean().optional().describe('one JSON event per line'),
    }),
    positional: ['name'],
    cli: {
      flags: { via: '--via <via>', ssh: '--ssh <target>', sshKey: '--ssh-key <file>', os: '--os <os>', arch: '--arch <arch>', profile: '--profile <profile>', acceptHostKey: '--accept-host-key <fingerprint>' },
      helpAfter: '\nExit codes: 0 ok (live, or registered with no launcher running), 1 failed and undone, 2 usage,\n5 ssh host key not trusted, 6 failed and the cleanup is incomplete, 130 interrupted.\nRun it again to resume an interrupted enrollment, or to verify (and repair) an enrolled device.\n',
    },
    run: async ({ name, ...o }, ctx: CommandContext) => {
      const { runAddPc } = await import('../enroll/index.js');
      const { ENROLL_EXIT } = await import('../enroll/types.js');
      const ac = new AbortController();
      let interrupts = 0;
      const onSigint = (): void => {
        interrupts++;
        if (interrupts > 1) process.exit(ENROLL_EXIT.interrupted);
        ctx.io.err('\nstopping after the current step (Ctrl-C again to quit at once; run add-pc again to resume)\n');
        ac.abort();
      };
      process.on('SIGINT', onSigint);
      try {
        const r = await runAddPc({
          name, via: o.via, ssh: o.ssh, profile: o.profile, signal: ac.signal,
          ...(o.sshKey ? { sshKey: o.sshKey } : {}), ...(o.os ? { os: o.os } : {}), ...(o.arch ? { arch: o.arch } : {}),
          ...(o.dryRun ? { dryRun: true } : {}), ...(o.acceptHostKey ? { acceptHostKey: o.acceptHostKey } : {}),
          ...(ctx.io.isTTY && ctx.io.ask && !o.json ? { ask: ctx.io.ask } : {}),
          ...(process.env['MESHPILOT_ENROLL_FAULT'] ? { fault: process.env['MESHPILOT_ENROLL_FAULT'] } : {}),
        }, printer(ctx, o.json === true));
        ctx.setExit(r.exit);
      } finally {
        process.off('SIGINT', onSigint);
      }
    },
  }),
  defineCommand({
    name: 'revoke', summary: 'take a device away: bot, Matrix user, agent, WireGuard peer, mesh IP; manifest and keys archived', permission: 'operator', surfaces: cli,
    args: () => z.object({
      name: z.string(),
      yes: z.boolean().optional().describe('do not ask for confirmation'),
      json: z.boolean().optional().describe('one JSON event per line'),
    }),
    positional: ['name'],
    cli: { flags: { yes: '-y, --yes' } },
    run: async ({ name, ...o }, ctx: CommandContext) => {
      const { runRevoke } = await import('../revoke.js');
      const r = await runRevoke({ name, ...(o.yes ? { yes: true } : {}), ...(ctx.io.isTTY && ctx.io.ask ? { ask: ctx.io.ask } : {}) }, printer(ctx, o.json === true));
      ctx.setExit(r.exit);
    },
  }),
];
