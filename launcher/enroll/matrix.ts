/**
 * The bot's Matrix user: created (or reactivated) with the homeserver's registration shared secret
 * and meshpilot's own Synapse admin account, deactivated on undo; and the wait for the bot's
 * "✓ <device> live" once the launcher has started it.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { MeshpilotError } from '../../capabilities/errors.js';
import type { HomeLayout } from '../../capabilities/home.js';
import { readCredentials, writeCredentials, credentialsFile } from '../../bots/credentials.js';
import { adminLookupUser, deactivateUser, HomeserverApi, loginWithPassword, reactivateUser, registerWithSharedSecret, setDisplayNameWithToken, whoamiWithToken } from '../../bots/matrix/homeserver.js';
import { botUserId, type Config } from '../../capabilities/config.js';
import { keysDir, writeSecret, type Step } from './context.js';
import type { LiveWait } from './types.js';

function matrixSecret(config: Config): string {
  const s = config.matrix.registration_shared_secret;
  if (!s) throw new MeshpilotError('config', 'matrix.registration_shared_secret is not set (config.yaml or MESHPILOT_REGISTRATION_SECRET): add-pc creates the bot user with it');
  return s;
}

const AdminFileSchema = z.object({ userId: z.string().max(255), accessToken: z.string().min(1).max(4096), password: z.string().min(1).max(512).optional() }).strict();

function hsUrl(config: Config): string {
  return config.matrix.homeserver_url.replace(/\/+$/, '');
}

/** Who the token belongs to; undefined when the homeserver refuses it (a network failure throws). */
async function whoami(config: Config, token: string): Promise<string | undefined> {
  try {
    return (await whoamiWithToken({ homeserverUrl: hsUrl(config), accessToken: token })).userId;
  } catch (err) {
    if (err instanceof MeshpilotError && err.code !== 'unreachable') return undefined;
    throw err;
  }
}

async function login(config: Config, userId: string, password: string): Promise<{ userId: string; accessToken: string; deviceId?: string }> {
  const l = await loginWithPassword({ homeserverUrl: hsUrl(config), user: userId, password });
  return { userId: l.userId, accessToken: l.accessToken, ...(l.deviceId ? { deviceId: l.deviceId } : {}) };
}

/** meshpilot's own Synapse admin account (keys/matrix-admin.json), created with the shared secret on first use. */
export async function adminToken(home: HomeLayout, config: Config): Promise<string> {
  const file = path.join(home.keys, 'matrix-admin.json');
  let saved: z.infer<typeof AdminFileSchema> | undefined;
  if (existsSync(file)) {
    const p = AdminFileSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
    if (p.success) saved = p.data;
  }
  if (saved && (await whoami(config, saved.accessToken)) === saved.userId) return saved.accessToken;
  if (saved?.password) {
    const l = await login(config, saved.userId, saved.password);
    writeSecret(file, JSON.stringify({ ...saved, accessToken: l.accessToken }));
    return l.accessToken;
  }
  const password = randomBytes(24).toString('base64url');
  const localpart = `${config.matrix.operator_bot.replace(/[^a-z0-9._=-]/g, '')}_admin`;
  const r = await registerWithSharedSecret({ homeserverUrl: hsUrl(config), sharedSecret: matrixSecret(config), localpart, password, admin: true, displayname: 'meshpilot admin' });
  writeSecret(file, JSON.stringify({ userId: r.userId, accessToken: r.accessToken, password }));
  return r.accessToken;
}

async function adminUser(config: Config, admin: string, userId: string): Promise<{ deactivated: boolean } | undefined> {
  return (await adminLookupUser({ homeserverUrl: hsUrl(config), adminToken: admin, userId })) ?? undefined;
}

export const matrixStep: Step = {
  id: 'matrix', title: 'creating the Matrix bot user',
  async check(ctx) {
    const creds = readCredentials(ctx.home.keys, ctx.device);
    if (!creds || creds.userId !== botUserId(ctx.config, ctx.device)) return false;
    return (await whoami(ctx.config, creds.accessToken)) === creds.userId;
  },
  async apply(ctx) {
    const r = await ensureBotAccount({
      home: ctx.home, config: ctx.config, name: ctx.device, displayname: `🖥 ${ctx.device}`, info: ctx.info, warn: ctx.warn,
      touched: (userId) => {
        ctx.data.matrixTouched = true;
        ctx.data.botUserId = userId;
        ctx.save();
      },
    });
    ctx.data.registeredAt = Date.now();
    return r.userId;
  },
  async undo(ctx) {
    const userId = ctx.data.botUserId ?? botUserId(ctx.config, ctx.device);
    const hasCreds = existsSync(credentialsFile(ctx.home.keys, ctx.device));
    if (!ctx.data.matrixTouched && !hasCreds) {
      if (!ctx.revoking) {
        rmSync(path.join(keysDir(ctx), 'matrix.password'), { force: true });
        try { if (readdirSync(keysDir(ctx)).length === 0) rmSync(keysDir(ctx), { recursive: true, force: true }); } catch { /* gone */ }
      }
      return undefined;
    }
    await deactivateBotAccount({ home: ctx.home, config: ctx.config, userId });
    if (!ctx.revoking) removeBotKeys(ctx.home, ctx.device);
    ctx.data.matrixTouched = false;
    return `${userId} deactivated`;
  },
};

/** Who asks for a bot account: a device (add-pc) or a workspace (launcher/workspaces/). */
export interface BotAccountRequest {
  home: HomeLayout;
  config: Config;
  /** the device or workspace name: the user is `<bot_prefix><name>`, its secrets in keys/<name>/ */
  name: string;
  displayname: string;
  info?: (message: string) => void;
  warn?: (message: string) => void;
  /** called once meshpilot is about to create or change the account (an undo must then deactivate it) */
  touched?: (userId: string) => void;
}

/**
 * Creates the bot's Matrix user with the registration shared secret (or reactivates it, or logs in
 * with the password kept in keys/<name>/matrix.password) and writes keys/<name>/matrix.json (0600).
 */
export async function ensureBotAccount(req: BotAccountRequest): Promise<{ userId: string; reactivated: boolean }> {
  const config = req.config;
  const userId = botUserId(config, req.name);
  const localpart = `${config.matrix.bot_prefix}${req.name}`;
  const pwFile = path.join(keysDir({ home: req.home, device: req.name }), 'matrix.password');
  const hadPassword = existsSync(pwFile);
  const password = hadPassword ? readFileSync(pwFile, 'utf8').trim() : randomBytes(24).toString('base64url');
  if (!hadPassword) writeSecret(pwFile, password);
  const admin = await adminToken(req.home, config);
  req.touched?.(userId);
  const displayname = req.displayname;
  let creds: { userId: string; accessToken: string; deviceId?: string };
  let reactivated = false;
  const existing = await adminUser(config, admin, userId);
  if (!existing) {
    const r = await registerWithSharedSecret({ homeserverUrl: hsUrl(config), sharedSecret: matrixSecret(config), localpart, password, displayname });
    creds = { userId: r.userId, accessToken: r.accessToken, ...(r.deviceId ? { deviceId: r.deviceId } : {}) };
  } else if (existing.deactivated) {
    // Synapse never frees a deactivated name: a device enrolled again (after revoke or a rollback) gets it back.
    await reactivateUser({ homeserverUrl: hsUrl(config), adminToken: admin, userId, password, displayname });
    creds = await login(config, userId, password);
    reactivated = true;
    req.info?.(`the Matrix user ${userId} was deactivated by an earlier revoke or rollback: reactivated it`);
  } else if (hadPassword) {
    creds = await login(config, userId, password);
  } else {
    throw new MeshpilotError('config', `the Matrix user ${userId} already exists and meshpilot has no credentials for it: pick another name, or remove that user`);
  }
  await setDisplayNameWithToken({ homeserverUrl: hsUrl(config), accessToken: creds.accessToken, userId, displayname }).catch((err: unknown) => req.warn?.(`could not set the display name of ${userId} (${(err as Error).message})`));
  writeCredentials(req.home.keys, req.name, { ...creds, homeserverUrl: config.matrix.homeserver_url });
  chmodSync(credentialsFile(req.home.keys, req.name), 0o600);
  return { userId, reactivated };
}

/** Deactivates the bot's Matrix user (an unknown or already deactivated user is fine). True when this call deactivated it. */
export async function deactivateBotAccount(req: { home: HomeLayout; config: Config; userId: string }): Promise<boolean> {
  const admin = await adminToken(req.home, req.config);
  const u = await adminUser(req.config, admin, req.userId);
  if (!u || u.deactivated) return false;
  await deactivateUser({ homeserverUrl: hsUrl(req.config), adminToken: admin, userId: req.userId });
  return true;
}

/** Removes keys/<name>/'s Matrix secrets (credentials, password, the E2EE store and cross-signing keys), and the folder when empty. */
export function removeBotKeys(home: HomeLayout, name: string): void {
  const dir = keysDir({ home, device: name });
  rmSync(credentialsFile(home.keys, name), { force: true });
  rmSync(path.join(dir, 'matrix.password'), { force: true });
  // the bot's end-to-end encryption keys belong to the deactivated account: useless, and secret
  rmSync(path.join(dir, 'crypto'), { recursive: true, force: true });
  rmSync(path.join(dir, 'cross-signing.json'), { force: true });
  try { if (readdirSync(dir).length === 0) rmSync(dir, { recursive: true, force: true }); } catch { /* gone */ }
}

/** The wait between rounds while the bot has no DM yet (it is still starting: seconds). */
const LIVE_POLL_MS = 500;
/** The wait between rounds once a DM exists (its "live" follows within a second), for at most LIVE_FAST_FOR_MS. */
const LIVE_POLL_FAST_MS = 100;
const LIVE_FAST_FOR_MS = 5_000;

/** Polls the bot's own view of its rooms until it has posted "✓ <device> live" (after sinceTs). */
export async function waitForLiveMessage(w: LiveWait): Promise<void> {
  // Never /sync as the bot: its to-device messages (encryption keys) would be acknowledged here and
  // lost to the bot. Instead poll the bot's DMs (m.direct) for the `dev.meshpilot.live` state event it
  // sets next to its "live" message (state is never encrypted), then check that message exists.
  const deadline = Date.now() + w.timeoutMs;
  const want = `✓ ${w.device} live`;
  const api = new HomeserverApi(w.homeserverUrl, w.botToken);
  const Direct = z.record(z.string().max(255), z.array(z.string().max(255)).max(100));
  const Live = z.object({ device: z.string().max(64), ts: z.number(), event_id: z.string().max(255) }).loose();
  const Event = z.object({ sender: z.string().max(255), type: z.string().max(255), content: z.object({ body: z.unknown().optional() }).loose() }).loose();
  let fastUntil: number | undefined;
  while (Date.now() < deadline) {
    if (w.signal?.aborted) throw new MeshpilotError('internal', 'interrupted');
    let rooms = 0;
    try {
      const direct = Direct.safeParse(await api.accountData(w.botUserId, 'm.direct'));
      for (const room of new Set(Object.values(direct.success ? direct.data : {}).flat())) {
        rooms += 1;
        // a room the bot cannot read (left, forbidden) is skipped, not the end of this round
        const live = Live.safeParse(await api.stateEvent(room, 'dev.meshpilot.live', '').catch(() => null));
        if (!live.success || live.data.device !== w.device || live.data.ts < w.sinceTs - 1000) continue;
        const e = Event.safeParse(await api.event(room, live.data.event_id).catch(() => null));
        if (!e.success || e.data.sender !== w.botUserId) continue;
        // An encrypted DM: the body is ciphertext; that the bot sent it is what can be checked here.
        if (e.data.type === 'm.room.encrypted' || (e.data.type === 'm.room.message' && typeof e.data.content.body === 'string' && e.data.content.body.startsWith(want))) return;
      }
    } catch {
      // homeserver briefly unreachable: keep polling until the deadline
    }
    // A bot with a DM is about to post "live" in it: poll quickly for a few seconds (a bot that had DMs
    // before, restarted, may take longer: then back to the slow pace).
    if (rooms > 0) fastUntil ??= Date.now() + LIVE_FAST_FOR_MS;
    await new Promise((res) => setTimeout(res, fastUntil !== undefined && Date.now() < fastUntil ? LIVE_POLL_FAST_MS : LIVE_POLL_MS));
  }
  throw new MeshpilotError('timeout', `the bot of ${w.device} did not post "${want}" within ${Math.round(w.timeoutMs / 1000)} s: check the launcher's log (is the homeserver reachable from it?)`);
}
