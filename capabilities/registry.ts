/**
 * The capability registry: every built-in capability, looked up by name.
 */
import type { AnyCapability } from './capability.js';
import { fsCapabilities } from './catalog/fs.js';
import { sysCapabilities } from './catalog/sys.js';
import { procCapabilities } from './catalog/proc.js';
import { shellCapabilities } from './catalog/shell.js';
import { gitCapabilities } from './catalog/git.js';
import { dockerCapabilities } from './catalog/docker.js';
import { svcCapabilities } from './catalog/svc.js';
import { pkgCapabilities } from './catalog/pkg.js';
import { vmCapabilities } from './catalog/vm.js';
import { vmShareCapabilities } from './catalog/vm-share.js';
import { workspaceCapabilities } from './catalog/workspace.js';

export const BUILTIN_CAPABILITIES: readonly AnyCapability[] = [
  ...sysCapabilities,
  ...fsCapabilities,
  ...procCapabilities,
  ...shellCapabilities,
  ...gitCapabilities,
  ...dockerCapabilities,
  ...svcCapabilities,
  ...pkgCapabilities,
  ...vmCapabilities,
  ...vmShareCapabilities,
  ...workspaceCapabilities,
];

export class CapabilityRegistry {
  private readonly byName = new Map<string, AnyCapability>();
  constructor(defs: readonly AnyCapability[] = BUILTIN_CAPABILITIES) {
    for (const def of defs) {
      if (this.byName.has(def.name)) throw new Error(`duplicate capability ${def.name}`);
      this.byName.set(def.name, def);
    }
  }
  get(name: string): AnyCapability | undefined {
    return this.byName.get(name);
  }
  names(): string[] {
    return [...this.byName.keys()].sort();
  }
  all(): AnyCapability[] {
    return this.names().map((n) => this.byName.get(n)!);
  }
}

let defaultRegistry: CapabilityRegistry | undefined;
export function builtinRegistry(): CapabilityRegistry {
  defaultRegistry ??= new CapabilityRegistry();
  return defaultRegistry;
}
