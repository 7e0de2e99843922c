/**
 * The helpers the capability families share: running a program with the context's limits, turning
 * what `run` throws into a failed result, and cutting text to the output limit.
 */
import { z } from 'zod';
import { failResult, fromExec, type CapabilityContext, type CapabilityResult } from '../capability.js';
import { toMpError, type ErrorCode } from '../errors.js';
import type { ExecOutcome, ExecRequest } from '../transports/types.js';

/** Runs argv on the device with the context's limits; `timeoutMs` may only shorten them. */
export function execOn(
  ctx: CapabilityContext,
  argv: string[],
  opts: Omit<Partial<ExecRequest>, 'argv' | 'maxOutputBytes'> = {},
): Promise<ExecOutcome> {
  const timeoutMs = Math.min(opts.timeoutMs ?? ctx.limits.timeoutMs, ctx.limits.timeoutMs);
  return ctx.host.exec({ ...opts, argv, timeoutMs, maxOutputBytes: ctx.limits.maxOutputBytes });
}

/**
 * Turns anything `run` throws (tool_missing from host.exec, an unreachable ssh host) into a failed
 * result whose message a person can read, rather than a stack trace.
 */
export async function guarded(run: () => Promise<CapabilityResult>): Promise<CapabilityResult> {
  const started = performance.now();
  try {
    return await run();
  } catch (err) {
    return failResult(toMpError(err, 'exec_failed'), Math.round(performance.now() - started));
  }
}

/** The stderr line most worth showing: the first error-looking one, else the first non-empty one. */
export function keyLine(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  const line = lines.find((l) => /^(e:|error|fatal|failed)/i.test(l)) ?? lines[0] ?? '';
  return line.slice(0, 300);
}

/** A failed process outcome, with our own code and message in place of the generic one. */
export function execFailure(outcome: ExecOutcome, code: ErrorCode, message: string): CapabilityResult {
  const base = fromExec(outcome);
  return { ...base, ok: false, error: { code, message } };
}

export const noNul = (s: string): boolean => !s.includes('\0');
/** A path argument: invoke() has already made it absolute and normalised. */
export const PathArg = z.string().min(1).max(4096).refine(noNul, 'must not contain NUL bytes');

/** Cuts text to at most `maxBytes` of UTF-8 without splitting a character. */
export function capText(text: string, maxBytes: number): { text: string; truncated: boolean } {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= maxBytes) return { text, truncated: false };
  let end = Math.max(0, maxBytes);
  // Back off continuation bytes (10xxxxxx) so the cut lands on a character boundary.
  while (end > 0 && ((buf[end] ?? 0) & 0xc0) === 0x80) end--;
  return { text: buf.subarray(0, end).toString('utf8'), truncated: true };
}

export function formatBytes(n: number): string {
  const units = ['B', 'K', 'M', 'G', 'T', 'P'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const digits = i === 0 || v >= 10 ? 0 : 1;
  return `${v.toFixed(digits)}${units[i]}`;
}
