/**
 * A bot's half of workspace.delegate over IPC (bots/ipc.ts):
 * - as the parent, the Invoker's `delegate` service: a delegate-request to the launcher, resolved by its
 *   delegate-result (the child's answer and audit references, or why not), bounded in time;
 * - as the child, a delegate-run from the launcher becomes one turn of the bot (DeviceBot.runDelegated)
 *   and its outcome goes back as delegate-done.
 * The launcher (launcher/delegation.ts) checks the org tree again and routes between the two.
 */
import { randomBytes } from 'node:crypto';
import type { DelegatedAuditRef, Delegator } from '../capabilities/capability.js';
import { MAX_DELEGATE_ANSWER } from '../capabilities/catalog/workspace.js';
import type { ErrorCode, MpError } from '../capabilities/errors.js';
import type { Logger } from 'pino';
import { DELEGATE_TIMEOUT_MS, type ChildMessageInput, type ParentMessage } from './ipc.js';

/** What a delegated task came to in the child (DeviceBot.runDelegated), sent back as delegate-done. */
export type DelegatedOutcome =
  | { ok: true; answer: string; footer: string; audit: DelegatedAuditRef[] }
  | { ok: false; error: MpError };

type Result = Extract<ParentMessage, { type: 'delegate-result' }>;
type Run = Extract<ParentMessage, { type: 'delegate-run' }>;
type Answer = Awaited<ReturnType<Delegator>>;

/** Past the task's own time, how long the parent waits for the launcher's answer (it answers timeouts itself). */
const GRACE_MS = 5_000;

export class DelegationClient {
  private readonly pending = new Map<string, { to: string; resolve: (a: Answer) => void; timer: NodeJS.Timeout }>();

  /** `send`: hands a message to the launcher (false: it could not); undefined when no launcher runs this bot. */
  constructor(private readonly send: ((msg: ChildMessageInput) => boolean) | undefined) {}

  /** The Invoker's `delegate` service. */
  readonly delegate: Delegator = (req) => {
    const send = this.send;
    if (!send) {
      return Promise.resolve({ ok: false, error: { code: 'config', message: `workspace.delegate needs the launcher to reach ${req.to}: this bot was not started by \`meshpilot up\`` } });
    }
    const timeoutMs = Math.min(DELEGATE_TIMEOUT_MS.max, Math.max(DELEGATE_TIMEOUT_MS.min, Math.round(req.timeoutMs)));
    const id = randomBytes(12).toString('base64url');
    return new Promise<Answer>((resolve) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) resolve({ ok: false, error: { code: 'timeout', message: `${req.to} did not answer within ${Math.round(timeoutMs / 1000)} s` } });
      }, timeoutMs + GRACE_MS);
      this.pending.set(id, { to: req.to, resolve, timer });
      if (!send({ type: 'delegate-request', id, to: req.to, task: req.task, timeoutMs })) {
        clearTimeout(timer);
        this.pending.delete(id);
        resolve({ ok: false, error: { code: 'unreachable', message: 'the launcher cannot be reached to hand the task over' } });
      }
    });
  };

  /** The launcher's answer to one of our requests. */
  onResult(msg: Result): void {
    const p = this.pending.get(msg.id);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(msg.id);
    if (!msg.ok) {
      // The code comes from the launcher (a bounded string); anything it names is one of ours.
      const code = (msg.error?.code ?? 'internal') as ErrorCode;
      p.resolve({ ok: false, error: { code, message: msg.error?.message ?? `${p.to} could not take the task` } });
      return;
    }
    p.resolve({ ok: true, value: { workspace: msg.workspace ?? p.to, answer: msg.answer ?? '', footer: msg.footer ?? '', audit: msg.audit ?? [] } });
  }

  /** The bot is stopping: waiting callers learn it now rather than at their timeout. */
  close(): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.resolve({ ok: false, error: { code: 'unreachable', message: 'this bot is stopping; the delegated task was abandoned' } });
    }
  }
}

/** As the child: run the launcher's delegate-run and answer it with delegate-done. */
export async function serveDelegatedRun(
  run: Run,
  bot: { runDelegated(task: { from: string; text: string }): Promise<DelegatedOutcome> },
  send: (msg: ChildMessageInput) => void,
  log: Logger,
): Promise<void> {
  let out: DelegatedOutcome;
  try {
    out = await bot.runDelegated({ from: run.from, text: run.task });
  } catch (err) {
    out = { ok: false, error: { code: 'internal', message: err instanceof Error ? err.message.slice(0, 500) : 'the delegated turn failed' } };
  }
  log.info({ from: run.from, ok: out.ok }, 'delegated task answered');
  // Cut here too: a message over the IPC limit would be dropped whole, and the parent would wait for its timeout.
  const answer = out.ok && out.answer.length > MAX_DELEGATE_ANSWER ? `${out.answer.slice(0, MAX_DELEGATE_ANSWER - 64)}\n[answer cut at ${MAX_DELEGATE_ANSWER - 64} characters]` : out.ok ? out.answer : '';
  if (out.ok) send({ type: 'delegate-done', id: run.id, ok: true, answer, footer: out.footer.slice(0, 4000), audit: out.audit.slice(0, 64) });
  else send({ type: 'delegate-done', id: run.id, ok: false, error: { code: out.error.code, message: out.error.message.slice(0, 1000) } });
}
