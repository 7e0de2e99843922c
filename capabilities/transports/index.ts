/**
 * Which transport serves a device, from its manifest. Only invoke() (and the device agent) use this:
 * a test fails if any other module imports a transport.
 */
import type { CapabilityResult } from '../capability.js';
import { MeshpilotError } from '../errors.js';
import type { Manifest, TransportConfig } from '../manifest.js';
import type { PathResolver } from '../policy.js';
import { LocalHost } from './local.js';
import type { Host } from './types.js';

/** A device whose capabilities run elsewhere (the mesh agent), which enforces and audits them again. */
export interface RemoteRunner {
  run(req: { capability: string; args: Record<string, unknown>; actor: string; requestId: string; approvedBy?: string }): Promise<{
    result: CapabilityResult;
    /** The agent's own audit entry for this call, when it wrote one. */
    deviceAudit?: { seq: number; hash: string };
  }>;
  /** Lexical view of the device (the agent resolves symlinks itself). */
  resolver(): Promise<PathResolver>;
  close?(): Promise<void>;
}

export type Endpoint = { kind: 'host'; host: Host } | { kind: 'remote'; remote: RemoteRunner };

export interface TransportProvider {
  endpointFor(manifest: Manifest): Endpoint;
  closeAll(): Promise<void>;
}

type Factory = (manifest: Manifest) => Endpoint;
const extraFactories = new Map<string, Factory>();

/** Transport modules (ssh, mesh, vm) register here when loaded, keeping this module free of their deps. */
export function registerTransport(kind: 'ssh' | 'mesh' | 'vm', factory: Factory): void {
  extraFactories.set(kind, factory);
}

/** Whether the module of this transport kind has been loaded (`local` always is). */
export function transportLoaded(kind: TransportConfig['kind']): boolean {
  return kind === 'local' || extraFactories.has(kind);
}

/**
 * The endpoint for `transport` serving `manifest`'s device: its own transport, or another one for the
 * same device (a VM's `via`: the vm transport runs its podman commands through it).
 */
export function endpointForTransport(manifest: Manifest, transport: TransportConfig = manifest.transport): Endpoint {
  if (transport.kind === 'local') return { kind: 'host', host: new LocalHost(manifest.device) };
  const factory = extraFactories.get(transport.kind);
  if (!factory) throw new MeshpilotError('config', `the ${transport.kind} transport is not available in this build`);
  return factory(transport === manifest.transport ? manifest : { ...manifest, transport });
}

export class DefaultTransports implements TransportProvider {
  private readonly cache = new Map<string, { key: string; endpoint: Endpoint }>();

  endpointFor(manifest: Manifest): Endpoint {
    const key = JSON.stringify(manifest.transport);
    const hit = this.cache.get(manifest.device);
    if (hit && hit.key === key) return hit.endpoint;
    if (hit) void closeEndpoint(hit.endpoint);
    const endpoint = endpointForTransport(manifest);
    this.cache.set(manifest.device, { key, endpoint });
    return endpoint;
  }

  async closeAll(): Promise<void> {
    const all = [...this.cache.values()];
    this.cache.clear();
    await Promise.all(all.map((e) => closeEndpoint(e.endpoint)));
  }
}

async function closeEndpoint(e: Endpoint): Promise<void> {
  try {
    if (e.kind === 'host') await e.host.close?.();
    else await e.remote.close?.();
  } catch { /* closing is best effort */ }
}

/** A PathResolver backed by a Host: realpath on the device, home cached. */
export async function hostResolver(host: Host, os: Manifest['os']): Promise<PathResolver> {
  const home = await host.homedir();
  return {
    os,
    home,
    realpath: async (p) => {
      try {
        return await host.realpath(p);
      } catch {
        return null;
      }
    },
  };
}
