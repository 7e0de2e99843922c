/**
 * What `meshpilot init` (write config.yaml), `meshpilot bot register <device>` (a Matrix account per
 * device bot) and `meshpilot doctor` (one verdict line per dependency) run; declared in
 * launcher/commands/setup.ts, which imports this module only when one of them runs.
 */
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readBotPassword, readCredentials, writeCredentials } from '../bots/credentials.js';
import { cryptoAvailable, cryptoBackendName, homeserverVersions, isUserInUse, loginWithPassword, registerWithSharedSecret, setDisplayNameWithToken, whoamiWithToken } from '../bots/matrix/homeserver.js';
import { MeshpilotError, toMpError } from '../capabilities/errors.js';
import { botUserId, loadConfig, serverNameOf, writeConfig, type Config } from '../capabilities/config.js';
import { UsageError, type CommandContext } from './commands/context.js';
import type { Runtime } from './runtime-core.js';

const MXID = /^@[^:\s]+:\S+$/;
const BOT_PREFIX = /^[a-z0-9._=-]{0,32}$/;
/** keys/<name> of the operator bot: launcher/operator-room.ts OPERATOR_CREDENTIALS (not imported: it would load the health monitor into every CLI start). */
const OPERATOR_KEYS = '_operator';

/** One bot account: where its credentials go, its user id, and how the person knows it. */
interface BotAccount { keys: string; userId: string; label: string; displayname: string; deviceName: string }

const deviceAccount = (config: Config, device: string): BotAccount =>
  ({ keys: device, userId: botUserId(config, device), label: device, displayname: `🖥 ${device}`, deviceName: `meshpilot ${device}` });
const operatorAccount = (config: Config): BotAccount =>
  ({ keys: OPERATOR_KEYS, userId: `@${config.matrix.operator_bot}:${serverNameOf(config)}`, label: 'the operator room', displayname: 'meshpilot', deviceName: 'meshpilot operator room' });

/** `exists`: the account is on the homeserver already and this install could not log in to it. */
type AccountResult = { ok: true; line: string } | { ok: false; exists: boolean; message: string };

/**
 * Sets up one bot account: keeps this install's working credentials, else registers the account through
 * the shared secret; one that exists already (an earlier install) is logged in with `password`.
 */
async function setupAccount(rt: Runtime, config: Config, a: BotAccount, o: { secret?: string; password?: string }): Promise<AccountResult> {
  const url = config.matrix.homeserver_url;
  const have = readCredentials(rt.home.keys, a.keys);
  if (have?.userId === a.userId) {
    const working = await whoamiWithToken({ homeserverUrl: have.homeserverUrl ?? url, accessToken: have.accessToken }).then(() => true, () => false);
    if (working) return { ok: true, line: `${a.label} already has a working Matrix account (${a.userId})` };
  }
  if (o.secret) {
    const localpart = a.userId.slice(1, a.userId.indexOf(':'));
    // The password is kept (0600) so a bot whose encryption store is lost can log in as a new device.
    const password = randomBytes(24).toString('base64url');
    try {
      const reg = await registerWithSharedSecret({ homeserverUrl: url, sharedSecret: o.secret, localpart, password, displayname: a.displayname });
      writeCredentials(rt.home.keys, a.keys, { userId: reg.userId, accessToken: reg.accessToken, deviceId: reg.deviceId, password });
      await setDisplayNameWithToken({ homeserverUrl: url, accessToken: reg.accessToken, userId: reg.userId, displayname: a.displayname }).catch(() => undefined);
      return { ok: true, line: `registered ${reg.userId} for ${a.label}` };
    } catch (err) {
      if (!isUserInUse(err)) return { ok: false, exists: false, message: `could not register ${a.userId} for ${a.label}: ${toMpError(err).message}` };
    }
  }
  // This install's stale credentials may still hold the password.
  const password = o.password ?? (have?.userId === a.userId ? have.password : undefined);
  if (!password) return { ok: false, exists: true, message: `${a.userId} already exists on ${url} (the account for ${a.label}), from an earlier install perhaps, and meshpilot does not have its password` };
  try {
    const login = await loginWithPassword({ homeserverUrl: url, user: a.userId, password, deviceName: a.deviceName });
    writeCredentials(rt.home.keys, a.keys, { userId: login.userId, accessToken: login.accessToken, deviceId: login.deviceId, password });
    return { ok: true, line: `logged in as ${login.userId} for ${a.label} (the account existed already)` };
  } catch (err) {
    return { ok: false, exists: true, message: `${a.userId} exists on ${url} (the account for ${a.label}), and the password${o.password ? ' given with --password' : ' this install kept'} was refused (${toMpError(err).message})` };
  }
}

function configOrExplain(rt: Runtime): Config {
  const r = loadConfig(rt.home.config);
  if (r.ok) return r.config;
  if (r.missing) throw new UsageError(`no config at ${rt.home.config}: run \`meshpilot init\` first`);
  throw new UsageError(`config is invalid:\n${r.errors.join('\n')}`);
}

/** Registers (or records) the Matrix account of one device bot. Returns a line for the person. */
export async function registerBot(rt: Runtime, config: Config, device: string, opts: { token?: string; password?: string } = {}): Promise<string> {
  const existing = readCredentials(rt.home.keys, device);
  const url = config.matrix.homeserver_url;
  const userId = botUserId(config, device);
  if (opts.token) {
    const who = await whoamiWithToken({ homeserverUrl: url, accessToken: opts.token });
    const keepPassword = existing?.userId === who.userId && existing.password ? { password: existing.password } : {};
    writeCredentials(rt.home.keys, device, { userId: who.userId, accessToken: opts.token, ...(who.deviceId ? { deviceId: who.deviceId } : {}), ...keepPassword });
    return `stored the token of ${who.userId} for ${device}`;
  }
  if (opts.password) {
    const login = await loginWithPassword({ homeserverUrl: url, user: userId, password: opts.password, deviceName: `meshpilot ${device}` });
    // The password is kept (0600) so a bot whose encryption store is lost can log in as a new device.
    writeCredentials(rt.home.keys, device, { userId: login.userId, accessToken: login.accessToken, deviceId: login.deviceId, password: opts.password });
    return `logged in as ${login.userId} for ${device}`;
  }
  if (existing) {
    await whoamiWithToken({ homeserverUrl: url, accessToken: existing.accessToken });
    return `${device} already has a working Matrix account (${existing.userId})`;
  }
  const secret = config.matrix.registration_shared_secret;
  if (!secret) {
    throw new UsageError(`no registration_shared_secret in the config: create ${userId} on your homeserver yourself, then run \`meshpilot bot register ${device} --password <pw>\` (or --token <access token>)`);
  }
  const r = await setupAccount(rt, config, deviceAccount(config, device), { secret });
  if (r.ok) return r.line;
  if (!r.exists) throw new MeshpilotError('exec_failed', r.message);
  throw new MeshpilotError('config', `${r.message}: run \`meshpilot bot register ${device} --password <its password>\`, or choose another matrix.bot_prefix in ${rt.home.config}`);
}

export interface InitOptions { homeserver?: string | undefined; serverName?: string | undefined; operator?: string[] | undefined; registrationSecret?: string | undefined; botPrefix?: string | undefined; password?: string | undefined; anthropicKey?: string | undefined; model?: string | undefined; force?: boolean | undefined; yes?: boolean | undefined }

/** `meshpilot init`. */
export async function runInit(o: InitOptions, ctx: CommandContext): Promise<void> {
  const rt = await ctx.runtime();
  const { io } = ctx;
  if (o.botPrefix !== undefined && !BOT_PREFIX.test(o.botPrefix)) throw new UsageError('--bot-prefix may only hold a-z, 0-9 and . _ = - (at most 32 characters), e.g. --bot-prefix mp2-');
  if (existsSync(rt.home.config) && !o.force) throw new UsageError(`${rt.home.config} exists; pass --force to overwrite it`);
  const ask = async (q: string, fallback?: string): Promise<string> => {
    if (o.yes || !io.isTTY || !io.ask) return fallback ?? '';
    return (await io.ask(q)).trim() || (fallback ?? '');
  };
  const homeserver = o.homeserver ?? (await ask('Matrix homeserver URL (e.g. https://matrix.example.org): '));
  if (!/^https?:\/\/\S+$/.test(homeserver)) throw new UsageError('a homeserver URL is needed: --homeserver https://matrix.example.org');
  const operators = o.operator ?? (await ask('Your Matrix ID (operator), e.g. @you:example.org: ')).split(/[\s,]+/).filter(Boolean);
  if (operators.length === 0 || operators.some((x) => !MXID.test(x))) throw new UsageError('at least one operator Matrix ID like @you:example.org is needed: --operator @you:example.org');
  const secret = o.registrationSecret ?? (await ask('Synapse registration_shared_secret (Enter to skip; then you register bot accounts yourself): '));
  const key = o.anthropicKey ?? (process.env['ANTHROPIC_API_KEY'] ? '' : await ask('Anthropic API key (Enter to skip: bots then only understand !commands): '));
  // The operator bot follows the prefix (meshpilot- → meshpilot), so a new prefix means all-new accounts.
  const operatorBot = o.botPrefix?.replace(/[-._=]+$/, '');
  const config: Record<string, unknown> = {
    matrix: {
      homeserver_url: homeserver, ...(o.serverName ? { server_name: o.serverName } : {}), ...(secret ? { registration_shared_secret: secret } : {}),
      ...(o.botPrefix !== undefined ? { bot_prefix: o.botPrefix } : {}), ...(operatorBot ? { operator_bot: operatorBot } : {}),
    },
    operators,
    ...(key || o.model ? { llm: { ...(key ? { api_key: key } : {}), ...(o.model ? { model: o.model } : {}) } } : {}),
  };
  writeConfig(rt.home.config, config);
  const check = loadConfig(rt.home.config);
  if (!check.ok) throw new UsageError(check.missing ? 'config was not written' : check.errors.join('\n'));
  io.out(`wrote ${rt.home.config} (mode 0600)\n`);
  if (secret || o.password) {
    const accounts = [...rt.devices.list().filter((l) => l.manifest).map((l) => deviceAccount(check.config, l.device)), operatorAccount(check.config)];
    const failed: Array<{ exists: boolean }> = [];
    for (const a of accounts) {
      const r = await setupAccount(rt, check.config, a, { ...(secret ? { secret } : {}), ...(o.password ? { password: o.password } : {}) });
      if (r.ok) io.out(`${r.line}\n`);
      else {
        failed.push(r);
        io.err(`error: ${r.message}\n`);
      }
    }
    if (failed.length > 0) {
      const prefix = check.config.matrix.bot_prefix;
      const other = `${prefix.replace(/[-._=]+$/, '') || 'meshpilot'}2-`;
      io.err([
        '',
        `The bots cannot start without their Matrix accounts (${failed.length} of ${accounts.length} not set up). ${rt.home.config} is written.`,
        ...(failed.some((f) => f.exists) ? [
          'Either:',
          '  - give the password of the existing accounts: run this `meshpilot init` again with --force --password <password>',
          '    (one device at a time: `meshpilot bot register <device> --password <password>`; an earlier install',
          '    kept each bot\'s password in its MESHPILOT_HOME/keys/<device>/matrix.json)',
          `  - or choose another prefix, for new accounts: run it again with --force --bot-prefix <prefix> (now "${prefix}"; e.g. --bot-prefix ${other})`,
        ] : ['Fix the problem above, then run this `meshpilot init` again with --force.']),
        '',
      ].join('\n'));
      ctx.setExit(1);
      return;
    }
  } else {
    io.out(`next: create a Matrix account per device bot (e.g. ${botUserId(check.config, 'local')}) and run \`meshpilot bot register local --password <pw>\`\n`);
  }
  io.out('next: `npm start`, then DM the bot from your Matrix client. `meshpilot doctor` checks everything.\n');
}

/** `meshpilot bot register <device>`. */
export async function runBotRegister(device: string, o: { token?: string | undefined; password?: string | undefined }, ctx: CommandContext): Promise<void> {
  const rt = await ctx.runtime();
  if (!rt.devices.listing(device)) throw new UsageError(`unknown device ${device}; known: ${rt.devices.names().join(', ') || 'none'}`);
  const config = configOrExplain(rt);
  try {
    ctx.io.out(`${await registerBot(rt, config, device, o)}\n`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const e = toMpError(err);
    ctx.io.err(`error: ${e.message}\n`);
    ctx.setExit(e.code === 'usage' || e.code === 'config' ? 2 : 1);
  }
}

/** `meshpilot doctor`. */
export async function runDoctor(ctx: CommandContext): Promise<void> {
  const rt = await ctx.runtime();
  const { io } = ctx;
  let failed = false;
  const line = (verdict: 'ok' | 'warn' | 'FAIL', what: string, detail: string): void => {
    if (verdict === 'FAIL') failed = true;
    io.out(`${verdict.padEnd(4)} ${what.padEnd(22)} ${detail}\n`);
  };
  line('ok', 'data dir', rt.home.root);
  for (const l of rt.devices.list()) {
    if (l.manifest) line('ok', `manifest ${l.device}`, `${l.manifest.transport.kind}, ${Object.keys(l.manifest.capabilities).length} capabilities`);
    else line('FAIL', `manifest ${l.device}`, l.issues?.map((i) => `${i.line ?? ''} ${i.field}: ${i.message}`).join('; ') ?? 'invalid');
  }
  const { checkChainAnchors } = await import('./audit-anchors.js');
  for (const [device, v] of rt.audit.verifyAll()) {
    // A chain re-hashed after a rewrite verifies by itself: its bot's anchor in Matrix decides.
    const a = v.ok ? await checkChainAnchors(rt.home.root, rt.audit, device) : undefined;
    if (a?.kind === 'mismatch') line('FAIL', `audit ${device}`, `rewritten: seq ${a.badSeq} disagrees with the head anchored in Matrix (${a.reason})`);
    else if (a?.kind === 'unchecked') line('warn', `audit ${device}`, `${v.count} entries; Matrix anchor not checked: ${a.message}`);
    else line(v.ok ? 'ok' : 'FAIL', `audit ${device}`, v.ok ? `${v.count} entries${a?.kind === 'matched' ? `, anchor #${a.anchor.seq} in Matrix matches` : ''}` : `broken at seq ${v.badSeq}: ${v.reason}`);
  }
  const cfg = loadConfig(rt.home.config);
  if (!cfg.ok) {
    line('FAIL', 'config', cfg.missing ? `missing: run \`meshpilot init\`` : cfg.errors.join('; '));
  } else {
    const config = cfg.config;
    line('ok', 'config', rt.home.config);
    let hsUp = false;
    try {
      const versions = await homeserverVersions(config.matrix.homeserver_url);
      hsUp = true;
      line('ok', 'homeserver', `${config.matrix.homeserver_url} (${serverNameOf(config)}), spec ${versions.slice(-1)[0] ?? '?'}`);
    } catch (err) {
      line('FAIL', 'homeserver', toMpError(err).message);
    }
    for (const l of rt.devices.list().filter((x) => x.manifest)) {
      const creds = readCredentials(rt.home.keys, l.device);
      if (!creds) { line('FAIL', `bot ${l.device}`, `no Matrix account: run \`meshpilot bot register ${l.device}\``); continue; }
      if (!hsUp) { line('warn', `bot ${l.device}`, `${creds.userId} (not checked: homeserver down)`); continue; }
      try {
        const who = await whoamiWithToken({ homeserverUrl: creds.homeserverUrl ?? config.matrix.homeserver_url, accessToken: creds.accessToken });
        line('ok', `bot ${l.device}`, `${who.userId} token valid`);
      } catch (err) {
        line('FAIL', `bot ${l.device}`, `${creds.userId}: ${toMpError(err).message}`);
      }
    }
    if (config.matrix.encryption === 'off') line('warn', 'encryption', 'matrix.encryption is off: device bots create unencrypted DMs');
    else if (!cryptoAvailable()) line('warn', 'encryption', 'no Matrix crypto module loads: device bots run without end-to-end encryption');
    else {
      const password = rt.devices.list().filter((x) => x.manifest && !readBotPassword(rt.home.keys, x.device)).map((x) => x.device);
      line(password.length ? 'warn' : 'ok', 'encryption', `end-to-end encryption on (${cryptoBackendName()})${password.length ? `; no stored password for ${password.join(', ')}: a lost crypto store there needs \`meshpilot bot register <device> --password …\`` : ''}`);
    }
    // One Models API call checks the key and the model (bots/llm-check.ts; loaded here only: the SDK is big).
    const llm = await (await import('../bots/llm-check.js')).checkLlm(config.llm);
    line(llm.verdict, 'llm', llm.detail);
  }
  for (const [bin, why] of [['ssh', 'ssh devices, add-pc'], ['wg', 'mesh devices, health'], ['ffmpeg', 'voice messages'], ['git', 'git.* capabilities']] as const) {
    const found = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' }).stdout.trim();
    line(found ? 'ok' : 'warn', bin, found ? found : `not installed (needed for ${why})`);
  }
  io.out(failed ? '\nsome checks FAILED (see above)\n' : '\nall required checks passed\n');
  ctx.setExit(failed ? 1 : 0);
}
