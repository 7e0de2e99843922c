/**
 * The org tree as the device registry holds it: each workspace's manifest names its parent
 * (`workspace.parent`). A workspace may delegate only to its own descendants: the rule is written
 * here once, and applied by the Invoker's gate in the calling bot (OrgGate, a policy decision audited
 * as `denied`) and again by the launcher, which relays the task (launcher/delegation.ts).
 */
import type { CallGate, GateAdmission } from '../invoke.js';
import type { Manifest } from '../manifest.js';

export interface OrgSource {
  get(name: string): Pick<Manifest, 'workspace'> | undefined;
}

export type DelegationCheck = { ok: true; path: string[] } | { ok: false; reason: string };

/** More links than any template may hold (500 workspaces): a longer walk is a cycle or a broken tree. */
const MAX_DEPTH = 1000;

/**
 * Whether `from` may delegate to `to`: both workspaces, and `from` an ancestor of `to` through the
 * parent links. On success `path` runs from `to` up to `from`.
 */
export function checkDelegation(org: OrgSource, from: string, to: string): DelegationCheck {
  const deny = (reason: string): DelegationCheck => ({ ok: false, reason: `workspace.delegate from ${from} to ${to} denied: ${reason}` });
  const self = org.get(from);
  if (!self?.workspace) return deny(`${from} is not a workspace (only a workspace delegates, to its own descendants)`);
  if (to === from) return deny('a workspace cannot delegate to itself');
  const target = org.get(to);
  if (!target) return deny(`there is no workspace ${to}`);
  if (!target.workspace) return deny(`${to} is a device, not a workspace`);
  const path = [to];
  const seen = new Set(path);
  let cur = target.workspace.parent;
  while (cur !== null) {
    if (cur === from) return { ok: true, path: [...path, from] };
    if (seen.has(cur)) return deny(`the parent links of ${to} form a cycle (${[...path, cur].join(' → ')})`);
    if (path.length >= MAX_DEPTH) return deny(`the parent links of ${to} are more than ${MAX_DEPTH} deep`);
    path.push(cur);
    seen.add(cur);
    const m = org.get(cur);
    if (!m?.workspace) break; // a parent that is gone (or not a workspace) ends the line
    cur = m.workspace.parent;
  }
  return deny(`${to} is not a descendant of ${from} (its line: ${path.join(' → ')})`);
}

/** The direct children of a workspace, sorted by code point (the bot's prompt lists them; stable for the prompt cache). */
export function childrenOf(org: { list(): Array<{ device: string; manifest?: Pick<Manifest, 'workspace'> }> }, name: string): string[] {
  return org.list().filter((l) => l.manifest?.workspace?.parent === name).map((l) => l.device).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** The Invoker's gate for workspace.delegate: a target outside the caller's subtree is a policy denial. */
export class OrgGate implements CallGate {
  constructor(private readonly org: OrgSource) {}

  admit(call: Parameters<CallGate['admit']>[0]): GateAdmission {
    if (call.def.name !== 'workspace.delegate') return { ok: true, args: call.args };
    const to = call.args['to'];
    if (typeof to !== 'string') return { ok: false, code: 'invalid_args', message: 'workspace.delegate: to must be a workspace name' };
    const c = checkDelegation(this.org, call.device, to);
    return c.ok ? { ok: true, args: call.args } : { ok: false, code: 'policy_denied', message: c.reason };
  }
}
