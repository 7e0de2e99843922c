/**
 * A workspace's manifest, derived from its device's: the same os, transport, operators and limits;
 * only the capabilities the template grants, each with the device's options (approval, tiers, name
 * lists, binaries) and every path list narrowed to the workspace's home. A workspace can never do
 * more than its device allows: a capability the device does not grant, or a home outside the
 * device's paths_allowed for a path capability, is refused here, before anything is created.
 * The result is written to MESHPILOT_HOME/manifests/<workspace>.yaml, so the supervisor runs its bot
 * like a device bot's; `workspace:` in it names the host device, home, role, model, parent and the
 * template that created it. The output is parsed back with the manifest schema before it is returned.
 */
import picomatch from 'picomatch';
import { stringify } from 'yaml';
import type { MpError } from '../errors.js';
import { parseManifest, formatIssue, type CapabilityOptions, type Manifest, type WorkspaceSection } from '../manifest.js';
import { builtinRegistry, type CapabilityRegistry } from '../registry.js';

/** Capabilities a workspace may be granted whatever its device's manifest says: they do nothing on the device. */
export const WORKSPACE_ONLY_CAPABILITIES: readonly string[] = ['workspace.delegate'];

export interface WorkspaceSpec {
  name: string;
  home: string;
  role: string;
  model?: string | null | undefined;
  parent: string | null;
  /** the ownership label (template identity); null when created by hand */
  template: string | null;
  capabilities: readonly string[];
}

export type Derived = { ok: true; text: string; manifest: Manifest } | { ok: false; error: MpError };

/** `~/w/x` and `/srv/w/x` stay as written; a trailing slash goes. */
function homeOf(home: string): string {
  return home.length > 1 ? home.replace(/\/+$/, '') : home;
}

/** Whether the device's patterns cover everything under `home` (lexically, `~` as written on both sides). */
function covers(patterns: readonly string[] | undefined, home: string): boolean {
  if (!patterns?.length) return false;
  const probe = `${home}/.meshpilot-probe/x`;
  const isMatch = picomatch(patterns as string[], { dot: true });
  return isMatch(home) || isMatch(probe) || isMatch(`${home}/x`);
}

function narrowed(home: string): string[] {
  return [home, `${home}/**`];
}

export function deriveWorkspaceManifest(device: Manifest, spec: WorkspaceSpec, opts: { file?: string; registry?: CapabilityRegistry } = {}): Derived {
  const registry = opts.registry ?? builtinRegistry();
  const fail = (message: string): Derived => ({ ok: false, error: { code: 'policy_denied', message: `${spec.name}: ${message}` } });
  if (device.workspace) return fail(`"${device.device}" is itself a workspace; a workspace runs on a device`);
  const home = homeOf(spec.home);
  const caps: Record<string, CapabilityOptions> = {};
  for (const name of [...new Set(spec.capabilities)].sort()) {
    const def = registry.get(name);
    if (!def) return fail(`unknown capability ${name}`);
    const own = device.capabilities[name];
    if (!own) {
      if (WORKSPACE_ONLY_CAPABILITIES.includes(name)) {
        caps[name] = {};
        continue;
      }
      return fail(`${name} is not allowed on ${device.device}: its manifest does not grant it`);
    }
    const opt: CapabilityOptions = { ...own };
    const scope = def.scope;
    if (scope?.kind === 'paths') {
      if (!covers(own.paths_allowed, home)) {
        return fail(`${name} on ${device.device} allows only [${(own.paths_allowed ?? []).join(', ')}]; the home ${home} is outside it`);
      }
      opt.paths_allowed = narrowed(home);
    } else if (scope?.kind === 'binary' || scope?.kind === 'eval') {
      // The working directory narrows to the home when the device allows a cwd there; otherwise the
      // device allows none, and neither does the workspace.
      if (covers(own.paths_allowed, home)) opt.paths_allowed = narrowed(home);
      else delete opt.paths_allowed;
    }
    caps[name] = opt;
  }
  const workspace: WorkspaceSection = {
    host: device.device,
    home,
    role: spec.role,
    ...(spec.model ? { model: spec.model } : {}),
    parent: spec.parent,
    template: spec.template,
  };
  const body = {
    device: spec.name,
    os: device.os,
    transport: device.transport,
    operators: device.operators,
    description: `workspace ${spec.name} on ${device.device}`,
    limits: device.limits,
    capabilities: caps,
    workspace,
  };
  const text = `# Derived by meshpilot from ${device.device}.yaml for the workspace ${spec.name}; rewritten on each import.\n`
    + `# Edit the org template (or ${device.device}.yaml) and re-import instead of editing this file.\n`
    + stringify(body, { lineWidth: 0 });
  const file = opts.file ?? `${spec.name}.yaml`;
  const parsed = parseManifest(text, file, registry);
  if (!parsed.ok) return { ok: false, error: { code: 'internal', message: `${spec.name}: the derived manifest does not validate: ${parsed.issues.map(formatIssue).join('; ')}` } };
  return { ok: true, text, manifest: parsed.manifest };
}

/** True for a workspace's manifest (as opposed to a device's). */
export function isWorkspaceManifest(m: Pick<Manifest, 'workspace'>): boolean {
  return m.workspace !== undefined;
}
