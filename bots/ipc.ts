/**
 * The IPC protocol between the launcher's supervisor (launcher/supervisor.ts) and a device bot process
 * (bots/device-main.ts), declared once and imported by both sides:
 *
 *   parent → child  {type:'init', device, heartbeatMs}   right after fork
 *                   {type:'shutdown'}                   finish the current call, then exit
 *                   {type:'approval-ask', ask, …}       post an approval request (HTTP API call) in the DM
 *                   {type:'approval-decide', id, …}     decide a pending approval (dashboard)
 *                   {type:'delegate-run', id, from, task, timeoutMs}  a parent workspace's task for this bot
 *                   {type:'delegate-result', id, ok, answer?|error?}  the answer to this bot's delegate-request
 *   child → parent  {type:'ready'}                      connected, serving
 *                   {type:'heartbeat', busy, auditHead?} at least every heartbeatMs
 *                   {type:'fatal', code, message}       a configuration problem: not restarted until
 *                                                       reload (SIGHUP) or a manifest change
 *                   {type:'log', level, msg}            optional, goes to the launcher's log
 *                   {type:'approval-posted', ask, approvalId}  the request is in the DM
 *                   {type:'approval-verdict', ask, approved, by, reason?}  an operator (or the timeout) decided
 *                   {type:'delegate-request', id, to, task, timeoutMs}  workspace.delegate: relay a task to a child
 *                   {type:'delegate-done', id, ok, answer?|error?}      this bot's answer to a delegate-run
 *
 * Delegation (workspace.delegate): parent bot → delegate-request → launcher (re-checks the org tree,
 * launcher/delegation.ts) → delegate-run → child bot → delegate-done → launcher → delegate-result → parent.
 *
 * It lives in bots/ because bots/ may import only capabilities/ and bots/, while launcher/ may import
 * bots/. Every message is zod-validated and bounded both ways.
 */
import { z } from 'zod';
import { RiskSchema } from '../capabilities/capability.js';
import { MAX_DELEGATE_ANSWER, MAX_DELEGATE_TASK } from '../capabilities/catalog/workspace.js';
import { DeviceNameSchema } from '../capabilities/manifest.js';

/** The largest IPC message accepted from a child, as JSON text. */
export const MAX_IPC_MESSAGE_CHARS = 64 * 1024;

/**
 * Bounds of the heartbeat interval a bot is told. The bot's side was the stricter one (the launcher
 * allowed 10 ms … 1 h): under 100 ms a bot would do little but beat, and past 10 min a hung bot
 * goes unnoticed too long.
 */
export const HEARTBEAT_MS = { min: 100, max: 600_000 } as const;

/** The interval to ask of a bot whose silence for `timeoutMs` counts as hung: a quarter, within bounds. */
export function heartbeatIntervalFor(timeoutMs: number): number {
  return Math.min(HEARTBEAT_MS.max, Math.max(HEARTBEAT_MS.min, Math.floor(timeoutMs / 4)));
}

const cut = (max: number) => (t: string): string => (t.length > max ? `${t.slice(0, max)}…` : t);

/** A delegation's id: chosen by the parent bot for its request, by the launcher for the run it relays. */
export const DelegationIdSchema = z.string().regex(/^[A-Za-z0-9_-]{8,64}$/);
/** Bounds of a delegated task's time (the capability's timeout): 1 s … 1 h. */
export const DELEGATE_TIMEOUT_MS = { min: 1_000, max: 3_600_000 } as const;
const DelegateTimeoutSchema = z.number().int().min(DELEGATE_TIMEOUT_MS.min).max(DELEGATE_TIMEOUT_MS.max);
const DelegateTaskSchema = z.string().min(1).max(MAX_DELEGATE_TASK);
/** The child's audit entries for the delegated turn (bounded: a turn makes at most a few dozen calls). */
const DelegatedAuditSchema = z.array(z.object({
  seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  capability: z.string().min(1).max(64),
  ok: z.boolean(),
}).strict()).max(64);
/** A delegated turn's outcome, the same both ways (child → launcher, launcher → parent). */
const delegateOutcome = {
  id: DelegationIdSchema,
  ok: z.boolean(),
  workspace: DeviceNameSchema.optional(),
  answer: z.string().max(MAX_DELEGATE_ANSWER + 100).optional(),
  footer: z.string().max(4000).optional(),
  audit: DelegatedAuditSchema.optional(),
  error: z.object({ code: z.string().min(1).max(64), message: z.string().max(1000) }).strict().optional(),
};

export const ParentMessageSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('init'),
    device: DeviceNameSchema,
    /** Send a heartbeat at least this often (a quarter of the launcher's heartbeat timeout). */
    heartbeatMs: z.number().int().min(HEARTBEAT_MS.min).max(HEARTBEAT_MS.max),
  }).strict(),
  z.object({ type: z.literal('shutdown') }).strict(),
  // An approval for a call from another surface (the HTTP API): the bot posts it in its operators' DM
  // exactly as a chat request (bots/approvals.ts) and answers `approval-verdict` with the same `ask`.
  z.object({
    type: z.literal('approval-ask'),
    ask: z.string().regex(/^[A-Za-z0-9_-]{8,64}$/),
    requestId: z.string().min(1).max(128),
    capability: z.string().min(1).max(64),
    args: z.record(z.string(), z.unknown()),
    actor: z.string().min(1).max(256),
    risk: RiskSchema,
    reason: z.string().max(1000),
  }).strict(),
  // An operator decided a pending approval outside chat (the dashboard): as if they had typed !approve <id>.
  z.object({
    type: z.literal('approval-decide'),
    id: z.string().regex(/^[0-9a-f]{6}$/),
    approve: z.boolean(),
    by: z.string().min(1).max(256),
  }).strict(),
  // A parent workspace's task: run one LLM turn on it and answer delegate-done with the same id.
  z.object({ type: z.literal('delegate-run'), id: DelegationIdSchema, from: DeviceNameSchema, task: DelegateTaskSchema, timeoutMs: DelegateTimeoutSchema }).strict(),
  z.object({ type: z.literal('delegate-result'), ...delegateOutcome }).strict(),
]);
export type ParentMessage = z.infer<typeof ParentMessageSchema>;

// Child → parent objects strip unknown keys instead of rejecting them (the size is bounded first):
// a bot that adds a field must not have its heartbeats dropped and be killed as hung.
export const AuditHeadSchema = z.object({
  seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  hash: z.string().regex(/^[0-9a-f]{64}$/),
});
export type AuditHead = z.infer<typeof AuditHeadSchema>;

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;

export const ChildMessageSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('ready') }),
  z.object({ type: z.literal('heartbeat'), busy: z.boolean(), auditHead: AuditHeadSchema.optional() }),
  // Long texts are cut, not rejected: a fatal message must not be lost for being long.
  z.object({ type: z.literal('fatal'), code: z.string().min(1).max(64), message: z.string().max(MAX_IPC_MESSAGE_CHARS).transform(cut(2000)) }),
  z.object({ type: z.literal('log'), level: z.enum(LOG_LEVELS), msg: z.string().max(MAX_IPC_MESSAGE_CHARS).transform(cut(4000)) }),
  // The answer to `approval-ask`: `approvalId` is the chat approval's id ([a1b2c3] in the DM) once posted.
  z.object({ type: z.literal('approval-posted'), ask: z.string().max(64), approvalId: z.string().max(16) }),
  z.object({ type: z.literal('approval-verdict'), ask: z.string().max(64), approved: z.boolean(), by: z.string().max(256), reason: z.string().max(1000).transform(cut(1000)).optional() }),
  z.object({ type: z.literal('delegate-request'), id: DelegationIdSchema, to: DeviceNameSchema, task: DelegateTaskSchema, timeoutMs: DelegateTimeoutSchema }),
  z.object({
    type: z.literal('delegate-done'), ...delegateOutcome,
    answer: z.string().max(MAX_IPC_MESSAGE_CHARS).transform(cut(MAX_DELEGATE_ANSWER)).optional(),
  }),
]);
export type ChildMessage = z.infer<typeof ChildMessageSchema>;
/** What a bot may send (before the parent's transforms). */
export type ChildMessageInput = z.input<typeof ChildMessageSchema>;

/** Validates a message received from a child: size first, then shape. */
export function parseChildMessage(raw: unknown): { ok: true; msg: ChildMessage } | { ok: false; reason: string } {
  let size: number;
  try {
    size = JSON.stringify(raw)?.length ?? 0;
  } catch {
    return { ok: false, reason: 'not JSON' };
  }
  if (size > MAX_IPC_MESSAGE_CHARS) return { ok: false, reason: `message of ${size} characters (limit ${MAX_IPC_MESSAGE_CHARS})` };
  const parsed = ChildMessageSchema.safeParse(raw);
  if (!parsed.success) return { ok: false, reason: parsed.error.issues.map((i) => `${i.path.join('.') || 'message'}: ${i.message}`).join('; ').slice(0, 300) };
  return { ok: true, msg: parsed.data };
}
