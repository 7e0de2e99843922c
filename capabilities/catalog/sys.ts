/**
 * `sys.*`: what a device is and whether it is healthy. Read-only; no manifest scope.
 */
import { z } from 'zod';
import { defineCapability, okResult, type AnyCapability, type CapabilityContext } from '../capability.js';
import type { MountUsage, SystemInfo } from '../transports/types.js';
import { capText, formatBytes, guarded } from './shared.js';

/** One disk as sys.info reports it (the same shape a Host's diskUsage() returns). */
export type DiskUsage = MountUsage;

// Pseudo file systems that only add noise to a phone-sized disk report.
const PSEUDO_FS = new Set(['tmpfs', 'devtmpfs', 'devfs', 'shm', 'udev', 'none', 'proc', 'sysfs', 'cgroup', 'cgroup2']);
// /snap/* are read-only squashfs images, always 100% full: they would make sys.health cry wolf.
const PSEUDO_MOUNT_PREFIXES = ['/dev', '/sys', '/proc', '/snap/', '/System/Volumes/VM', '/System/Volumes/Preboot',
  '/System/Volumes/Update', '/System/Volumes/xarts', '/System/Volumes/iSCPreboot', '/System/Volumes/Hardware'];

function isPseudo(filesystem: string, mount: string, sizeBytes: number): boolean {
  if (sizeBytes === 0) return true;
  if (PSEUDO_FS.has(filesystem) || filesystem.startsWith('map ')) return true;
  // Inside a container `/` is an overlay and is the real disk; elsewhere overlays are docker's layers.
  if (filesystem === 'overlay') return mount !== '/';
  return PSEUDO_MOUNT_PREFIXES.some((p) => mount === p || mount.startsWith(p.endsWith('/') ? p : `${p}/`));
}

/** Parses POSIX `df -kP` output. Names and mount points may contain spaces, hence the anchored regex. */
export function parseDf(text: string): DiskUsage[] {
  const disks: DiskUsage[] = [];
  const seen = new Set<string>();
  for (const line of text.split('\n').slice(1)) {
    const m = /^(.+?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)%\s+(\/.*)$/.exec(line.trimEnd());
    if (!m) continue;
    const [, filesystem = '', size = '0', used = '0', avail = '0', pct = '0', mount = ''] = m;
    const disk: DiskUsage = {
      mount,
      filesystem,
      sizeBytes: Number(size) * 1024,
      usedBytes: Number(used) * 1024,
      availBytes: Number(avail) * 1024,
      usePercent: Number(pct),
    };
    if (isPseudo(filesystem, mount, disk.sizeBytes) || seen.has(mount)) continue;
    seen.add(mount);
    disks.push(disk);
  }
  return disks;
}

/** Keeps real disks only (no pseudo file systems, each mount once). */
export function realDisks(all: readonly DiskUsage[]): DiskUsage[] {
  const seen = new Set<string>();
  return all.filter((d) => {
    if (isPseudo(d.filesystem, d.mount, d.sizeBytes) || seen.has(d.mount)) return false;
    seen.add(d.mount);
    return true;
  });
}

/** Disk usage, or [] when df is missing or unusable: a device without df is still worth describing. */
async function readDisks(ctx: CapabilityContext): Promise<DiskUsage[]> {
  // statfs in-process where the host offers it (local, the agent): no df process per call.
  const direct = await ctx.host.diskUsage?.().catch(() => null);
  if (direct) return realDisks(direct);
  try {
    const out = await ctx.host.exec({
      argv: ['df', '-kP'],
      env: { LC_ALL: 'C' },
      // A hung network mount can stall df; a status check should not wait the full budget for it.
      timeoutMs: Math.min(ctx.limits.timeoutMs, 15_000),
      maxOutputBytes: ctx.limits.maxOutputBytes,
    });
    // df exits non-zero when one mount is unreadable but still reports the rest.
    return parseDf(out.stdout.toString('utf8'));
  } catch {
    return [];
  }
}

function formatUptime(s: number): string {
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  return `${m}m`;
}

function memAvailablePercent(info: SystemInfo): number {
  const { totalBytes, availableBytes } = info.memory;
  return totalBytes > 0 ? Math.round((availableBytes / totalBytes) * 1000) / 10 : 100;
}

const MAX_DISK_LINES = 6;

const sysInfo = defineCapability({
  name: 'sys.info',
  description:
    'Describe the device: hostname, OS, architecture, kernel, uptime, load averages, memory, CPU count and disk usage per mount. ' +
    'Returns a short summary in stdout and the structured values in data.',
  input: z.object({}).strict(),
  risk: 'read',
  run: (_args, ctx) => guarded(async () => {
    const started = performance.now();
    const [info, disks] = await Promise.all([ctx.host.systemInfo(), readDisks(ctx)]);
    const memFree = memAvailablePercent(info);
    const lines = [
      `${info.hostname} · ${info.os} ${info.arch} · kernel ${info.kernel} · up ${formatUptime(info.uptimeS)}`,
      `load ${info.load.map((l) => l.toFixed(2)).join(' ')} · ${info.cpus} cpus`,
      `mem ${formatBytes(info.memory.availableBytes)} free of ${formatBytes(info.memory.totalBytes)} (${memFree}%)`,
    ];
    for (const d of disks.slice(0, MAX_DISK_LINES)) {
      lines.push(`${d.mount} ${d.usePercent}% of ${formatBytes(d.sizeBytes)} (${formatBytes(d.availBytes)} free)`);
    }
    if (disks.length > MAX_DISK_LINES) lines.push(`… ${disks.length - MAX_DISK_LINES} more mounts in data`);
    const { text, truncated } = capText(lines.join('\n'), ctx.limits.maxOutputBytes);
    return okResult({
      stdout: text,
      truncated,
      durationMs: Math.round(performance.now() - started),
      data: { ...info, disks },
    });
  }),
});

type HealthStatus = 'ok' | 'warn' | 'crit';
const RANK: Record<HealthStatus, number> = { ok: 0, warn: 1, crit: 2 };

export interface HealthSummary {
  status: HealthStatus;
  reasons: string[];
  load1PerCpu: number;
  memAvailablePercent: number;
  /** null when no disk could be read (df missing). */
  diskMaxUsePercent: number | null;
  diskMaxMount: string | null;
  uptimeS: number;
}

/** Pure so the thresholds can be tested without a sick machine. */
export function assessHealth(info: SystemInfo, disks: DiskUsage[]): HealthSummary {
  let status: HealthStatus = 'ok';
  const reasons: string[] = [];
  const flag = (level: HealthStatus, reason: string): void => {
    if (RANK[level] > RANK[status]) status = level;
    reasons.push(reason);
  };

  for (const d of disks) {
    if (d.usePercent >= 97) flag('crit', `disk ${d.mount} ${d.usePercent}% full`);
    else if (d.usePercent >= 90) flag('warn', `disk ${d.mount} ${d.usePercent}% full`);
  }
  const mem = memAvailablePercent(info);
  if (mem < 3) flag('crit', `memory ${mem}% available`);
  else if (mem < 10) flag('warn', `memory ${mem}% available`);
  const load1PerCpu = Math.round((info.load[0] / Math.max(1, info.cpus)) * 100) / 100;
  if (load1PerCpu > 4) flag('crit', `load ${load1PerCpu} per cpu`);
  else if (load1PerCpu > 2) flag('warn', `load ${load1PerCpu} per cpu`);

  let worst: DiskUsage | undefined;
  for (const d of disks) if (!worst || d.usePercent > worst.usePercent) worst = d;
  return {
    status,
    reasons,
    load1PerCpu,
    memAvailablePercent: mem,
    diskMaxUsePercent: worst?.usePercent ?? null,
    diskMaxMount: worst?.mount ?? null,
    uptimeS: info.uptimeS,
  };
}

export function formatHealth(h: HealthSummary): string {
  const head = h.reasons.length > 0 ? `${h.status}: ${h.reasons.join(', ')}` : h.status;
  const disk = h.diskMaxUsePercent === null ? 'disk unknown' : `disk max ${h.diskMaxUsePercent}% (${h.diskMaxMount})`;
  return `${head} · load ${h.load1PerCpu.toFixed(2)}/cpu · mem ${Math.round(h.memAvailablePercent)}% free · ${disk}`;
}

const sysHealth = defineCapability({
  name: 'sys.health',
  description:
    "Quick health check of the device: status 'ok', 'warn' or 'crit' with the reasons (disk nearly full, low memory, high load). " +
    'Returns one summary line in stdout and the numbers in data. Use this first when asked whether a machine is fine.',
  input: z.object({}).strict(),
  risk: 'read',
  run: (_args, ctx) => guarded(async () => {
    const started = performance.now();
    const [info, disks] = await Promise.all([ctx.host.systemInfo(), readDisks(ctx)]);
    const health = assessHealth(info, disks);
    const { text, truncated } = capText(formatHealth(health), ctx.limits.maxOutputBytes);
    return okResult({ stdout: text, truncated, durationMs: Math.round(performance.now() - started), data: health });
  }),
});

export const sysCapabilities: AnyCapability[] = [sysInfo, sysHealth];
