/**
 * `meshpilot init` (write config.yaml), `meshpilot bot register <device>` (a Matrix account per
 * device bot) and `meshpilot doctor` (one verdict line per dependency). Declarations only: the code
 * (launcher/setup.ts, with the Matrix client) loads when one of them runs.
 */
import { z } from 'zod';
import { defineCommand, defineGroup } from '../../capabilities/commands.js';
import type { CliEntry, CommandContext } from './context.js';

const cli = ['cli'] as const;

export const SETUP_COMMANDS: CliEntry[] = [
  defineCommand({
    name: 'init', summary: 'write MESHPILOT_HOME/config.yaml (homeserver, operators, bot accounts, Anthropic key); asks for what flags don\'t give', permission: 'operator', surfaces: cli,
    args: () => z.object({
      homeserver: z.string().optional().describe('Matrix homeserver base URL, e.g. https://matrix.example.org'),
      serverName: z.string().optional().describe('the server name in user IDs, if it differs from the URL host'),
      operator: z.array(z.string()).optional().describe('operator Matrix IDs (who may command the bots)'),
      registrationSecret: z.string().optional().describe('Synapse registration_shared_secret (lets meshpilot create bot accounts)'),
      botPrefix: z.string().optional().describe('bot user names: @<prefix><device> and the operator bot @<prefix without its trailing -> (default meshpilot-)'),
      password: z.string().optional().describe('the password of bot accounts that exist already (an earlier install): log in to them'),
      anthropicKey: z.string().optional().describe('Anthropic API key (or set ANTHROPIC_API_KEY)'),
      model: z.string().optional().describe('Anthropic model'),
      force: z.boolean().optional().describe('overwrite an existing config'),
      yes: z.boolean().optional().describe('do not ask: fail on anything missing'),
    }),
    cli: {
      flags: {
        homeserver: '--homeserver <url>', serverName: '--server-name <name>', operator: '--operator <mxid...>', registrationSecret: '--registration-secret <secret>',
        botPrefix: '--bot-prefix <prefix>', password: '--password <password>', anthropicKey: '--anthropic-key <key>', model: '--model <model>', yes: '-y, --yes',
      },
    },
    run: async (o, ctx: CommandContext) => (await import('../setup.js')).runInit(o, ctx),
  }),
  defineGroup('bot', 'device bot accounts'),
  defineCommand({
    name: 'bot register', summary: 'create (shared-secret registration) or record the Matrix account of a device bot', permission: 'operator', surfaces: cli,
    args: () => z.object({
      device: z.string(),
      token: z.string().optional().describe('use this existing access token'),
      password: z.string().optional().describe('log in to an existing account with this password'),
    }),
    positional: ['device'],
    cli: { flags: { token: '--token <token>', password: '--password <password>' } },
    run: async ({ device, ...o }, ctx: CommandContext) => (await import('../setup.js')).runBotRegister(device, o, ctx),
  }),
  defineCommand({
    name: 'doctor', summary: 'check each dependency (config, homeserver, bot tokens, LLM key, ssh/wg/ffmpeg) and print a verdict per line', permission: 'operator', surfaces: cli,
    args: () => z.object({}),
    run: async (_a, ctx: CommandContext) => (await import('../setup.js')).runDoctor(ctx),
  }),
];
