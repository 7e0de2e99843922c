/**
 * docker: list containers, read logs, start/stop/restart. Through the docker CLI, so it works the
 * same over ssh and honours the device's DOCKER_HOST/context setup.
 */
import { z } from 'zod';
import { defineCapability, fromExec, okResult, type AnyCapability, type CapabilityContext, type CapabilityResult } from '../capability.js';
import type { ExecOutcome } from '../transports/types.js';
import { execFailure, execOn, guarded, keyLine } from './shared.js';

const CONTAINER = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;
const containerArg = z
  .string()
  .max(128)
  .regex(CONTAINER, 'container must be a container name or id (letters, digits, _ . -; not starting with -)')
  .describe('Container name or id, e.g. web or 3f2a9c1b.');
const containerScope = { kind: 'names', option: 'containers', args: ['container'] } as const;

function docker(ctx: CapabilityContext, args: string[]): Promise<ExecOutcome> {
  return execOn(ctx, ['docker', ...args]);
}

/** Says what went wrong in words: the daemon is down, the socket is not ours, the container is unknown. */
function dockerFailure(outcome: ExecOutcome, ctx: CapabilityContext, what: string): CapabilityResult {
  if (outcome.timedOut) return fromExec(outcome);
  const err = outcome.stderr.toString('utf8');
  if (/Cannot connect to the Docker daemon|Is the docker daemon running|error during connect/i.test(err))
    return execFailure(outcome, 'exec_failed', `docker is installed on ${ctx.device} but its daemon is not running or not reachable`);
  if (/permission denied.*docker/i.test(err))
    return execFailure(outcome, 'permission', `permission denied on the docker socket on ${ctx.device} (the user needs to be in the docker group)`);
  const missing = /No such container:?\s*(\S+)?/i.exec(err);
  if (missing) return execFailure(outcome, 'not_found', `no such container${missing[1] ? `: ${missing[1]}` : ''} on ${ctx.device}`);
  const line = keyLine(err);
  return execFailure(outcome, 'exec_failed', `${what} failed${line ? `: ${line}` : ` with exit code ${outcome.exitCode}`}`);
}

interface ContainerRow {
  id: string;
  name: string;
  image: string;
  state: string;
  status: string;
  ports: string;
  created: string;
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

const dockerPs = defineCapability({
  name: 'docker.ps',
  description: 'Lists docker containers (running only, or all) with name, image, state, status and ports.',
  input: z.object({ all: z.boolean().default(false).describe('Include stopped containers.') }).strict(),
  risk: 'read',
  run: (args, ctx) =>
    guarded(async () => {
      const out = await docker(ctx, ['ps', ...(args.all ? ['--all'] : []), '--no-trunc', '--format', '{{json .}}']);
      if (out.exitCode !== 0 || out.timedOut) return dockerFailure(out, ctx, 'docker ps');
      const rows: ContainerRow[] = [];
      for (const line of out.stdout.toString('utf8').split('\n')) {
        if (!line.trim()) continue;
        let j: Record<string, unknown>;
        try {
          j = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue; // A line cut short by the output cap: skip it, `truncated` already says so.
        }
        rows.push({
          id: str(j['ID']).slice(0, 12),
          name: str(j['Names']),
          image: str(j['Image']),
          state: str(j['State']),
          status: str(j['Status']),
          ports: str(j['Ports']),
          created: str(j['CreatedAt']),
        });
      }
      const text = rows.length
        ? rows.map((r) => `${r.name}  ${r.image}  ${r.status}${r.ports ? `  ${r.ports}` : ''}`).join('\n')
        : args.all ? 'no containers' : 'no running containers';
      return okResult({ durationMs: out.durationMs, truncated: out.truncated, exitCode: 0, stdout: text, data: rows });
    }),
});

// Relative durations docker accepts (10m, 1h30m, 45s) or an RFC 3339 timestamp.
const SINCE = /^(?:(?:\d{1,6}[smh]){1,3}|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2}))$/;

const dockerLogs = defineCapability({
  name: 'docker.logs',
  description: "Returns the last lines of a container's log (its stdout in stdout, its stderr in stderr), optionally only since a time.",
  input: z
    .object({
      container: containerArg,
      tail: z.number().int().min(1).max(5000).default(200).describe('How many lines from the end (default 200).'),
      since: z.string().max(40).regex(SINCE, 'since must be a duration like 10m, 1h, 1h30m or an RFC 3339 time').optional()
        .describe('Only lines newer than this: a duration like 10m or 2h, or an RFC 3339 time like 2024-05-01T12:00:00Z.'),
    })
    .strict(),
  risk: 'read',
  scope: containerScope,
  run: (args, ctx) =>
    guarded(async () => {
      const argv = ['logs', '--tail', String(args.tail)];
      if (args.since !== undefined) argv.push('--since', args.since);
      argv.push('--', args.container);
      const out = await docker(ctx, argv);
      if (out.exitCode !== 0 || out.timedOut) return dockerFailure(out, ctx, 'docker logs');
      return fromExec(out, { container: args.container, tail: args.tail });
    }),
});

function lifecycle(verb: 'start' | 'stop' | 'restart', description: string, past: string) {
  return defineCapability({
    name: `docker.${verb}`,
    description,
    input: z.object({ container: containerArg }).strict(),
    risk: 'write',
    scope: containerScope,
    run: (args, ctx) =>
      guarded(async () => {
        const out = await docker(ctx, [verb, '--', args.container]);
        if (out.exitCode !== 0 || out.timedOut) return dockerFailure(out, ctx, `docker ${verb}`);
        return okResult({ durationMs: out.durationMs, exitCode: 0, stdout: `${past} ${args.container}`, data: { container: args.container } });
      }),
  });
}

export const dockerCapabilities: AnyCapability[] = [
  dockerPs,
  dockerLogs,
  lifecycle('start', 'Starts a stopped docker container.', 'started'),
  lifecycle('stop', 'Stops a running docker container (SIGTERM, then SIGKILL after its grace period).', 'stopped'),
  lifecycle('restart', 'Restarts a docker container.', 'restarted'),
];
