/**
 * A process and all its descendants, with the memory of each (Linux /proc): what bench/launcher.bench.ts
 * sums for launcher.tree_rss, and what test/bundle-fresh.test.ts checks runs beside the launcher.
 */
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';

export interface ProcMemory { pid: number; name: string; rssKb: number; pssKb: number }

/** The pid and every descendant (from each /proc/<pid>/stat's parent pid), with RSS and PSS. */
export function processTree(root: number): ProcMemory[] {
  const children = new Map<number, number[]>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(e)]);
    } catch {
      // exited meanwhile
    }
  }
  const out: ProcMemory[] = [];
  const visit = (pid: number): void => {
    const m = memoryOf(pid);
    if (m) out.push(m);
    for (const c of children.get(pid) ?? []) visit(c);
  };
  visit(root);
  return out;
}

function memoryOf(pid: number): ProcMemory | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rssKb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
    let pssKb = rssKb;
    try {
      pssKb = Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? rssKb);
    } catch {
      // no smaps_rollup (kernel < 4.14): PSS = RSS
    }
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    const script = argv.find((a, i) => i > 0 && !a.startsWith('-') && /\.(m?js|ts)$/.test(a));
    return { pid, name: script ? path.basename(script) : path.basename(argv[0] ?? '?'), rssKb, pssKb };
  } catch {
    return undefined;
  }
}
