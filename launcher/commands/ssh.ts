/**
 * `meshpilot ssh …`: host keys of ssh devices.
 *
 *   meshpilot ssh fingerprint <device>                          connect, print the presented key; changes nothing
 *   meshpilot ssh trust <device> --fingerprint SHA256:… [--replace]
 *                                                               trust it (only if the server presents that key)
 *
 * Trusted keys live in MESHPILOT_HOME/known_hosts (see capabilities/transports/ssh-pool.ts).
 */
import type { Command } from 'commander';
import { MeshpilotError } from '../../capabilities/errors.js';
import type { Manifest } from '../../capabilities/manifest.js';
import {
  acceptHostKey,
  knownHostsPath,
  knownKeysFor,
  probeHostKey,
  resolveTarget,
  type SshTarget,
} from '../../capabilities/transports/ssh.js';
import { EXIT, UsageError, type CommandContext } from '../cli.js';

function sshTarget(ctx: CommandContext, device: string): SshTarget {
  const r = ctx.runtime();
  const listing = r.devices.listing(device);
  if (!listing) {
    const names = r.devices.names();
    throw new UsageError(`unknown device ${device}; known: ${names.length ? names.join(', ') : 'none'} (manifests live in ${r.home.manifests})`);
  }
  const manifest: Manifest | undefined = listing.manifest;
  if (!manifest) throw new UsageError(`device ${device} has an invalid manifest (run: meshpilot manifest check ${listing.file})`);
  if (manifest.transport.kind !== 'ssh') throw new UsageError(`device ${device} uses the ${manifest.transport.kind} transport, not ssh`);
  return resolveTarget(device, manifest.transport, { needKey: false });
}

function knownState(target: SshTarget, keyType: string, fingerprint: string): string {
  const known = knownKeysFor(target.host, target.port);
  if (known.length === 0) return 'not trusted yet';
  if (known.some((k) => k.keyType === keyType && k.fingerprint === fingerprint)) return 'trusted';
  return `CHANGED (known: ${known.map((k) => `${k.keyType} ${k.fingerprint}`).join(', ')})`;
}

export function register(program: Command, ctx: CommandContext): void {
  const ssh = program.command('ssh').description(`host keys of ssh devices (trusted keys: ${knownHostsPath()})`);

  ssh.command('fingerprint')
    .description('connect to an ssh device and print the host key it presents; changes nothing')
    .argument('<device>')
    .action(async (device: string) => {
      const target = sshTarget(ctx, device);
      const { keyType, fingerprint } = await probeHostKey(target);
      ctx.io.out(`${device} [${target.host}]:${target.port} ${keyType} ${fingerprint} (${knownState(target, keyType, fingerprint)})\n`);
      ctx.setExit(EXIT.ok);
    });

  ssh.command('trust')
    .description('trust the host key of an ssh device, after checking that the server presents exactly this fingerprint')
    .argument('<device>')
    .requiredOption('--fingerprint <SHA256:…>', 'the fingerprint you checked on the server (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)')
    .option('--replace', 'replace a different key already trusted for this host (after a reinstall)')
    .action(async (device: string, opts: { fingerprint: string; replace?: boolean }) => {
      const wanted = opts.fingerprint.trim();
      if (!/^SHA256:[A-Za-z0-9+/]{43}$/.test(wanted)) throw new UsageError('--fingerprint must look like SHA256: followed by 43 base64 characters');
      const target = sshTarget(ctx, device);
      const presented = await probeHostKey(target);
      if (presented.fingerprint !== wanted) {
        throw new MeshpilotError('host_key', `${device} ([${target.host}]:${target.port}) presents ${presented.keyType} ${presented.fingerprint}, not ${wanted}: nothing was trusted`);
      }
      const what = acceptHostKey({ host: target.host, port: target.port, keyType: presented.keyType, fingerprint: wanted, replace: opts.replace === true });
      const verb = what === 'unchanged' ? 'already trusted' : what === 'replaced' ? 'replaced and trusted' : 'trusted';
      ctx.io.out(`${verb}: ${device} [${target.host}]:${target.port} ${presented.keyType} ${wanted}\n`);
      ctx.setExit(EXIT.ok);
    });
}
