/**
 * The one path every action takes, wherever it comes from (chat, LLM, voice, CLI, HTTP API):
 *
 *   invoke(device, capability, args, actor)
 *     1. validate args       (the capability's zod schema)
 *     2. policy              (the device manifest: allow | deny(reason) | needs approval); the checks
 *                            that need nothing from the device run before it is contacted, the path
 *                            checks (home, realpath on the device) after
 *     3. approval            (a hook: the bot asks the operator; the CLI asks on the TTY)
 *     4. transport           (local | ssh | mesh)
 *     5. audit               (a `started` entry before the call, the outcome after; denials too)
 *
 * A caller cannot reach a transport except through here.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { failResult, type AnyCapability, type CapabilityResult, type Delegator, type Risk } from './capability.js';
import { canonicalJson, redactArgs, sha256Hex, type AuditEntry, type Decision, type Outcome } from './audit.js';
import type { AuditSink } from './audit-sqlite.js';
import { MeshpilotError, toMpError, type ErrorCode, type MpError } from './errors.js';
import type { Manifest } from './manifest.js';
import { decide, precheck, type PathResolver } from './policy.js';
import { grantedTo, type Caller, type Level } from './levels.js';
import { builtinRegistry, type CapabilityRegistry } from './registry.js';
import { DefaultTransports, hostResolver, type TransportProvider } from './transports/index.js';
import type { Host } from './transports/types.js';
import { logger as makeLogger } from './log.js';

export interface InvokeRequest {
  device: string;
  capability: string;
  args: unknown;
  /** Who asks: `@lucas:example.org`, `cli:root`, `llm:@lucas:example.org`, `api:token-name`. */
  actor: string;
  /**
   * The person and their trust level, resolved once where the request came in (capabilities/levels.ts).
   * Absent: an operator's surface (CLI, API token, reaper), as before levels existed.
   */
  caller?: Caller;
  requestId?: string;
  /** Recorded in the audit entry (e.g. a voice transcript and the engine that produced it). */
  context?: Record<string, unknown>;
}

export interface ApprovalRequest {
  requestId: string;
  device: string;
  capability: string;
  args: Record<string, unknown>;
  actor: string;
  risk: Risk;
  reason: string;
}
export interface ApprovalVerdict {
  approved: boolean;
  /** Who decided (`@lucas:example.org`, `cli:root`, `timeout`). */
  by: string;
  reason?: string;
}
export type ApprovalHook = (req: ApprovalRequest) => Promise<ApprovalVerdict>;

/** Approves everything; for callers that have no human to ask and were told to proceed. */
export const autoApprove: ApprovalHook = async () => ({ approved: true, by: 'auto' });

export interface InvokeResult {
  ok: boolean;
  device: string;
  capability: string;
  decision: Decision;
  result?: CapabilityResult;
  error?: MpError;
  /** The audit entry that records this outcome (for denials, the denial). */
  audit: { seq: number; hash: string } | null;
  /** The device agent's own audit entry (mesh devices). */
  deviceAudit?: { seq: number; hash: string };
}

/**
 * A check that runs after the policy's own (before the device is contacted) and may deny, or rewrite
 * the arguments; `settle` learns whether the call ran and succeeded (false also when it never ran:
 * denied, rejected, unreachable). The VM gate (capabilities/vm/quota-gate.ts) reserves quotas and
 * checks ownership this way.
 */
export interface CallGate {
  admit(call: { device: string; def: AnyCapability; args: Record<string, unknown>; caller: Caller }): GateAdmission;
}
export type GateAdmission =
  /**
   * `settle` may answer a result in place of the one it was given (what is audited and returned): vm.share
   * on a mesh device records its share on the controller, where meshpilot.db is (capabilities/vm/quota-gate.ts).
   */
  | { ok: true; args: Record<string, unknown>; settle?: (succeeded: boolean, result?: CapabilityResult) => CapabilityResult | void }
  | { ok: false; code: ErrorCode; message: string };

/** Several gates as one, in order: the first denial wins, and the gates that admitted before it are settled as not run. */
export function combineGates(gates: readonly CallGate[]): CallGate {
  return {
    admit(call) {
      let args = call.args;
      const settles: Array<(succeeded: boolean, result?: CapabilityResult) => CapabilityResult | void> = [];
      for (const g of gates) {
        let a: GateAdmission;
        try {
          a = g.admit({ ...call, args });
        } catch (err) {
          for (const s of settles) s(false);
          throw err;
        }
        if (!a.ok) {
          for (const s of settles) s(false);
          return a;
        }
        args = a.args;
        if (a.settle) settles.push(a.settle);
      }
      // Each settle sees the result as the gates before it left it (vm.share on a mesh device is completed by the VM gate's).
      return { ok: true, args, ...(settles.length ? { settle: (ok: boolean, result?: CapabilityResult) => {
        let r = result;
        for (const s of settles) r = s(ok, r) ?? r;
        return r === result ? undefined : r;
      } } : {}) };
    },
  };
}

/**
 * The Host a controller-side capability (runsOn: 'controller') gets: it never reaches a device, so
 * every device call is refused.
 */
function controllerHost(device: string): Host {
  const refuse = (): never => {
    throw new MeshpilotError('internal', `a controller-side capability tried to reach the device ${device}`);
  };
  return {
    kind: 'local', device,
    exec: async () => refuse(), homedir: async () => refuse(), realpath: async () => refuse(), lstat: async () => refuse(),
    readdir: async () => refuse(), readFile: async () => refuse(), writeFileAtomic: async () => refuse(), unlink: async () => refuse(),
    systemInfo: async () => refuse(),
  };
}

/** Who a request without a caller is: the operator surfaces (CLI, API, reaper). */
const OPERATOR_CALLER_LEVEL: Level = 'operator';

export interface ManifestSource {
  get(device: string): Manifest | undefined;
}

export interface InvokerOptions {
  manifests: ManifestSource;
  audit: AuditSink;
  registry?: CapabilityRegistry;
  approve?: ApprovalHook;
  transports?: TransportProvider;
  /** Extra checks after the policy (quotas, ownership, the org tree); several run in order (combineGates). */
  gate?: CallGate | readonly CallGate[];
  /** How workspace.delegate reaches another workspace's bot (a bot under the launcher); absent: it fails as `config`. */
  delegate?: Delegator;
  logger?: Logger;
}

const MAX_REASON = 1000;

export class Invoker {
  readonly registry: CapabilityRegistry;
  readonly transports: TransportProvider;
  private readonly manifests: ManifestSource;
  private readonly audit: AuditSink;
  private readonly approve: ApprovalHook;
  private readonly gate: CallGate | undefined;
  private readonly delegate: Delegator | undefined;
  private readonly log: Logger;

  constructor(opts: InvokerOptions) {
    this.registry = opts.registry ?? builtinRegistry();
    this.manifests = opts.manifests;
    this.audit = opts.audit;
    this.approve = opts.approve ?? autoApprove;
    this.gate = Array.isArray(opts.gate) ? combineGates(opts.gate) : (opts.gate as CallGate | undefined);
    this.delegate = opts.delegate;
    this.transports = opts.transports ?? new DefaultTransports();
    this.log = opts.logger ?? makeLogger('invoke');
  }

  /** The capabilities a device's manifest enables (for LLM tools and help); with `level`, those it grants to that level. */
  allowedCapabilities(device: string, level?: Level | null): AnyCapability[] {
    const m = this.manifests.get(device);
    if (!m) return [];
    if (level !== undefined) return grantedTo(m, this.registry.all(), level);
    return this.registry.all().filter((d) => m.capabilities[d.name] !== undefined);
  }

  async invoke(req: InvokeRequest, approve: ApprovalHook = this.approve): Promise<InvokeResult> {
    const requestId = req.requestId ?? randomUUID();
    const base = { device: req.device, capability: req.capability };
    const manifest = this.manifests.get(req.device);
    if (!manifest) {
      return { ...base, ok: false, decision: 'denied', audit: null, error: { code: 'unknown_device', message: `unknown device ${req.device}` } };
    }
    const record = (decision: Decision, outcome: Outcome, extra: Partial<AuditEntry> & { args?: unknown } = {}): AuditEntry =>
      this.audit.append({
        device: req.device,
        actor: req.actor.slice(0, 256),
        request_id: requestId,
        capability: req.capability.slice(0, 64),
        args: redactArgs(extra.args ?? req.args ?? null),
        decision,
        outcome,
        exit_code: extra.exit_code ?? null,
        output_sha256: extra.output_sha256 ?? null,
        duration_ms: extra.duration_ms ?? null,
        error_code: extra.error_code ?? null,
        reason: extra.reason ? extra.reason.slice(0, MAX_REASON) : null,
        context: req.context ? (redactArgs(req.context) as Record<string, unknown>) : null,
      });
    let settle: ((succeeded: boolean, result?: CapabilityResult) => CapabilityResult | void) | undefined;
    const deny = (code: ErrorCode, message: string, decision: Decision = 'denied'): InvokeResult => {
      settle?.(false);
      const entry = record(decision, 'not_run', { error_code: code, reason: message });
      this.log.info({ device: req.device, capability: req.capability, actor: req.actor, code }, 'denied');
      return { ...base, ok: false, decision, error: { code, message }, audit: { seq: entry.seq, hash: entry.hash } };
    };

    const def = this.registry.get(req.capability);
    if (!def) return deny('unknown_capability', `unknown capability ${req.capability}`);

    const parsed = def.input.safeParse(req.args ?? {});
    if (!parsed.success) {
      const msg = parsed.error.issues
        .map((i) => `${i.path.length ? i.path.join('.') + ': ' : ''}${i.message}`)
        .join('; ');
      return deny('invalid_args', `${def.name}: ${msg}`);
    }
    let args = parsed.data as Record<string, unknown>;
    const caller: Caller = req.caller ?? { user: req.actor, level: OPERATOR_CALLER_LEVEL };

    // Everything that needs nothing from the device first: a call the manifest denies is audited as
    // denied even when the device cannot be reached.
    const early = precheck(manifest, def, args, caller.level);
    if (early) return deny('policy_denied', early.reason);
    if (this.gate) {
      let admitted: GateAdmission;
      try {
        admitted = this.gate.admit({ device: req.device, def, args, caller });
      } catch (err) {
        admitted = { ok: false, code: 'internal', message: `${def.name}: the quota and ownership check failed: ${toMpError(err).message}` };
      }
      if (!admitted.ok) return deny(admitted.code, admitted.message);
      args = admitted.args;
      settle = admitted.settle;
    }

    let endpoint;
    let resolver: PathResolver;
    try {
      // A controller-side capability (workspace.delegate) runs here, whatever the device's transport.
      endpoint = def.runsOn === 'controller'
        ? { kind: 'host' as const, host: controllerHost(req.device) }
        : this.transports.endpointFor(manifest);
      resolver = def.runsOn === 'controller'
        ? { os: manifest.os, home: '/', realpath: async () => null } // it has no path scope
        : endpoint.kind === 'host' ? await hostResolver(endpoint.host, manifest.os) : await endpoint.remote.resolver();
    } catch (err) {
      const e = toMpError(err, 'unreachable');
      settle?.(false);
      const entry = record('allowed', 'error', { error_code: e.code, reason: e.message });
      return { ...base, ok: false, decision: 'allowed', error: e, audit: { seq: entry.seq, hash: entry.hash } };
    }

    const verdict = await decide(manifest, def, args, resolver, caller.level);
    if (verdict.kind === 'deny') return deny('policy_denied', verdict.reason);

    let decision: Decision = 'allowed';
    let approver: string | undefined;
    if (verdict.kind === 'approval') {
      let answer: ApprovalVerdict;
      try {
        answer = await approve({ requestId, device: req.device, capability: def.name, args: verdict.args, actor: req.actor, risk: verdict.risk, reason: verdict.reason });
      } catch (err) {
        answer = { approved: false, by: 'error', reason: toMpError(err).message };
      }
      approver = answer.by;
      if (!answer.approved) {
        return deny('approval_rejected', `${def.name} on ${req.device} was not approved (${answer.by}${answer.reason ? `: ${answer.reason}` : ''})`, 'rejected');
      }
      decision = 'approved';
    }

    const limits = {
      timeoutMs: (manifest.capabilities[def.name]?.timeout_s ?? def.defaultTimeoutS ?? manifest.limits.timeout_s) * 1000,
      maxOutputBytes: manifest.capabilities[def.name]?.max_output_bytes ?? manifest.limits.max_output_bytes,
    };
    const approvedBy = approver ? { approved_by: approver } : {};
    const started = record(decision, 'started', { args: verdict.args, reason: approver ? `approved by ${approver}` : null });

    const t0 = performance.now();
    let result: CapabilityResult;
    let deviceAudit: { seq: number; hash: string } | undefined;
    try {
      if (endpoint.kind === 'host') {
        result = await def.run(verdict.args, {
          host: endpoint.host, device: req.device, os: manifest.os, limits, actor: req.actor, requestId,
          ...(this.delegate && def.runsOn === 'controller' ? { delegate: this.delegate } : {}),
        });
      } else {
        const r = await endpoint.remote.run({ capability: def.name, args: verdict.args, actor: req.actor, requestId, ...(approver ? { approvedBy: approver } : {}) });
        result = r.result;
        deviceAudit = r.deviceAudit;
      }
    } catch (err) {
      result = failResult(toMpError(err, 'exec_failed'), Math.round(performance.now() - t0));
    }
    result = capResult(result, limits.maxOutputBytes);
    try {
      const settled = settle?.(result.ok, result);
      if (settled) result = capResult(settled, limits.maxOutputBytes);
    } catch (err) {
      result = failResult(toMpError(err, 'internal'), result.durationMs);
    }

    const outcome: Outcome = result.ok ? 'ok' : result.error?.code === 'timeout' ? 'timeout' : 'error';
    const entry = record(decision, outcome, {
      args: verdict.args,
      exit_code: result.exitCode ?? null,
      output_sha256: sha256Hex(canonicalJson({ stdout: result.stdout, stderr: result.stderr, data: result.data ?? null })),
      duration_ms: Math.round(result.durationMs),
      error_code: result.error?.code ?? null,
      reason: result.error?.message ?? `started at #${started.seq}${approvedBy.approved_by ? `, approved by ${approvedBy.approved_by}` : ''}`,
    });
    const out: InvokeResult = { ...base, ok: result.ok, decision, result, audit: { seq: entry.seq, hash: entry.hash } };
    if (result.error) out.error = { code: result.error.code as ErrorCode, message: result.error.message };
    if (deviceAudit) out.deviceAudit = deviceAudit;
    return out;
  }

  async close(): Promise<void> {
    await this.transports.closeAll();
  }
}

/** Safety net: whatever a capability returned, its text output stays within the limit. */
function capResult(r: CapabilityResult, max: number): CapabilityResult {
  if (Buffer.byteLength(r.stdout) <= max && Buffer.byteLength(r.stderr) <= max) return r;
  const cut = (s: string): string => (Buffer.byteLength(s) <= max ? s : Buffer.from(s).subarray(0, max).toString('utf8'));
  return { ...r, stdout: cut(r.stdout), stderr: cut(r.stderr), truncated: true };
}
