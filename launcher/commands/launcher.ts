/**
 * `meshpilot up` (start meshpilot: what `npm start` runs) and `meshpilot reload` (tell the running
 * launcher, found through MESHPILOT_HOME/launcher.pid, to re-read manifests and retry failed or
 * crash-looping bots, by sending it SIGHUP). Declarations only at load; each handler imports what it runs.
 */
import { z } from 'zod';
import { defineCommand } from '../../capabilities/commands.js';
import { EXIT, type CliEntry, type CommandContext } from './context.js';

const cli = ['cli'] as const;

export const LAUNCHER_COMMANDS: CliEntry[] = [
  defineCommand({
    name: 'up', summary: 'start meshpilot (what `npm start` runs): checks the data dir, devices and audit, then runs what is configured', permission: 'operator', surfaces: cli,
    args: () => z.object({}),
    run: async (_a, ctx: CommandContext) => {
      const { runUp } = await import('../up.js');
      ctx.setExit(await runUp(await ctx.runtime(), ctx.io));
    },
  }),
  defineCommand({
    name: 'reload', summary: 'make the running launcher re-read manifests and retry failed bots (sends it SIGHUP)', permission: 'operator', surfaces: cli,
    args: () => z.object({}),
    run: async (_a, ctx: CommandContext) => {
      // No runtime(): reloading must not create the data dir or open the database.
      const { resolveHome } = await import('../../capabilities/home.js');
      const { readPidFile } = await import('../pid-file.js');
      const home = resolveHome();
      const info = readPidFile(home);
      if (!info) {
        ctx.io.err(`no launcher is running (no pid file at ${home}/launcher.pid); start one with \`meshpilot up\` or \`npm start\`\n`);
        ctx.setExit(EXIT.failed);
        return;
      }
      if (!info.alive) {
        ctx.io.err(`no launcher is running: ${info.file} names pid ${info.pid}, which is gone (a stale pid file from a launcher that did not exit cleanly); start one with \`meshpilot up\`\n`);
        ctx.setExit(EXIT.failed);
        return;
      }
      if (process.platform === 'win32') {
        ctx.io.err('reload needs SIGHUP, which Windows does not have: restart the launcher instead\n');
        ctx.setExit(EXIT.failed);
        return;
      }
      try {
        process.kill(info.pid, 'SIGHUP');
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        ctx.io.err(code === 'EPERM'
          ? `the launcher (pid ${info.pid}) runs as another user: run reload as that user\n`
          : `could not signal the launcher (pid ${info.pid}): ${code ?? (err as Error).message}\n`);
        ctx.setExit(EXIT.failed);
        return;
      }
      ctx.io.out(`reload sent to the launcher (pid ${info.pid}): it re-reads manifests and retries failed bots\n`);
      ctx.setExit(EXIT.ok);
    },
  }),
];
