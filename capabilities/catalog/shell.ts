/**
 * shell.exec runs an argv directly (no shell, so metacharacters stay literal); shell.eval is the
 * one capability that hands a string to `sh -c`, which is why it is 'admin' and needs `eval` enabled.
 */
import { z } from 'zod';
import { defineCapability, fromExec, type AnyCapability } from '../capability.js';
import type { ExecRequest } from '../transports/types.js';
import { execOn, guarded, noNul, PathArg } from './shared.js';

// ---- shell.exec / shell.eval ------------------------------------------------------------------

const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

const execInput = z
  .object({
    argv: z
      .array(z.string().max(8192).refine(noNul, 'must not contain NUL bytes'))
      .min(1)
      .max(256)
      .refine((a) => (a[0] ?? '') !== '', 'argv[0] (the program) must not be empty')
      .describe('Program and arguments, e.g. ["ls","-la","/tmp"]. Run directly, not through a shell: quotes, pipes, ; and $() are passed literally.'),
    cwd: PathArg.optional().describe('Absolute working directory (default: the agent\'s own).'),
    env: z
      .record(z.string().max(128).regex(ENV_KEY, 'environment variable names must match ^[A-Za-z_][A-Za-z0-9_]*$'), z.string().max(8192).refine(noNul, 'must not contain NUL bytes'))
      .refine((e) => Object.keys(e).length <= 32, 'at most 32 environment variables')
      .optional()
      .describe('Extra environment variables (at most 32).'),
    stdin: z.string().max(1024 * 1024).optional().describe('Text written to the program\'s standard input.'),
    timeout_s: z.number().int().min(1).max(3600).optional().describe('Kill the program after this many seconds (capped by the device limit).'),
  })
  .strict();

const shellExec = defineCapability({
  name: 'shell.exec',
  description:
    'Runs one program with an argument list (no shell) and returns its exit code, stdout and stderr. Prefer a more specific capability when one exists.',
  input: execInput,
  risk: 'exec',
  scope: { kind: 'binary' },
  run: (args, ctx) =>
    guarded(async () => {
      const opts: Omit<Partial<ExecRequest>, 'argv' | 'maxOutputBytes'> = {};
      if (args.cwd !== undefined) opts.cwd = args.cwd;
      if (args.env !== undefined) opts.env = args.env;
      if (args.stdin !== undefined) opts.stdin = args.stdin;
      if (args.timeout_s !== undefined) opts.timeoutMs = args.timeout_s * 1000;
      return fromExec(await execOn(ctx, args.argv, opts));
    }),
});

const shellEval = defineCapability({
  name: 'shell.eval',
  description:
    'Runs a shell script with `sh -c` (pipes, redirects, variables work) and returns its exit code, stdout and stderr. Only when shell.exec cannot do it.',
  input: z
    .object({
      script: z.string().min(1).max(64 * 1024).refine(noNul, 'must not contain NUL bytes').describe('POSIX sh script, e.g. "ps aux | sort -k3 -nr | head -5".'),
      cwd: PathArg.optional().describe('Absolute working directory (default: the agent\'s own).'),
    })
    .strict(),
  risk: 'admin',
  scope: { kind: 'eval' },
  run: (args, ctx) =>
    guarded(async () => fromExec(await execOn(ctx, ['sh', '-c', args.script], args.cwd !== undefined ? { cwd: args.cwd } : {}))),
});

export const shellCapabilities: AnyCapability[] = [shellExec, shellEval];
