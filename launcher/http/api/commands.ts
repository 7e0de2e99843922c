/**
 * The HTTP surface of the command declarations (capabilities/commands.ts), as program.ts is the CLI's:
 * every command in the table whose `surfaces` include `'http'` is `POST /v1/commands/<its words joined
 * by '/'>` (`workspace rm` → /v1/commands/workspace/rm). Nothing here names a command.
 *
 * Body: a JSON object validated by the command's own `args` schema, the one the CLI uses (an empty
 * body is `{}`). Values are taken as JSON and, where the field wants something else, coerced the way the
 * CLI and chat coerce words (capabilities/args.ts): `"5"` for a number, `5` for a string field (the vm
 * verbs' options are strings the capability's schema turns into numbers). A field the schema does not
 * have, or one that fails it, is 400 `{code: 'invalid_args', message}` naming the field.
 *
 * Scope: the token's capability globs must match the command's scope (`commandScope`): the capability
 * it runs when it runs one (`vm new` → vm.new, as POST /v1/exec would need), else its dotted name
 * (`workspace.rm`, `devices`, `audit.tail`). Its `device` argument, when it has one, must match the
 * token's device globs; commands that list or touch several devices or workspaces check each against
 * the same globs (CommandContext.allowsDevice). A refusal is 403 and a denied entry in the `_api` chain.
 * Permission: the declarations' `operator` and `user` both admit an API token (tokens are operators').
 *
 * Run: the handler gets an HTTP CommandContext: io.out / io.err collected (1 MiB together, then
 * `truncated`), no TTY and no `ask` (a command that would ask requires its `yes` field and says so),
 * the launcher's open runtime (never closed by a command), actor `api:<token name>`, and an approval
 * hook that refuses (a capability call the manifest wants approved goes through POST /v1/exec, whose
 * approval reaches the device's operators). Answer: `{ok, exit_code, stdout, stderr, truncated}`:
 * 200 when it ran (ok is exit_code === 0; exit 1 failed, 4 the capability failed), 400 for a usage
 * error (exit 2) and 403 when denied (exit 3), both with `{code, message}` on top (message: the
 * command's own one-line error, its `--flags` spelled as the body's fields).
 */
import { Hono } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { z } from 'zod';
import { coerceArg } from '../../../capabilities/args.js';
import { argInfos, isGroup, validateArgs } from '../../../capabilities/commands.js';
import type { ApprovalHook } from '../../../capabilities/invoke.js';
import { EXIT, UsageError, type CliCommand, type CliEntry, type CommandContext } from '../../commands/context.js';
import { httpError, HttpErrorSchema } from '../errors.js';
import { API_AUDIT_DEVICE } from '../tokens.js';
import type { HttpDeps } from '../types.js';
import type { ApiEnv } from './auth.js';

/** What a command may print over HTTP, stdout and stderr together; beyond it the text is cut and `truncated` set. */
export const MAX_COMMAND_OUTPUT = 1024 * 1024;
/** The largest JSON body a command takes (the server's own body limit may be lower). */
const MAX_BODY_CHARS = 256 * 1024;

export const CommandResultSchema = z.object({
  ok: z.boolean().describe('exit_code === 0'),
  /** The CLI's exit code: 0 ok, 1 failed, 2 usage, 3 denied, 4 the capability ran and failed. */
  exit_code: z.number().int(),
  /** What the CLI prints on stdout, the same text. */
  stdout: z.string(),
  stderr: z.string(),
  /** The output passed 1 MiB and was cut. */
  truncated: z.boolean(),
}).meta({ id: 'CommandResult' });

/** A usage error (exit 2, 400) or a denial (exit 3, 403): the error shape on top of the run's output. */
export const CommandRefusalSchema = CommandResultSchema.extend({ code: z.string().max(64), message: z.string().max(4000) }).meta({ id: 'CommandRefusal' });
/** 400/403 of a command route: refused before it ran (bad body, scopes: Error) or by the command (CommandRefusal). */
export const CommandErrorSchema = z.union([HttpErrorSchema, CommandRefusalSchema]).meta({ id: 'CommandError' });

/** `/commands/workspace/rm` (under /v1). */
export function commandPath(name: string): string {
  return `/commands/${name.split(' ').join('/')}`;
}

/** The name a token's capability globs must match to run it: its capability, else its dotted name. */
export function commandScope(def: CliCommand): string {
  return def.capability ?? def.name.split(' ').join('.');
}

/** The commands of a table that have the HTTP surface, in table order. */
export function httpCommands(entries: readonly CliEntry[]): CliCommand[] {
  return entries.filter((e): e is CliCommand => !isGroup(e) && e.surfaces.includes('http'));
}

function unwrap(s: z.ZodType): z.ZodType {
  let t: z.ZodType = s;
  while (t instanceof z.ZodOptional || t instanceof z.ZodDefault || t instanceof z.ZodNullable || t instanceof z.ZodPrefault) t = t.unwrap() as z.ZodType;
  return t;
}

/** A JSON value for a field: strings coerced as the CLI's words are, scalars given to a string field as their text. */
function fromJson(field: z.ZodType, v: unknown): unknown {
  const inner = unwrap(field);
  if (inner instanceof z.ZodString && (typeof v === 'number' || typeof v === 'boolean')) return String(v);
  if (inner instanceof z.ZodArray && Array.isArray(v)) return v.map((x) => fromJson(inner.element as z.ZodType, x));
  if (typeof v === 'string' && !(inner instanceof z.ZodString)) return coerceArg(field, v);
  return v;
}

/** The body's fields, as the command's schema reads them; an unknown field is the caller's mistake, named. */
export function commandArgs(def: CliCommand, body: Record<string, unknown>): { ok: true; args: Record<string, unknown> } | { ok: false; message: string } {
  const shape = def.args.shape as Record<string, z.ZodType>;
  const raw: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(body)) {
    const field = shape[k];
    if (!field) return { ok: false, message: `${k.slice(0, 64)}: not an argument of ${def.name} (its arguments: ${Object.keys(shape).join(', ') || 'none'})` };
    if (v !== null) raw[k] = fromJson(field, v);
  }
  const v = validateArgs(def, raw);
  if (v.ok) return { ok: true, args: v.args as Record<string, unknown> };
  const i = v.issue;
  if (i.missing) return { ok: false, message: `${i.arg}: required` };
  return { ok: false, message: `${i.arg || 'body'}: ${i.message || 'invalid'}`.slice(0, 500) };
}

/** The command's own message, its `--flags` spelled as the body's fields (`pass --yes` → `pass "yes": true`). */
function asBody(def: CliCommand, text: string): string {
  let out = text;
  for (const a of argInfos(def)) {
    if (a.positional) continue;
    const own = def.cli?.flags?.[a.name as never] as string | undefined;
    const long = (own?.split(/[ ,]+/).find((f) => f.startsWith('--'))) ?? `--${a.name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    const field = a.boolean ? `"${a.name}": true` : `"${a.name}"`;
    out = out.replace(new RegExp(`${long.replace(/[-]/g, '\\-')}(?![\\w-])`, 'g'), field);
  }
  return out;
}

/** io.out / io.err into one bounded buffer each (the bound shared). */
class Collected {
  out = '';
  err = '';
  truncated = false;
  private left = MAX_COMMAND_OUTPUT;
  add(which: 'out' | 'err', text: string): void {
    if (this.left <= 0) { this.truncated = this.truncated || text.length > 0; return; }
    const t = text.length > this.left ? text.slice(0, this.left) : text;
    if (t.length < text.length) this.truncated = true;
    this.left -= t.length;
    this[which] += t;
  }
}

export interface CommandRun {
  exitCode: number;
  stdout: string;
  stderr: string;
  truncated: boolean;
}

export interface HttpCaller {
  actor: string;
  allowsDevice(device: string): boolean;
}

/** An API call never approves itself: the manifest's approval is the device operators' (POST /v1/exec routes it to them). */
const refuseApproval: ApprovalHook = async (req) => ({
  approved: false, by: 'api',
  reason: `${req.capability} on ${req.device} needs an operator's approval: run it through POST /v1/exec, which asks the device's operators`,
});

/** Runs a declaration's handler as the HTTP surface does (also used by hand-written routes that alias one). */
export async function runCommand(def: CliCommand, args: Record<string, unknown>, deps: Pick<HttpDeps, 'runtime' | 'logger'>, caller: HttpCaller): Promise<CommandRun> {
  const buf = new Collected();
  let exitCode: number = EXIT.ok;
  const ctx: CommandContext = {
    io: { out: (t) => buf.add('out', t), err: (t) => buf.add('err', t), isTTY: false },
    // The launcher's runtime, open for the server's life: a command gets it as is and never closes it.
    runtime: async () => deps.runtime,
    setExit: (code) => { exitCode = code; },
    actor: caller.actor,
    allowsDevice: (d) => caller.allowsDevice(d),
    approve: refuseApproval,
  };
  try {
    await def.run(args, ctx);
  } catch (err) {
    // As runCli: a usage mistake is one line and exit 2; anything else one line and exit 1 (the stack goes to the log).
    const e = err as { code?: string; message?: string };
    buf.add('err', `error: ${e.message ?? String(err)}\n`);
    if (err instanceof UsageError || e.code === 'manifest_invalid' || e.code === 'config') exitCode = EXIT.usage;
    else {
      exitCode = EXIT.failed;
      deps.logger.warn({ err, command: def.name }, 'command failed');
    }
  }
  return { exitCode, stdout: buf.out, stderr: buf.err, truncated: buf.truncated };
}

/** The answer of a run: 200, or 400 (usage) / 403 (denied) with the command's own message. */
export function commandAnswer(def: CliCommand, r: CommandRun): { status: ContentfulStatusCode; body: Record<string, unknown> } {
  const body: Record<string, unknown> = { ok: r.exitCode === EXIT.ok, exit_code: r.exitCode, stdout: r.stdout, stderr: r.stderr, truncated: r.truncated };
  if (r.exitCode !== EXIT.usage && r.exitCode !== EXIT.denied) return { status: 200, body };
  const lines = `${r.stderr}\n${r.stdout}`.split('\n').map((l) => l.trim()).filter(Boolean);
  const last = (lines.find((l) => l.startsWith('error: ') || l.startsWith('✗')) ?? lines[0] ?? `${def.name} refused`).replace(/^(error: |✗ )/, '');
  const message = asBody(def, last).slice(0, 4000);
  return r.exitCode === EXIT.usage ? { status: 400, body: { code: 'usage', message, ...body } } : { status: 403, body: { code: 'forbidden', message, ...body } };
}

async function readBody(req: Request): Promise<{ ok: true; body: Record<string, unknown> } | { ok: false; message: string }> {
  const text = await req.text();
  if (text.length > MAX_BODY_CHARS) return { ok: false, message: `the body is over ${MAX_BODY_CHARS} characters` };
  if (text.trim() === '') return { ok: true, body: {} };
  let v: unknown;
  try { v = JSON.parse(text); } catch { return { ok: false, message: 'the body must be a JSON object of the command\'s arguments (Content-Type: application/json)' }; }
  if (!v || typeof v !== 'object' || Array.isArray(v)) return { ok: false, message: 'the body must be a JSON object of the command\'s arguments' };
  return { ok: true, body: v as Record<string, unknown> };
}

/** Mounts POST /commands/<words> for each HTTP command of the table (launcher/commands/http-table.ts by default). */
export function commandRoutes(deps: HttpDeps, entries: readonly CliEntry[]): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  for (const def of httpCommands(entries)) {
    const scope = commandScope(def);
    const hasDevice = 'device' in (def.args.shape as Record<string, unknown>);
    app.post(commandPath(def.name), async (c) => {
      const p = c.get('principal');
      const refuse = (message: string, args: Record<string, unknown>): Response => {
        deps.runtime.audit.append({
          device: API_AUDIT_DEVICE, actor: p.actor, request_id: c.get('requestId'), capability: 'api.command', args: { command: def.name, ...args },
          decision: 'denied', outcome: 'not_run', exit_code: null, output_sha256: null, duration_ms: null, error_code: 'forbidden', reason: message, context: null,
        });
        return httpError(c, 'forbidden', message);
      };
      if (!p.allowsCapability(scope)) return refuse(`token ${p.name} is not scoped for ${scope} (meshpilot ${def.name}; its capabilities ${p.capabilities.join(',')})`, {});
      const body = await readBody(c.req.raw);
      if (!body.ok) return httpError(c, 'invalid_args', body.message);
      const a = commandArgs(def, body.body);
      if (!a.ok) return httpError(c, 'invalid_args', a.message);
      const device = hasDevice ? a.args['device'] : undefined;
      if (typeof device === 'string' && !p.allowsDevice(device)) {
        return refuse(`token ${p.name} is not scoped for device ${device.slice(0, 64)} (devices ${p.devices.join(',')})`, { device: device.slice(0, 64) });
      }
      const r = await runCommand(def, a.args, deps, { actor: p.actor, allowsDevice: (d) => p.allowsDevice(d) });
      const ans = commandAnswer(def, r);
      return c.json(ans.body, ans.status);
    });
  }
  return app;
}

type Answer = { description: string; schema?: z.ZodType };
/** openapi.ts's Route (not imported: openapi.ts imports this file). */
interface Route {
  method: 'post';
  path: string;
  summary: string;
  body?: z.ZodType;
  bodyOptional?: true;
  responses: Record<number, Answer>;
}

/** The OpenAPI entries of the command routes, from the declarations (their summaries and args schemas). */
export function commandOpenApiRoutes(entries: readonly CliEntry[], E: (d: string) => Answer, common: Record<number, Answer>): Route[] {
  return httpCommands(entries).map((def) => {
    const required = argInfos(def).some((a) => a.required && !a.boolean);
    return {
      method: 'post', path: `/v1${commandPath(def.name)}`,
      summary: `${def.summary} (\`meshpilot ${def.name}\`; the token needs ${commandScope(def)}${'device' in (def.args.shape as Record<string, unknown>) ? ' and the device' : ''})`,
      body: def.args,
      ...(required ? {} : { bodyOptional: true as const }),
      responses: {
        200: { description: 'it ran: ok is exit_code === 0 (1 failed, 4 the capability failed); stdout and stderr are what the CLI prints', schema: CommandResultSchema },
        400: { description: 'a body the arguments schema refuses (Error, invalid_args, naming the field), or the command\'s usage error (CommandRefusal, exit 2)', schema: CommandErrorSchema },
        403: { description: 'outside the token\'s scopes (Error, audited in _api), or denied by policy or the device scope (CommandRefusal, exit 3)', schema: CommandErrorSchema },
        413: E('body too large'), ...common,
      },
    };
  });
}
