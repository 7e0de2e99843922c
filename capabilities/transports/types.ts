/**
 * The primitive operations a capability may perform on a device. `local`, `ssh` and `vm` (inside one
 * of the device's VMs) implement this interface; `mesh` does not (the device agent runs capabilities with its own local Host).
 *
 * Only capabilities/invoke.ts and the device agent hold a Host: everything else goes through
 * invoke(), which is what lets us promise that nothing runs without a policy check and an audit entry.
 */
export interface ExecRequest {
  /** argv[0] is looked up on PATH; nothing is interpreted by a shell. */
  argv: string[];
  cwd?: string;
  /** Extra environment variables, merged over the scrubbed base environment. */
  env?: Record<string, string>;
  timeoutMs: number;
  /** Cap on stdout and on stderr, each, enforced while streaming. */
  maxOutputBytes: number;
  stdin?: string | Buffer;
}

export interface ExecOutcome {
  exitCode: number | null;
  signal: string | null;
  stdout: Buffer;
  stderr: Buffer;
  truncated: boolean;
  timedOut: boolean;
  durationMs: number;
}

export type FileType = 'file' | 'dir' | 'symlink' | 'other';

export interface FileStat {
  path: string;
  type: FileType;
  size: number;
  mode: number;
  mtimeMs: number;
  uid: number;
  gid: number;
}

export interface DirEntry {
  name: string;
  type: FileType;
  size: number;
  mtimeMs: number;
}

export interface SystemInfo {
  hostname: string;
  os: string;
  arch: string;
  kernel: string;
  uptimeS: number;
  load: [number, number, number];
  memory: { totalBytes: number; availableBytes: number };
  cpus: number;
}

/** One mounted file system, as `df -kP` reports it (filesystem = the device column). */
export interface MountUsage {
  mount: string;
  filesystem: string;
  sizeBytes: number;
  usedBytes: number;
  availBytes: number;
  usePercent: number;
}

export interface Host {
  readonly kind: 'local' | 'ssh' | 'vm';
  /** Device name, used in messages ("docker not installed on local"). */
  readonly device: string;
  /** Rejects with MeshpilotError('tool_missing') when argv[0] cannot be found. */
  exec(req: ExecRequest): Promise<ExecOutcome>;
  homedir(): Promise<string>;
  /** Resolves symlinks; rejects with code 'not_found' when the path does not exist. */
  realpath(path: string): Promise<string>;
  lstat(path: string): Promise<FileStat>;
  readdir(path: string): Promise<DirEntry[]>;
  readFile(path: string, offset: number, length: number): Promise<Buffer>;
  /** Writes to a temp file beside `path` and renames it over; never follows a symlink at `path`; makes missing directories of a new file. */
  writeFileAtomic(path: string, data: Buffer, mode?: number): Promise<void>;
  unlink(path: string): Promise<void>;
  systemInfo(): Promise<SystemInfo>;
  /** Disk usage without spawning df, where the host can (null: not here, use df). */
  diskUsage?(): Promise<MountUsage[] | null>;
  /** PID of the process that serves this host (the agent itself on a device), never to be killed. */
  readonly selfPid?: number;
  close?(): Promise<void>;
}
