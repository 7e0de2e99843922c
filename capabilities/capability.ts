/**
 * A capability is declared once; from the declaration we derive argument validation, the LLM tool
 * schema, the `!cap`/CLI key=value parser, manifest option validation and the docs table.
 */
import { z } from 'zod';
import type { MpError } from './errors.js';
import type { ExecOutcome, Host } from './transports/types.js';

export const RiskSchema = z.enum(['read', 'write', 'exec', 'admin']);
export type Risk = z.infer<typeof RiskSchema>;

export const CapabilityResultSchema = z.object({
  ok: z.boolean(),
  exitCode: z.number().int().optional(),
  stdout: z.string(),
  stderr: z.string(),
  /** 'base64' when stdout holds bytes that are not valid UTF-8 (fs.read of a binary file). */
  encoding: z.enum(['utf8', 'base64']).optional(),
  truncated: z.boolean(),
  durationMs: z.number(),
  data: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type CapabilityResult = z.infer<typeof CapabilityResultSchema>;

/**
 * What in the arguments the manifest constrains:
 * - paths: each named argument (a string path, or absent) must be under paths_allowed and not under paths_denied;
 * - binary: argv[0] must be in `binaries`; `cwd` (if given) under paths_allowed; env keys in env_allowed;
 * - eval: the manifest must say `enabled: true`;
 * - names: each named argument must match a glob in the given option list (when the list is set;
 *   `required`: the manifest must set the list, as paths_allowed).
 */
export type CapabilityScope =
  | { kind: 'paths'; args: readonly string[] }
  | { kind: 'binary' }
  | { kind: 'eval' }
  | { kind: 'names'; option: 'containers' | 'services' | 'packages' | 'images'; args: readonly string[]; required?: true };

export interface Limits {
  timeoutMs: number;
  maxOutputBytes: number;
}

export interface CapabilityContext {
  host: Host;
  device: string;
  os: 'linux' | 'darwin' | 'windows';
  limits: Limits;
  /** Who asks (InvokeRequest.actor): vm.new labels the VM with it as its owner. */
  actor?: string;
  /** The request's id (InvokeRequest.requestId), for capabilities that hand work on (workspace.delegate). */
  requestId?: string;
  /**
   * Hands a task to another workspace's bot (workspace.delegate). Set only in a bot process the launcher
   * supervises (bots/delegation.ts relays it over IPC); absent elsewhere (CLI, API, agent).
   */
  delegate?: Delegator;
}

/** One audit reference of a delegated turn: an entry in the child workspace's own chain. */
export interface DelegatedAuditRef {
  seq: number;
  hash: string;
  capability: string;
  ok: boolean;
}

/** What a child workspace answered to a delegated task. */
export interface DelegatedAnswer {
  /** The child workspace that answered. */
  workspace: string;
  answer: string;
  /** The child's audit footer for that turn (`🧾 #12 fs.list ok`). */
  footer: string;
  /** The child's audit entries for that turn (its own chain), in order. */
  audit: DelegatedAuditRef[];
}

export type Delegator = (req: { to: string; task: string; timeoutMs: number; requestId: string }) =>
  Promise<{ ok: true; value: DelegatedAnswer } | { ok: false; error: MpError }>;

export interface CapabilityDefinition<S extends z.ZodType = z.ZodType> {
  /** `family.verb`, e.g. `fs.read`. */
  readonly name: string;
  /** Written for an LLM choosing a tool, and shown by `--help` and `!help`. */
  readonly description: string;
  readonly input: S;
  readonly risk: Risk;
  readonly scope?: CapabilityScope;
  /**
   * 'controller': never runs on a device, whatever its transport (mesh included): the Invoker runs it in
   * the calling process with a Host that refuses every device call. Such a capability has no path scope.
   */
  readonly runsOn?: 'controller';
  /** Its timeout when the manifest sets none for it (default: the manifest's limits.timeout_s). */
  readonly defaultTimeoutS?: number;
  run(args: z.infer<S>, ctx: CapabilityContext): Promise<CapabilityResult>;
}

/** Identity helper that keeps `args` typed from the schema inside `run`. */
export function defineCapability<S extends z.ZodType>(def: CapabilityDefinition<S>): CapabilityDefinition<S> {
  return def;
}

/** The erased form the registry stores; `run` receives arguments that already passed `input`. */
export type AnyCapability = CapabilityDefinition<z.ZodType>;

export function familyOf(name: string): string {
  return name.split('.')[0] ?? name;
}

// ---- result helpers -------------------------------------------------------------------------

export function okResult(partial: Partial<CapabilityResult> & { durationMs: number }): CapabilityResult {
  return { ok: true, stdout: '', stderr: '', truncated: false, ...partial };
}

export function failResult(error: MpError, durationMs = 0, partial: Partial<CapabilityResult> = {}): CapabilityResult {
  return { ok: false, stdout: '', stderr: '', truncated: false, ...partial, durationMs, error };
}

/** Converts a process outcome into a result: ok means exit code 0 and no timeout. */
export function fromExec(outcome: ExecOutcome, data?: unknown): CapabilityResult {
  const result: CapabilityResult = {
    ok: outcome.exitCode === 0 && !outcome.timedOut,
    stdout: outcome.stdout.toString('utf8'),
    stderr: outcome.stderr.toString('utf8'),
    truncated: outcome.truncated,
    durationMs: outcome.durationMs,
  };
  if (outcome.exitCode !== null) result.exitCode = outcome.exitCode;
  if (data !== undefined) result.data = data;
  if (outcome.timedOut) {
    result.error = { code: 'timeout', message: `timed out after ${Math.round(outcome.durationMs / 1000)} s and was killed` };
  } else if (outcome.exitCode !== 0) {
    const firstLine = result.stderr.trim().split('\n')[0] ?? '';
    result.error = {
      code: 'exec_failed',
      message: outcome.signal
        ? `killed by ${outcome.signal}`
        : `exited with code ${outcome.exitCode}${firstLine ? `: ${firstLine.slice(0, 200)}` : ''}`,
    };
  }
  return result;
}

/** Bytes as text when they are valid UTF-8, else base64 (binary-safe transport over JSON). */
export function encodeBytes(buf: Buffer): { text: string; encoding: 'utf8' | 'base64' } {
  const text = buf.toString('utf8');
  if (Buffer.from(text, 'utf8').equals(buf)) return { text, encoding: 'utf8' };
  return { text: buf.toString('base64'), encoding: 'base64' };
}

/** JSON Schema for an LLM tool definition, derived from the zod input schema. */
export function toJsonSchema(def: AnyCapability): Record<string, unknown> {
  const schema = z.toJSONSchema(def.input, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  delete schema['$schema'];
  return schema;
}
