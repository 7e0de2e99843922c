/**
 * The device bot process (forked by the launcher's supervisor, one per device). It reads its
 * config and secrets from MESHPILOT_HOME (never from argv), talks to the launcher over IPC
 * (ready, heartbeat with the audit head, fatal), and shuts down gracefully on request.
 */
import * as path from 'node:path';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { toMpError } from '../capabilities/errors.js';
import { layout, resolveHome } from '../capabilities/home.js';
import { Invoker } from '../capabilities/invoke.js';
import { logger } from '../capabilities/log.js';
import { builtinRegistry } from '../capabilities/registry.js';
import { loadConfig } from '../capabilities/config.js';
import { DeviceRegistry } from '../capabilities/device-registry.js';
import { VmGate } from '../capabilities/vm/quota-gate.js';
import { SqliteQuotaStore } from '../capabilities/vm/quota-sqlite.js';
import { setShareStore, ShareStore } from '../capabilities/vm/shares.js';
import { childrenOf, OrgGate } from '../capabilities/workspace/org.js';
import { DelegationClient, serveDelegatedRun } from './delegation.js';
import { readBotPassword, readCredentials, writeCredentials, type MatrixCredentials } from './credentials.js';
import { DeviceBot } from './device-bot.js';
import { ParentMessageSchema, type ChildMessageInput, type ParentMessage } from './ipc.js';
import type { LlmCaller, LlmClientOptions } from './llm.js';
import { checkCryptoDevice, createMatrixSession, cryptoAvailable, type MatrixSessionOptions } from './matrix/index.js';
import { createMemorySettler, SETTLE_IDLE_MS } from './memory-settle.js';
import { createVoiceHandler } from './voice.js';
import { baseUrlOf } from '../capabilities/dashboard-login.js';

/** A stop that takes longer ends the process anyway (past the launcher's own 15-s grace, which normally acts first). */
const SELF_EXIT_MS = 30_000;

function send(msg: ChildMessageInput): void {
  if (process.send) process.send(msg);
}

/** Thrown after a fatal message was handed to IPC; the send callback exits the process. */
class FatalSent extends Error {}

function fatal(code: string, message: string): never {
  process.stderr.write(`${message}\n`);
  if (process.send) process.send({ type: 'fatal', code, message } satisfies ChildMessageInput, () => process.exit(78));
  else process.exit(78);
  throw new FatalSent(message);
}

async function main(device: string, heartbeatMs = 10_000): Promise<void> {
  // Until the session starts there is nothing to finish: a launcher gone (even killed) or a stop request
  // ends the process at once, also while it waits for a homeserver that is down. Never an orphan.
  const exitNow = (): void => process.exit(0);
  const stopNow = (raw: unknown): void => {
    if (ParentMessageSchema.safeParse(raw).data?.type === 'shutdown') exitNow();
  };
  process.on('disconnect', exitNow);
  process.on('message', stopNow);
  if (process.send && !process.connected) exitNow();
  const home = layout(resolveHome());
  const log = logger('bot', { device });
  const cfg = loadConfig(home.config);
  if (!cfg.ok) fatal('config', cfg.missing ? `no config at ${home.config}: run \`meshpilot init\`` : cfg.errors.join('\n'));
  const config = cfg.config;
  let creds: MatrixCredentials = readCredentials(home.keys, device) ?? fatal('config', `no Matrix account for ${device}: run \`meshpilot bot register ${device}\``);

  const db = openDatabase(home.db);
  const audit = new SqliteAuditLog(db);
  const devices = new DeviceRegistry(home.manifests, builtinRegistry());
  if (!devices.get(device)) fatal('manifest_invalid', devices.problems(device) ?? `no manifest for ${device}`);
  // Load only the transport this device uses (each registers itself): less memory per bot.
  const transport = devices.get(device)?.transport;
  if (transport?.kind === 'ssh' || (transport?.kind === 'vm' && transport.via.kind === 'ssh')) await import('../capabilities/transports/ssh.js');
  if (transport?.kind === 'mesh') await import('../capabilities/transports/mesh.js');
  if (transport?.kind === 'vm') await import('../capabilities/transports/vm.js');
  // workspace.delegate (a workspace bot): relayed through the launcher over IPC (bots/delegation.ts).
  const delegation = new DelegationClient(process.send ? (m) => {
    if (!process.connected) return false;
    send(m);
    return true;
  } : undefined);
  // Quotas and VM ownership (capabilities/vm/quota-gate.ts): reservations live in meshpilot.db, shared by every bot.
  // The org gate: a workspace delegates only to its own descendants (capabilities/workspace/org.ts).
  const invoker = new Invoker({
    manifests: devices, audit, delegate: delegation.delegate,
    gate: [new VmGate(new SqliteQuotaStore(db, config.quotas, log.child({ component: 'quota' }))), new OrgGate(devices)],
  });
  // A workspace's model (its manifest's workspace.model) before the config's.
  const model = devices.get(device)?.workspace?.model ?? config.llm.model;
  // vm.share records its rows in meshpilot.db; the links name the launcher's HTTP server.
  setShareStore(new ShareStore(db), baseUrlOf(config.http.listen));
  const homeserverUrl = creds.homeserverUrl ?? config.matrix.homeserver_url;
  const encryption = config.matrix.encryption === 'auto' && cryptoAvailable() ? await prepareEncryption() : undefined;
  const session = createMatrixSession({
    homeserverUrl,
    accessToken: creds.accessToken,
    userId: creds.userId,
    storageDir: path.join(home.bots, device),
    logger: log.child({ component: 'matrix' }),
    ...(encryption ? { encryption } : {}),
  });

  /** The crypto store for this device's token (a new device if the old store was lost); undefined = run unencrypted. */
  async function prepareEncryption(): Promise<MatrixSessionOptions['encryption']> {
    const dir = path.join(home.keys, device);
    const password = readBotPassword(home.keys, device);
    for (let attempt = 1; ; attempt++) {
      try {
        const r = await checkCryptoDevice({
          homeserverUrl, accessToken: creds.accessToken, storeDir: path.join(dir, 'crypto'), deviceName: `meshpilot ${device}`,
          fixHint: `meshpilot bot register ${device} --password <the account's password>`, logger: log,
          ...(password ? { password } : {}),
          save: (c) => {
            creds = { ...creds, accessToken: c.accessToken, deviceId: c.deviceId };
            writeCredentials(home.keys, device, creds);
          },
        });
        creds = { ...creds, accessToken: r.accessToken, deviceId: r.deviceId };
        return {
          storeDir: path.join(dir, 'crypto'), crossSigningFile: path.join(dir, 'cross-signing.json'), ...(password ? { password } : {}),
          // Room keys go to operators only: a stranger invited into a DM cannot read it (keys are shared after start, once bot exists).
          keyRecipients: (u: string) => bot.mayTalk(u),
          account: { userId: r.userId, deviceId: r.deviceId },
        };
      } catch (err) {
        const e = toMpError(err);
        // The homeserver is down: wait for it like the session would, rather than start without encryption.
        if (e.code === 'unreachable' && attempt < 1_000) {
          const delay = Math.min(60_000, 1_000 * 2 ** Math.min(6, attempt - 1));
          log.warn({ error: e.message, retryInMs: delay }, 'cannot check the encryption device yet; retrying');
          await new Promise((r) => setTimeout(r, delay));
          continue;
        }
        log.error({ error: e.message }, 'end-to-end encryption is off for this run');
        return undefined;
      }
    }
  }
  const apiKey = config.llm.api_key;
  const bot = new DeviceBot({
    device,
    manifest: () => devices.get(device),
    operators: config.operators,
    admins: config.admins,
    users: config.users,
    invoker, audit, db,
    chat: {
      get userId() { return session.userId ?? creds.userId; },
      sendText: (r, t) => session.sendText(r, t),
      sendHtml: (r, p, h) => session.sendHtml(r, p, h),
      sendFile: async (r, n, b, m) => (await session.sendFile(r, n, b, m)).eventId,
      setTyping: (r, t, ms) => session.setTyping(r, t, ms),
      setState: async (r, t, k, c) => { await session.setState(r, t, k, c); },
      getState: (r, t, k) => session.getState(r, t, k),
      // encrypted when the session has encryption on (or is setting it up: "live" DMs are made while it starts)
      createDm: (u, o) => session.createDm(u, { ...o, encrypted: encryption !== undefined }),
      findDm: async (u) => (await session.findDm(u)) ?? undefined,
      joinRoom: async (r) => { await session.joinRoom(r); },
      leaveRoom: (r) => session.leaveRoom(r),
      isEncryptedRoom: (r) => session.isEncryptedRoom(r),
      roomMembers: (r) => session.roomMembers(r),
    },
    ...(apiKey ? {
      llm: {
        client: lazyLlmClient({ apiKey, ...(config.llm.base_url ? { baseURL: config.llm.base_url } : {}), model, maxTokens: config.llm.max_tokens, timeoutMs: config.llm.timeout_s * 1000, logger: log }),
        maxSteps: config.llm.max_steps,
        dailyTokenBudget: config.llm.daily_token_budget,
        ...(config.llm.system_prompt ? { operatorPrompt: config.llm.system_prompt } : {}),
      },
    } : {}),
    approvalTimeoutMs: config.approvals.timeout_s * 1000,
    dashboardUrl: baseUrlOf(config.http.listen),
    children: () => childrenOf(devices, device),
    logger: log,
  });

  const voice = createVoiceHandler({
    config: config.voice, device, llm: Boolean(apiKey),
    manifest: () => devices.get(device),
    allowed: () => invoker.allowedCapabilities(device).map((d) => d.name),
    download: (mxc, o) => session.downloadMedia(mxc, o),
    sendText: (r, t) => bot.sendText(r, t), // guarded: never into a room with a non-operator
    dir: path.join(home.bots, device, 'voice'),
    logger: log,
  });
  setVoiceHandler((m, b) => voice.handle(m, b));

  const settler = createMemorySettler({ idleMs: SETTLE_IDLE_MS, logger: log });
  session.onInvite((i) => settler.track(() => bot.onInvite(i.roomId, i.sender)));
  session.onReaction((r) => settler.track(async () => bot.onReaction(r.roomId, r.sender, r.relatesToEventId, r.key)));
  session.onEncrypted((e) => settler.track(() => bot.onUndecryptable(e.roomId, e.sender, e.reason)));
  session.onMessage((m) => settler.track(async () => {
    if (m.msgtype === 'm.text' || m.msgtype === 'm.notice') {
      await bot.onMessage({ roomId: m.roomId, eventId: m.eventId, sender: m.sender, body: m.body, msgtype: m.msgtype });
    } else if (m.msgtype === 'm.audio' && voiceHandler) {
      await voiceHandler(m, bot);
    } else if (bot.mayTalk(m.sender)) {
      await session.sendText(m.roomId, `I can't handle ${m.msgtype.replace('m.', '')} messages${m.msgtype === 'm.audio' ? ' yet' : ''}; send text or !help.`);
    }
  }));

  let stopping = false;
  const shutdown = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    // The launcher escalates to SIGKILL after its grace period, but an orphan (launcher killed) has no
    // one to do that: a stop stuck behind an unreachable homeserver or a crypto call must not linger.
    setTimeout(() => {
      log.warn({ afterMs: SELF_EXIT_MS }, 'shutdown did not finish in time; exiting anyway');
      process.exit(1);
    }, SELF_EXIT_MS).unref();
    log.info('shutting down: finishing the current call');
    settler.stop();
    delegation.close();
    await bot.stop();
    await session.stop();
    await invoker.close();
    db.close();
    process.exit(0);
  };
  process.off('disconnect', exitNow);
  process.off('message', stopNow);
  process.on('message', (raw) => {
    const p = ParentMessageSchema.safeParse(raw);
    if (p.success && p.data.type === 'shutdown') void shutdown();
    else if (p.success && p.data.type === 'approval-ask') void askApproval(p.data);
    else if (p.success && p.data.type === 'delegate-result') delegation.onResult(p.data);
    else if (p.success && p.data.type === 'delegate-run') {
      const run = p.data;
      void settler.track(() => serveDelegatedRun(run, bot, send, log));
    }
    else if (p.success && p.data.type === 'approval-decide') {
      const row = db.prepare("SELECT room_id FROM approvals WHERE id = ? AND device = ? AND state = 'pending'").get(p.data.id, device) as { room_id: string } | undefined;
      if (row) bot.approvals.onCommand(row.room_id, p.data.by, p.data.approve, p.data.id);
    }
  });
  /** An approval for another surface's call (HTTP API): posted in the first operator DM there is, decided as in chat. */
  const askApproval = async (a: Extract<ParentMessage, { type: 'approval-ask' }>): Promise<void> => {
    let room: string | undefined;
    for (const op of bot.operators()) {
      room = await session.findDm(op).catch(() => null) ?? undefined;
      if (room) break;
    }
    if (!room) {
      send({ type: 'approval-verdict', ask: a.ask, approved: false, by: 'error', reason: 'the device bot has no DM with an operator to ask in' });
      return;
    }
    const verdict = bot.approvals.hookFor(room)({ requestId: a.requestId, device, capability: a.capability, args: a.args, actor: a.actor, risk: a.risk, reason: a.reason });
    const posted = db.prepare('SELECT id FROM approvals WHERE request_id = ? AND device = ? ORDER BY created_at DESC LIMIT 1').get(a.requestId, device) as { id: string } | undefined;
    if (posted) send({ type: 'approval-posted', ask: a.ask, approvalId: posted.id });
    const v = await verdict;
    send({ type: 'approval-verdict', ask: a.ask, approved: v.approved, by: v.by, ...(v.reason ? { reason: v.reason } : {}) });
  };
  process.on('SIGTERM', () => void shutdown());
  process.on('SIGINT', () => void shutdown());
  // The launcher died (even by SIGKILL): never linger as an orphan in our own process group.
  process.on('disconnect', () => void shutdown());

  // The operators' DMs are looked up (and a new bot's created) while the session starts (crypto, first
  // sync); "live" is posted once it has. This device's cross-signing runs meanwhile; the launcher hears
  // `ready` when all of it is done.
  const started = session.start();
  await Promise.all([started, bot.start({ ready: started })]);
  await session.startupDone();
  settler.touch(); // start-up's garbage goes once the bot has been quiet for a moment
  send({ type: 'ready' });
  log.info({ userId: creds.userId }, 'device bot running');
  const beat = (): void => send({ type: 'heartbeat', busy: bot.busy, auditHead: audit.head(device) ?? undefined });
  beat();
  setInterval(beat, heartbeatMs).unref();
}

/**
 * The LLM client, created on the first model call: a bot that is only ever given commands never loads
 * the Anthropic SDK (400 KB of code to parse at start, and its memory).
 */
function lazyLlmClient(opts: LlmClientOptions): LlmCaller {
  let client: Promise<LlmCaller> | undefined;
  return {
    model: opts.model,
    maxTokens: opts.maxTokens,
    createMessage: async (req) => (await (client ??= import('./llm.js').then((m) => m.createLlmClient(opts)))).createMessage(req),
  };
}

/** Set by the voice module when it is loaded (issue: voice messages to commands). */
let voiceHandler: ((m: import('./matrix/index.js').MatrixMessage, bot: DeviceBot) => Promise<void>) | undefined;
export function setVoiceHandler(h: typeof voiceHandler): void {
  voiceHandler = h;
}

// Entry: wait for the launcher's init message (device name), or take MESHPILOT_DEVICE when run by hand.
const direct = process.env['MESHPILOT_DEVICE'];
const onError = (err: unknown): void => {
  if (err instanceof FatalSent) return;
  process.stderr.write(`${toMpError(err).message}\n`);
  process.exit(1);
};
if (direct) {
  main(direct).catch(onError);
} else {
  process.once('message', (raw) => {
    const p = ParentMessageSchema.safeParse(raw);
    if (!p.success || p.data.type !== 'init') {
      process.stderr.write('device bot: expected an init message from the launcher\n');
      process.exit(2);
    }
    main(p.data.device, p.data.heartbeatMs).catch(onError);
  });
}
