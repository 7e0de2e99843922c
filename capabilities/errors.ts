/**
 * Errors are values: a machine-readable `code` and a `message` written for the person reading it
 * (on a phone, in a terminal). Stack traces belong in the log, never in `message`.
 */
export type ErrorCode =
  | 'usage'              // bad input from a person or a program (arguments, flags)
  | 'invalid_args'       // capability arguments failed their schema
  | 'unknown_device'
  | 'unknown_capability'
  | 'manifest_invalid'
  | 'policy_denied'      // the manifest does not allow this call
  | 'approval_rejected'  // a human (or the lack of one) said no
  | 'quota'              // a trust level's quota would be exceeded (capabilities/vm/quota.ts)
  | 'tool_missing'       // the binary a capability needs is not installed on the device
  | 'timeout'
  | 'output_limit'
  | 'not_found'
  | 'permission'
  | 'unreachable'        // the device (or its agent / ssh server) cannot be reached
  | 'host_key'           // ssh host key unknown or changed
  | 'auth'
  | 'exec_failed'        // the capability ran and failed
  | 'audit_broken'
  | 'config'
  | 'internal';

export interface MpError {
  readonly code: ErrorCode;
  readonly message: string;
}

/** Thrown form of an MpError, for code paths where throwing is simpler than threading a Result. */
export class MeshpilotError extends Error implements MpError {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'MeshpilotError';
  }
  toJSON(): MpError {
    return { code: this.code, message: this.message };
  }
}

export function mpError(code: ErrorCode, message: string): MeshpilotError {
  return new MeshpilotError(code, message);
}

/** Turns anything thrown into an MpError without leaking a stack trace into the message. */
export function toMpError(err: unknown, fallback: ErrorCode = 'internal'): MpError {
  if (err instanceof MeshpilotError) return { code: err.code, message: err.message };
  if (err && typeof err === 'object' && 'code' in err && 'message' in err) {
    const e = err as { code: unknown; message: unknown };
    const sysCode = typeof e.code === 'string' ? e.code : '';
    const message = String(e.message);
    if (sysCode === 'ENOENT') return { code: 'not_found', message };
    if (sysCode === 'EACCES' || sysCode === 'EPERM') return { code: 'permission', message };
    if (sysCode === 'ETIMEDOUT') return { code: 'timeout', message };
    if (sysCode === 'ECONNREFUSED' || sysCode === 'EHOSTUNREACH' || sysCode === 'ENETUNREACH')
      return { code: 'unreachable', message };
    return { code: fallback, message };
  }
  return { code: fallback, message: err instanceof Error ? err.message : String(err) };
}
