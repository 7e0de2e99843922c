/**
 * The one error shape of every HTTP answer: `{code, message}` (capabilities/errors.ts), with the HTTP
 * status that goes with the code. Never a stack trace: those go to the log.
 */
import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { z } from 'zod';
import type { ErrorCode } from '../../capabilities/errors.js';

/** The capability layer's codes plus the ones only HTTP has. */
export type HttpErrorCode = ErrorCode | 'rate_limited' | 'too_large' | 'forbidden' | 'method_not_allowed' | 'conflict';

export const HttpErrorSchema = z.object({
  code: z.string().max(64),
  message: z.string().max(4000),
}).meta({ id: 'Error' });
export type HttpError = { code: HttpErrorCode; message: string };

const STATUS: Partial<Record<HttpErrorCode, ContentfulStatusCode>> = {
  usage: 400, invalid_args: 400, config: 400,
  auth: 401,
  forbidden: 403, policy_denied: 403, permission: 403, approval_rejected: 403, quota: 403,
  not_found: 404, unknown_device: 404, unknown_capability: 404,
  method_not_allowed: 405, conflict: 409,
  too_large: 413, rate_limited: 429,
  unreachable: 502, timeout: 504,
};

export function statusOf(code: HttpErrorCode): ContentfulStatusCode {
  return STATUS[code] ?? 500;
}

export function httpError(c: Context, code: HttpErrorCode, message: string, status: ContentfulStatusCode = statusOf(code)): Response {
  return c.json({ code, message } satisfies HttpError, status);
}
