/**
 * The device bot's conversation logic, independent of the Matrix library: it receives normalised
 * chat events through a ChatPort, and every action goes through the one Invoker (policy, approval,
 * audit). Plain words go to the LLM loop; `!commands` run without it.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { parseKeyValues, describeArgs } from '../capabilities/args.js';
import { chatHelpLines, dispatchChat, type Permission } from '../capabilities/commands.js';
import { redactArgs } from '../capabilities/audit.js';
import type { AuditSink } from '../capabilities/audit-sqlite.js';
import type { Db } from '../capabilities/db.js';
import { toMpError, type ErrorCode } from '../capabilities/errors.js';
import type { ApprovalHook, InvokeResult, Invoker } from '../capabilities/invoke.js';
import type { Manifest } from '../capabilities/manifest.js';
import type { DelegatedAuditRef } from '../capabilities/capability.js';
import { isStaff, mayTalk, resolveLevel, staffIds, type Caller, type Level } from '../capabilities/levels.js';
import { ApprovalManager, type StaleApproval } from './approvals.js';
import { claimWarning } from './claims.js';
import { ConversationStore } from './conversation.js';
import { APPROVAL_COMMANDS, DEVICE_COMMANDS, type DeviceCommandContext } from './device-commands.js';
import { DashboardLogins, loginUrl } from '../capabilities/dashboard-login.js';
import { auditRef, escapeHtml, formatResult, liveText, llmTextToHtml, type ChatReply } from './format.js';
import type { DelegatedOutcome } from './delegation.js';
import type { LlmCaller, MessageParam, TurnAction, TurnResult } from './llm.js';
import { RoomAnchors } from './room-anchor.js';
import { RoomGuard, type RoomMember } from './room-guard.js';
import { sendShareLinks } from './share-links.js';

/** Said when the LLM cannot help (kept here so a bot without an LLM never loads the SDK). */
const COMMAND_MODE_HINT = 'Command mode still works: send `!help` for the commands.';

/** What the bot needs from a chat network (implemented over Matrix in bots/matrix.ts). */
export interface ChatPort {
  readonly userId: string;
  sendText(roomId: string, text: string): Promise<string>;
  sendHtml(roomId: string, plain: string, html: string): Promise<string>;
  sendFile(roomId: string, name: string, bytes: Buffer, mimetype: string): Promise<string>;
  setTyping(roomId: string, typing: boolean, timeoutMs?: number): Promise<void>;
  setState(roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<void>;
  /** The state event's content, or null when there is none (the audit anchor is compared before it is replaced). */
  getState?(roomId: string, type: string, stateKey: string): Promise<Record<string, unknown> | null>;
  createDm(userId: string, opts: { name: string; topic: string }): Promise<string>;
  findDm(userId: string): Promise<string | undefined>;
  joinRoom(roomId: string): Promise<void>;
  leaveRoom(roomId: string): Promise<void>;
  isEncryptedRoom(roomId: string): Promise<boolean>;
  /** Joined and invited members (and the rest): the bot posts only where every member is an operator. */
  roomMembers(roomId: string): Promise<readonly RoomMember[]>;
}

export interface ChatMessage {
  roomId: string;
  eventId: string;
  sender: string;
  body: string;
  msgtype: string;
  /** Extra audit context (e.g. a voice transcript and its engine). */
  context?: Record<string, unknown>;
  /** The sender and their trust level, set once when the message arrives. */
  caller?: Caller;
}

/**
 * Sees an operator's message or reaction before the bot does (e.g. the answer to a voice "Did you mean …?");
 * returns true when it consumed it.
 */
export type AnswerInterceptor = (a: { roomId: string; sender: string; text?: string; reaction?: { key: string; relatesTo: string } }) => boolean;

/** State event the bot sets next to its "live" message in a new DM: `{ device, ts, event_id }`. */
export const LIVE_STATE_EVENT = 'dev.meshpilot.live';
export { AUDIT_HEAD_EVENT } from './room-anchor.js';
const TYPING_MS = 30_000;
/** Audit references a delegated turn reports back (bots/ipc.ts bounds them the same). */
const MAX_DELEGATED_REFS = 64;

export interface DeviceBotOptions {
  device: string;
  manifest: () => Manifest | undefined;
  /** Operators from the config; the manifest's own operators add to them. */
  operators: readonly string[];
  /** Admins from the config (capabilities/levels.ts). */
  admins?: readonly string[];
  /** Matrix ID → trust level, from the config's `users:`. */
  users?: Readonly<Record<string, Level>>;
  invoker: Invoker;
  audit: AuditSink;
  db: Db;
  chat: ChatPort;
  llm?: { client: LlmCaller; maxSteps: number; dailyTokenBudget: number; operatorPrompt?: string };
  approvalTimeoutMs: number;
  /** The launcher's web dashboard (`http://127.0.0.1:7400`): `!dashboard` DMs a one-time login link to it. */
  dashboardUrl?: string;
  /** A workspace's direct children in the org tree (its prompt names them; sorted). */
  children?: () => string[];
  logger: Logger;
}

export class DeviceBot {
  readonly approvals: ApprovalManager;
  private readonly conversations: ConversationStore;
  private readonly queues = new Map<string, Promise<void>>();
  /**
   * Work that follows a reply (the audit anchor, "stopped typing"), chained per room so it stays in order
   * but off the room's message queue: the operator's next message is not held behind it.
   */
  private readonly afterReply = new Map<string, Promise<void>>();
  private readonly warnedEncrypted = new Map<string, number>();
  private busyCount = 0;
  private stopping = false;
  private interceptor: AnswerInterceptor | undefined;
  private readonly guard: RoomGuard;
  private readonly anchors: RoomAnchors;
  /** The chat as the bot's conversation uses it: every post lands in a room that holds only operators. */
  private readonly chat: Pick<ChatPort, 'sendText' | 'sendHtml' | 'sendFile'>;

  constructor(private readonly o: DeviceBotOptions) {
    this.conversations = new ConversationStore(o.db, { device: o.device });
    this.guard = new RoomGuard({ device: o.device, chat: o.chat, isOperator: (u) => this.isOperator(u), mayTalk: (u) => this.mayTalk(u), operators: () => this.operators(), logger: o.logger });
    const safe = (room: string): Promise<string> => this.guard.roomFor(room);
    this.chat = {
      sendText: async (room, text) => o.chat.sendText(await safe(room), text),
      sendHtml: async (room, plain, html) => o.chat.sendHtml(await safe(room), plain, html),
      sendFile: async (room, name, bytes, mimetype) => o.chat.sendFile(await safe(room), name, bytes, mimetype),
    };
    this.anchors = new RoomAnchors({ device: o.device, audit: o.audit, chat: o.chat, logger: o.logger, say: (room, text) => this.reply(room, text) });
    this.approvals = new ApprovalManager(o.db, {
      device: o.device,
      timeoutMs: o.approvalTimeoutMs,
      isOperator: (u) => this.isOperator(u),
      // The request goes where the room guard sends it; reactions are matched in that room.
      poster: { post: async (room, plain, html) => { const target = await safe(room); return { roomId: target, eventId: await o.chat.sendHtml(target, plain, html) }; } },
    });
  }

  get busy(): boolean {
    return this.busyCount > 0;
  }

  /** Everyone at operator level or above: the config's operators and admins, the manifest's operators, users: listed as such. */
  operators(): string[] {
    const staff = staffIds({ operators: this.o.operators, ...(this.o.admins ? { admins: this.o.admins } : {}), ...(this.o.users ? { users: this.o.users } : {}) });
    return [...new Set([...staff, ...(this.o.manifest()?.operators ?? [])])];
  }

  /** The user's trust level on this device (null: a stranger); resolved once per message and carried with it. */
  levelOf(userId: string): Level | null {
    return resolveLevel(userId, { operators: this.o.operators, ...(this.o.admins ? { admins: this.o.admins } : {}), ...(this.o.users ? { users: this.o.users } : {}) }, this.o.manifest());
  }

  isOperator(userId: string): boolean {
    return isStaff(this.levelOf(userId));
  }

  /** Operators and admins; below them, a user whose level this device grants at least one capability. */
  mayTalk(userId: string): boolean {
    return mayTalk(this.o.manifest(), this.levelOf(userId));
  }

  /**
   * Ensures a DM with each operator; returns the rooms created now (where "live" was announced).
   * `ready` (the Matrix session's start): the DMs are looked up and created meanwhile, and "live" is
   * posted once it resolves (a reply to it is then always seen); when it rejects, so does this.
   */
  async start(o: { ready?: Promise<unknown> } = {}): Promise<string[]> {
    const dropped = this.auditDropped(this.approvals.expireStale());
    const m = this.o.manifest();
    // One operator's DM does not wait for another's (each is a room creation on the homeserver).
    const opened = await Promise.all(this.operators().map(async (op) => {
      try {
        const room = await this.o.chat.findDm(op);
        if (room) return undefined;
        const ws = m?.workspace;
        return { op, room: await this.o.chat.createDm(op, ws ? {
          name: `🧑‍💼 ${this.o.device}`,
          topic: `meshpilot workspace ${this.o.device} on ${ws.host} · home ${ws.home} · reports to ${ws.parent ?? '—'}`,
        } : {
          name: `🖥 ${this.o.device}`,
          topic: `meshpilot device ${this.o.device} · ${m?.os ?? 'unknown os'} · via ${m?.transport.kind ?? '?'}`,
        }) };
      } catch (err) {
        this.o.logger.warn({ operator: op, err: toMpError(err).message }, 'could not open a DM with an operator');
        return undefined;
      }
    }));
    await o.ready;
    const created: string[] = [];
    for (const dm of opened) {
      if (!dm) continue;
      created.push(dm.room);
      try {
        const live = liveText(this.o.device, m);
        const eventId = await this.o.chat.sendHtml(dm.room, live.plain, live.html);
        // State events are never encrypted: add-pc reads this to know the bot is live without syncing as the bot.
        await this.o.chat.setState(dm.room, LIVE_STATE_EVENT, '', { device: this.o.device, ts: Date.now(), event_id: eventId });
      } catch (err) {
        this.o.logger.warn({ operator: dm.op, err: toMpError(err).message }, 'could not open a DM with an operator');
      }
    }
    await this.tellDropped(dropped);
    return created;
  }

  /**
   * Requests that waited for approval when the bot died (kill -9, power loss): their invoke never came
   * back, so nothing was audited for them. Each gets the entry the invoker writes for a request that
   * was not approved (rejected / not_run, same request id), so the chain says what became of it.
   */
  private auditDropped(stale: readonly StaleApproval[]): Array<StaleApproval & { seq: number }> {
    if (stale.length) this.o.logger.info({ dropped: stale.map((s) => s.id) }, 'pending approvals from before the restart were dropped');
    return stale.map((s) => {
      const entry = this.o.audit.append({
        device: this.o.device, actor: s.requester.slice(0, 256), request_id: s.requestId, capability: s.capability.slice(0, 64), args: redactArgs(s.args),
        decision: 'rejected', outcome: 'not_run', exit_code: null, output_sha256: null, duration_ms: null, error_code: 'approval_rejected',
        reason: `${s.capability} on ${this.o.device} was not approved (restart: the bot stopped while approval ${s.id} was pending)`, context: null,
      });
      return { ...s, seq: entry.seq };
    });
  }

  /** Tells each room whose request a restart dropped: which one, and that it must be asked again. */
  private async tellDropped(dropped: ReadonlyArray<StaleApproval & { seq: number }>): Promise<void> {
    const byRoom = new Map<string, Array<StaleApproval & { seq: number }>>();
    for (const d of dropped) byRoom.set(d.roomId, [...(byRoom.get(d.roomId) ?? []), d]);
    for (const [room, list] of byRoom) {
      const what = list.map((d) => `[${d.id}] ${d.capability} (🧾 #${d.seq})`).join(', ');
      const text = `⚠️ I restarted while ${list.length > 1 ? 'these requests were' : 'this request was'} waiting for approval: ${what}. ${list.length > 1 ? 'They were' : 'It was'} dropped and did not run; ask again if you still want ${list.length > 1 ? 'them' : 'it'}.`;
      await this.chat.sendText(room, text).catch((err) => this.o.logger.warn({ err: toMpError(err).message }, 'could not tell the room about a dropped request'));
    }
  }

  /** Invites: joined only when they come from an operator or a user this device grants something; others are refused and audited. */
  async onInvite(roomId: string, inviter: string): Promise<void> {
    if (this.mayTalk(inviter)) {
      await this.o.chat.joinRoom(roomId);
      return;
    }
    this.auditStranger(inviter, 'chat.invite', roomId);
    await this.o.chat.leaveRoom(roomId).catch(() => undefined);
  }

  onReaction(roomId: string, sender: string, relatesTo: string, key: string): void {
    // Anyone who may talk here answers their own voice "Did you mean …?" (the interceptor checks it is theirs).
    if (this.interceptor && this.mayTalk(sender) && this.interceptor({ roomId, sender, reaction: { key, relatesTo } })) return;
    this.approvals.onReaction(roomId, sender, relatesTo, key);
  }

  setAnswerInterceptor(fn: AnswerInterceptor | undefined): void {
    this.interceptor = fn;
  }

  /** Entry point for a text message (or a transcribed voice message). */
  async onMessage(msg: ChatMessage): Promise<void> {
    if (msg.sender === this.o.chat.userId) return;
    const caller: Caller = { user: msg.sender, level: this.levelOf(msg.sender) };
    if (!mayTalk(this.o.manifest(), caller.level)) {
      this.auditStranger(msg.sender, 'chat.message', msg.roomId);
      return;
    }
    msg = { ...msg, caller };
    if (this.interceptor && this.interceptor({ roomId: msg.roomId, sender: msg.sender, text: msg.body })) return;
    // Approvals must get through while a turn in the same room waits for them: !approve and !reject
    // (their declarations) run here, outside the room's queue.
    if (/^!(approve|reject)\b/i.test(msg.body.trim())) {
      await this.runCommand(APPROVAL_COMMANDS, msg).catch((err) => {
        this.o.logger.warn({ err: toMpError(err).message }, 'could not answer an approval command');
      });
      return;
    }
    if (this.stopping) {
      await this.reply(msg.roomId, 'I am restarting; send that again in a moment.');
      return;
    }
    // One turn at a time per room, in order.
    const prev = this.queues.get(msg.roomId) ?? Promise.resolve();
    const next = prev.then(() => this.handleIn(msg)).catch((err) => {
      this.o.logger.error({ err: toMpError(err).message }, 'message handling failed');
      return this.reply(msg.roomId, `Something went wrong: ${toMpError(err).message}`).catch(() => undefined);
    });
    this.queues.set(msg.roomId, next);
    await next;
  }

  /**
   * Tells why an encrypted message cannot be answered: once per room when this bot has no encryption;
   * when it has, at most once per room every 10 minutes (keys can arrive late, and the sender should resend).
   */
  async onUndecryptable(roomId: string, sender: string, reason: 'no_crypto' | 'undecryptable' = 'no_crypto'): Promise<void> {
    if (!this.isOperator(sender)) return;
    const last = this.warnedEncrypted.get(roomId);
    if (last !== undefined && (reason === 'no_crypto' || Date.now() - last < 10 * 60_000)) return;
    this.warnedEncrypted.set(roomId, Date.now());
    if (reason === 'undecryptable') {
      await this.reply(roomId, '🔒 I could not decrypt your last message: its keys never reached this bot\'s device. Send it again; if it keeps failing, check that your client shares keys with unverified devices, or talk to me with `!status` from another session.').catch(() => undefined);
      return;
    }
    const dm = await this.o.chat.findDm(sender).catch(() => undefined);
    await this.reply(roomId, `🔒 This room is end-to-end encrypted and this bot runs without encryption (\`matrix.encryption: off\`, or its keys were lost), so it cannot read your messages here.${dm && dm !== roomId ? ' Talk to me in our unencrypted DM instead.' : ' Start a new DM with encryption turned off, or turn encryption on in the launcher\'s config.'}`).catch(() => undefined);
  }

  /** Handles the message in a room that holds only operators: this one, or the one the guard moves to. */
  private async handleIn(msg: ChatMessage): Promise<void> {
    if (!isStaff(this.callerOf(msg).level) && (await this.guard.outsiders(msg.roomId)).length > 0) {
      // Below operator, the bot answers only in the user's own room (they and the bot alone): nothing moves to an operator's DM.
      this.o.logger.info({ sender: msg.sender }, 'a user below operator wrote from a shared room: not answered there');
      await this.o.chat.sendText(msg.roomId, `I answer ${msg.sender} only in a DM of their own with me.`).catch(() => undefined);
      return;
    }
    const room = await this.guard.roomFor(msg.roomId, msg.sender);
    await this.handle(room === msg.roomId ? msg : { ...msg, roomId: room });
  }

  private async handle(msg: ChatMessage): Promise<void> {
    this.busyCount++;
    // Not awaited: the answer should not wait for a round trip to the homeserver (~1/3 of an LLM turn's
    // overhead). "Stopped typing" is sent after "typing" has been answered, so they never arrive swapped.
    this.later(msg.roomId, () => this.o.chat.setTyping(msg.roomId, true, TYPING_MS));
    try {
      if (await this.runCommand(DEVICE_COMMANDS, msg)) return;
      await this.llmTurn(msg);
    } finally {
      this.busyCount--;
      this.later(msg.roomId, () => this.o.chat.setTyping(msg.roomId, false));
    }
  }

  /** `expired` collects the audit seqs of calls whose approval timed out (the footer says "expired", not "rejected"). */
  private async invoke(msg: ChatMessage, capability: string, args: unknown, actor: string, expired?: Set<number>): Promise<InvokeResult> {
    const requestId = randomUUID();
    const caller = this.callerOf(msg);
    const req = { device: this.o.device, capability, args, actor, caller, requestId, ...(msg.context ? { context: msg.context } : {}) };
    // A request below operator level is approved by an operator, in the operator's own DM (never where the requester reads).
    const room = isStaff(caller.level) ? msg.roomId : await this.operatorDm();
    if (room === undefined) {
      return this.o.invoker.invoke(req, async () => ({ approved: false, by: 'error', reason: `no operator of ${this.o.device} has a DM with this bot to approve it in` }));
    }
    const ask = this.approvals.hookFor(room);
    const hook: ApprovalHook = room === msg.roomId ? ask : async (a) => {
      await this.reply(msg.roomId, `⏳ ${a.capability} on ${this.o.device} waits for an operator's approval.`).catch(() => undefined);
      return ask(a);
    };
    const r = await this.o.invoker.invoke(req, hook);
    if (expired && r.decision === 'rejected' && r.audit && this.approvals.stateOf(requestId) === 'expired') expired.add(r.audit.seq);
    // vm.share with `to`: each person gets a one-time login link to the share in a DM (bots/share-links.ts).
    if (capability === 'vm.share' && r.ok && r.result?.data) {
      const links = await sendShareLinks({ device: this.o.device, db: this.o.db, chat: this.o.chat, dashboardUrl: this.o.dashboardUrl, logger: this.o.logger }, r.result.data);
      if (links.failed.length) await this.reply(msg.roomId, `Could not send the share link to ${links.failed.map((f) => `${f.user} (${f.reason})`).join(', ')}.`).catch(() => undefined);
    }
    return r;
  }

  /** The message's caller (set when it arrived; a message that did not come through onMessage is resolved here). */
  private callerOf(msg: ChatMessage): Caller {
    return msg.caller ?? { user: msg.sender, level: this.levelOf(msg.sender) };
  }

  /** The first operator's DM with this bot: where requests from users below operator are approved. */
  private async operatorDm(): Promise<string | undefined> {
    for (const op of this.operators()) {
      const room = await this.o.chat.findDm(op).catch(() => undefined);
      if (room) return room;
    }
    return undefined;
  }

  /** The capabilities this caller sees: all the manifest enables for operators and admins, else those granted to their level. */
  private capabilitiesFor(caller: Caller): ReturnType<Invoker['allowedCapabilities']> {
    return isStaff(caller.level) ? this.o.invoker.allowedCapabilities(this.o.device) : this.o.invoker.allowedCapabilities(this.o.device, caller.level);
  }

  private async llmTurn(msg: ChatMessage): Promise<void> {
    const llm = this.o.llm;
    const manifest = this.o.manifest();
    if (!llm) {
      await this.reply(msg.roomId, `No LLM is configured, so I only understand commands. ${COMMAND_MODE_HINT}`);
      return;
    }
    if (!manifest) {
      await this.reply(msg.roomId, 'My manifest is missing or invalid, so I cannot act. Check `meshpilot devices` on the launcher.');
      return;
    }
    const caller = this.callerOf(msg);
    const expired = new Set<number>();
    const turn = await this.turnAndReply(msg.roomId, manifest, llm, caller, {
      history: this.conversations.load(msg.roomId),
      userText: msg.body,
      invoke: (capability, args) => this.invoke(msg, capability, args, `llm:${msg.sender}`, expired),
    }, expired);
    if (turn.result.messages.length) this.conversations.append(msg.roomId, turn.result.messages);
  }

  /**
   * One LLM turn for `caller` and its reply in `roomId`: the text, then the audit footer ("no action
   * taken" when nothing ran) and a warning when its words claim an action no successful call backs.
   */
  private async turnAndReply(
    roomId: string, manifest: Manifest, llm: NonNullable<DeviceBotOptions['llm']>, caller: Caller,
    t: { history: readonly MessageParam[]; userText: string; invoke: (capability: string, args: unknown) => Promise<InvokeResult> },
    expired: ReadonlySet<number>,
  ): Promise<{ result: TurnResult; text: string; footer: string }> {
    const { auditFooter, buildSystemPrompt, buildTools, runTurn } = await import('./llm.js');
    // The LLM sees only the caller's own tools, and the prompt lists only those.
    const mine = this.capabilitiesFor(caller);
    const tools = buildTools(mine);
    const visible = isStaff(caller.level) ? manifest : { ...manifest, capabilities: Object.fromEntries(mine.map((d) => [d.name, manifest.capabilities[d.name]])) };
    const children = manifest.workspace && this.o.children ? { children: this.o.children() } : {};
    const system = buildSystemPrompt({ ...visible, ...children, ...(llm.operatorPrompt ? { operatorPrompt: llm.operatorPrompt } : {}) });
    const result = await runTurn({
      client: llm.client, system, tools, ...t,
      maxSteps: llm.maxSteps,
      budget: this.conversations.budget(llm.dailyTokenBudget),
      logger: this.o.logger,
    });
    const footer = auditFooter(result.actions.map((a) => (a.auditSeq !== null && expired.has(a.auditSeq) ? { ...a, expired: true } : a)));
    const warning = claimWarning(result.text, result.actions);
    const text = result.text || (result.error ? result.error.message : '(no answer)');
    const plain = `${text}\n\n${warning ? `${warning}\n` : ''}${footer}`;
    const html = `${llmTextToHtml(text)}<br><br>${warning ? `<b>${escapeHtml(warning)}</b><br>` : ''}<small>${escapeHtml(footer)}</small>`;
    await this.chat.sendHtml(roomId, plain, html);
    if (result.actions.length) this.later(roomId, () => this.anchorAuditHead(roomId, result.actions));
    return { result, text, footer };
  }

  /**
   * A task from the parent workspace (workspace.delegate, relayed by the launcher): shown in the first
   * operator's DM ("↳ task from …"), run there as one LLM turn in the room's queue, each call checked
   * against this bot's manifest and audited on its chain as `delegate:<parent>`; answered with the
   * reply, its footer and the audit references of the turn.
   */
  async runDelegated(task: { from: string; text: string }): Promise<DelegatedOutcome> {
    const fail = (code: ErrorCode, message: string): DelegatedOutcome => ({ ok: false, error: { code, message } });
    const llm = this.o.llm;
    const manifest = this.o.manifest();
    if (!llm) return fail('config', `${this.o.device} has no LLM configured, so it cannot take a task`);
    if (!manifest) return fail('manifest_invalid', `the manifest of ${this.o.device} is missing or invalid`);
    if (this.stopping) return fail('unreachable', `${this.o.device} is restarting; ask again in a moment`);
    const room = await this.operatorDm();
    if (!room) return fail('unreachable', `${this.o.device} has no DM with an operator to work in (approvals and the record of the task go there)`);
    const run = (this.queues.get(room) ?? Promise.resolve()).then(() => this.delegatedIn(room, manifest, llm, task));
    const settled = run.then(() => undefined, () => undefined);
    this.queues.set(room, settled);
    return run.catch((err: unknown) => {
      const e = toMpError(err);
      return fail(e.code, e.message);
    });
  }

  private async delegatedIn(room: string, manifest: Manifest, llm: NonNullable<DeviceBotOptions['llm']>, task: { from: string; text: string }): Promise<DelegatedOutcome> {
    this.busyCount++;
    try {
      await this.chat.sendHtml(room, `↳ task from ${task.from}: ${task.text}`, `↳ task from <b>${escapeHtml(task.from)}</b>: ${escapeHtml(task.text)}`);
      const actor = `delegate:${task.from}`;
      // The parent is a workspace, not a person: its task runs with an operator's level on this manifest.
      const caller: Caller = { user: actor, level: 'operator' };
      const refs: DelegatedAuditRef[] = [];
      const expired = new Set<number>();
      const ask = this.approvals.hookFor(room);
      const invoke = async (capability: string, args: unknown): Promise<InvokeResult> => {
        const requestId = randomUUID();
        const r = await this.o.invoker.invoke({ device: this.o.device, capability, args, actor, caller, requestId, context: { delegated_by: task.from } }, ask);
        if (r.decision === 'rejected' && r.audit && this.approvals.stateOf(requestId) === 'expired') expired.add(r.audit.seq);
        if (r.audit && refs.length < MAX_DELEGATED_REFS) refs.push({ seq: r.audit.seq, hash: r.audit.hash, capability: r.capability, ok: r.ok });
        return r;
      };
      // A fresh turn (the task alone, not the DM's talk), kept in the DM's history so the operator can follow up on it.
      const turn = await this.turnAndReply(room, manifest, llm, caller, { history: [], userText: `Task from ${task.from}: ${task.text}`, invoke }, expired);
      if (turn.result.messages.length) this.conversations.append(room, turn.result.messages);
      if (turn.result.stoppedBy === 'error' && refs.length === 0) {
        return { ok: false, error: turn.result.error ?? { code: 'internal', message: turn.text } };
      }
      return { ok: true, answer: turn.text, footer: turn.footer.slice(0, 4000), audit: refs };
    } finally {
      this.busyCount--;
    }
  }

  /**
   * Records the audit head in the room, after comparing the anchor already there with the chain
   * (bots/room-anchor.ts): a rewritten chain is refused and said once, never anchored over the evidence.
   */
  anchorAuditHead(roomId: string, actions?: readonly TurnAction[]): Promise<void> {
    return this.anchors.anchor(roomId, actions?.map((a) => a.auditSeq).filter((seq): seq is number => seq !== null));
  }

  private async reply(roomId: string, text: string): Promise<void> {
    await this.chat.sendText(roomId, text);
  }

  /** Posts text where only operators will read it (this room, or the one the room guard moves to). */
  sendText(roomId: string, text: string): Promise<string> {
    return this.chat.sendText(roomId, text);
  }

  async sendReply(roomId: string, reply: ChatReply): Promise<void> {
    await this.chat.sendHtml(roomId, reply.plain, reply.html);
    if (reply.attachment) await this.chat.sendFile(roomId, reply.attachment.name, reply.attachment.bytes, reply.attachment.mimetype);
  }

  private auditStranger(sender: string, what: string, roomId: string): void {
    this.o.logger.info({ sender, what }, 'ignored: not an operator');
    this.o.audit.append({
      device: this.o.device, actor: sender.slice(0, 256), request_id: null, capability: what, args: { room: roomId },
      decision: 'denied', outcome: 'not_run', exit_code: null, output_sha256: null, duration_ms: null,
      error_code: 'policy_denied', reason: `${sender} is not an operator of ${this.o.device}`, context: null,
    });
  }

  // ---- commands (declared in device-commands.ts) ---------------------------------------------

  /** Runs a `!command` from the table; false when the message is none. */
  private runCommand(table: typeof DEVICE_COMMANDS, msg: ChatMessage): Promise<boolean> {
    // Senders may talk to this bot (onMessage turned the others away); the permission check is the declarations' own.
    const caller = { may: (p: Permission) => this.may(msg, p), reply: (t: string) => this.reply(msg.roomId, t) };
    return dispatchChat(table, msg.body.trim(), caller, this.commandContext(msg));
  }

  /** `operator`: operators and admins; `user`: anyone this device grants something. */
  private may(msg: ChatMessage, p: Permission): boolean {
    const level = this.callerOf(msg).level;
    return p === 'operator' ? isStaff(level) : mayTalk(this.o.manifest(), level);
  }

  private commandContext(msg: ChatMessage): DeviceCommandContext {
    return {
      help: (capability) => this.cmdHelp(msg, capability),
      status: () => this.cmdStatus(msg),
      cap: (capability, pairs) => this.cmdCap(msg, capability, pairs),
      audit: (n) => this.cmdAudit(msg, n),
      decide: (id, approve) => this.cmdDecide(msg, id, approve),
      reset: () => this.cmdReset(msg),
      budget: () => this.cmdBudget(msg),
      dashboard: () => this.cmdDashboard(msg),
    };
  }

  /** `!dashboard`: a one-time login link for the operator who asked (capabilities/dashboard-login.ts), in their DM with this bot. */
  private async cmdDashboard(msg: ChatMessage): Promise<void> {
    if (!this.o.dashboardUrl) return this.reply(msg.roomId, 'The launcher serves no web dashboard.');
    const url = loginUrl(this.o.dashboardUrl, new DashboardLogins(this.o.db).createLink(msg.sender));
    const text = `🔑 Your one-time dashboard login for ${msg.sender} (works once, for 5 minutes): ${url}`;
    const dm = await this.o.chat.findDm(msg.sender).catch(() => undefined);
    if (dm && dm !== msg.roomId) {
      await this.chat.sendText(dm, text);
      return this.reply(msg.roomId, 'I sent you a one-time dashboard link in our DM.');
    }
    await this.chat.sendText(msg.roomId, text);
  }

  private async cmdHelp(msg: ChatMessage, name: string | undefined): Promise<void> {
    if (name) {
      const def = this.o.invoker.registry.get(name);
      if (!def) return this.reply(msg.roomId, `Unknown capability ${name}.`);
      const allowed = this.capabilitiesFor(this.callerOf(msg)).some((d) => d.name === name);
      const lines = describeArgs(def);
      return this.chat.sendHtml(msg.roomId, `${def.name} (${def.risk})${allowed ? '' : ' — not enabled on this device'}\n${def.description}\n${lines.join('\n')}`,
        `<b>${escapeHtml(def.name)}</b> (${def.risk})${allowed ? '' : ' — <i>not enabled on this device</i>'}<br>${escapeHtml(def.description)}<pre><code>${escapeHtml(lines.join('\n') || 'no arguments')}</code></pre>`).then(() => undefined);
    }
    // Only what this caller may use: their commands and the capabilities granted to their level.
    const caps = this.capabilitiesFor(this.callerOf(msg)).map((d) => d.name);
    const cmdLines = chatHelpLines(DEVICE_COMMANDS.filter((c) => this.may(msg, c.permission) && (c.capability === undefined || caps.includes(c.capability))));
    const plain = `Commands:\n${cmdLines.join('\n')}\n\nCapabilities here: ${caps.join(', ') || 'none'}\nOr just ask in plain words${this.o.llm ? '' : ' (once an LLM is configured)'}.`;
    const html = `<b>Commands</b><br>${cmdLines.map((l) => escapeHtml(l)).join('<br>')}<br><br><b>Capabilities here</b>: ${escapeHtml(caps.join(', ') || 'none')}<br>Or just ask in plain words${this.o.llm ? '' : ' (once an LLM is configured)'}.`;
    await this.chat.sendHtml(msg.roomId, plain, html);
  }

  private async cmdStatus(msg: ChatMessage): Promise<void> {
    const info = await this.invoke(msg, 'sys.info', {}, msg.sender);
    const health = await this.invoke(msg, 'sys.health', {}, msg.sender);
    const parts = [info, health].map((r) => (r.ok ? (r.result?.stdout.trim() ?? '') : `${r.capability}: ${r.error?.message ?? 'failed'}`));
    const refs = [info, health].map(auditRef).filter(Boolean).join(' · ');
    const plain = `🖥 ${this.o.device}\n${parts.join('\n')}\n${refs}`;
    const html = `🖥 <b>${escapeHtml(this.o.device)}</b><pre><code>${escapeHtml(parts.join('\n'))}</code></pre><small>${escapeHtml(refs)}</small>`;
    await this.chat.sendHtml(msg.roomId, plain, html);
    await this.anchorAuditHead(msg.roomId);
  }

  private async cmdCap(msg: ChatMessage, name: string | undefined, pairs: readonly string[]): Promise<void> {
    if (!name) return this.reply(msg.roomId, 'Usage: !cap <capability> key=value … (see !help)');
    const def = this.o.invoker.registry.get(name);
    if (!def) return this.reply(msg.roomId, `Unknown capability ${name}. Send !help for the ones enabled here.`);
    const parsed = parseKeyValues(def, pairs);
    if (!parsed.ok) return this.reply(msg.roomId, parsed.message);
    const r = await this.invoke(msg, name, parsed.args, msg.sender);
    await this.sendReply(msg.roomId, formatResult(r));
    if (r.audit) await this.anchorAuditHead(msg.roomId);
  }

  private async cmdAudit(msg: ChatMessage, n: number): Promise<void> {
    const tail = (this.o.audit as unknown as { tail?: (n: number, d: string) => Array<{ seq: number; ts: string; actor: string; capability: string; decision: string; outcome: string; exit_code: number | null }> }).tail;
    if (!tail) return this.reply(msg.roomId, 'This audit log cannot be listed here.');
    const entries = tail.call(this.o.audit, n, this.o.device);
    const lines = entries.map((e) => `#${e.seq} ${e.ts.slice(5, 19).replace('T', ' ')} ${e.capability} ${e.decision}/${e.outcome}${e.exit_code !== null ? ` exit ${e.exit_code}` : ''} · ${e.actor}`);
    const text = lines.join('\n') || 'The audit log is empty.';
    await this.chat.sendHtml(msg.roomId, text, `<pre><code>${escapeHtml(text)}</code></pre>`);
  }

  private async cmdDecide(msg: ChatMessage, id: string | undefined, approve: boolean): Promise<void> {
    await this.reply(msg.roomId, this.approvals.onCommand(msg.roomId, msg.sender, approve, id || undefined));
  }

  private async cmdReset(msg: ChatMessage): Promise<void> {
    this.conversations.reset(msg.roomId);
    await this.reply(msg.roomId, 'Conversation history cleared.');
  }

  private async cmdBudget(msg: ChatMessage): Promise<void> {
    const u = this.conversations.usageToday();
    const limit = this.o.llm?.dailyTokenBudget;
    await this.reply(msg.roomId, `LLM tokens today (UTC ${u.day}): ${u.total}${limit ? ` of ${limit}` : ''} (${u.input} in, ${u.output} out, ${u.calls} calls).`);
  }

  /** Runs `fn` after the room's earlier after-reply work (see afterReply); its failure is logged, not thrown. */
  private later(roomId: string, fn: () => Promise<unknown>): void {
    const prev = this.afterReply.get(roomId) ?? Promise.resolve();
    const next = prev.then(fn).then(() => undefined, (err: unknown) => {
      this.o.logger.warn({ err: toMpError(err).message }, 'after-reply work failed');
    });
    this.afterReply.set(roomId, next);
    void next.then(() => {
      if (this.afterReply.get(roomId) === next) this.afterReply.delete(roomId);
    });
  }

  /** Graceful stop: new messages are turned away, the current turn finishes, pending approvals are rejected. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.approvals.rejectAll('shutdown');
    await Promise.allSettled([...this.queues.values()]);
    await Promise.allSettled([...this.afterReply.values()]);
  }
}
