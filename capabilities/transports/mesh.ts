/**
 * The `mesh` transport, controller side: a device whose capabilities run in its own agent
 * (capabilities/agent/server.ts), reached over the WireGuard mesh with signed HTTP requests.
 *
 *   manifest:  transport: { kind: mesh, address: 10.88.0.2, port: 7420 }
 *   secret:    MESHPILOT_HOME/keys/<device>/agent.secret (the same 32 bytes as the agent's secret_file)
 *
 * MeshRunner is the agent client (capabilities/agent/client.ts: /health, the audit pages, one
 * keep-alive Pool per device) plus what only invoke() may do: POST /v1/invoke. Invocations of risk
 * 'read' capabilities are retried like the client's GETs; others never are.
 * Loading this module registers the transport (launcher/runtime.ts imports it for its side effect).
 */
import { failResult, type CapabilityResult } from '../capability.js';
import { MeshpilotError } from '../errors.js';
import type { DeviceOs, Manifest } from '../manifest.js';
import type { PathResolver } from '../policy.js';
import { builtinRegistry, type CapabilityRegistry } from '../registry.js';
import { AgentClient, asErrorCode, type AgentClientOptions } from '../agent/client.js';
import { InvokeResponseSchema } from '../agent/protocol.js';
import { registerTransport, type RemoteRunner } from './index.js';

const MAX_REQUEST_BYTES = 1024 * 1024;

export interface MeshRunnerOptions extends AgentClientOptions {
  os?: DeviceOs;
  /** Per-call timeout budget: the capability's manifest timeout (defaults to 30 s). */
  timeoutFor?: (capability: string) => number;
  registry?: CapabilityRegistry;
}

export interface MeshRunRequest {
  capability: string;
  args: Record<string, unknown>;
  actor: string;
  requestId: string;
  /** Who approved the call on the controller (required by the agent for approval-gated capabilities). */
  approvedBy?: string;
}

export class MeshRunner extends AgentClient implements RemoteRunner {
  readonly os: DeviceOs;
  private readonly registry: CapabilityRegistry;
  private readonly timeoutFor: (capability: string) => number;

  constructor(opts: MeshRunnerOptions) {
    super(opts);
    this.os = opts.os ?? 'linux';
    this.registry = opts.registry ?? builtinRegistry();
    this.timeoutFor = opts.timeoutFor ?? (() => 30_000);
  }

  static fromManifest(manifest: Manifest, opts: Partial<MeshRunnerOptions> = {}): MeshRunner {
    const t = manifest.transport;
    if (t.kind !== 'mesh') throw new MeshpilotError('config', `${manifest.device} does not use the mesh transport`);
    return new MeshRunner({
      device: manifest.device, address: t.address, port: t.port, os: manifest.os,
      timeoutFor: (cap) => (manifest.capabilities[cap]?.timeout_s ?? manifest.limits.timeout_s) * 1000,
      ...opts,
    });
  }

  async run(req: MeshRunRequest): Promise<{ result: CapabilityResult; deviceAudit?: { seq: number; hash: string } }> {
    const body = JSON.stringify({
      capability: req.capability, args: req.args, actor: req.actor, request_id: req.requestId,
      ...(req.approvedBy ? { approved_by: req.approvedBy } : {}),
    });
    if (Buffer.byteLength(body) > MAX_REQUEST_BYTES) {
      throw new MeshpilotError('invalid_args', `${req.capability}: the arguments are over the agent's ${MAX_REQUEST_BYTES}-byte request limit`);
    }
    const idempotent = this.registry.get(req.capability)?.risk === 'read';
    const res = await this.request('POST', '/v1/invoke', { body, signed: true, idempotent, timeoutMs: this.timeoutFor(req.capability) + 15_000 });
    const parsed = InvokeResponseSchema.safeParse(res.body);
    const inv = parsed.success ? parsed.data.invoke : undefined;
    if (!inv) throw this.httpError(res);
    const result = inv.result ?? failResult({
      code: asErrorCode(inv.error?.code, 'exec_failed'),
      message: inv.error ? `${inv.error.message} (enforced by the agent on ${this.device})` : `the agent of ${this.device} did not run it`,
    });
    return inv.audit ? { result, deviceAudit: inv.audit } : { result };
  }

  /** Lexical view (the agent resolves symlinks and checks them against its own manifest). */
  async resolver(): Promise<PathResolver> {
    const home = this.cachedHome ?? (await this.health()).home;
    return { os: this.os, home, realpath: async (p) => p };
  }
}

registerTransport('mesh', (manifest) => ({ kind: 'remote', remote: MeshRunner.fromManifest(manifest) }));
