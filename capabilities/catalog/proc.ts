/**
 * `proc.*`: see what is running and signal a process. Uses `ps`/`kill` through host.exec so that
 * the same code works on Linux (procps) and macOS, locally or over ssh.
 */
import { z } from 'zod';
import { defineCapability, failResult, fromExec, okResult, type AnyCapability } from '../capability.js';
import { capText, formatBytes, guarded } from './shared.js';

export interface ProcRow {
  pid: number;
  ppid: number;
  user: string;
  cpu: number;
  mem: number;
  rssKb: number;
  command: string;
}

/** Parses `ps -axo pid=,ppid=,user=,pcpu=,pmem=,rss=,comm=`; the command is last since it may contain spaces. */
export function parsePs(text: string): ProcRow[] {
  const rows: ProcRow[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(\d+)\s+(\d+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [, pid = '0', ppid = '0', user = '', cpu = '0', mem = '0', rss = '0', command = ''] = m;
    rows.push({ pid: Number(pid), ppid: Number(ppid), user, cpu: Number(cpu), mem: Number(mem), rssKb: Number(rss), command: command.trim() });
  }
  return rows;
}

function basename(command: string): string {
  // macOS reports the full executable path; the last component is what a person recognises.
  const slash = command.lastIndexOf('/');
  return slash >= 0 && slash < command.length - 1 ? command.slice(slash + 1) : command;
}

function formatTable(rows: ProcRow[]): string {
  const userWidth = Math.min(10, Math.max(4, ...rows.map((r) => r.user.length)));
  const header = `${'PID'.padStart(7)} ${'USER'.padEnd(userWidth)}  CPU%  MEM%   RSS COMMAND`;
  const lines = rows.map(
    (r) =>
      `${String(r.pid).padStart(7)} ${r.user.slice(0, userWidth).padEnd(userWidth)} ${r.cpu.toFixed(1).padStart(5)} ${r.mem
        .toFixed(1)
        .padStart(5)} ${formatBytes(r.rssKb * 1024).padStart(5)} ${basename(r.command).slice(0, 40)}`,
  );
  return [header, ...lines].join('\n');
}

const procList = defineCapability({
  name: 'proc.list',
  description:
    'List the top running processes sorted by CPU or memory use, with pid, parent pid, user, CPU %, memory %, resident memory and command name. ' +
    'Returns a compact table in stdout and the rows in data.',
  input: z
    .object({
      sort: z.enum(['cpu', 'mem']).default('cpu').describe("Sort by 'cpu' (CPU %) or 'mem' (resident memory), highest first."),
      limit: z.number().int().min(1).max(200).default(15).describe('Number of processes to return.'),
    })
    .strict(),
  risk: 'read',
  run: (args, ctx) => guarded(async () => {
    const outcome = await ctx.host.exec({
      argv: ['ps', '-axo', 'pid=,ppid=,user=,pcpu=,pmem=,rss=,comm='],
      // A decimal comma in some locales would break the number parsing.
      env: { LC_ALL: 'C' },
      timeoutMs: ctx.limits.timeoutMs,
      // ps output for thousands of processes is larger than what we show; parse it all, cap what we return.
      maxOutputBytes: Math.max(ctx.limits.maxOutputBytes, 4 * 1024 * 1024),
    });
    if (outcome.exitCode !== 0 || outcome.timedOut) return fromExec(outcome);
    const all = parsePs(outcome.stdout.toString('utf8'));
    const primary = args.sort === 'cpu' ? (r: ProcRow) => r.cpu : (r: ProcRow) => r.rssKb;
    const secondary = args.sort === 'cpu' ? (r: ProcRow) => r.rssKb : (r: ProcRow) => r.cpu;
    all.sort((a, b) => primary(b) - primary(a) || secondary(b) - secondary(a) || a.pid - b.pid);
    const rows = all.slice(0, args.limit);
    const out = capText(formatTable(rows), ctx.limits.maxOutputBytes);
    return okResult({
      stdout: out.text,
      truncated: out.truncated || outcome.truncated,
      durationMs: outcome.durationMs,
      data: { sort: args.sort, total: all.length, rows },
    });
  }),
});

const SIGNALS = ['TERM', 'KILL', 'HUP', 'INT', 'USR1', 'USR2', 'QUIT'] as const;

const procKill = defineCapability({
  name: 'proc.kill',
  description:
    'Send a signal to one process by pid (default TERM, a polite stop; KILL forces it). ' +
    'Refuses pid 1 and the agent itself. Returns whether the signal was delivered.',
  input: z
    .object({
      pid: z.number().int().min(0).max(2_147_483_647).describe('Process id, as shown by proc.list.'),
      signal: z.enum(SIGNALS).default('TERM').describe('Signal name without the SIG prefix.'),
    })
    .strict(),
  risk: 'exec',
  run: (args, ctx) => guarded(async () => {
    const started = performance.now();
    // pid 0 and negative pids address process groups; pid 1 is init. Both would take the device down.
    if (args.pid <= 1) {
      return failResult({ code: 'policy_denied', message: `refusing to signal pid ${args.pid}: it is init or a process group` });
    }
    if (ctx.host.selfPid !== undefined && args.pid === ctx.host.selfPid) {
      return failResult({
        code: 'policy_denied',
        message: `refusing to signal pid ${args.pid}: it is the meshpilot agent on ${ctx.device} itself`,
      });
    }
    const outcome = await ctx.host.exec({
      argv: ['kill', '-s', args.signal, String(args.pid)],
      env: { LC_ALL: 'C' },
      timeoutMs: ctx.limits.timeoutMs,
      maxOutputBytes: ctx.limits.maxOutputBytes,
    });
    const durationMs = Math.round(performance.now() - started);
    if (outcome.exitCode === 0 && !outcome.timedOut) {
      return okResult({
        stdout: `sent SIG${args.signal} to ${args.pid}`,
        durationMs,
        exitCode: 0,
        data: { pid: args.pid, signal: args.signal },
      });
    }
    const stderr = outcome.stderr.toString('utf8');
    if (/no such process/i.test(stderr)) {
      return failResult({ code: 'not_found', message: `no process with pid ${args.pid} on ${ctx.device}` }, durationMs, { stderr });
    }
    if (/not permitted|permission denied/i.test(stderr)) {
      return failResult({ code: 'permission', message: `not allowed to signal pid ${args.pid} (owned by another user?)` }, durationMs, { stderr });
    }
    return fromExec(outcome);
  }),
});

export const procCapabilities: AnyCapability[] = [procList, procKill];
