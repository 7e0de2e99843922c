/**
 * The single decision function: given a device manifest, a capability and its validated arguments,
 * allow, deny (with a reason a person understands) or ask a human first. Nothing else decides.
 *
 * Paths are expanded (~), normalised (.., duplicate slashes, and on Windows case and \ vs /),
 * then resolved on the device (symlinks) and both forms must be allowed and not denied.
 */
import * as path from 'node:path';
import picomatch from 'picomatch';
import type { AnyCapability, Risk } from './capability.js';
import { defaultApproval, type Approval, type CapabilityOptions, type DeviceOs, type Manifest } from './manifest.js';
import { grants, tiersOf, type Level } from './levels.js';

export type PolicyDecision =
  | { kind: 'allow'; args: Record<string, unknown>; approval: false; risk: Risk }
  | { kind: 'approval'; args: Record<string, unknown>; approval: true; risk: Risk; reason: string }
  | { kind: 'deny'; reason: string };

/** How the policy sees the device's filesystem. */
export interface PathResolver {
  os: DeviceOs;
  home: string;
  /** Resolves symlinks on the device; returns null when the path does not exist. */
  realpath(p: string): Promise<string | null>;
}

/** Environment variables a caller may never set, whatever env_allowed says. */
const FORBIDDEN_ENV = /^(PATH|LD_.*|DYLD_.*|NODE_OPTIONS|BASH_ENV|ENV|IFS|PS4|SHELLOPTS|GIT_.*|PYTHON.*|PERL5.*|RUBY.*)$/;

// ---- paths ----------------------------------------------------------------------------------

export type NormalisedPath = { ok: true; path: string } | { ok: false; reason: string };

const WIN_RESERVED = /^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$/i;

/** Lexical normalisation; no filesystem access. Windows paths come out as `c:/users/x` (lowercase). */
export function normalisePath(input: string, os: DeviceOs, home: string): NormalisedPath {
  if (input.includes('\0')) return { ok: false, reason: 'contains a NUL byte' };
  if (os === 'windows') return normaliseWindows(input, home);
  let p = input;
  if (p === '~') p = home;
  else if (p.startsWith('~/')) p = home.replace(/\/+$/, '') + p.slice(1);
  if (!p.startsWith('/')) return { ok: false, reason: 'must be an absolute path or ~/…' };
  p = path.posix.normalize(p);
  if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  return { ok: true, path: p };
}

function normaliseWindows(input: string, home: string): NormalisedPath {
  let p = input.replace(/\\/g, '/');
  if (p.startsWith('//')) return { ok: false, reason: 'UNC and device paths (\\\\server\\share, \\\\?\\, \\\\.\\) are not allowed' };
  if (p === '~') p = home.replace(/\\/g, '/');
  else if (p.startsWith('~/')) p = home.replace(/\\/g, '/').replace(/\/+$/, '') + p.slice(1);
  if (!/^[A-Za-z]:\//.test(p)) return { ok: false, reason: 'must be an absolute path like C:\\… or ~/…' };
  const rest = p.slice(2);
  if (rest.includes(':')) return { ok: false, reason: 'alternate data streams (name:stream) are not allowed' };
  const parts = path.posix.normalize(rest).split('/');
  for (const part of parts) {
    if (!part) continue;
    // Windows strips trailing dots and spaces, so `secret.txt.` would open `secret.txt`.
    if (/[. ]$/.test(part) && part !== '.' && part !== '..') return { ok: false, reason: `path component "${part}" ends with a dot or space` };
    if (WIN_RESERVED.test(part)) return { ok: false, reason: `"${part}" is a reserved device name` };
    if (/~\d/.test(part)) return { ok: false, reason: `"${part}" looks like an 8.3 short name` };
  }
  let out = (p.slice(0, 2) + path.posix.normalize(rest)).toLowerCase();
  if (out.length > 3 && out.endsWith('/')) out = out.slice(0, -1);
  return { ok: true, path: out };
}

function expandPattern(pattern: string, os: DeviceOs, home: string): string {
  let p = pattern;
  if (os === 'windows') {
    p = p.replace(/\\/g, '/');
    const h = home.replace(/\\/g, '/').replace(/\/+$/, '');
    if (p === '~') p = h;
    else if (p.startsWith('~/')) p = h + p.slice(1);
    return p.toLowerCase();
  }
  const h = home.replace(/\/+$/, '');
  if (p === '~') return h;
  if (p.startsWith('~/')) return h + p.slice(1);
  return p;
}

function matcher(patterns: readonly string[], os: DeviceOs, home: string): (p: string) => boolean {
  if (patterns.length === 0) return () => false;
  return picomatch(patterns.map((x) => expandPattern(x, os, home)), { dot: true, nocase: os === 'windows' });
}

function listText(patterns: readonly string[] | undefined): string {
  return `[${(patterns ?? []).join(', ')}]`;
}

/** Resolves symlinks as far as the path exists; a not-yet-existing tail is appended lexically. */
async function resolveOnDevice(p: string, resolver: PathResolver): Promise<string> {
  const sep = '/';
  let head = p;
  const tail: string[] = [];
  for (;;) {
    const real = await resolver.realpath(head);
    if (real !== null) {
      const base = resolver.os === 'windows' ? real.replace(/\\/g, '/').toLowerCase() : real;
      return tail.length ? path.posix.join(base, ...tail.reverse()) : base;
    }
    const parent = path.posix.dirname(head);
    if (parent === head) return p;
    tail.push(path.posix.basename(head));
    head = parent;
    if (head.endsWith(':')) head += sep;
  }
}

type PathCheck = { ok: true; path: string } | { ok: false; reason: string };

export async function checkPath(
  capability: string, raw: string, opts: CapabilityOptions, resolver: PathResolver,
): Promise<PathCheck> {
  const norm = normalisePath(raw, resolver.os, resolver.home);
  if (!norm.ok) return { ok: false, reason: `${capability} ${raw} denied: ${norm.reason}` };
  const allowed = matcher(opts.paths_allowed ?? [], resolver.os, resolver.home);
  const denied = matcher(opts.paths_denied ?? [], resolver.os, resolver.home);
  const real = await resolveOnDevice(norm.path, resolver);
  if (denied(norm.path) || denied(real)) {
    return { ok: false, reason: `${capability} ${raw} denied: matches paths_denied ${listText(opts.paths_denied)}` };
  }
  if (!allowed(norm.path)) {
    return { ok: false, reason: `${capability} ${raw} denied: not under paths_allowed ${listText(opts.paths_allowed)}` };
  }
  if (!allowed(real)) {
    return { ok: false, reason: `${capability} ${raw} denied: resolves to ${real}, not under paths_allowed ${listText(opts.paths_allowed)}` };
  }
  return { ok: true, path: norm.path };
}

// ---- the decision ---------------------------------------------------------------------------

/**
 * The approval rule, the one place it is written (the LLM's system prompt shows it too):
 * 'always' asks for every call, 'risky' for anything that is not a read, 'never' never.
 * Without a setting in the manifest the risk class decides (defaultApproval).
 */
export function needsApproval(risk: Risk | undefined, configured: Approval | undefined): boolean {
  const approval = configured ?? (risk ? defaultApproval(risk) : undefined);
  return approval === 'always' || (approval === 'risky' && risk !== 'read');
}

/** Effective per-call risk: the declared class of the capability. */
function riskOf(def: AnyCapability): Risk {
  return def.risk;
}

/**
 * Every check that needs nothing from the device: the capability is enabled and granted to the
 * caller's level (its `tiers`), argv[0] is a listed binary, env keys are allowed, names match their
 * globs. invoke() runs this before it contacts the device, so an unreachable device still records a
 * denial as a denial. Null: nothing denies (yet). `level`: the caller's trust level (capabilities/levels.ts).
 */
export function precheck(manifest: Manifest, def: AnyCapability, args: Record<string, unknown>, level: Level | null = 'operator'): { kind: 'deny'; reason: string } | null {
  const opts = manifest.capabilities[def.name];
  if (!opts) {
    return { kind: 'deny', reason: `${def.name} is not enabled on ${manifest.device} (not listed in its manifest)` };
  }
  if (!grants(opts, level)) {
    return { kind: 'deny', reason: `${def.name} is not granted to ${level === null ? 'strangers' : `${level}s`} on ${manifest.device} (tiers ${listText([...tiersOf(opts)])})` };
  }
  const scope = def.scope;

  if (scope?.kind === 'binary') {
    const argv = args['argv'];
    const bin = Array.isArray(argv) && typeof argv[0] === 'string' ? argv[0] : undefined;
    if (!bin) return { kind: 'deny', reason: `${def.name}: argv[0] is missing` };
    if (!(opts.binaries ?? []).includes(bin)) {
      return { kind: 'deny', reason: `${def.name} ${bin} denied: not in binaries ${listText(opts.binaries)}` };
    }
    const env = args['env'];
    if (env && typeof env === 'object') {
      for (const key of Object.keys(env)) {
        if (FORBIDDEN_ENV.test(key)) return { kind: 'deny', reason: `${def.name}: setting ${key} is never allowed` };
        if (!(opts.env_allowed ?? []).includes(key)) {
          return { kind: 'deny', reason: `${def.name}: env ${key} denied: not in env_allowed ${listText(opts.env_allowed)}` };
        }
      }
    }
  }

  if (scope?.kind === 'binary' || scope?.kind === 'eval') {
    const cwd = args['cwd'];
    if (cwd !== undefined) {
      if (typeof cwd !== 'string') return { kind: 'deny', reason: `${def.name}: cwd must be a path` };
      if (!opts.paths_allowed?.length) return { kind: 'deny', reason: `${def.name}: cwd denied: the manifest sets no paths_allowed for it` };
    }
  }

  if (scope?.kind === 'paths') {
    for (const key of scope.args) {
      const value = args[key];
      if (value !== undefined && typeof value !== 'string') return { kind: 'deny', reason: `${def.name}: ${key} must be a path` };
    }
  }

  if (scope?.kind === 'names') {
    const globs = opts[scope.option];
    if (globs !== undefined) {
      const isMatch = picomatch(globs, { dot: true });
      for (const key of scope.args) {
        const value = args[key];
        const values = Array.isArray(value) ? value : value === undefined ? [] : [value];
        for (const v of values) {
          if (typeof v !== 'string' || !isMatch(v)) {
            return { kind: 'deny', reason: `${def.name} ${String(v)} denied: not in ${scope.option} ${listText(globs)}` };
          }
        }
      }
    }
  }
  return null;
}

/** precheck, then the path checks (they need the device: its home for ~ and its realpath), then approval. */
export async function decide(
  manifest: Manifest, def: AnyCapability, args: Record<string, unknown>, resolver: PathResolver, level: Level | null = 'operator',
): Promise<PolicyDecision> {
  const denied = precheck(manifest, def, args, level);
  if (denied) return denied;
  const opts = manifest.capabilities[def.name]!; // precheck denies a capability the manifest does not list
  const out: Record<string, unknown> = { ...args };
  const scope = def.scope;

  const pathArgs = scope?.kind === 'paths' ? scope.args : scope?.kind === 'binary' || scope?.kind === 'eval' ? ['cwd'] : [];
  for (const key of pathArgs) {
    const value = args[key];
    if (typeof value !== 'string') continue; // absent (precheck denied any other type)
    const r = await checkPath(def.name, value, opts, resolver);
    if (!r.ok) return { kind: 'deny', reason: r.reason };
    out[key] = r.path;
  }

  const risk = riskOf(def);
  const approval = opts.approval ?? defaultApproval(risk);
  if (needsApproval(risk, approval)) {
    return { kind: 'approval', args: out, approval: true, risk, reason: `${def.name} is ${risk} and the manifest asks for approval (${approval})` };
  }
  return { kind: 'allow', args: out, approval: false, risk };
}
