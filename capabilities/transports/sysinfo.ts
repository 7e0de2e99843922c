/**
 * A POSIX device described by one shell script (uname, /proc): the ssh transport and the vm transport
 * (capabilities/transports/vm.ts) run SYSINFO_SCRIPT on the device and parse its output here.
 */
import type { SystemInfo } from './types.js';

const ARCH: Record<string, string> = { x86_64: 'x64', amd64: 'x64', aarch64: 'arm64', arm64: 'arm64', i686: 'ia32', i386: 'ia32', armv7l: 'arm' };

export const SYSINFO_SCRIPT = [
  'uname -snrm',
  'if [ -r /proc/uptime ]; then',
  '  cat /proc/uptime /proc/loadavg',
  "  grep -E 'MemTotal|MemAvailable' /proc/meminfo",
  '  nproc 2>/dev/null || getconf _NPROCESSORS_ONLN',
  'else',
  '  echo MP-BSD',
  '  date +%s',
  '  sysctl -n kern.boottime vm.loadavg hw.memsize hw.ncpu 2>/dev/null',
  '  vm_stat 2>/dev/null | grep -E "page size|Pages (free|inactive|speculative)"',
  'fi',
].join('\n');

/** Parses the output of SYSINFO_SCRIPT (Linux; macOS best effort). Exported for tests. */
export function parseSystemInfo(text: string): SystemInfo {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  const [sys = 'unknown', hostname = 'unknown', kernel = 'unknown', machine = 'unknown'] = (lines[0] ?? '').split(/\s+/);
  const info: SystemInfo = {
    hostname, os: sys.toLowerCase(), arch: ARCH[machine] ?? machine, kernel,
    uptimeS: 0, load: [0, 0, 0], memory: { totalBytes: 0, availableBytes: 0 }, cpus: 0,
  };
  if (lines[1] === 'MP-BSD') {
    const now = Number(lines[2]);
    const boot = /sec = (\d+)/.exec(lines[3] ?? '');
    if (boot?.[1] && Number.isFinite(now)) info.uptimeS = Math.max(0, now - Number(boot[1]));
    const load = (lines[4] ?? '').replace(/[{}]/g, '').trim().split(/\s+/).map(Number);
    info.load = [load[0] || 0, load[1] || 0, load[2] || 0];
    info.memory.totalBytes = Number(lines[5]) || 0;
    info.cpus = Number(lines[6]) || 0;
    const pageSize = Number(/page size of (\d+)/.exec(text)?.[1] ?? 4096);
    let freePages = 0;
    for (const m of text.matchAll(/Pages (?:free|inactive|speculative):\s+(\d+)/g)) freePages += Number(m[1]);
    info.memory.availableBytes = freePages * pageSize;
    return info;
  }
  const uptime = /^(\d+(?:\.\d+)?)\s+\d/.exec(lines[1] ?? '');
  if (uptime?.[1]) info.uptimeS = Math.round(Number(uptime[1]));
  const load = (lines[2] ?? '').split(/\s+/).slice(0, 3).map(Number);
  info.load = [load[0] || 0, load[1] || 0, load[2] || 0];
  const total = /MemTotal:\s+(\d+)\s*kB/.exec(text);
  const avail = /MemAvailable:\s+(\d+)\s*kB/.exec(text);
  info.memory = { totalBytes: Number(total?.[1] ?? 0) * 1024, availableBytes: Number(avail?.[1] ?? 0) * 1024 };
  const last = lines[lines.length - 1] ?? '';
  info.cpus = /^\d+$/.test(last) ? Number(last) : 0;
  return info;
}
