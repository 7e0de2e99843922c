/**
 * Checks of a parsed template across its tree and against the devices: names unique, one home per
 * device, a role and a device for every workspace that spawns, the device known with a valid
 * manifest, and each workspace's capabilities a subset of what that manifest grants (a workspace can
 * never do more than its device). Skipped (`spawning: false`) workspaces are checked for names only:
 * nothing of theirs is created. Errors are `file:line path: message` like the parser's.
 */
import * as path from 'node:path';
import type { Manifest } from '../manifest.js';
import { builtinRegistry, type CapabilityRegistry } from '../registry.js';
import { vmHomeProblem, WORKSPACE_ONLY_CAPABILITIES } from './derive.js';
import type { OrgTemplate, TemplateIssue, TemplateWorkspace } from './schema.js';
import { parseTemplate, sortIssues, type TemplateLimits, type TemplateParse } from './template.js';

/** What validation needs of the devices: a DeviceRegistry fits (capabilities/device-registry.ts). */
export interface DeviceLookup {
  get(device: string): Manifest | undefined;
  names?(): string[];
  /** why a device's manifest is unusable (DeviceRegistry.problems) */
  problems?(device: string): string | undefined;
}

export interface ValidateOptions {
  devices: DeviceLookup;
  registry?: CapabilityRegistry;
}

export function validateTemplate(t: OrgTemplate, opts: ValidateOptions): TemplateIssue[] {
  const issues: TemplateIssue[] = [];
  const registry = opts.registry ?? builtinRegistry();
  const at = (ws: TemplateWorkspace, field: string, message: string, line: number | null = ws.source.line): void => {
    issues.push({ file: ws.source.file, line, field: ws.source.path ? `${ws.source.path}.${field}` : field, message });
  };
  const where = (ws: TemplateWorkspace): string => `${path.relative(t.root, ws.source.file)}:${ws.source.line ?? '?'}`;

  const byName = new Map<string, TemplateWorkspace>();
  const homes = new Map<string, TemplateWorkspace>();
  for (const ws of t.all) {
    const first = byName.get(ws.name);
    if (first) {
      at(ws, 'name', `"${ws.name}" is already a workspace at ${where(first)}; names are unique`);
      continue;
    }
    byName.set(ws.name, ws);
    const taken = opts.devices.get(ws.name);
    if (taken && !taken.workspace) {
      at(ws, 'name', `"${ws.name}" is the name of a device; a workspace needs a name of its own`);
      continue;
    }
    if (!ws.spawning) continue;
    if (!ws.role) at(ws, 'role', 'a workspace needs a role (its system prompt)');
    if (ws.device === undefined) {
      at(ws, 'device', 'no device: set device here or in defaults.device');
      continue;
    }
    const homeKey = `${ws.device}\0${ws.vm ?? ''}\0${ws.home}`;
    const sameHome = homes.get(homeKey);
    if (sameHome) at(ws, 'home', `${ws.home} ${ws.vm ? `in VM ${ws.vm} ` : ''}on ${ws.device} is already the home of ${sameHome.name} (${where(sameHome)})`);
    else homes.set(homeKey, ws);
    const manifest = opts.devices.get(ws.device);
    if (!manifest) {
      const problem = opts.devices.problems?.(ws.device);
      const known = opts.devices.names?.();
      at(ws, 'device', problem
        ? `device "${ws.device}" has an invalid manifest: ${problem.split('\n')[0]}`
        : `unknown device "${ws.device}"${known ? ` (known: ${known.join(', ') || 'none'})` : ''}`, ws.lines.device);
      continue;
    }
    if (ws.vm !== undefined) {
      const problem = vmHomeProblem(manifest, ws.home);
      if (problem) at(ws, 'vm', `VM ${ws.vm}: ${problem}`, ws.lines.vm);
    }
    ws.capabilities.forEach((cap, i) => {
      const field = ws.capabilitiesFrom === 'node' ? `capabilities[${i}]` : 'capabilities';
      const from = ws.capabilitiesFrom === 'defaults' ? ' (from defaults.capabilities)' : '';
      const line = ws.lines.capabilities[i] ?? ws.source.line;
      if (!registry.get(cap)) at(ws, field, `unknown capability ${cap}${from}`, line);
      else if (!manifest.capabilities[cap] && !WORKSPACE_ONLY_CAPABILITIES.includes(cap)) at(ws, field, `${cap}${from} is not allowed on ${ws.device}: its manifest does not grant it`, line);
    });
  }
  return sortIssues(issues);
}

/** Parse and validate: the template, or every issue of both steps. */
export function loadOrgTemplate(target: string, opts: ValidateOptions & { limits?: Partial<TemplateLimits> }): TemplateParse {
  const parsed = parseTemplate(target, opts.limits);
  if (!parsed.ok) return parsed;
  const issues = validateTemplate(parsed.template, opts);
  return issues.length > 0 ? { ok: false, issues } : parsed;
}
