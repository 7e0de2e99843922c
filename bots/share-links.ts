/**
 * After a vm.share with `to` (capabilities/catalog/vm-share.ts), the device bot DMs each person a
 * one-time dashboard login link (capabilities/dashboard-login.ts, as `!dashboard` makes them) that
 * lands on the share: `/login?t=…&next=/s/<id>/`. The DM holds only the bot and that person, so it
 * goes through the raw chat port (the room guard keeps the bot's other posts to operators' rooms).
 */
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Db } from '../capabilities/db.js';
import { DashboardLogins, loginUrl } from '../capabilities/dashboard-login.js';
import { toMpError } from '../capabilities/errors.js';
import { MatrixIdSchema } from '../capabilities/vm/args.js';

/** The part of vm.share's result the DMs need. */
const ShareData = z.object({
  path: z.string().regex(/^\/s\/[0-9a-f]{32}\/$/),
  name: z.string().max(64),
  port: z.number().int(),
  owner: z.string().max(256),
  to: z.array(MatrixIdSchema).max(16),
});

export interface ShareLinkDeps {
  device: string;
  db: Db;
  /** The part of the device bot's ChatPort (bots/device-bot.ts) it uses. */
  chat: {
    findDm(userId: string): Promise<string | undefined>;
    createDm(userId: string, opts: { name: string; topic: string }): Promise<string>;
    sendText(roomId: string, text: string): Promise<string>;
  };
  /** The launcher's HTTP server (`http://127.0.0.1:7400`). */
  dashboardUrl: string | undefined;
  logger: Logger;
}

/** DMs each grantee their link; answers who got one and who could not be reached (with why). */
export async function sendShareLinks(d: ShareLinkDeps, data: unknown): Promise<{ sent: string[]; failed: Array<{ user: string; reason: string }> }> {
  const parsed = ShareData.safeParse(data);
  const out = { sent: [] as string[], failed: [] as Array<{ user: string; reason: string }> };
  if (!parsed.success || parsed.data.to.length === 0) return out;
  const s = parsed.data;
  for (const user of s.to) {
    if (!d.dashboardUrl) {
      out.failed.push({ user, reason: 'the launcher serves no web dashboard' });
      continue;
    }
    try {
      const link = `${loginUrl(d.dashboardUrl, new DashboardLogins(d.db).createLink(user))}&next=${encodeURIComponent(s.path)}`;
      const room = (await d.chat.findDm(user)) ?? (await d.chat.createDm(user, { name: `🔗 ${s.name} on ${d.device}`, topic: `meshpilot: ${s.owner} shared ${s.name}:${s.port} with you` }));
      await d.chat.sendText(room, `🔗 ${s.owner} shared ${s.name}:${s.port} on ${d.device} with you. Open it (the link logs you in once, for 5 minutes): ${link}\nAfterwards: ${d.dashboardUrl.replace(/\/+$/, '')}${s.path}`);
      out.sent.push(user);
    } catch (err) {
      const reason = toMpError(err).message;
      d.logger.warn({ user, err: reason }, 'could not DM a share link');
      out.failed.push({ user, reason });
    }
  }
  return out;
}
