/**
 * pkg: list, install and upgrade OS packages with whichever manager the device has
 * (apt, dnf, pacman, apk, brew), always non-interactively.
 */
import { z } from 'zod';
import { defineCapability, failResult, fromExec, okResult, type AnyCapability, type CapabilityContext, type CapabilityResult } from '../capability.js';
import { MeshpilotError } from '../errors.js';
import type { ExecOutcome, Host } from '../transports/types.js';
import { execFailure, execOn, guarded, keyLine } from './shared.js';

export type PackageManager = 'apt' | 'dnf' | 'pacman' | 'apk' | 'brew';

/** Detection order, and the harmless command whose presence proves each manager is installed. */
const PROBES: readonly [PackageManager, string[]][] = [
  ['apt', ['apt-get', '--version']],
  ['dnf', ['dnf', '--version']],
  ['pacman', ['pacman', '--version']],
  ['apk', ['apk', '--version']],
  ['brew', ['brew', '--version']],
];

// Per Host object, so an ssh host and the local one never share an answer. Only hits are cached:
// a device without a manager may get one installed later.
const detected = new WeakMap<Host, Promise<PackageManager | null>>();

async function probe(ctx: CapabilityContext): Promise<PackageManager | null> {
  for (const [pm, argv] of PROBES) {
    try {
      await execOn(ctx, argv, { timeoutMs: 15_000 });
      return pm; // It ran (whatever its exit code), so it is there.
    } catch (err) {
      if (err instanceof MeshpilotError && err.code === 'tool_missing') continue;
      throw err; // Unreachable device, permission problem: not an answer about the manager.
    }
  }
  return null;
}

export async function detectPackageManager(ctx: CapabilityContext): Promise<PackageManager | null> {
  let pending = detected.get(ctx.host);
  if (!pending) {
    pending = probe(ctx);
    detected.set(ctx.host, pending);
  }
  try {
    const pm = await pending;
    if (pm === null) detected.delete(ctx.host);
    return pm;
  } catch (err) {
    detected.delete(ctx.host);
    throw err;
  }
}

function noManager(ctx: CapabilityContext): CapabilityResult {
  return failResult({ code: 'tool_missing', message: `no supported package manager (apt, dnf, pacman, apk, brew) found on ${ctx.device}` });
}

const APT_ENV = { DEBIAN_FRONTEND: 'noninteractive' };

function pkgFailure(outcome: ExecOutcome, ctx: CapabilityContext, what: string): CapabilityResult {
  if (outcome.timedOut) return fromExec(outcome);
  const err = outcome.stderr.toString('utf8');
  if (/are you root|Permission denied|must be run as root|you cannot perform this operation unless you are root|Operation not permitted/i.test(err))
    return execFailure(outcome, 'permission', `${what} needs root on ${ctx.device}: ${keyLine(err)}`);
  if (/Unable to locate package|No match for argument|target not found|no such package|No available formula/i.test(err))
    return execFailure(outcome, 'not_found', `${what}: ${keyLine(err)}`);
  const line = keyLine(err) || keyLine(outcome.stdout.toString('utf8'));
  return execFailure(outcome, 'exec_failed', `${what} failed${line ? `: ${line}` : ` with exit code ${outcome.exitCode}`}`);
}

// ---- list ---------------------------------------------------------------------------------------

interface Pkg {
  name: string;
  version: string;
}

const LIST_ARGV: Record<PackageManager, string[]> = {
  apt: ['dpkg-query', '-W', '-f=${Package}\t${Version}\t${db:Status-Abbrev}\n'],
  dnf: ['rpm', '-qa', '--qf', '%{NAME}\t%{VERSION}-%{RELEASE}\n'],
  pacman: ['pacman', '-Q'],
  apk: ['apk', 'info', '-v'],
  brew: ['brew', 'list', '--versions'],
};

function parseList(pm: PackageManager, text: string): Pkg[] {
  const pkgs: Pkg[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    if (pm === 'apt') {
      const [name = '', version = '', status = ''] = line.split('\t');
      // Second letter of the abbreviated status is the current state: 'i' installed ('c' = config files only).
      if (status[1] === 'i') pkgs.push({ name, version });
    } else if (pm === 'dnf') {
      const [name = '', version = ''] = line.split('\t');
      pkgs.push({ name, version });
    } else if (pm === 'apk') {
      const m = /^(.+)-([^-]+-r\d+)$/.exec(line.trim());
      pkgs.push(m ? { name: m[1] ?? '', version: m[2] ?? '' } : { name: line.trim(), version: '' });
    } else {
      const [name = '', ...versions] = line.trim().split(/\s+/);
      pkgs.push({ name, version: versions.join(' ') });
    }
  }
  return pkgs;
}

const pkgList = defineCapability({
  name: 'pkg.list',
  description: 'Lists installed OS packages with their versions, optionally only those whose name contains a filter.',
  input: z
    .object({ filter: z.string().max(128).optional().describe('Case-insensitive substring of the package name, e.g. "python".') })
    .strict(),
  risk: 'read',
  run: (args, ctx) =>
    guarded(async () => {
      const pm = await detectPackageManager(ctx);
      if (!pm) return noManager(ctx);
      const out = await execOn(ctx, LIST_ARGV[pm]);
      if (out.exitCode !== 0 || out.timedOut) return pkgFailure(out, ctx, 'listing packages');
      const needle = args.filter?.toLowerCase();
      const pkgs = parseList(pm, out.stdout.toString('utf8')).filter((p) => !needle || p.name.toLowerCase().includes(needle));
      const text = pkgs.length
        ? `${pkgs.length} package(s) (${pm})\n${pkgs.map((p) => `${p.name} ${p.version}`).join('\n')}`
        : `no installed packages${needle ? ` matching "${args.filter}"` : ''} (${pm})`;
      return okResult({ durationMs: out.durationMs, truncated: out.truncated, exitCode: 0, stdout: text, data: { manager: pm, packages: pkgs } });
    }),
});

// ---- install / upgrade ----------------------------------------------------------------------------

const PACKAGE = /^[a-zA-Z0-9][a-zA-Z0-9+._:@=/-]{0,127}$/;
const packageName = z
  .string()
  .max(128)
  .regex(PACKAGE, 'package names are letters, digits and + . _ : @ = / - (not starting with -)');

interface Step {
  argv: string[];
  env?: Record<string, string>;
}

// apk and brew get no `--`: not every version of them accepts it, and the name regex already
// rules out anything that could be read as an option.
function installSteps(pm: PackageManager, pkgs: string[]): Step[] {
  switch (pm) {
    case 'apt': return [{ argv: ['apt-get', 'install', '-y', '--', ...pkgs], env: APT_ENV }];
    case 'dnf': return [{ argv: ['dnf', 'install', '-y', '--', ...pkgs] }];
    case 'pacman': return [{ argv: ['pacman', '-S', '--noconfirm', '--needed', '--', ...pkgs] }];
    case 'apk': return [{ argv: ['apk', 'add', ...pkgs] }];
    case 'brew': return [{ argv: ['brew', 'install', ...pkgs] }];
  }
}

function upgradeSteps(pm: PackageManager, pkgs: string[]): Step[] {
  const all = pkgs.length === 0;
  switch (pm) {
    case 'apt': return [
      // Upgrading against stale package lists would find nothing to do.
      { argv: ['apt-get', 'update'], env: APT_ENV },
      all
        ? { argv: ['apt-get', 'upgrade', '-y'], env: APT_ENV }
        : { argv: ['apt-get', 'install', '--only-upgrade', '-y', '--', ...pkgs], env: APT_ENV },
    ];
    case 'dnf': return [{ argv: all ? ['dnf', 'upgrade', '-y'] : ['dnf', 'upgrade', '-y', '--', ...pkgs] }];
    case 'pacman': return [{ argv: all ? ['pacman', '-Syu', '--noconfirm'] : ['pacman', '-S', '--noconfirm', '--', ...pkgs] }];
    case 'apk': return [{ argv: all ? ['apk', 'upgrade'] : ['apk', 'add', '--upgrade', ...pkgs] }];
    case 'brew': return [{ argv: ['brew', 'upgrade', ...pkgs] }];
  }
}

/** Runs the steps in order, stopping at the first failure; stdout/stderr are the last step's. */
async function runSteps(ctx: CapabilityContext, steps: Step[], what: string, data: unknown): Promise<CapabilityResult> {
  let total = 0;
  let last: ExecOutcome | undefined;
  for (const step of steps) {
    last = await execOn(ctx, step.argv, step.env ? { env: step.env } : {});
    total += last.durationMs;
    if (last.exitCode !== 0 || last.timedOut) return { ...pkgFailure(last, ctx, what), durationMs: total };
  }
  const result = last ? fromExec(last, data) : okResult({ durationMs: 0, data });
  return { ...result, durationMs: total };
}

const packagesScope = { kind: 'names', option: 'packages', args: ['packages'] } as const;

const pkgInstall = defineCapability({
  name: 'pkg.install',
  description: 'Installs OS packages with the device\'s package manager (apt, dnf, pacman, apk or brew), non-interactively, and returns its output.',
  input: z
    .object({
      packages: z.array(packageName).min(1).max(50).describe('Package names, e.g. ["htop","curl"]; apt accepts name=version.'),
    })
    .strict(),
  risk: 'admin',
  scope: packagesScope,
  run: (args, ctx) =>
    guarded(async () => {
      const pm = await detectPackageManager(ctx);
      if (!pm) return noManager(ctx);
      return runSteps(ctx, installSteps(pm, args.packages), `installing ${args.packages.join(' ')}`, { manager: pm, packages: args.packages });
    }),
});

const pkgUpgrade = defineCapability({
  name: 'pkg.upgrade',
  description: 'Upgrades the given OS packages, or every package when none are given, non-interactively, and returns the package manager\'s output.',
  input: z
    .object({
      packages: z.array(packageName).max(50).default([]).describe('Packages to upgrade; empty or omitted upgrades everything.'),
    })
    .strict(),
  risk: 'admin',
  scope: packagesScope,
  run: (args, ctx) =>
    guarded(async () => {
      const pm = await detectPackageManager(ctx);
      if (!pm) return noManager(ctx);
      const what = args.packages.length ? `upgrading ${args.packages.join(' ')}` : 'upgrading all packages';
      return runSteps(ctx, upgradeSteps(pm, args.packages), what, { manager: pm, packages: args.packages });
    }),
});

export const pkgCapabilities: AnyCapability[] = [pkgList, pkgInstall, pkgUpgrade];
