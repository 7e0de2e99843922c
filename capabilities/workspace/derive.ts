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
  /** a VM of the device: the home is inside it and every call of the workspace runs there */
  vm?: string | null | undefined;
}

/**
 * Why a workspace cannot live in a VM of this device, or undefined when it can. Its calls run inside
 * the VM the way vm.exec's do (podman exec through the device's transport), so the device must grant
 * vm.exec; the device is reached over local or ssh (a mesh device's agent does not run a VM's calls
 * yet); and the home is a directory of its own, never the VM's / or ~ (rm --purge deletes it).
 */
export function vmHomeProblem(device: Manifest, home: string): string | undefined {
  if (!device.capabilities['vm.exec']) return `a workspace in a VM needs vm.exec on ${device.device} (its calls run inside the VM as vm.exec's do), and ${device.device}'s manifest does not grant it`;
  if (device.transport.kind !== 'local' && device.transport.kind !== 'ssh') return `a workspace in a VM needs its device reached over local or ssh; ${device.device} is reached over ${device.transport.kind}`;
  const h = homeOf(home);
  if (h === '/' || h === '~') return `the home ${home} would be the whole VM; give the workspace a directory of its own (e.g. ~/workspaces/<name>)`;
  return undefined;
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
  if (spec.vm) {
    const problem = vmHomeProblem(device, spec.home);
    if (problem) return fail(`VM ${spec.vm}: ${problem}`);
  }
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
    if (spec.vm) {
      // Inside the VM: the device's own path lists are about the device's file system, not the VM's.
      // Every path list is the home; a capability without one (sys.info) keeps the device's options.
      if (scope?.kind === 'paths' || scope?.kind === 'binary' || scope?.kind === 'eval') opt.paths_allowed = narrowed(home);
    } else if (scope?.kind === 'paths') {
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
    ...(spec.vm ? { vm: spec.vm } : {}),
    role: spec.role,
    ...(spec.model ? { model: spec.model } : {}),
    parent: spec.parent,
    template: spec.template,
  };
  const body = {
    device: spec.name,
    os: device.os,
    // in a VM: every call runs inside it, through the device's own transport (capabilities/transports/vm.ts)
    transport: spec.vm ? { kind: 'vm', vm: spec.vm, via: device.transport } : device.transport,
    operators: device.operators,
    description: `workspace ${spec.name} ${spec.vm ? `in VM ${spec.vm} ` : ''}on ${device.device}`,
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
