/**
 * Matrix failures as MeshpilotError: what an error from the SDK or a raw homeserver answer says
 * (errInfo), and the ONE mapping of HTTP status / errcode to a meshpilot error code (matrixErrorCode).
 * Every Matrix call in the project, SDK or raw, goes through this mapping; an endpoint that knows better
 * (a wrong password on /login is bad credentials, not a missing permission) says so where it is called.
 */
import { MeshpilotError, toMpError, type ErrorCode } from '../../capabilities/errors.js';

/** What the SDK's MatrixError (and http.ts's HomeserverError) carry. */
interface MatrixErrorLike {
  statusCode?: number;
  errcode?: string;
  body?: { errcode?: string; error?: string; retry_after_ms?: number };
  retryAfterMs?: number;
}

export interface MatrixErrorInfo {
  status?: number;
  errcode?: string;
  error?: string;
  retryAfterMs?: number;
  /** A Node-style error code (ECONNREFUSED, ETIMEDOUT…) of a request that never got an answer. */
  code?: string;
  /** One line for a person: `M_FORBIDDEN: …`, `HTTP 502`, or the network error. */
  message: string;
}

export function errInfo(err: unknown): MatrixErrorInfo {
  if (err && typeof err === 'object') {
    const e = err as MatrixErrorLike & { code?: unknown; message?: unknown };
    const status = typeof e.statusCode === 'number' ? e.statusCode : undefined;
    const errcode = e.errcode ?? e.body?.errcode;
    const error = e.body?.error;
    const retryAfterMs = e.retryAfterMs ?? e.body?.retry_after_ms;
    const code = typeof e.code === 'string' ? e.code : undefined;
    const message =
      errcode !== undefined
        ? `${errcode}${error ? `: ${error}` : ''}`
        : status !== undefined
          ? `HTTP ${status}`
          : typeof e.message === 'string'
            ? e.message
            : 'unknown error';
    const out: MatrixErrorInfo = { message };
    if (status !== undefined) out.status = status;
    if (errcode !== undefined) out.errcode = errcode;
    if (error !== undefined) out.error = error;
    if (typeof retryAfterMs === 'number') out.retryAfterMs = retryAfterMs;
    if (code !== undefined) out.code = code;
    return out;
  }
  return { message: String(err) };
}

/** True for the errcodes that mean the access token is gone (logged out, deactivated, never valid). */
export function isUnknownToken(i: Pick<MatrixErrorInfo, 'errcode'>): boolean {
  return i.errcode === 'M_UNKNOWN_TOKEN' || i.errcode === 'M_MISSING_TOKEN';
}

/**
 * The one mapping of a homeserver's answer to a meshpilot error code. undefined: no answer at all
 * (the caller maps the network error).
 */
export function matrixErrorCode(status: number | undefined, errcode: string | undefined): ErrorCode | undefined {
  if (isUnknownToken({ errcode }) || status === 401) return 'auth';
  if (errcode === 'M_FORBIDDEN' || status === 403) return 'permission';
  if (errcode === 'M_NOT_FOUND' || status === 404) return 'not_found';
  if (errcode === 'M_LIMIT_EXCEEDED' || status === 429) return 'unreachable';
  if (status !== undefined && status >= 500) return 'unreachable';
  if (status === undefined && errcode === undefined) return undefined;
  return 'exec_failed';
}

/** Any error of a Matrix call as a MeshpilotError: "Matrix <what> failed: <errcode>: <error>". */
export function toMeshpilot(err: unknown, what: string): MeshpilotError {
  if (err instanceof MeshpilotError) return err;
  const i = errInfo(err);
  const code = matrixErrorCode(i.status, i.errcode) ?? toMpError(err, 'unreachable').code;
  return new MeshpilotError(code, `Matrix ${what} failed: ${i.message}`);
}
