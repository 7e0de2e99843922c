/**
 * `meshpilot token create|ls|revoke`: API tokens for the `/v1` HTTP API (launcher/http/tokens.ts).
 * The token is printed once; only its SHA-256 and an 8-character prefix are stored. Creating and
 * revoking are audited in the `_api` chain with the CLI user as actor.
 * Declarations only at load; each handler imports what it runs.
 */
import * as os from 'node:os';
import { z } from 'zod';
import { defineCommand, defineGroup } from '../../capabilities/commands.js';
import { EXIT, type CliEntry, type CommandContext } from './context.js';
import { ExpirySchema, GlobListSchema, RateSchema, TokenNameSchema } from '../http/token-args.js';

const cli = ['cli'] as const;
/** `web-*,db1` → ['web-*', 'db1'], then the glob list's checks. */
const globs = z.string().max(4096).transform((v) => v.split(',').map((x) => x.trim()).filter(Boolean)).pipe(GlobListSchema);

function actor(): string {
  try { return `cli:${os.userInfo().username}`; } catch { return 'cli:unknown'; }
}

const iso = (ms: number | null): string => (ms === null ? 'never' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z'));

export const TOKEN_COMMANDS: CliEntry[] = [
  defineGroup('token', 'API tokens for the HTTP API (/v1): create, ls, revoke'),
  defineCommand({
    name: 'token create', permission: 'operator', surfaces: cli,
    summary: 'create an API token scoped to devices and capabilities (globs); prints it once',
    positional: ['name'],
    args: () => z.object({
      name: TokenNameSchema.describe('a name for the token (the audit actor is api:<name>)'),
      device: globs.describe('device globs it may use, e.g. web-*,db1'),
      capability: globs.describe('capability globs it may run, e.g. sys.*,svc.status (fleet.add-pc / fleet.revoke for the write endpoints; commands by their dotted names, e.g. workspace.ls, audit.*)'),
      expires: ExpirySchema.describe('how long it is valid: 30d, 12h, 8w, 1y (at most 1 year)'),
      rate: RateSchema.prefault('60/min').describe('requests allowed: 60/min (default), 5/s, 1000/h'),
    }),
    cli: {
      flags: { device: '--device <glob,…>', capability: '--capability <glob,…>', expires: '--expires <duration>', rate: '--rate <n/unit>' },
      helpAfter: '\nExample:\n  meshpilot token create deploy --device "web-*" --capability "svc.*,sys.info" --expires 30d --rate 60/min\n'
        + '\nCommands over HTTP (POST /v1/commands/<words>) need their scope in --capability: a command that runs a capability\n'
        + 'needs that capability (vm new: vm.new), the others their dotted name (workspace rm: workspace.rm, devices, health,\n'
        + 'audit.tail); a command\'s device argument, and every device or workspace it lists or touches, must match --device.\n',
    },
    run: async (a, ctx: CommandContext) => {
      const { TokenStore } = await import('../http/tokens.js');
      const r = await ctx.runtime({ transports: 'none' });
      const store = new TokenStore(r.db, r.audit);
      const { token, record } = store.create({ name: a.name, devices: a.device, capabilities: a.capability, expiresInS: a.expires, rate: a.rate, by: actor() });
      ctx.io.out(`${token}\n`);
      ctx.io.err(`token ${record.name} (prefix ${record.prefix}): devices ${record.devices.join(',')}; capabilities ${record.capabilities.join(',')}; ${record.rate.count} per ${record.rate.windowS} s; expires ${iso(record.expiresAt)}\n`
        + 'It is shown this once: only its hash is stored. Use it as `Authorization: Bearer <token>`.\n');
      ctx.setExit(EXIT.ok);
    },
  }),
  defineCommand({
    name: 'token ls', permission: 'operator', surfaces: cli,
    summary: 'list API tokens: prefix, scopes, rate, expiry and last use',
    args: () => z.object({ all: z.boolean().optional().describe('include revoked tokens') }),
    run: async (a, ctx: CommandContext) => {
      const { TokenStore } = await import('../http/tokens.js');
      const r = await ctx.runtime({ transports: 'none' });
      const list = new TokenStore(r.db, r.audit).list({ includeRevoked: a.all === true });
      if (list.length === 0) { ctx.io.out('no API tokens (create one with `meshpilot token create`)\n'); return; }
      const now = Date.now();
      for (const t of list) {
        const state = t.revokedAt !== null ? `REVOKED ${iso(t.revokedAt)}` : t.expiresAt <= now ? `EXPIRED ${iso(t.expiresAt)}` : `expires ${iso(t.expiresAt)}`;
        ctx.io.out(`${t.name}  mp_${t.prefix}…  devices=${t.devices.join(',')}  capabilities=${t.capabilities.join(',')}  rate=${t.rate.count}/${t.rate.windowS}s  ${state}  last used ${iso(t.lastUsedAt)}\n`);
      }
    },
  }),
  defineCommand({
    name: 'token revoke', permission: 'operator', surfaces: cli,
    summary: 'revoke an API token by name (at once: its next request gets 401)',
    positional: ['name'],
    args: () => z.object({ name: TokenNameSchema.describe('the token\'s name') }),
    run: async (a, ctx: CommandContext) => {
      const { TokenStore } = await import('../http/tokens.js');
      const r = await ctx.runtime({ transports: 'none' });
      if (new TokenStore(r.db, r.audit).revoke(a.name, actor())) ctx.io.out(`revoked token ${a.name}\n`);
      else { ctx.io.err(`no live token named ${a.name} (\`meshpilot token ls\`)\n`); ctx.setExit(EXIT.failed); }
    },
  }),
];
