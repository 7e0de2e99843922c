/**
 * git: status, log, fast-forward pull and clone. Every call runs with prompts disabled, so a
 * missing credential fails at once instead of hanging until the timeout.
 */
import { z } from 'zod';
import { defineCapability, failResult, fromExec, okResult, type AnyCapability, type CapabilityContext, type CapabilityResult } from '../capability.js';
import type { ExecOutcome } from '../transports/types.js';
import { PathArg, execFailure, execOn, guarded, keyLine } from './shared.js';

// GIT_TERMINAL_PROMPT/GCM_INTERACTIVE: never ask for credentials; LC_ALL=C: stable messages to match on.
const GIT_ENV = { GIT_TERMINAL_PROMPT: '0', GCM_INTERACTIVE: 'never', LC_ALL: 'C' };

function git(ctx: CapabilityContext, args: string[]): Promise<ExecOutcome> {
  return execOn(ctx, ['git', ...args], { env: GIT_ENV });
}

/** Refs and remotes: no leading '-', no '..', nothing git or a shell would read specially. */
const REF_NAME = /^[A-Za-z0-9][A-Za-z0-9._/+-]{0,254}$/;
const refName = (what: string) =>
  z.string().max(255).regex(REF_NAME, `${what} must be a plain name (letters, digits, . _ / + -; not starting with -)`)
    .refine((s) => !s.includes('..') && !s.endsWith('.lock') && !s.endsWith('/'), `${what} is not a valid git name`);
const REMOTE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Maps the failures people actually hit to a message about the repository, not git's exit code. */
function gitFailure(outcome: ExecOutcome, repo: string, what: string): CapabilityResult {
  const err = outcome.stderr.toString('utf8');
  if (outcome.timedOut) return fromExec(outcome);
  if (/not a git repository/i.test(err)) return execFailure(outcome, 'not_found', `${repo} is not a git repository`);
  if (/cannot change to/i.test(err)) return execFailure(outcome, 'not_found', `${repo} does not exist`);
  if (/dubious ownership/i.test(err))
    return execFailure(outcome, 'permission', `git refuses ${repo}: it is owned by another user (see git config safe.directory)`);
  const line = keyLine(err);
  return execFailure(outcome, 'exec_failed', `${what} failed${line ? `: ${line}` : ` with exit code ${outcome.exitCode}`}`);
}

// ---- status -------------------------------------------------------------------------------------

interface StatusData {
  branch: string | null;
  upstream: string | null;
  ahead: number;
  behind: number;
  changes: { status: string; path: string; from?: string }[];
}

/** Parses `status --porcelain=v1 -z --branch` (NUL-separated, so paths need no unquoting). */
export function parseStatus(raw: string): StatusData {
  const data: StatusData = { branch: null, upstream: null, ahead: 0, behind: 0, changes: [] };
  const fields = raw.split('\0');
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i] ?? '';
    if (f === '') continue;
    if (f.startsWith('## ')) {
      const head = f.slice(3);
      const initial = /^(?:No commits yet|Initial commit) on (.+)$/.exec(head);
      if (initial) data.branch = initial[1] ?? null;
      else if (!head.startsWith('HEAD (no branch)')) {
        const m = /^(.+?)(?:\.\.\.(\S+))?(?: \[(.*)\])?$/.exec(head);
        data.branch = m?.[1] ?? head;
        data.upstream = m?.[2] ?? null;
        data.ahead = Number(/ahead (\d+)/.exec(m?.[3] ?? '')?.[1] ?? 0);
        data.behind = Number(/behind (\d+)/.exec(m?.[3] ?? '')?.[1] ?? 0);
      }
      continue;
    }
    const status = f.slice(0, 2);
    const change: StatusData['changes'][number] = { status, path: f.slice(3) };
    // Renames and copies carry the original path as the next NUL field.
    if (status.includes('R') || status.includes('C')) change.from = fields[++i] ?? '';
    data.changes.push(change);
  }
  return data;
}

function statusText(d: StatusData): string {
  const where = d.branch ? `on ${d.branch}` : 'detached HEAD';
  const track = [d.ahead ? `ahead ${d.ahead}` : '', d.behind ? `behind ${d.behind}` : ''].filter(Boolean).join(', ');
  const head = `${where}${d.upstream ? ` (${d.upstream}${track ? `: ${track}` : ''})` : ''}`;
  if (d.changes.length === 0) return `${head}, clean`;
  const lines = d.changes.map((c) => `${c.status} ${c.from ? `${c.from} -> ` : ''}${c.path}`);
  return `${head}, ${d.changes.length} change(s)\n${lines.join('\n')}`;
}

const repoArg = PathArg.describe('Absolute path of the repository (its working tree).');

const gitStatus = defineCapability({
  name: 'git.status',
  description:
    'Shows the branch, how far it is ahead/behind its upstream, and the changed/untracked files of a git repository.',
  input: z.object({ repo: repoArg }).strict(),
  risk: 'read',
  scope: { kind: 'paths', args: ['repo'] },
  run: (args, ctx) =>
    guarded(async () => {
      const out = await git(ctx, ['-C', args.repo, 'status', '--porcelain=v1', '-z', '--branch']);
      if (out.exitCode !== 0 || out.timedOut) return gitFailure(out, args.repo, 'git status');
      const data = parseStatus(out.stdout.toString('utf8'));
      return okResult({ durationMs: out.durationMs, truncated: out.truncated, exitCode: 0, stdout: statusText(data), data });
    }),
});

// ---- log ------------------------------------------------------------------------------------------

// Unit/record separators cannot occur in names or one-line subjects, so splitting is unambiguous.
const US = '\x1f';
const RS = '\x1e';

const gitLog = defineCapability({
  name: 'git.log',
  description: 'Lists the most recent commits of a git repository (hash, author, date, subject), newest first.',
  input: z
    .object({
      repo: repoArg,
      n: z.number().int().min(1).max(500).default(20).describe('How many commits (default 20).'),
    })
    .strict(),
  risk: 'read',
  scope: { kind: 'paths', args: ['repo'] },
  run: (args, ctx) =>
    guarded(async () => {
      const out = await git(ctx, ['-C', args.repo, 'log', '-n', String(args.n), '--no-color', `--format=%H${US}%an${US}%aI${US}%s${RS}`]);
      if (out.exitCode !== 0 || out.timedOut) {
        // A fresh repository has no commits yet: that is an empty log, not an error.
        if (/does not have any commits yet/.test(out.stderr.toString('utf8')))
          return okResult({ durationMs: out.durationMs, exitCode: 0, stdout: 'no commits yet', data: [] });
        return gitFailure(out, args.repo, 'git log');
      }
      const data = out.stdout
        .toString('utf8')
        .split(RS)
        .map((r) => r.replace(/^\n/, ''))
        .filter((r) => r !== '')
        .map((r) => {
          const [hash = '', author = '', date = '', subject = ''] = r.split(US);
          return { hash, author, date, subject };
        });
      const text = data.map((c) => `${c.hash.slice(0, 7)} ${c.date.slice(0, 10)} ${c.author}: ${c.subject}`).join('\n');
      return okResult({ durationMs: out.durationMs, truncated: out.truncated, exitCode: 0, stdout: text, data });
    }),
});

// ---- pull -----------------------------------------------------------------------------------------

async function headOf(ctx: CapabilityContext, repo: string): Promise<string | null> {
  const out = await git(ctx, ['-C', repo, 'rev-parse', '--verify', '-q', 'HEAD']);
  return out.exitCode === 0 ? out.stdout.toString('utf8').trim() : null;
}

const gitPull = defineCapability({
  name: 'git.pull',
  description:
    'Fast-forwards a git repository from its upstream (or the given remote/branch); refuses to merge if histories diverged. Returns the commit before and after.',
  input: z
    .object({
      repo: repoArg,
      remote: z.string().max(128).regex(REMOTE_NAME, 'remote must be a remote name like origin').optional().describe('Remote name, e.g. origin (default: the branch\'s upstream).'),
      branch: refName('branch').optional().describe('Branch to pull from the remote; needs remote.'),
    })
    .strict()
    .refine((a) => a.branch === undefined || a.remote !== undefined, { message: 'branch needs remote (e.g. remote=origin)', path: ['branch'] }),
  risk: 'write',
  scope: { kind: 'paths', args: ['repo'] },
  run: (args, ctx) =>
    guarded(async () => {
      const before = await headOf(ctx, args.repo);
      const positional = args.remote !== undefined ? ['--', args.remote, ...(args.branch !== undefined ? [args.branch] : [])] : [];
      const out = await git(ctx, ['-C', args.repo, 'pull', '--ff-only', '--no-rebase', ...positional]);
      if (out.exitCode !== 0 || out.timedOut) return gitFailure(out, args.repo, 'git pull');
      const after = await headOf(ctx, args.repo);
      const updated = before !== after;
      const summary = updated ? `updated ${before?.slice(0, 7) ?? '(none)'} -> ${after?.slice(0, 7) ?? '(none)'}` : 'already up to date';
      const detail = out.stdout.toString('utf8').trim();
      return okResult({
        durationMs: out.durationMs,
        truncated: out.truncated,
        exitCode: 0,
        stdout: updated && detail ? `${summary}\n${detail}` : summary,
        stderr: out.stderr.toString('utf8'),
        data: { updated, before, after },
      });
    }),
});

// ---- clone ----------------------------------------------------------------------------------------

/**
 * Why we refuse a URL, or null if it is one of the accepted forms. Git itself would run
 * `ext::sh -c …` transports and read `--upload-pack=…` as an option, so both are refused here.
 */
export function cloneUrlProblem(url: string): string | null {
  if (url.startsWith('-')) return 'url must not start with -';
  if (/[\s\x00-\x1f\x7f]/.test(url)) return 'url must not contain whitespace or control characters';
  if (/ext::/i.test(url) || /^[A-Za-z0-9+.-]+::/.test(url)) return 'transport::address URLs (such as ext::) are not allowed';
  if (url.startsWith('/')) return null;
  // scp-like form: user@host:path, host not starting with '-' (ssh would read it as an option).
  if (/^[A-Za-z0-9._-]+@[A-Za-z0-9][A-Za-z0-9.-]*:(?!\/\/)\S+$/.test(url)) return null;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'url must be https://, ssh://, git@host:path, file:// or an absolute path';
  }
  if (parsed.protocol === 'file:') return null;
  if (parsed.protocol === 'https:' || parsed.protocol === 'ssh:') {
    if (!parsed.hostname || parsed.hostname.startsWith('-')) return 'url has no valid host';
    return null;
  }
  return `${parsed.protocol}// URLs are not allowed; use https://, ssh://, git@host:path, file:// or an absolute path`;
}

const gitClone = defineCapability({
  name: 'git.clone',
  description:
    'Clones a git repository (https://, ssh://, git@host:path, file:// or a local path) into a new directory, optionally one branch and a shallow depth.',
  input: z
    .object({
      url: z.string().min(1).max(2048).superRefine((u, c) => {
        const problem = cloneUrlProblem(u);
        if (problem) c.addIssue({ code: 'custom', message: problem });
      }).describe('Repository URL, e.g. https://github.com/owner/repo.git or git@github.com:owner/repo.git.'),
      dest: PathArg.describe('Absolute path of the directory to create (must not exist or be empty).'),
      branch: refName('branch').optional().describe('Branch or tag to check out (default: the remote\'s default branch).'),
      depth: z.number().int().min(1).max(1_000_000).optional().describe('Shallow clone with this many commits of history.'),
    })
    .strict(),
  risk: 'write',
  scope: { kind: 'paths', args: ['dest'] },
  run: (args, ctx) =>
    guarded(async () => {
      // Checked again here: run() may be reached by code that did not parse with `input`.
      const problem = cloneUrlProblem(args.url);
      if (problem) return failResult({ code: 'invalid_args', message: problem });
      const argv = ['-c', 'protocol.ext.allow=never', 'clone', '--no-progress'];
      if (args.branch !== undefined) argv.push('--branch', args.branch);
      if (args.depth !== undefined) argv.push('--depth', String(args.depth));
      argv.push('--', args.url, args.dest);
      const out = await git(ctx, argv);
      if (out.exitCode !== 0 || out.timedOut) return gitFailure(out, args.dest, 'git clone');
      return okResult({
        durationMs: out.durationMs,
        truncated: out.truncated,
        exitCode: 0,
        stdout: `cloned ${args.url} into ${args.dest}`,
        stderr: out.stderr.toString('utf8'),
        data: { url: args.url, dest: args.dest, branch: args.branch ?? null },
      });
    }),
});

export const gitCapabilities: AnyCapability[] = [gitStatus, gitLog, gitPull, gitClone];
