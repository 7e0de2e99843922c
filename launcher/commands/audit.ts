/**
 * `meshpilot audit verify` (each chain, and its anchors in Matrix) and `meshpilot audit tail`.
 * Declarations only at load; each handler imports what it runs.
 */
import { z } from 'zod';
import type { AuditEntry } from '../../capabilities/audit.js';
import { defineCommand, defineGroup } from '../../capabilities/commands.js';
import { EXIT, type CliEntry, type CliIo, type CommandContext } from './context.js';

function printEntries(io: CliIo, entries: AuditEntry[]): void {
  for (const e of entries) {
    const exit = e.exit_code === null ? '' : ` exit=${e.exit_code}`;
    const dur = e.duration_ms === null ? '' : ` ${e.duration_ms}ms`;
    const reason = e.reason && e.outcome !== 'ok' ? ` — ${e.reason}` : '';
    io.out(`#${e.seq} ${e.ts} ${e.device} ${e.actor} ${e.capability} ${e.decision}/${e.outcome}${exit}${dur}${reason}\n`);
  }
}

const cli = ['cli', 'http'] as const;
const N_RANGE = '-n must be a whole number from 1 to 100000';

export const AUDIT_COMMANDS: CliEntry[] = [
  defineGroup('audit', 'the hash-chained audit log'),
  defineCommand({
    name: 'audit verify', permission: 'operator', surfaces: cli,
    summary: 'walk the chain(s) and compare each device\'s with the newest head its bot anchored in Matrix: prints `ok N entries head=<hash>` or the first seq that disagrees and why',
    args: () => z.object({
      device: z.string().optional().describe('only this device'),
      requireAnchors: z.boolean().optional().describe('exit 1 also when anchors could not be read from Matrix (homeserver down, token refused)'),
    }),
    cli: { flags: { device: '--device <device>' } },
    run: async (opts, ctx: CommandContext) => {
      const { io } = ctx;
      const r = await ctx.runtime();
      const devices = opts.device ? [opts.device] : r.audit.devices().filter((d) => !ctx.allowsDevice || ctx.allowsDevice(d));
      if (devices.length === 0) { io.out('ok 0 entries (the audit log is empty)\n'); return; }
      const { checkChainAnchors } = await import('../audit-anchors.js');
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
      ctx.setExit(bad || (unchecked && opts.requireAnchors) ? EXIT.failed : EXIT.ok);
    },
  }),
  defineCommand({
    name: 'audit tail', summary: 'the latest audit entries', permission: 'operator', surfaces: cli,
    args: () => z.object({
      n: z.coerce.number({ error: N_RANGE }).int({ error: N_RANGE }).min(1, { error: N_RANGE }).max(100000, { error: N_RANGE }).default(20).describe('how many'),
      device: z.string().optional().describe('only this device'),
      json: z.boolean().optional().describe('one JSON entry per line'),
    }),
    cli: { flags: { n: '-n <count>', device: '--device <device>' } },
    run: async (opts, ctx: CommandContext) => {
      const scope = ctx.allowsDevice;
      // A scoped caller (an API token) sees its devices' entries only.
      const entries = (await ctx.runtime()).audit.tail(opts.n, opts.device).filter((e) => !scope || scope(e.device));
      if (opts.json) for (const e of entries) ctx.io.out(JSON.stringify(e) + '\n');
      else printEntries(ctx.io, entries);
    },
  }),
];
