/**
 * Trust levels: who a Matrix user is to meshpilot. `newbie` < `citizen` < `operator` < `admin`; a user
 * the config does not name is a stranger (null) and gets nothing. The level is resolved once per
 * request (resolveLevel) and travels with it as a Caller; policy, help, the LLM's tools and the VM
 * gate read it from there instead of re-reading the config.
 *
 * Config (capabilities/config.ts): `users:` maps Matrix IDs to a level, `operators:` are operators,
 * `admins:` are admins; a manifest's own `operators:` are operators of that device. The highest wins.
 * A manifest grants each capability to levels with `tiers:` (default: operator and admin only).
 */
import { z } from 'zod';

export const LEVELS = ['newbie', 'citizen', 'operator', 'admin'] as const;
export const LevelSchema = z.enum(LEVELS);
export type Level = z.infer<typeof LevelSchema>;

/** Who a capability is granted to when its manifest entry says no `tiers`. */
export const DEFAULT_TIERS: readonly Level[] = ['operator', 'admin'];

/** The person behind a request and their level, derived once where the request enters meshpilot. */
export interface Caller {
  /** A Matrix ID (`@ana:example.org`), or the surface's own principal (`cli:root`, `api:<token>`). */
  user: string;
  /** null: a stranger (nothing is granted to them). */
  level: Level | null;
}

/** Operators and admins see and act on everything (every VM, every approval). */
export function isStaff(level: Level | null | undefined): boolean {
  return level === 'operator' || level === 'admin';
}

export function rank(level: Level): number {
  return LEVELS.indexOf(level);
}

/** The parts of the config that name people (capabilities/config.ts). */
export interface LevelSource {
  users?: Readonly<Record<string, Level>>;
  operators: readonly string[];
  admins?: readonly string[];
}

/** Everyone the config makes an operator or an admin (the operator room's members, every bot's operators). */
export function staffIds(src: LevelSource): string[] {
  const listed = Object.entries(src.users ?? {}).filter(([, l]) => isStaff(l)).map(([u]) => u);
  return [...new Set([...src.operators, ...(src.admins ?? []), ...listed])];
}

/** The user's level on a device: the highest the config and the manifest's own operators give, or null (a stranger). */
export function resolveLevel(userId: string, src: LevelSource, manifest?: { operators: readonly string[] }): Level | null {
  let best: Level | null = null;
  const raise = (l: Level): void => {
    if (best === null || rank(l) > rank(best)) best = l;
  };
  const listed = src.users?.[userId];
  if (listed) raise(listed);
  if (src.operators.includes(userId) || manifest?.operators.includes(userId)) raise('operator');
  if (src.admins?.includes(userId)) raise('admin');
  return best;
}

/** A manifest entry as far as levels are concerned. */
export interface TieredOptions {
  tiers?: readonly Level[];
}

export function tiersOf(opts: TieredOptions | undefined): readonly Level[] {
  return opts?.tiers ?? DEFAULT_TIERS;
}

/** Whether a manifest entry (present: the capability is enabled) grants the capability to `level`. */
export function grants(opts: TieredOptions | undefined, level: Level | null): boolean {
  return opts !== undefined && level !== null && tiersOf(opts).includes(level);
}

/** The capabilities (of `defs`) a manifest grants to `level`. */
export function grantedTo<T extends { name: string }>(
  manifest: { capabilities: Readonly<Record<string, TieredOptions | undefined>> }, defs: readonly T[], level: Level | null,
): T[] {
  return defs.filter((d) => grants(manifest.capabilities[d.name], level));
}

/**
 * Whether a user of this level may talk to the device's bot at all: operators and admins always, others
 * only when the manifest grants their level at least one capability.
 */
export function mayTalk(manifest: { capabilities: Readonly<Record<string, TieredOptions | undefined>> } | undefined, level: Level | null): boolean {
  if (level === null) return false;
  if (isStaff(level)) return true;
  if (!manifest) return false;
  return Object.values(manifest.capabilities).some((o) => grants(o, level));
}
