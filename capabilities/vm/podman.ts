/**
 * The podman backend: each operation is one or two `podman` commands run on the device through the
 * capability context's Host, so a local, ssh or mesh device works the same way.
 *
 * Facts measured on the Debian 12 dev machine that shape the flags:
 * - crun refuses hybrid cgroups: `--runtime runc`;
 * - podman's default nofile/nproc ulimits exceed the hard limits (runc fails "error setting rlimit
 *   type 6"): explicit `--ulimit`s;
 * - `--storage-opt size=` needs overlay on XFS with pquota (ext4/overlay here refuses it): tried once per
 *   device; either way disk_mb is enforced by the reaper (capabilities/vm/reaper.ts), which reads each
 *   VM's writable layer (`podman ps --size`: list(all, {size: true})) and stops a VM that wrote more;
 * - ports are published on the device's loopback, a free host port each; on a mesh device on its mesh
 *   address instead (setPublishAddress, called by the device agent with the address it listens on), so
 *   the launcher's share gateway reaches them over the mesh. Never on 0.0.0.0.
 *
 * Containers are named `mp-<name>` and carry meshpilot's labels (backend.ts LABELS). An operation by
 * name first checks the labels (inspect) and then acts on the container's id, which a foreign
 * container cannot take over; the checked ids are remembered per device, so exec costs one podman
 * command after the first.
 */
import { randomUUID } from 'node:crypto';
import type { CapabilityContext } from '../capability.js';
import { MeshpilotError, toMpError, type MpError } from '../errors.js';
import type { ExecOutcome } from '../transports/types.js';
import { LABELS, type BackendResult, type ExecOutput, type VmBackend, type VmEndpoint, type VmInfo, type VmPort, type VmSpec } from './backend.js';

export const CONTAINER_PREFIX = 'mp-';
export const PODMAN_RUN_FLAGS = ['--runtime', 'runc', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096'] as const;
const STOP_TIMEOUT_S = 5;
/** podman's warning when it cannot apply --memory/--cpus (rootless on cgroups v1): it runs the container anyway. */
const RESOURCE_LIMITS_IGNORED = /Resource limits are not supported and ignored/i;
/** Listings and inspections are ours, not the caller's output: a larger cap than the manifest's. */
const META_BYTES = 4 * 1024 * 1024;

/** Per device: container id of each checked VM name; whether --storage-opt size works. */
const verified = new Map<string, Map<string, string>>();
const diskSupport = new Map<string, boolean>();
/** Per device: the address ports are published on (default 127.0.0.1). */
const publishAt = new Map<string, string>();
const UNSPECIFIED = new Set(['0.0.0.0', '::', '0:0:0:0:0:0:0:0', '']);

/**
 * Where `vm.new` publishes ports on this device: the device agent sets its mesh address (the address it
 * listens on), so the launcher reaches a shared port over the mesh. An unspecified address (0.0.0.0, ::)
 * or undefined means loopback: a VM's port is never published on every interface.
 */
export function setPublishAddress(device: string, address: string | undefined): void {
  if (address === undefined || UNSPECIFIED.has(address)) publishAt.delete(device);
  else publishAt.set(device, address);
}

export function publishAddressOf(device: string): string {
  return publishAt.get(device) ?? '127.0.0.1';
}

/** podman's `-p` value: `127.0.0.1::8080`, `[fd00::2]::8080`. */
function publishFlag(address: string, guest: number): string {
  return `${address.includes(':') ? `[${address}]` : address}::${guest}`;
}

function idsOf(device: string): Map<string, string> {
  let m = verified.get(device);
  if (!m) verified.set(device, (m = new Map()));
  return m;
}

export function missingPodman(device: string): MpError {
  return { code: 'tool_missing', message: `podman is not installed on ${device}: apt-get install podman runc` };
}

function num(v: string | undefined): number | null {
  if (v === undefined || v === '') return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

function infoFrom(labels: Record<string, string>, rest: { id: string; image: string; state: string; ports: VmPort[]; created: string }): VmInfo {
  const expires = labels[LABELS.expires];
  const t = expires ? Date.parse(expires) : NaN;
  return {
    name: labels[LABELS.name] ?? '',
    id: rest.id.slice(0, 12),
    image: rest.image,
    state: rest.state,
    owner: labels[LABELS.owner] ?? '',
    expiresAt: Number.isFinite(t) ? t : null,
    cpus: num(labels[LABELS.cpus]),
    memoryMb: num(labels[LABELS.memory]),
    diskMb: num(labels[LABELS.disk]),
    ports: rest.ports,
    created: rest.created,
  };
}

const INSPECT_FORMAT = '{{json .Config.Labels}}\t{{.State.Status}}\t{{.Id}}\t{{.ImageName}}\t{{json .NetworkSettings.Ports}}\t{{.Created.Unix}}\t{{.NetworkSettings.IPAddress}}';

interface Inspected { labels: Record<string, string>; info: VmInfo; fullId: string; address: string }

function parseInspectLine(line: string): Inspected | null {
  const [labelsJson = 'null', state = '', id = '', image = '', portsJson = 'null', created = '', address = ''] = line.split('\t');
  let labels: Record<string, string> = {};
  let portMap: Record<string, Array<{ HostPort?: string; HostIp?: string }> | null> = {};
  try {
    labels = (JSON.parse(labelsJson) as Record<string, string> | null) ?? {};
    portMap = (JSON.parse(portsJson) as typeof portMap | null) ?? {};
  } catch {
    return null;
  }
  const ports: VmPort[] = Object.entries(portMap).map(([key, binds]) => ({
    guest: Number(key.split('/')[0]),
    host: binds?.[0]?.HostPort ? Number(binds[0].HostPort) : null,
    ...(binds?.[0]?.HostIp ? { hostIp: binds[0].HostIp } : {}),
  }));
  const createdS = Number(created);
  return {
    labels, fullId: id, address: address.trim(),
    info: infoFrom(labels, { id, image, state, ports, created: Number.isFinite(createdS) ? new Date(createdS * 1000).toISOString() : '' }),
  };
}

export class PodmanBackend implements VmBackend {
  readonly kind = 'podman';
  constructor(private readonly ctx: CapabilityContext) {}

  private get device(): string {
    return this.ctx.device;
  }

  /** Runs podman on the device; throws only for what is no failed command (MeshpilotError). */
  private async podman(args: string[], opts: { timeoutMs?: number; maxOutputBytes?: number } = {}): Promise<ExecOutcome> {
    const timeoutMs = Math.min(opts.timeoutMs ?? this.ctx.limits.timeoutMs, this.ctx.limits.timeoutMs);
    try {
      return await this.ctx.host.exec({ argv: ['podman', ...args], timeoutMs, maxOutputBytes: opts.maxOutputBytes ?? META_BYTES });
    } catch (err) {
      const e = toMpError(err, 'exec_failed');
      if (e.code === 'tool_missing' || (e.code === 'not_found' && /podman/.test(e.message))) throw new MeshpilotError('tool_missing', missingPodman(this.device).message);
      throw new MeshpilotError(e.code, e.message);
    }
  }

  /** A failed podman command in words. */
  private failure(out: ExecOutcome, what: string): MpError {
    if (out.timedOut) return { code: 'timeout', message: `${what} timed out after ${Math.round(out.durationMs / 1000)} s` };
    const err = out.stderr.toString('utf8');
    if (/no such (container|object)/i.test(err)) return { code: 'not_found', message: `${what}: no such VM on ${this.device}` };
    if (/runc.*(not found|no such file)|could not find.*runc|default OCI runtime "runc" not found/i.test(err))
      return { code: 'tool_missing', message: `runc is not installed on ${this.device}: apt-get install runc` };
    if (/name .* is already in use/i.test(err)) return { code: 'invalid_args', message: `${what}: a VM of that name already exists on ${this.device}` };
    if (/image not known|manifest unknown|pinging container registry|initializing source/i.test(err))
      return { code: 'not_found', message: `${what}: image not found on ${this.device} and not pullable (${firstErrorLine(err)})` };
    if (/container state improper|not running/i.test(err)) return { code: 'exec_failed', message: `${what}: the VM is not running (vm.start it first)` };
    const line = firstErrorLine(err);
    return { code: 'exec_failed', message: `${what} failed${line ? `: ${line}` : ` with exit code ${out.exitCode}`}` };
  }

  private async inspect(ref: string): Promise<BackendResult<Inspected | null>> {
    const out = await this.podman(['container', 'inspect', '--format', INSPECT_FORMAT, '--', ref]);
    if (out.exitCode !== 0 || out.timedOut) {
      const f = this.failure(out, `inspect ${ref}`);
      if (f.code === 'not_found') return { ok: true, value: null, durationMs: out.durationMs };
      return { ok: false, error: f, durationMs: out.durationMs };
    }
    const parsed = parseInspectLine(out.stdout.toString('utf8').trim().split('\n')[0] ?? '');
    if (!parsed) return { ok: false, error: { code: 'exec_failed', message: `podman inspect ${ref}: unreadable output` }, durationMs: out.durationMs };
    return { ok: true, value: parsed, durationMs: out.durationMs };
  }

  /** The id of meshpilot's VM `name`: null when gone; an error for a foreign container of that name. */
  private async resolve(name: string, fresh = false): Promise<BackendResult<{ id: string; info: VmInfo | null } | null>> {
    const ids = idsOf(this.device);
    const known = ids.get(name);
    if (known && !fresh) return { ok: true, value: { id: known, info: null }, durationMs: 0 };
    const r = await this.inspect(CONTAINER_PREFIX + name);
    if (!r.ok) return r;
    if (!r.value) {
      ids.delete(name);
      return { ok: true, value: null, durationMs: r.durationMs };
    }
    if (!r.value.labels[LABELS.id] || r.value.labels[LABELS.name] !== name) {
      ids.delete(name);
      return { ok: false, error: { code: 'policy_denied', message: `${CONTAINER_PREFIX}${name} on ${this.device} was not created by meshpilot (no meshpilot labels); leaving it alone` }, durationMs: r.durationMs };
    }
    ids.set(name, r.value.fullId);
    return { ok: true, value: { id: r.value.fullId, info: r.value.info }, durationMs: r.durationMs };
  }

  /** Runs `op` on the VM's checked id; when a remembered id is gone, checks again once. */
  private async onVm<T>(name: string, what: string, op: (id: string) => Promise<BackendResult<T>>): Promise<BackendResult<T>> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const r = await this.resolve(name, attempt > 0);
      if (!r.ok) return r;
      if (!r.value) return { ok: false, error: { code: 'not_found', message: `${what}: no VM ${name} on ${this.device}` }, durationMs: r.durationMs };
      const res = await op(r.value.id);
      if (!res.ok && res.error.code === 'not_found' && r.value.info === null) {
        idsOf(this.device).delete(name);
        continue; // the remembered id is gone: look again (it may have been recreated)
      }
      return res;
    }
    return { ok: false, error: { code: 'not_found', message: `${what}: no VM ${name} on ${this.device}` }, durationMs: 0 };
  }

  async create(spec: VmSpec): Promise<BackendResult<VmInfo & { diskEnforced: boolean }>> {
    const id = randomUUID();
    const expires = new Date(spec.expiresAt).toISOString();
    const labels: Record<string, string> = {
      [LABELS.id]: id, [LABELS.name]: spec.name, [LABELS.owner]: spec.owner, [LABELS.expires]: expires,
      [LABELS.cpus]: String(spec.cpus), [LABELS.memory]: String(spec.memoryMb), [LABELS.disk]: String(spec.diskMb),
    };
    const argv = [
      'run', '-d', ...PODMAN_RUN_FLAGS, '--name', CONTAINER_PREFIX + spec.name, '--hostname', spec.name,
      '--memory', `${spec.memoryMb}m`, '--cpus', String(spec.cpus), '--stop-timeout', String(STOP_TIMEOUT_S),
    ];
    for (const [k, v] of Object.entries(labels)) argv.push('--label', `${k}=${v}`);
    for (const p of spec.ports) argv.push('-p', publishFlag(publishAddressOf(this.device), p));
    const tail = ['--', spec.image, ...(spec.command ?? [])];
    let diskEnforced = diskSupport.get(this.device) !== false;
    let out = await this.podman(diskEnforced ? [...argv, '--storage-opt', `size=${spec.diskMb}m`, ...tail] : [...argv, ...tail]);
    let spent = out.durationMs;
    if (diskEnforced && out.exitCode !== 0 && /storage-opt|overlay\.size|only supported for|quota|not support size/i.test(out.stderr.toString('utf8'))) {
      diskSupport.set(this.device, false);
      diskEnforced = false;
      out = await this.podman([...argv, ...tail]);
      spent += out.durationMs;
    } else if (diskEnforced && out.exitCode === 0) diskSupport.set(this.device, true);
    const ignoredLimits = RESOURCE_LIMITS_IGNORED.test(out.stderr.toString('utf8'));
    if (out.exitCode !== 0 || out.timedOut || ignoredLimits) {
      // A failed run may leave a created container behind: remove it (ours, by its labels).
      if (!/already in use/i.test(out.stderr.toString('utf8'))) await this.podman(['rm', '-f', '-t', '0', '--', CONTAINER_PREFIX + spec.name]).catch(() => undefined);
      idsOf(this.device).delete(spec.name);
      // A VM without its limits is no sandbox: refuse rather than run it unbounded.
      const error: MpError = ignoredLimits
        ? { code: 'exec_failed', message: `podman on ${this.device} runs rootless on cgroups v1 and ignores memory and CPU limits; run the device's podman as root (ssh user root, or the agent as root) or move the device to cgroups v2` }
        : this.failure(out, `vm.new ${spec.name}`);
      return { ok: false, error, durationMs: spent, stderr: out.stderr.toString('utf8') };
    }
    const fullId = out.stdout.toString('utf8').trim().split('\n').pop() ?? '';
    idsOf(this.device).set(spec.name, fullId);
    let ports: VmPort[] = spec.ports.map((guest) => ({ guest, host: null }));
    if (spec.ports.length > 0) {
      const r = await this.inspect(fullId);
      spent += r.durationMs;
      if (r.ok && r.value) ports = r.value.info.ports;
    }
    const info = infoFrom(labels, { id: fullId, image: spec.image, state: 'running', ports, created: new Date().toISOString() });
    return { ok: true, value: { ...info, diskEnforced }, durationMs: spent };
  }

  async list(all: boolean, opts: { size?: boolean } = {}): Promise<BackendResult<VmInfo[]>> {
    const out = await this.podman(['ps', ...(all ? ['-a'] : []), ...(opts.size ? ['--size'] : []), '--filter', `label=${LABELS.id}`, '--format', 'json']);
    if (out.exitCode !== 0 || out.timedOut) return { ok: false, error: this.failure(out, 'vm.ls'), durationMs: out.durationMs };
    let rows: Array<Record<string, unknown>>;
    try {
      rows = JSON.parse(out.stdout.toString('utf8') || '[]') as Array<Record<string, unknown>>;
    } catch {
      return { ok: false, error: { code: 'exec_failed', message: 'podman ps: unreadable output' }, durationMs: out.durationMs };
    }
    const vms: VmInfo[] = [];
    const ids = idsOf(this.device);
    for (const row of rows) {
      const labels = (row['Labels'] ?? {}) as Record<string, string>;
      const name = labels[LABELS.name];
      // Only ours: the id label (the filter) and a name label matching the container's name.
      if (!labels[LABELS.id] || !name || !(row['Names'] as string[] | undefined)?.includes(CONTAINER_PREFIX + name)) continue;
      const ports = ((row['Ports'] ?? []) as Array<{ container_port?: number; host_port?: number; host_ip?: string }>)
        .map((p) => ({ guest: p.container_port ?? 0, host: p.host_port ?? null, ...(p.host_ip ? { hostIp: p.host_ip } : {}) }));
      const created = typeof row['Created'] === 'number' ? new Date(row['Created'] * 1000).toISOString() : '';
      const id = typeof row['Id'] === 'string' ? row['Id'] : '';
      ids.set(name, id);
      const info = infoFrom(labels, { id, image: String(row['Image'] ?? ''), state: String(row['State'] ?? ''), ports, created });
      // What the VM wrote: its writable layer (podman's rwSize, bytes).
      const rw = (row['Size'] as { rwSize?: unknown } | undefined)?.rwSize;
      if (opts.size && typeof rw === 'number' && Number.isFinite(rw)) info.diskUsedMb = Math.round((rw / (1024 * 1024)) * 10) / 10;
      vms.push(info);
    }
    vms.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { ok: true, value: vms, durationMs: out.durationMs };
  }

  async get(name: string): Promise<BackendResult<VmInfo | null>> {
    const r = await this.resolve(name, true);
    if (!r.ok) return r;
    return { ok: true, value: r.value?.info ?? null, durationMs: r.durationMs };
  }

  async remove(name: string): Promise<BackendResult<{ gone: boolean; info: VmInfo | null }>> {
    const r = await this.resolve(name, true);
    if (!r.ok) return r;
    if (!r.value) return { ok: true, value: { gone: true, info: null }, durationMs: r.durationMs };
    const out = await this.podman(['rm', '-f', '-t', '2', '--', r.value.id]);
    idsOf(this.device).delete(name);
    const spent = r.durationMs + out.durationMs;
    if (out.exitCode !== 0 || out.timedOut) {
      const f = this.failure(out, `vm.rm ${name}`);
      // Gone between the check and the removal: removed all the same.
      if (f.code === 'not_found') return { ok: true, value: { gone: true, info: r.value.info }, durationMs: spent };
      return { ok: false, error: f, durationMs: spent };
    }
    return { ok: true, value: { gone: false, info: r.value.info }, durationMs: spent };
  }

  private lifecycle(verb: 'stop' | 'start', name: string): Promise<BackendResult<VmInfo>> {
    return this.onVm(name, `vm.${verb}`, async (id) => {
      const out = await this.podman(verb === 'stop' ? ['stop', '-t', String(STOP_TIMEOUT_S), '--', id] : ['start', '--', id]);
      if (out.exitCode !== 0 || out.timedOut) return { ok: false, error: this.failure(out, `vm.${verb} ${name}`), durationMs: out.durationMs };
      const after = await this.inspect(id);
      const spent = out.durationMs + after.durationMs;
      if (!after.ok || !after.value) return { ok: false, error: after.ok ? { code: 'not_found', message: `vm.${verb}: ${name} vanished` } : after.error, durationMs: spent };
      return { ok: true, value: after.value.info, durationMs: spent };
    });
  }

  stop(name: string): Promise<BackendResult<VmInfo>> {
    return this.lifecycle('stop', name);
  }

  start(name: string): Promise<BackendResult<VmInfo>> {
    return this.lifecycle('start', name);
  }

  logs(name: string, tail: number): Promise<BackendResult<ExecOutput>> {
    return this.onVm(name, 'vm.logs', async (id) => {
      const out = await this.podman(['logs', '--tail', String(tail), '--', id], { maxOutputBytes: this.ctx.limits.maxOutputBytes });
      if (out.exitCode !== 0 || out.timedOut) return { ok: false, error: this.failure(out, `vm.logs ${name}`), durationMs: out.durationMs };
      return { ok: true, value: output(out), durationMs: out.durationMs };
    });
  }

  exec(name: string, argv: string[], timeoutMs?: number): Promise<BackendResult<ExecOutput>> {
    return this.onVm(name, 'vm.exec', async (id) => {
      // podman stops reading its own options at the container: argv is passed as is, no shell.
      const out = await this.podman(['exec', id, ...argv], { ...(timeoutMs !== undefined ? { timeoutMs } : {}), maxOutputBytes: this.ctx.limits.maxOutputBytes });
      // 125 (and 255 for a stopped VM): podman itself failed; 126/127 come from the program.
      if (out.exitCode === 125 || (out.exitCode === 255 && /can only create exec sessions|container state improper|no such (container|object)/i.test(out.stderr.toString('utf8')))) return { ok: false, error: this.failure(out, `vm.exec ${name}`), durationMs: out.durationMs };
      return { ok: true, value: output(out), durationMs: out.durationMs };
    });
  }

  async publish(name: string, guestPort: number): Promise<BackendResult<VmEndpoint>> {
    const r = await this.resolve(name, true);
    if (!r.ok) return r;
    if (!r.value) return { ok: false, error: { code: 'not_found', message: `no VM ${name} on ${this.device}` }, durationMs: r.durationMs };
    const at = await this.inspect(r.value.id);
    if (!at.ok) return at;
    if (!at.value) return { ok: false, error: { code: 'not_found', message: `no VM ${name} on ${this.device}` }, durationMs: r.durationMs + at.durationMs };
    const spent = r.durationMs + at.durationMs;
    const published = at.value.info.ports.find((p) => p.guest === guestPort && p.host !== null);
    if (published?.host) {
      const address = published.hostIp && !UNSPECIFIED.has(published.hostIp) ? published.hostIp : '127.0.0.1';
      const loopback = address === '127.0.0.1' || address === '::1' || address === 'localhost';
      return { ok: true, value: { address, port: published.host, via: loopback ? 'loopback' : 'mesh' }, durationMs: spent };
    }
    if (at.value.info.state !== 'running') return { ok: false, error: { code: 'exec_failed', message: `${name} on ${this.device} is not running (vm.start it first)` }, durationMs: spent };
    // Rootful podman puts the VM on a bridge the device can reach: any guest port, without publishing it.
    if (at.value.address) return { ok: true, value: { address: at.value.address, port: guestPort, via: 'bridge' }, durationMs: spent };
    return { ok: false, error: { code: 'exec_failed', message: `${name} on ${this.device} has no address on the device's bridge; publish the port with vm.new ports=[${guestPort}]` }, durationMs: spent };
  }

  async importImage(tarball: string, image: string): Promise<BackendResult<{ image: string; id: string }>> {
    // A rootfs has no command of its own: a shell loop that stays up and stops at once on SIGTERM.
    const cmd = `CMD ["/bin/sh","-c","trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]`;
    const out = await this.podman(['import', '--change', cmd, '--', tarball, image]);
    if (out.exitCode !== 0 || out.timedOut) return { ok: false, error: this.failure(out, `vm.image.import ${tarball}`), durationMs: out.durationMs };
    const id = out.stdout.toString('utf8').trim().split('\n').pop() ?? '';
    return { ok: true, value: { image, id: id.replace(/^sha256:/, '').slice(0, 12) }, durationMs: out.durationMs };
  }
}

function output(out: ExecOutcome): ExecOutput {
  return { exitCode: out.exitCode, stdout: out.stdout.toString('utf8'), stderr: out.stderr.toString('utf8'), truncated: out.truncated, timedOut: out.timedOut };
}

function firstErrorLine(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  const line = lines.find((l) => /^error/i.test(l)) ?? lines[lines.length - 1] ?? '';
  return line.replace(/^Error:\s*/i, '').slice(0, 300);
}

/** The backend for a capability context (podman today; the device's manifest may choose later). */
export function backendFor(ctx: CapabilityContext): VmBackend {
  return new PodmanBackend(ctx);
}
