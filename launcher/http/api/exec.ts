/**
 * POST /v1/exec and GET /v1/approvals/<id>.
 *
 * Scopes first (the token's device and capability globs; a refusal is 403 and a denied entry in the
 * `_api` audit chain), then `Invoker.invoke` with actor `api:<token name>`. The answer is the call's
 * outcome with its audit {seq, hash}: 200 when it ran (ok or not), else the status of its error
 * (400 invalid_args, 403 policy_denied / approval_rejected, 404 unknown device or capability).
 * A call that needs approval answers 202 with an approval (unless it was decided within `wait` s).
 */
import { Hono } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { InvokeResult } from '../../../capabilities/invoke.js';
import type { Runtime } from '../../runtime-core.js';
import { httpError, statusOf, type HttpErrorCode } from '../errors.js';
import { API_AUDIT_DEVICE } from '../tokens.js';
import type { ApiApproval, ApiApprovals } from './approvals.js';
import type { ApiEnv } from './auth.js';
import { jsonBody, query } from './body.js';
import { ApprovalQuerySchema, ExecRequestSchema } from './schemas.js';

export function toExecResult(r: InvokeResult): Record<string, unknown> {
  return {
    ok: r.ok, device: r.device, capability: r.capability, decision: r.decision,
    ...(r.result ? { result: r.result } : {}),
    ...(r.error ? { error: { code: r.error.code, message: r.error.message } } : {}),
    audit: r.audit,
    ...(r.deviceAudit ? { device_audit: r.deviceAudit } : {}),
  };
}

/** 200 for a call that ran; a refused one carries the error shape ({code, message}) on top. */
function answer(r: InvokeResult): { body: Record<string, unknown>; status: ContentfulStatusCode } {
  const status = statusFor(r);
  return { status, body: status === 200 ? toExecResult(r) : { code: r.error?.code ?? 'internal', message: r.error?.message ?? 'refused', ...toExecResult(r) } };
}

function statusFor(r: InvokeResult): ContentfulStatusCode {
  if (r.decision === 'allowed' || r.decision === 'approved') return 200;
  return statusOf((r.error?.code ?? 'internal') as HttpErrorCode);
}

export function approvalView(a: ApiApproval): Record<string, unknown> {
  return {
    id: a.id, state: a.state, device: a.device, capability: a.capability, actor: a.actor,
    created_at: new Date(a.createdAt).toISOString(), chat_id: a.chatId, decided_by: a.decidedBy,
    result: a.result ? answer(a.result).body : null,
  };
}

const sleep = (ms: number): Promise<'timeout'> => new Promise((r) => setTimeout(() => r('timeout'), ms).unref());

export function execRoutes(rt: Runtime, approvals: ApiApprovals): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();

  app.post('/exec', async (c) => {
    const body = await jsonBody(c, ExecRequestSchema);
    if (!body.ok) return body.res;
    const { device, capability, args, wait } = body.data;
    const p = c.get('principal');
    if (!p.allowsDevice(device) || !p.allowsCapability(capability)) {
      const what = !p.allowsDevice(device) ? `device ${device}` : `capability ${capability}`;
      const message = `token ${p.name} is not scoped for ${what} (devices ${p.devices.join(',')}; capabilities ${p.capabilities.join(',')})`;
      rt.audit.append({
        device: API_AUDIT_DEVICE, actor: p.actor, request_id: c.get('requestId'), capability: 'api.exec', args: { device, capability },
        decision: 'denied', outcome: 'not_run', exit_code: null, output_sha256: null, duration_ms: null, error_code: 'forbidden', reason: message, context: null,
      });
      return httpError(c, 'forbidden', message);
    }
    const { approval, hook, asked } = approvals.open(p.name, device, capability, p.actor);
    const run = rt.invoker.invoke({ device, capability, args, actor: p.actor, requestId: c.get('requestId'), context: { surface: 'http', token: p.prefix } }, hook)
      .then((r) => { approvals.finish(approval, r); return r; });
    const first = await Promise.race([run, asked.then(() => 'asked' as const)]);
    if (first !== 'asked') {
      const a = answer(first);
      return c.json(a.body, a.status);
    }
    if (wait > 0 && (await Promise.race([approval.done, sleep(wait * 1000)])) !== 'timeout') {
      const a = answer(approval.result!);
      return c.json(a.body, a.status);
    }
    return c.json({ approval: approvalView(approval), poll: `/v1/approvals/${approval.id}` }, 202);
  });

  app.get('/approvals/:id', async (c) => {
    const q = query(c, ApprovalQuerySchema);
    if (!q.ok) return q.res;
    const a = approvals.get(c.req.param('id'));
    // Only the token that made the call sees it.
    if (!a || a.token !== c.get('principal').name) return httpError(c, 'not_found', 'no such approval (approvals are kept for an hour)');
    if (q.data.wait > 0 && a.result === null) await Promise.race([a.done, sleep(q.data.wait * 1000)]);
    return c.json(approvalView(a), 200);
  });

  return app;
}

