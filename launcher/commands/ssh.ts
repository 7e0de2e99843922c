/**
 * `meshpilot ssh …`: host keys of ssh devices.
 *
 *   meshpilot ssh fingerprint <device>                          connect, print the presented key; changes nothing
 *   meshpilot ssh trust <device> --fingerprint SHA256:… [--replace]
 *                                                               trust it (only if the server presents that key)
 *
 * Trusted keys live in MESHPILOT_HOME/known_hosts (see capabilities/transports/ssh-pool.ts).
 * Declarations only at load (the ssh transport and ssh2 load when a command runs).
 */
import { z } from 'zod';
import { defineCommand, defineGroup } from '../../capabilities/commands.js';
import type { Manifest } from '../../capabilities/manifest.js';
import type { SshTarget } from '../../capabilities/transports/ssh.js';
import { EXIT, UsageError, unknownDevice, type CliEntry, type CommandContext } from './context.js';

async function sshTarget(ctx: CommandContext, device: string): Promise<SshTarget> {
  const r = await ctx.runtime();
  const listing = r.devices.listing(device);
  if (!listing) throw new UsageError(unknownDevice(r, device));
  const manifest: Manifest | undefined = listing.manifest;
  if (!manifest) throw new UsageError(`device ${device} has an invalid manifest (run: meshpilot manifest check ${listing.file})`);
  if (manifest.transport.kind !== 'ssh') throw new UsageError(`device ${device} uses the ${manifest.transport.kind} transport, not ssh`);
  const { resolveTarget } = await import('../../capabilities/transports/ssh.js');
  return resolveTarget(device, manifest.transport, { needKey: false });
}

async function knownState(target: SshTarget, keyType: string, fingerprint: string): Promise<string> {
  const { knownKeysFor } = await import('../../capabilities/transports/ssh.js');
  const known = knownKeysFor(target.host, target.port);
  if (known.length === 0) return 'not trusted yet';
  if (known.some((k) => k.keyType === keyType && k.fingerprint === fingerprint)) return 'trusted';
  return `CHANGED (known: ${known.map((k) => `${k.keyType} ${k.fingerprint}`).join(', ')})`;
}

const cli = ['cli'] as const;

export const SSH_COMMANDS: CliEntry[] = [
  defineGroup('ssh', 'host keys of ssh devices (trusted keys: MESHPILOT_HOME/known_hosts)'),
  defineCommand({
    name: 'ssh fingerprint', summary: 'connect to an ssh device and print the host key it presents; changes nothing', permission: 'operator', surfaces: cli,
    args: () => z.object({ device: z.string() }), positional: ['device'],
    run: async ({ device }, ctx: CommandContext) => {
      const target = await sshTarget(ctx, device);
      const { probeHostKey } = await import('../../capabilities/transports/ssh.js');
      const { keyType, fingerprint } = await probeHostKey(target);
      ctx.io.out(`${device} [${target.host}]:${target.port} ${keyType} ${fingerprint} (${await knownState(target, keyType, fingerprint)})\n`);
      ctx.setExit(EXIT.ok);
    },
  }),
  defineCommand({
    name: 'ssh trust', summary: 'trust the host key of an ssh device, after checking that the server presents exactly this fingerprint', permission: 'operator', surfaces: cli,
    args: () => z.object({
      device: z.string(),
      fingerprint: z.string().describe('the fingerprint you checked on the server (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)'),
      replace: z.boolean().optional().describe('replace a different key already trusted for this host (after a reinstall)'),
    }),
    positional: ['device'],
    cli: { flags: { fingerprint: '--fingerprint <SHA256:…>' } },
    run: async (opts, ctx: CommandContext) => {
      const { device } = opts;
      const wanted = opts.fingerprint.trim();
      if (!/^SHA256:[A-Za-z0-9+/]{43}$/.test(wanted)) throw new UsageError('--fingerprint must look like SHA256: followed by 43 base64 characters');
      const target = await sshTarget(ctx, device);
      const { acceptHostKey, probeHostKey } = await import('../../capabilities/transports/ssh.js');
      const { MeshpilotError } = await import('../../capabilities/errors.js');
      const presented = await probeHostKey(target);
      if (presented.fingerprint !== wanted) {
        throw new MeshpilotError('host_key', `${device} ([${target.host}]:${target.port}) presents ${presented.keyType} ${presented.fingerprint}, not ${wanted}: nothing was trusted`);
      }
      const what = acceptHostKey({ host: target.host, port: target.port, keyType: presented.keyType, fingerprint: wanted, replace: opts.replace === true });
      const verb = what === 'unchanged' ? 'already trusted' : what === 'replaced' ? 'replaced and trusted' : 'trusted';
      ctx.io.out(`${verb}: ${device} [${target.host}]:${target.port} ${presented.keyType} ${wanted}\n`);
      ctx.setExit(EXIT.ok);
    },
  }),
];
