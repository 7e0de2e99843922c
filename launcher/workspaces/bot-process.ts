/**
 * Finding a workspace's bot process from outside the launcher (the CLI): on Linux, the launcher's
 * child that holds MESHPILOT_HOME/bots/<name>/ files open (its Matrix sync state). Used to wait for a
 * removed workspace's bot to stop and to show bot states in `workspace ls`. Elsewhere it knows nothing
 * (undefined), and callers say so rather than guess.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';

/** The launcher's direct children (every thread's children list), or undefined when /proc cannot tell. */
export function childPids(pid: number): number[] | undefined {
  if (process.platform !== 'linux') return undefined;
  let tasks: string[];
  try { tasks = readdirSync(`/proc/${pid}/task`); } catch { return undefined; }
  const out = new Set<number>();
  for (const t of tasks) {
    try {
      for (const c of readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/)) if (c) out.add(Number(c));
    } catch { /* thread gone */ }
  }
  return [...out];
}

/** Each child's bot name (the bots/<name>/ folder it holds open); children not known are left out. */
export function botProcesses(homeRoot: string, launcherPid: number): Map<string, number> | undefined {
  const kids = childPids(launcherPid);
  if (!kids) return undefined;
  const prefix = path.join(homeRoot, 'bots') + path.sep;
  const out = new Map<string, number>();
  for (const pid of kids) {
    let fds: string[];
    try { fds = readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      let target: string;
      try { target = readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { continue; }
      if (!target.startsWith(prefix)) continue;
      const name = target.slice(prefix.length).split(path.sep)[0];
      if (name) { out.set(name, pid); break; }
    }
  }
  return out;
}
