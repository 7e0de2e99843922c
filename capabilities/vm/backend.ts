/**
 * The seam between the vm.* capabilities and what runs a VM. A backend turns each operation into
 * commands on the device (through the Host of the capability context: local, ssh and mesh alike) and
 * answers with values, never throws for an expected failure. Podman is the first (podman.ts); Incus
 * (system containers and VMs, projects with limits) or Firecracker (where /dev/kvm works) implement
 * the same interface (docs/architecture.md, "VM backends").
 *
 * Every VM carries meshpilot's labels (LABELS): its id, owner and expiry. A backend lists, stops,
 * execs in and removes only what carries them; anything else on the device is foreign and untouched.
 */
import type { MpError } from '../errors.js';

export const LABELS = {
  id: 'meshpilot.id',
  name: 'meshpilot.name',
  owner: 'meshpilot.owner',
  expires: 'meshpilot.expires',
  cpus: 'meshpilot.cpus',
  memory: 'meshpilot.memory_mb',
  disk: 'meshpilot.disk_mb',
} as const;

export interface VmPort {
  guest: number;
  /** The device's port it is published on; null until the VM runs. */
  host: number | null;
  /** The device address it is published on: 127.0.0.1, or on a mesh device its mesh address (podman.ts setPublishAddress). */
  hostIp?: string;
}

export interface VmSpec {
  name: string;
  image: string;
  cpus: number;
  memoryMb: number;
  diskMb: number;
  /** When the reaper removes it (ms since the epoch). */
  expiresAt: number;
  owner: string;
  ports: number[];
  command?: string[];
}

export interface VmInfo {
  name: string;
  id: string;
  image: string;
  state: string;
  owner: string;
  expiresAt: number | null;
  cpus: number | null;
  memoryMb: number | null;
  diskMb: number | null;
  ports: VmPort[];
  created: string;
  /** MiB its writable layer holds (what it wrote), when listed with sizes (vm.ls size=true); the reaper stops a VM over its diskMb. */
  diskUsedMb?: number;
}

export interface ExecOutput {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  truncated: boolean;
  timedOut: boolean;
}

/** Where the device reaches a VM's guest port: its published port (on loopback, or on a mesh device its mesh address), or the VM's own address on the device's bridge. */
export interface VmEndpoint {
  address: string;
  port: number;
  via: 'loopback' | 'mesh' | 'bridge';
}

export type BackendResult<T> = { ok: true; value: T; durationMs: number } | { ok: false; error: MpError; durationMs: number; stderr?: string };

export interface VmBackend {
  readonly kind: string;
  create(spec: VmSpec): Promise<BackendResult<VmInfo & { diskEnforced: boolean }>>;
  /** meshpilot's VMs only (foreign containers are not listed); `size`: with each one's diskUsedMb (slower: the writable layers are walked). */
  list(all: boolean, opts?: { size?: boolean }): Promise<BackendResult<VmInfo[]>>;
  /** null: no such VM (gone). A foreign container of that name is an error, not a VM. */
  get(name: string): Promise<BackendResult<VmInfo | null>>;
  /** `gone: true` when it was already gone: that counts as removed. */
  remove(name: string): Promise<BackendResult<{ gone: boolean; info: VmInfo | null }>>;
  stop(name: string): Promise<BackendResult<VmInfo>>;
  start(name: string): Promise<BackendResult<VmInfo>>;
  logs(name: string, tail: number): Promise<BackendResult<ExecOutput>>;
  exec(name: string, argv: string[], timeoutMs?: number): Promise<BackendResult<ExecOutput>>;
  importImage(tarball: string, image: string): Promise<BackendResult<{ image: string; id: string }>>;
  /** Where a guest port is reachable on the device (for a share gateway): published at vm.new, or on the bridge. */
  publish(name: string, guestPort: number): Promise<BackendResult<VmEndpoint>>;
}
