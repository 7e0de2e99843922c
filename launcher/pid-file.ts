/**
 * The launcher's pid file (MESHPILOT_HOME/launcher.pid): `<pid>\n[start=<ticks>\n]`. `meshpilot up`
 * holds it; `meshpilot reload`, add-pc and revoke read it to reach the running launcher.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { MeshpilotError } from '../capabilities/errors.js';

export function pidFilePath(home: string): string {
  return path.join(home, 'launcher.pid');
}

/** Process start time in clock ticks since boot (Linux /proc); undefined elsewhere or when gone. */
export function processStartTicks(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19]; // field 22, starttime
  } catch {
    return undefined;
  }
}

/** True while a process with this pid exists (EPERM: it exists, owned by someone else). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface PidFileInfo {
  pid: number;
  file: string;
  /** The process exists and (on Linux) is the same process that wrote the file (not a reused pid). */
  alive: boolean;
}

/** The launcher's pid file, or undefined when there is none (or it is unreadable/garbled). */
export function readPidFile(home: string): PidFileInfo | undefined {
  const file = pidFilePath(home);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  if (text.length > 200) return undefined;
  const [first, second] = text.split('\n');
  const pid = Number(first?.trim());
  if (!Number.isInteger(pid) || pid <= 1 || pid > 4_194_304) return undefined;
  let alive = pidAlive(pid);
  const recorded = /^start=(\d+)$/.exec(second?.trim() ?? '')?.[1];
  if (alive && recorded !== undefined) {
    const now = processStartTicks(pid);
    if (now !== undefined && now !== recorded) alive = false; // the pid was reused by another process
  }
  return { pid, file, alive };
}

/**
 * Writes MESHPILOT_HOME/launcher.pid (0600, atomically). Throws MeshpilotError('config') when
 * another live launcher already holds it; a stale file is replaced.
 */
export function writePidFile(home: string, pid: number = process.pid): string {
  const existing = readPidFile(home);
  if (existing && existing.alive && existing.pid !== pid) {
    throw new MeshpilotError('config', `another launcher is already running (pid ${existing.pid}, ${existing.file}); stop it first or run \`meshpilot reload\``);
  }
  const file = pidFilePath(home);
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const start = processStartTicks(pid);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${pid}\n${start !== undefined ? `start=${start}\n` : ''}`, { mode: 0o600 });
  renameSync(tmp, file);
  return file;
}

/** Removes the pid file if it names `pid` (so a launcher never removes another one's file). */
export function removePidFile(home: string, pid: number = process.pid): void {
  const existing = readPidFile(home);
  if (existing && existing.pid === pid) rmSync(existing.file, { force: true });
}
