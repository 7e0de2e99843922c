/**
 * workspace.*: capabilities of a workspace (issue 18), declared once.
 *
 * workspace.delegate hands a task to a child workspace: the child's bot runs one LLM turn on it, its
 * calls checked against its own manifest and audited on its own chain (actor `delegate:<parent>`),
 * and its answer comes back here with the child's audit references. It never runs on a device
 * (runsOn: 'controller'): the calling bot relays it through the launcher (bots/delegation.ts,
 * launcher/delegation.ts). Only a descendant may be asked: the Invoker's org gate
 * (capabilities/workspace/org.ts) denies anything else before it runs, and the launcher checks again.
 */
import { z } from 'zod';
import { defineCapability, failResult, okResult, type AnyCapability, type DelegatedAnswer } from '../capability.js';
import { DeviceNameSchema } from '../names.js';

export const MAX_DELEGATE_TASK = 4000;
/** Longest answer relayed back to the parent (characters); the rest is cut with a note. */
export const MAX_DELEGATE_ANSWER = 16_000;

export const DelegateArgsSchema = z.object({
  to: DeviceNameSchema.describe('the child workspace to hand the task to (one of your descendants)'),
  task: z.string().trim().min(1).max(MAX_DELEGATE_TASK).describe('what the child should do, in plain words'),
}).strict();

/** The answer as the parent's model and operator read it: the child's words, then its audit references. */
export function delegatedText(a: DelegatedAnswer): string {
  const refs = a.audit.length
    ? a.audit.map((r) => `${a.workspace} #${r.seq} ${r.capability} ${r.ok ? 'ok' : 'failed'} (${r.hash.slice(0, 12)})`).join(' · ')
    : `${a.workspace}: no action taken`;
  return `${a.answer}\n\n🧾 ${refs}`;
}

export const workspaceDelegate = defineCapability({
  name: 'workspace.delegate',
  description: 'Hand a task to one of your child workspaces (its own agent on its own home) and get its answer, with the audit references of what it did.',
  input: DelegateArgsSchema,
  // The hand-over changes nothing itself: what the child does is checked, approved and audited on its side.
  risk: 'read',
  runsOn: 'controller',
  defaultTimeoutS: 300,
  async run(args, ctx) {
    const t0 = performance.now();
    const ms = (): number => Math.round(performance.now() - t0);
    if (!ctx.delegate) {
      return failResult({ code: 'config', message: `workspace.delegate runs only in a workspace's bot under the launcher (\`meshpilot up\`); ${ctx.device} has no way to reach ${args.to} from here` }, ms());
    }
    const r = await ctx.delegate({ to: args.to, task: args.task, timeoutMs: ctx.limits.timeoutMs, requestId: ctx.requestId ?? '' });
    if (!r.ok) return failResult(r.error, ms());
    const text = delegatedText(r.value);
    return okResult({ durationMs: ms(), stdout: text, data: r.value });
  },
});

export const workspaceCapabilities: AnyCapability[] = [workspaceDelegate];
