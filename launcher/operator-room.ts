/**
 * The operator room: one room for the whole mesh, where a dedicated bot user (@<matrix.operator_bot>:
 * <server>, default @meshpilot) posts health alerts and answers operators' commands:
 *
 *   !devices                 table: device, state, transport, mesh IP, last handshake, last command, chain
 *   !health [device]         run a health cycle now (summary), or one device's health and history
 *   !audit <device> [n]      the device's last n controller audit entries and its agent chain status
 *   !revoke <device>         asks for `!revoke <device> confirm`, then calls the injected revoke
 *   !add-pc …                the injected add-pc flow, its progress lines streamed into the room
 *   !org [apply|cancel <id>] the workspaces' org tree; an org template (.yaml) uploaded here gets its
 *                            plan, an operator's ✅ on it applies it (operator-room-org.ts)
 *
 * Only operators (config `operators`) may command; anything else is ignored (and logged).
 *
 * Launcher wiring (`meshpilot up`): `startOperatorServices({ runtime, config, supervisor, logger })`
 * registers the bot account when needed (shared-secret registration; credentials in
 * MESHPILOT_HOME/keys/_operator/matrix.json), creates the room on first run (its id is kept in the
 * meta table as `operator_room` unless config matrix.operator_room names one), invites the operators,
 * starts the HealthMonitor on its schedule with the room as its alert sink, and returns
 * `{ stop(), monitor }`.
 *
 * End-to-end encryption (config matrix.encryption `auto`, when a crypto module loads): like a device bot,
 * the operator bot keeps its crypto store in keys/_operator/crypto/ (checkCryptoDevice first) and its
 * cross-signing identity in keys/_operator/cross-signing.json; the room is created encrypted. In an
 * existing plain room it sends m.room.encryption when its power level allows, else says once in the
 * room why the room stays unencrypted.
 *
 * Agent audit anchors: after the monitor verifies a new head of a device's agent chain, the bot puts it
 * in the room as a `dev.meshpilot.audit_head` state event with state_key `<device>@agent` (content
 * { device, chain: 'agent', seq, hash, ts }); the monitor compares later chains with these. A device
 * bot anchor (state_key = device) whose content carries `agent: { seq, hash }` counts too when it is
 * in this room.
 */
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { AuditHead } from '../capabilities/audit.js';
import { MeshpilotError, toMpError } from '../capabilities/errors.js';
import { logger as makeLogger } from '../capabilities/log.js';
import { DeviceNameSchema } from '../capabilities/manifest.js';
import { serverNameOf, type Config } from '../capabilities/config.js';
import { ago } from './health/alerts.js';
import type { AnchorSource } from './health/chains.js';
import { HealthMonitor, type SupervisorLike } from './health/monitor.js';
import { mirrorKey, type DeviceHealth } from './health/state.js';
import type { Runtime } from './runtime.js';
import { hubDumpReader } from './wg.js';
import { OPERATOR_COMMANDS, operatorHelp, type OperatorCommandContext } from './operator-room-commands.js';
import { isOrgUpload, OrgRoom, type UploadLike } from './operator-room-org.js';
import type { WorkspaceOptions } from './workspaces/index.js';
import { dispatchChat } from '../capabilities/commands.js';
import { readCredentials, writeCredentials } from '../bots/credentials.js';
import { AUDIT_HEAD_EVENT } from '../bots/device-bot.js';
import { escapeHtml } from '../bots/format.js';
import { vmReaperJob } from '../capabilities/vm/reaper.js';
import { staffIds } from '../capabilities/levels.js';
import { checkCryptoDevice, createMatrixSession, cryptoAvailable, registerWithSharedSecret, type MatrixMessage, type MatrixSession, type MatrixSessionOptions } from '../bots/matrix/index.js';

export const OPERATOR_CREDENTIALS = '_operator';
const CONFIRM_MS = 5 * 60_000;
const MAX_TABLE_ROWS = 500;
const MEGOLM = 'm.megolm.v1.aes-sha2';

export type RevokeFn = (device: string, ctx: { by: string }) => Promise<string | void>;
export type AddPcFn = (args: string[], ctx: { by: string; progress: (line: string) => Promise<void> }) => Promise<string | void>;

/** What the operator bot needs from the chat network. */
export interface OperatorChat {
  sendText(roomId: string, text: string): Promise<unknown>;
  sendHtml(roomId: string, plain: string, html: string): Promise<unknown>;
}

export interface OperatorBotOptions {
  roomId: string;
  userId: string;
  operators: readonly string[];
  monitor: HealthMonitor;
  runtime: Pick<Runtime, 'audit' | 'devices'>;
  chat: OperatorChat;
  addPc?: AddPcFn;
  revoke?: RevokeFn;
  /** Workspaces: `!org` and uploaded org templates; absent, `!org` says it is not available. */
  org?: OrgRoom;
  now?: () => number;
  logger?: Logger;
}

export class OperatorBot {
  private readonly pendingRevoke = new Map<string, { device: string; at: number }>();
  private readonly log: Logger;
  private readonly now: () => number;
  private queue: Promise<void> = Promise.resolve();
  private warnedUndecryptable: number | undefined;

  constructor(private readonly o: OperatorBotOptions) {
    this.log = o.logger ?? makeLogger('operator-bot');
    this.now = o.now ?? Date.now;
  }

  isOperator(userId: string): boolean {
    return this.o.operators.includes(userId);
  }

  /** Handles one message; commands run one at a time, in order. An uploaded org template goes to the org room. */
  onMessage(m: UploadLike): Promise<void> {
    if (m.roomId !== this.o.roomId || m.sender === this.o.userId) return Promise.resolve();
    if (this.o.org && isOrgUpload(m)) {
      const org = this.o.org;
      if (!this.isOperator(m.sender)) return org.onUpload(m); // logs and ignores it
      return this.enqueue(() => org.onUpload(m));
    }
    if (m.msgtype !== undefined && m.msgtype !== 'm.text' && m.msgtype !== 'm.notice') return Promise.resolve();
    const text = m.body.trim();
    if (!text.startsWith('!')) return Promise.resolve();
    if (!this.isOperator(m.sender)) {
      this.log.info({ sender: m.sender.slice(0, 256) }, 'command ignored: not an operator');
      return Promise.resolve();
    }
    return this.enqueue(() => this.handle(m.sender, text.slice(0, 4096)));
  }

  private enqueue(fn: () => Promise<void>): Promise<void> {
    const run = this.queue.then(fn).catch(async (err: unknown) => {
      this.log.error({ err: toMpError(err).message }, 'operator command failed');
      await this.say(`Something went wrong: ${toMpError(err).message}`).catch(() => undefined);
    });
    this.queue = run;
    return run;
  }

  /** A reaction in the room: an operator's ✅/❌ on an org plan (anyone else's is logged and ignored). */
  onReaction(r: { roomId: string; sender: string; key: string; relatesToEventId: string }): void {
    if (r.roomId !== this.o.roomId || r.sender === this.o.userId || !this.o.org) return;
    this.o.org.onReaction(r.sender, r.relatesToEventId, r.key);
  }

  /**
   * An operator's message the bot cannot decrypt: says so, at most once every 10 minutes (keys can
   * arrive late; the operator should resend).
   */
  async onUndecryptable(roomId: string, sender: string, reason: 'no_crypto' | 'undecryptable'): Promise<void> {
    if (roomId !== this.o.roomId || !this.isOperator(sender)) return;
    if (this.warnedUndecryptable !== undefined && this.now() - this.warnedUndecryptable < 10 * 60_000) return;
    this.warnedUndecryptable = this.now();
    await this.say(reason === 'no_crypto'
      ? '🔒 This room is end-to-end encrypted and the operator bot runs without encryption (`matrix.encryption: off`, or its keys were lost), so it cannot read commands here.'
      : '🔒 I could not decrypt your last message: its keys never reached the operator bot\'s device. Send it again; if it keeps failing, check that your client shares keys with unverified devices.').catch(() => undefined);
  }

  private say(text: string): Promise<unknown> {
    return this.o.chat.sendText(this.o.roomId, text);
  }

  private pre(text: string): Promise<unknown> {
    return this.o.chat.sendHtml(this.o.roomId, text, `<pre><code>${escapeHtml(text)}</code></pre>`);
  }

  /** Commands are declared in operator-room-commands.ts: parser, permission check and help derive from there. */
  private async handle(sender: string, text: string): Promise<void> {
    const ctx: OperatorCommandContext = {
      help: async () => { await this.say(operatorHelp()); },
      devices: () => this.cmdDevices(),
      health: (device) => this.cmdHealth(device),
      audit: (device, n) => this.cmdAudit(device, n),
      revoke: (device, confirm) => this.cmdRevoke(sender, device, confirm),
      addPc: (words) => this.cmdAddPc(sender, words),
      org: async (action, plan, mode) => {
        if (!this.o.org) { await this.say('!org is not available in this build.'); return; }
        if (action === 'ls') await this.o.org.list(sender);
        // Not awaited: an import waits for bots; the room's other commands go on meanwhile.
        else void this.o.org.command(sender, action, plan, mode);
      },
    };
    await dispatchChat(OPERATOR_COMMANDS, text, { may: (p) => p === 'operator' && this.isOperator(sender), reply: (t) => this.say(t) }, ctx);
  }

  private lastCommand(device: string): string {
    try {
      const e = this.o.runtime.audit.tail(1, device)[0];
      if (!e) return '-';
      return `${e.capability} ${ago((this.now() - Date.parse(e.ts)) / 1000)} ago`;
    } catch {
      return '?';
    }
  }

  devicesTable(): string {
    const snap = new Map(this.o.monitor.snapshot().map((h) => [h.device, h]));
    const nowS = this.now() / 1000;
    const rows: string[][] = [['DEVICE', 'STATE', 'TRANSPORT', 'MESH IP', 'HANDSHAKE', 'LAST COMMAND', 'CHAIN']];
    const listings = this.o.runtime.devices.list();
    for (const l of listings.slice(0, MAX_TABLE_ROWS)) {
      const h: DeviceHealth | undefined = snap.get(l.device);
      const t = l.manifest?.transport;
      const hs = h?.lastHandshake === null || h?.lastHandshake === undefined ? '-' : h.lastHandshake === 0 ? 'never' : `${ago(nowS - h.lastHandshake)} ago`;
      const chain = !h?.chain ? '-' : h.chain.ok ? `ok #${h.chain.seq}` : `BAD at #${h.chain.badSeq ?? '?'}`;
      rows.push([
        l.device, l.manifest ? (h?.state ?? 'unknown') : 'invalid', t?.kind ?? '?', t?.kind === 'mesh' ? t.address : '-', hs, this.lastCommand(l.device), chain,
      ]);
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    const lines = rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
    if (listings.length > MAX_TABLE_ROWS) lines.push(`… and ${listings.length - MAX_TABLE_ROWS} more`);
    return lines.join('\n');
  }

  private async cmdDevices(): Promise<void> {
    if (this.o.runtime.devices.list().length === 0) { await this.say('No devices enrolled.'); return; }
    await this.pre(this.devicesTable());
  }

  private async cmdHealth(device: string | undefined): Promise<void> {
    if (device) {
      if (!DeviceNameSchema.safeParse(device).success || !this.o.runtime.devices.listing(device)) { await this.say(`Unknown device ${device.slice(0, 40)}.`); return; }
      const r = await this.o.monitor.runCycle();
      const h = r.devices.find((d) => d.device === device);
      if (!h) { await this.say(`${device}: no health yet (invalid manifest?)`); return; }
      const nowS = this.now() / 1000;
      const lines = [
        `${device}: ${h.state}${h.detail ? ` (${h.detail})` : ''}, since ${new Date(h.since).toISOString()}`,
        `transport ${h.transport}${h.meshIp ? `, mesh IP ${h.meshIp}` : ''}`,
        ...(h.lastHandshake !== null ? [`last handshake: ${h.lastHandshake === 0 ? 'never' : `${ago(nowS - h.lastHandshake)} ago`}`] : []),
        ...(h.agent ? [`agent: ${h.agent.ok ? `ok (v${h.agent.version ?? '?'})` : `failing (${h.agent.error}, ${h.agent.failures}x)`}`] : []),
        ...(h.ssh ? [`ssh: ${h.ssh.ok ? `ok${h.ssh.ms !== undefined ? ` (${h.ssh.ms} ms)` : ''}` : `failing (${h.ssh.error}, ${h.ssh.failures}x)`}`] : []),
        ...(h.bot ? [`bot: ${h.bot}`] : []),
        ...(h.chain ? [`agent audit chain: ${h.chain.ok ? `ok up to #${h.chain.seq}` : `CORRUPTED, first bad seq ${h.chain.badSeq ?? '?'}: ${h.chain.reason ?? ''}`}`] : []),
        'history:',
        ...this.o.monitor.history(device, 10).map((e) => `  ${new Date(e.at).toISOString().slice(0, 16).replace('T', ' ')} ${e.from ?? '(new)'} → ${e.to}${e.detail ? ` (${e.detail})` : ''}`),
      ];
      await this.pre(lines.join('\n'));
      return;
    }
    const r = await this.o.monitor.runCycle();
    const counts = new Map<string, number>();
    for (const d of r.devices) counts.set(d.state, (counts.get(d.state) ?? 0) + 1);
    const down = r.devices.filter((d) => d.state !== 'online').slice(0, 50).map((d) => `device_id=${d.device} status=${d.state}${d.detail ? ` (${d.detail})` : ''}`);
    const summary = `${r.devices.length} devices: ${[...counts].map(([s, c]) => `${c} ${s}`).join(', ') || 'none'} · cycle ${(r.durationMs / 1000).toFixed(1)} s${r.wg && !r.wg.ok ? ` · WireGuard hub unreadable: ${r.wg.error}` : ''}`;
    await this.say([summary, ...down].join('\n'));
  }

  private async cmdAudit(device: string, n: number): Promise<void> {
    if (!this.o.runtime.devices.listing(device)) { await this.say(`Unknown device ${device}.`); return; }
    const entries = this.o.runtime.audit.tail(n, device);
    const lines = entries.map((e) => `#${e.seq} ${e.ts.slice(5, 19).replace('T', ' ')} ${e.capability} ${e.decision}/${e.outcome}${e.exit_code !== null ? ` exit ${e.exit_code}` : ''} · ${e.actor}`);
    const agentHead = this.o.runtime.audit.head(mirrorKey(device));
    const h = this.o.monitor.snapshot().find((d) => d.device === device);
    if (agentHead || h?.chain) {
      lines.push(h?.chain && !h.chain.ok
        ? `agent chain: CORRUPTED, first bad seq ${h.chain.badSeq ?? '?'}: ${h.chain.reason ?? ''}`
        : `agent chain: verified up to #${agentHead?.seq ?? 0} (mirrored as ${mirrorKey(device)})`);
    }
    await this.pre(lines.join('\n') || `No audit entries for ${device}.`);
  }

  private async cmdRevoke(sender: string, device: string, confirm: string | undefined): Promise<void> {
    if (!this.o.revoke) { await this.say('!revoke is not available in this build.'); return; }
    if (confirm !== 'confirm') {
      if (!this.o.runtime.devices.listing(device)) { await this.say(`Unknown device ${device}.`); return; }
      this.pendingRevoke.set(sender, { device, at: this.now() });
      await this.say(`Revoking ${device} removes its keys and access. Reply \`!revoke ${device} confirm\` within 5 minutes to go ahead.`);
      return;
    }
    const p = this.pendingRevoke.get(sender);
    if (!p || p.device !== device || this.now() - p.at > CONFIRM_MS) {
      await this.say(`Nothing to confirm: send \`!revoke ${device}\` first.`);
      return;
    }
    this.pendingRevoke.delete(sender);
    const out = await this.o.revoke(device, { by: sender });
    this.o.monitor.markRevoked(device);
    await this.say(out ? String(out).slice(0, 4000) : `${device} revoked.`);
  }

  private async cmdAddPc(sender: string, words: readonly string[]): Promise<void> {
    if (!this.o.addPc) { await this.say('!add-pc is not available in this build.'); return; }
    const progress = async (line: string): Promise<void> => { await this.say(line.slice(0, 4000)); };
    const out = await this.o.addPc([...words], { by: sender, progress });
    if (out) await this.say(String(out).slice(0, 4000));
  }
}

// ---- agent chain anchors in the operator room's state ----------------------------------------------

const HeadSchema = z.object({ seq: z.number().int().min(1), hash: z.string().regex(/^[0-9a-f]{64}$/) });

/** Anchors of the agents' chains kept as state in the operator room. */
export function roomAnchors(roomId: string, session: Pick<MatrixSession, 'setState' | 'roomState'>): AnchorSource {
  return {
    async agentAnchors(devices) {
      const want = new Set(devices);
      const out = new Map<string, AuditHead[]>();
      for (const ev of await session.roomState(roomId)) {
        if (ev.type !== AUDIT_HEAD_EVENT || !ev.stateKey) continue;
        let device: string;
        let head: unknown;
        if (ev.stateKey.endsWith('@agent')) { device = ev.stateKey.slice(0, -'@agent'.length); head = ev.content; }
        else { device = ev.stateKey; head = ev.content['agent']; }
        if (!want.has(device)) continue;
        const h = HeadSchema.safeParse(head);
        if (!h.success) continue;
        out.set(device, [...(out.get(device) ?? []), { seq: h.data.seq, hash: h.data.hash }]);
      }
      return out;
    },
    async anchor(device, head) {
      await session.setState(roomId, AUDIT_HEAD_EVENT, mirrorKey(device), { device, chain: 'agent', seq: head.seq, hash: head.hash, ts: new Date().toISOString() });
    },
  };
}

export interface OperatorServicesOptions {
  runtime: Runtime;
  config: Config;
  supervisor?: SupervisorLike;
  logger?: Logger;
  addPc?: AddPcFn;
  revoke?: RevokeFn;
  /** Tests: the monitor's clock and extra monitor options. */
  now?: () => number;
  monitorOverrides?: Partial<ConstructorParameters<typeof HealthMonitor>[0]>;
  /** Do not start the cron schedule (tests drive runCycle themselves). */
  noSchedule?: boolean;
  /** Tests: workspace engine options (the live wait, the launcher) over the defaults. */
  workspaces?: Partial<WorkspaceOptions>;
}

export interface OperatorServices {
  stop(): Promise<void>;
  monitor: HealthMonitor;
  bot: OperatorBot;
  /** `!org` and uploaded org templates */
  org: OrgRoom;
  roomId: string;
  userId: string;
}

interface OperatorCreds { userId: string; accessToken: string; homeserverUrl: string; deviceId?: string; password?: string }

/** Operator bot account: registered once through the shared secret, then read from keys/_operator/matrix.json. */
async function operatorCredentials(rt: Runtime, config: Config): Promise<OperatorCreds> {
  const have = readCredentials(rt.home.keys, OPERATOR_CREDENTIALS);
  const homeserverUrl = have?.homeserverUrl ?? config.matrix.homeserver_url;
  if (have) return { ...have, homeserverUrl };
  const secret = config.matrix.registration_shared_secret;
  const userId = `@${config.matrix.operator_bot}:${serverNameOf(config)}`;
  if (!secret) throw new MeshpilotError('config', `no Matrix account for the operator bot ${userId}: set matrix.registration_shared_secret, or write its access token to ${path.join(rt.home.keys, OPERATOR_CREDENTIALS, 'matrix.json')}`);
  // The password is kept (0600) so a lost crypto store can be replaced by logging in as a new device.
  const password = randomBytes(24).toString('base64url');
  const reg = await registerWithSharedSecret({
    homeserverUrl: config.matrix.homeserver_url, sharedSecret: secret, localpart: config.matrix.operator_bot, password, displayname: 'meshpilot',
  });
  const creds = { userId: reg.userId, accessToken: reg.accessToken, deviceId: reg.deviceId, homeserverUrl: config.matrix.homeserver_url, password };
  writeCredentials(rt.home.keys, OPERATOR_CREDENTIALS, creds);
  return creds;
}

/**
 * The crypto store for the operator bot's token, as a device bot prepares its own (a lost store means a
 * new Matrix device, never a reused one). `problem` says why the room runs without encryption.
 */
async function prepareEncryption(rt: Runtime, config: Config, creds: OperatorCreds, log: Logger): Promise<{ creds: OperatorCreds; encryption?: MatrixSessionOptions['encryption']; problem?: string }> {
  if (config.matrix.encryption === 'off') return { creds };
  if (!cryptoAvailable()) return { creds, problem: 'no Matrix crypto module loads in the launcher' };
  const dir = path.join(rt.home.keys, OPERATOR_CREDENTIALS);
  let current = creds;
  try {
    const r = await checkCryptoDevice({
      homeserverUrl: creds.homeserverUrl, accessToken: creds.accessToken, storeDir: path.join(dir, 'crypto'), deviceName: 'meshpilot operator room',
      fixHint: `add the account's "password" to ${path.join(dir, 'matrix.json')}, or remove that file and set matrix.operator_bot to a new name`,
      logger: log, ...(creds.password ? { password: creds.password } : {}),
      save: (c) => {
        current = { ...current, accessToken: c.accessToken, deviceId: c.deviceId };
        writeCredentials(rt.home.keys, OPERATOR_CREDENTIALS, { userId: current.userId, accessToken: current.accessToken, deviceId: c.deviceId, homeserverUrl: current.homeserverUrl, ...(current.password ? { password: current.password } : {}) });
      },
    });
    current = { ...current, accessToken: r.accessToken, deviceId: r.deviceId };
  } catch (err) {
    const e = toMpError(err);
    // Homeserver down: the operator room is not started this run (as before), rather than started in clear.
    if (e.code === 'unreachable') throw err;
    log.error({ error: e.message }, 'end-to-end encryption is off for the operator room this run');
    return { creds: current, problem: e.message };
  }
  return {
    creds: current,
    encryption: {
      storeDir: path.join(dir, 'crypto'), crossSigningFile: path.join(dir, 'cross-signing.json'), ...(current.password ? { password: current.password } : {}),
      // Alerts and fleet commands are for operators: anyone else let into the room gets no room keys.
      keyRecipients: (userId) => staffIds(config).includes(userId),
    },
  };
}

/** The operator room: config matrix.operator_room, else the one created on a previous run, else a new one. */
async function operatorRoom(rt: Runtime, config: Config, creds: OperatorCreds, session: MatrixSession, log: Logger): Promise<string> {
  const meta = rt.db.prepare('SELECT value FROM meta WHERE key = ?');
  let roomId = config.matrix.operator_room ?? (meta.get('operator_room') as { value: string } | undefined)?.value;
  // A pinned room: join it (accepts a pending invite; a no-op when already joined).
  if (config.matrix.operator_room) {
    try {
      roomId = await session.joinRoom(config.matrix.operator_room);
    } catch (err) {
      throw new MeshpilotError('config', `the operator bot ${creds.userId} cannot join matrix.operator_room ${config.matrix.operator_room}: invite it there first (${toMpError(err).message})`);
    }
  }
  if (!roomId) {
    roomId = await session.createRoom({
      name: 'meshpilot operators', topic: 'meshpilot health alerts and fleet commands (!help)', preset: 'private_chat',
      invite: staffIds(config),
      // Synapse refuses an override whose users leave out the creator; the bot keeps 100, operators 50.
      userPowerLevels: { ...Object.fromEntries(staffIds(config).map((o) => [o, 50])), [creds.userId]: 100 },
      encrypted: session.encryptionEnabled(),
    });
    rt.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run('operator_room', roomId);
    log.info({ room: roomId }, 'operator room created; operators invited (set matrix.operator_room to pin it)');
    return roomId;
  }
  // Operators added to the config since: invite them (those already in the room make this fail harmlessly).
  const members = await session.roomMembers(roomId).catch(() => []);
  const joined = new Set(members.filter((m) => m.membership === 'join').map((m) => m.userId));
  for (const op of staffIds(config)) {
    if (joined.has(op)) continue;
    await session.invite(roomId, op).catch(() => undefined);
  }
  return roomId;
}

const PowerLevelsSchema = z.looseObject({
  users: z.record(z.string(), z.number()).optional(),
  users_default: z.number().optional(),
  events: z.record(z.string(), z.number()).optional(),
  state_default: z.number().optional(),
});

/**
 * Encryption of a room that exists already (pinned, or created before the room was encrypted): turned on
 * when the bot may send m.room.encryption; otherwise the room is told why it stays plain, once per room.
 */
async function ensureRoomEncrypted(rt: Runtime, config: Config, session: MatrixSession, roomId: string, userId: string, problem: string | undefined, log: Logger): Promise<void> {
  if (config.matrix.encryption === 'off') return;
  if (await session.isEncryptedRoom(roomId)) {
    if (!session.encryptionEnabled()) log.error({ room: roomId, problem }, 'the operator room is encrypted but the operator bot runs without encryption: it cannot read commands there');
    return;
  }
  let why: string;
  if (!session.encryptionEnabled()) {
    why = `the operator bot runs without encryption (${problem ?? 'encryption did not start'})`;
  } else {
    const pl = PowerLevelsSchema.safeParse(await session.getState(roomId, 'm.room.power_levels', '').catch(() => null));
    const levels = pl.success ? pl.data : {};
    const mine = levels.users?.[userId] ?? levels.users_default ?? 0;
    const needed = levels.events?.['m.room.encryption'] ?? levels.state_default ?? 50;
    if (mine >= needed) {
      try {
        await session.setState(roomId, 'm.room.encryption', '', { algorithm: MEGOLM });
        log.info({ room: roomId }, 'turned end-to-end encryption on in the operator room');
        return;
      } catch (err) {
        why = `turning it on failed: ${toMpError(err).message}`;
      }
    } else {
      why = `sending m.room.encryption needs power level ${needed} here and the bot ${userId} has ${mine}`;
    }
  }
  log.warn({ room: roomId, why }, 'the operator room is not end-to-end encrypted');
  const key = `operator_room_plain_notice:${roomId}`;
  if (rt.db.prepare('SELECT 1 FROM meta WHERE key = ?').get(key)) return;
  await session.sendText(roomId, `🔓 This room is not end-to-end encrypted, so health alerts and command replies here travel in clear to the homeserver: ${why}. A room admin can turn encryption on in the room settings (or give the bot that power level and restart meshpilot). I say this once.`);
  rt.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING').run(key, new Date().toISOString());
}

/**
 * Starts the operator bot and the health monitor for `meshpilot up`. Call once after the supervisor is
 * up; `stop()` before closing the runtime.
 */
export async function startOperatorServices(o: OperatorServicesOptions): Promise<OperatorServices> {
  const log = o.logger ?? makeLogger('operator-bot');
  const rt = o.runtime;
  const prepared = await prepareEncryption(rt, o.config, await operatorCredentials(rt, o.config), log);
  const creds = prepared.creds;
  const session = createMatrixSession({
    homeserverUrl: creds.homeserverUrl, accessToken: creds.accessToken, userId: creds.userId,
    storageDir: path.join(rt.home.bots, OPERATOR_CREDENTIALS), logger: log,
    ...(prepared.encryption ? { encryption: prepared.encryption } : {}),
  });
  await session.start();
  try {
    const roomId = await operatorRoom(rt, o.config, creds, session, log);
    await ensureRoomEncrypted(rt, o.config, session, roomId, creds.userId, prepared.problem, log);
    const settings = o.config.health;
    const hub = settings.hub_device ? rt.devices.get(settings.hub_device) : undefined;
    if (settings.hub_device && !hub) log.warn({ hub: settings.hub_device }, 'health.hub_device has no valid manifest: WireGuard handshakes are read locally');
    const monitor = new HealthMonitor({
      db: rt.db, audit: rt.audit, devices: rt.devices, settings, home: rt.home.root,
      ...(o.now ? { now: o.now } : {}),
      ...(o.supervisor ? { supervisor: o.supervisor } : {}),
      ...(settings.hub_interface ? { wgDump: hubDumpReader(settings.hub_interface, hub) } : {}),
      anchors: roomAnchors(roomId, session),
      send: async (text) => { await session.sendText(roomId, text); },
      logger: log.child({ component: 'health' }),
      // The reaper's notices (a VM stopped over its disk limit) go to the operator room.
      afterCycle: [vmReaperJob(rt, log.child({ component: 'vm-reaper' }), (text) => session.sendText(roomId, `[VM] ${text}`))],
      ...o.monitorOverrides,
    });
    const operators = staffIds(o.config);
    const org = new OrgRoom({
      chat: {
        say: (t) => session.sendText(roomId, t),
        pre: (t) => session.sendHtml(roomId, t, `<pre><code>${escapeHtml(t)}</code></pre>`),
        download: (mxc, maxBytes) => session.downloadMedia(mxc, { maxBytes }),
      },
      isOperator: (u) => operators.includes(u),
      workspaces: (actor) => ({
        runtime: rt, config: o.config, actor, logger: log.child({ component: 'workspaces' }),
        // The launcher is this process: its supervisor tells the bots' states.
        ...(o.supervisor ? { bots: () => o.supervisor!.status().map((b) => ({ device: b.device, state: b.state, pid: (b as { pid?: number | null }).pid ?? null })) } : {}),
        ...o.workspaces,
      }),
      ...(o.now ? { now: o.now } : {}), logger: log.child({ component: 'org' }),
    });
    const bot = new OperatorBot({
      roomId, userId: creds.userId, operators, monitor, runtime: rt,
      chat: { sendText: (r, t) => session.sendText(r, t), sendHtml: (r, p, h) => session.sendHtml(r, p, h) },
      ...(o.addPc ? { addPc: o.addPc } : {}), ...(o.revoke ? { revoke: o.revoke } : {}),
      org, ...(o.now ? { now: o.now } : {}), logger: log,
    });
    session.onMessage((m: MatrixMessage) => bot.onMessage(m));
    session.onReaction((r) => bot.onReaction(r));
    session.onEncrypted((e) => bot.onUndecryptable(e.roomId, e.sender, e.reason));
    session.onInvite(async (i) => { if (i.roomId === roomId || staffIds(o.config).includes(i.sender)) await session.joinRoom(i.roomId).catch(() => undefined); });
    if (!o.noSchedule) monitor.start();
    void monitor.flush();
    return {
      monitor, bot, org, roomId, userId: creds.userId,
      async stop() {
        org.stop();
        await monitor.stop();
        await session.stop();
      },
    };
  } catch (err) {
    await session.stop();
    throw err;
  }
}

/** The bot user id the config names (for messages and docs). */
export function operatorBotUserId(config: Config): string {
  return `@${config.matrix.operator_bot}:${serverNameOf(config)}`;
}
