/**
 * `meshpilot health [--json]`: runs one health cycle now (launcher/health/monitor.ts) and prints every
 * device's state (`audit=` is the controller's chain of the device against its bot's anchor in Matrix,
 * `chain=` a mesh agent's own chain). Alerts this cycle produces go to the outbox; the running launcher's operator bot
 * delivers them. Exit code 1 when a device is not online (or revoked).
 */
import { existsSync } from 'node:fs';
import { z } from 'zod';
import { defineCommand } from '../../capabilities/commands.js';
import { EXIT, UsageError, type CliEntry, type CommandContext } from './context.js';

export const HEALTH_COMMANDS: CliEntry[] = [
  defineCommand({
    name: 'health', summary: 'check every device now (WireGuard handshake, agent, ssh, audit chain) and print its state', permission: 'operator', surfaces: ['cli', 'http'],
    args: () => z.object({ json: z.boolean().optional().describe('print JSON') }),
    run: async (opts, ctx: CommandContext) => {
      const [{ HealthMonitor, healthSettings }, { ago }] = await Promise.all([import('../health/monitor.js'), import('../health/alerts.js')]);
      const { loadConfig } = await import('../../capabilities/config.js');
      const { hubDumpReader } = await import('../wg.js');
      const rt = await ctx.runtime();
      let settings = healthSettings(undefined);
      if (existsSync(rt.home.config)) {
        const c = loadConfig(rt.home.config);
        if (!c.ok) throw new UsageError(c.missing ? `no config at ${c.file}` : c.errors.join('\n'));
        settings = healthSettings(c.config);
      }
      const hub = settings.hub_device ? rt.devices.get(settings.hub_device) : undefined;
      const monitor = new HealthMonitor({
        db: rt.db, audit: rt.audit, devices: rt.devices, settings, home: rt.home.root,
        ...(settings.hub_interface ? { wgDump: hubDumpReader(settings.hub_interface, hub) } : {}),
      });
      try {
        const cycle = await monitor.runCycle();
        // A scoped caller (an API token) sees its devices only (the cycle checks them all).
        const scope = ctx.allowsDevice;
        const r = scope ? { ...cycle, devices: cycle.devices.filter((d) => scope(d.device)) } : cycle;
        if (opts.json) {
          ctx.io.out(JSON.stringify({ durationMs: Math.round(r.durationMs), wg: r.wg, devices: r.devices, alerts: r.queued }, null, 2) + '\n');
        } else {
          const nowS = Date.now() / 1000;
          if (r.wg && !r.wg.ok) ctx.io.err(`WireGuard hub unreadable: ${r.wg.error}\n`);
          if (r.devices.length === 0) ctx.io.out('no devices\n');
          for (const d of r.devices) {
            const hs = d.lastHandshake === null ? '' : d.lastHandshake === 0 ? ' handshake=never' : ` handshake=${ago(nowS - d.lastHandshake)}`;
            const chain = d.chain ? ` chain=${d.chain.ok ? `ok#${d.chain.seq}` : `BAD@${d.chain.badSeq ?? '?'}`}` : '';
            // The controller's chain of the device, against its bot's anchor in Matrix.
            const audit = d.controllerChain ? ` audit=${d.controllerChain.ok ? `ok#${d.controllerChain.seq}` : `BAD@${d.controllerChain.badSeq ?? '?'}`}` : '';
            ctx.io.out(`${d.device.padEnd(16)} ${d.state.padEnd(11)} ${d.transport.padEnd(5)}${hs}${chain}${audit}${d.detail ? ` (${d.detail})` : ''}\n`);
          }
          for (const q of r.queued) ctx.io.err(`queued for the operator room: ${q.split('\n')[0]}\n`);
        }
        ctx.setExit(r.devices.some((d) => d.state !== 'online' && d.state !== 'revoked') ? EXIT.failed : EXIT.ok);
      } finally {
        await monitor.stop();
      }
    },
  }),
];
