/**
 * Running shell scripts on the machines enrollment touches: the target over ssh, the hub over ssh
 * or locally. This is the one launcher module that holds an ssh/local Host: enrollment installs
 * the agent and WireGuard, which no capability may do (test/invoke.test.ts checks it).
 */
import { existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MeshpilotError } from '../../capabilities/errors.js';
import type { TransportConfig } from '../../capabilities/manifest.js';
import { LocalHost } from '../../capabilities/transports/local.js';
import { SshHost } from '../../capabilities/transports/ssh.js';
import type { Host } from '../../capabilities/transports/types.js';

export interface ShResult { code: number | null; stdout: string; stderr: string }

/** A machine enrollment runs shell scripts on: a target over ssh, the hub over ssh or locally. */
export interface Remote {
  readonly where: string;
  sh(script: string, o?: { stdin?: string | Buffer; timeoutMs?: number; privileged?: boolean }): Promise<ShResult>;
  /** sh() that throws exec_failed (with the first lines of stderr) on a non-zero exit. */
  shOk(script: string, o?: { stdin?: string | Buffer; timeoutMs?: number; privileged?: boolean; what?: string }): Promise<string>;
  close(): Promise<void>;
}

class HostRemote implements Remote {
  constructor(readonly where: string, private readonly host: Host, private readonly sudo: () => boolean) {}

  async sh(script: string, o: { stdin?: string | Buffer; timeoutMs?: number; privileged?: boolean } = {}): Promise<ShResult> {
    const argv = o.privileged && this.sudo() ? ['sudo', '-n', 'sh', '-c', script] : ['sh', '-c', script];
    const out = await this.host.exec({
      argv, timeoutMs: o.timeoutMs ?? 60_000, maxOutputBytes: 1024 * 1024, env: { LC_ALL: 'C' },
      ...(o.stdin !== undefined ? { stdin: o.stdin } : {}),
    });
    if (out.timedOut) throw new MeshpilotError('timeout', `a command on ${this.where} did not finish in ${Math.round((o.timeoutMs ?? 60_000) / 1000)} s`);
    return { code: out.exitCode, stdout: out.stdout.toString('utf8'), stderr: out.stderr.toString('utf8') };
  }

  async shOk(script: string, o: { stdin?: string | Buffer; timeoutMs?: number; privileged?: boolean; what?: string } = {}): Promise<string> {
    const r = await this.sh(script, o);
    if (r.code !== 0) {
      const why = r.stderr.trim().split('\n').filter(Boolean).slice(-3).join(' / ').slice(0, 600) || `exit ${r.code}`;
      throw new MeshpilotError('exec_failed', `${o.what ?? 'a command'} failed on ${this.where}: ${why}`);
    }
    return r.stdout;
  }

  async close(): Promise<void> {
    await this.host.close?.();
  }
}

/** `alias` or `user@host[:port]` (a bare name is an alias when the ssh config file exists, else a host). */
export function parseSshSpec(spec: string, key?: string): Extract<TransportConfig, { kind: 'ssh' }> {
  const s = spec.trim();
  if (!s || s.length > 300 || /\s/.test(s)) throw new MeshpilotError('usage', `--ssh must be an alias or user@host[:port] (got ${JSON.stringify(spec.slice(0, 80))})`);
  const m = /^(?:([A-Za-z0-9._-]{1,64})@)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253})(?::(\d{1,5}))?$/.exec(s);
  if (!m) throw new MeshpilotError('usage', `--ssh must be an alias or user@host[:port] (got ${JSON.stringify(spec.slice(0, 80))})`);
  const [, user, hostRaw = '', portRaw] = m;
  const host = hostRaw.replace(/^\[|\]$/g, '');
  const port = portRaw ? Number(portRaw) : undefined;
  if (port !== undefined && (port < 1 || port > 65535)) throw new MeshpilotError('usage', `--ssh port ${portRaw} is not a port number`);
  const keyPart = key ? { key: path.resolve(key) } : {};
  if (!user && port === undefined && existsSync(process.env['MESHPILOT_SSH_CONFIG'] || path.join(os.homedir(), '.ssh', 'config')) && !/^[\d.]+$/.test(host)) {
    return { kind: 'ssh', alias: host, ...keyPart };
  }
  return { kind: 'ssh', host, ...(port !== undefined ? { port } : {}), ...(user ? { user } : {}), ...keyPart };
}

export function sshRemote(label: string, transport: Extract<TransportConfig, { kind: 'ssh' }>, sudo: () => boolean = () => false): Remote {
  const host = new SshHost(label, transport);
  const t = host.resolved();
  return new HostRemote(`${label} (${t.user}@${t.host}:${t.port})`, host, sudo);
}

export function localRemote(label: string): Remote {
  return new HostRemote(label, new LocalHost(label), () => process.getuid?.() !== 0);
}

/** Single-quotes a value for sh. */
export function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
