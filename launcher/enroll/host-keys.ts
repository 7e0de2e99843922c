/**
 * The target's ssh host key: trusted before enrollment touches the machine (already known, or
 * confirmed by the operator), and forgotten again when the enrollment is undone.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { MeshpilotError } from '../../capabilities/errors.js';
import {
  acceptHostKey, knownHostsPath, knownKeysFor, probeHostKey, type SshTarget,
} from '../../capabilities/transports/ssh.js';
import type { EnrollData } from './store.js';

/**
 * Makes sure the target's host key is trusted: already known, or the operator confirms it (the
 * fingerprint given with --accept-host-key, or "yes" on the terminal). Returns what was added.
 */
export async function ensureHostKey(target: SshTarget, o: { accept?: string; ask?: (q: string) => Promise<string>; device: string }): Promise<EnrollData['hostKeyAdded']> {
  const presented = await probeHostKey(target);
  const known = knownKeysFor(target.host, target.port);
  if (known.some((k) => k.keyType === presented.keyType && k.fingerprint === presented.fingerprint)) return undefined;
  const pattern = `[${target.host.toLowerCase()}]:${target.port}`;
  if (known.length > 0) {
    throw new MeshpilotError('host_key', `HOST KEY CHANGED for ${pattern}: known ${known.map((k) => `${k.keyType} ${k.fingerprint}`).join(', ')}, presented ${presented.keyType} ${presented.fingerprint}. Refusing to enroll ${o.device}; if the server was reinstalled, check the new key and run: meshpilot ssh trust … --replace (or remove the line from ${knownHostsPath()})`);
  }
  let ok = false;
  if (o.accept) {
    if (o.accept.trim() !== presented.fingerprint) {
      throw new MeshpilotError('host_key', `${pattern} presents ${presented.keyType} ${presented.fingerprint}, not ${o.accept.trim()}: nothing was trusted, nothing was changed`);
    }
    ok = true;
  } else if (o.ask) {
    const answer = await o.ask(`The host key of ${pattern} is not known yet: ${presented.keyType} ${presented.fingerprint}\nCheck it on the machine (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub). Trust it? Type yes: `);
    ok = answer.trim().toLowerCase() === 'yes';
    if (!ok) throw new MeshpilotError('host_key', `the host key of ${pattern} was not confirmed: nothing was changed`);
  }
  if (!ok) {
    throw new MeshpilotError('host_key', `the host key of ${pattern} is not known yet: it presents ${presented.keyType} ${presented.fingerprint}. Check it on the machine (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then run again with --accept-host-key ${presented.fingerprint}`);
  }
  acceptHostKey({ host: target.host, port: target.port, keyType: presented.keyType, fingerprint: presented.fingerprint });
  return { pattern, keyType: presented.keyType, fingerprint: presented.fingerprint };
}

/** Removes one known_hosts line that enrollment added. */
export function forgetHostKey(added: NonNullable<EnrollData['hostKeyAdded']>): void {
  const file = knownHostsPath();
  if (!existsSync(file)) return;
  const lines = readFileSync(file, 'utf8').split('\n');
  const kept = lines.filter((l) => {
    const [p, t, f] = l.trim().split(/\s+/);
    return !(p?.toLowerCase() === added.pattern && t === added.keyType && f === added.fingerprint);
  });
  if (kept.length !== lines.length) writeFileSync(file, kept.join('\n'), { mode: 0o600 });
}
