/**
 * `meshpilot dashboard`: prints a one-time login link for the web dashboard (launcher/http/dashboard/),
 * for the operator at this terminal (`cli:<user>`). The link works once, for 5 minutes; the server it
 * points at is `http.listen` of config.yaml (default http://127.0.0.1:7400), started by `npm start`.
 * Declarations only at load; the handler imports what it runs.
 */
import { z } from 'zod';
import { defineCommand } from '../../capabilities/commands.js';
import type { CliEntry, CommandContext } from './context.js';

export const DASHBOARD_COMMANDS: CliEntry[] = [
  defineCommand({
    name: 'dashboard', summary: 'print a one-time login link for the web dashboard (works once, for 5 minutes)', permission: 'operator', surfaces: ['cli'],
    args: () => z.object({ json: z.boolean().optional().describe('print {"url", "expiresAt"} as JSON') }),
    run: async (opts, ctx: CommandContext) => {
      const [{ DashboardLogins, LINK_TTL_MS, baseUrlOf, loginUrl }, { resolveHttpConfig }, { cliActor }] = await Promise.all([
        import('../../capabilities/dashboard-login.js'), import('../http/embedded.js'), import('../http/dashboard/index.js'),
      ]);
      const rt = await ctx.runtime();
      const base = baseUrlOf(resolveHttpConfig(rt.home.config).listen);
      const url = loginUrl(base, new DashboardLogins(rt.db).createLink(cliActor()));
      const expiresAt = new Date(Date.now() + LINK_TTL_MS).toISOString();
      if (opts.json) ctx.io.out(`${JSON.stringify({ url, expiresAt })}\n`);
      else ctx.io.out(`${url}\n(one-time link for ${cliActor()}, valid until ${expiresAt.slice(11, 19)} UTC; the server runs with \`npm start\`)\n`);
    },
  }),
];
