/**
 * Where an ssh device is and whether its host key is trusted: the target from the manifest or a
 * ~/.ssh/config alias, and meshpilot's own known_hosts (format and rules: ssh-pool.ts's header).
 * Split out of ssh-pool.ts, which keeps the connections and re-exports these.
 */
import { createHash } from 'node:crypto';
import { appendFileSync, chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import SSHConfig from 'ssh-config';
import { MeshpilotError } from '../errors.js';
import { resolveHome } from '../home.js';
import { logger } from '../log.js';
import type { TransportConfig } from '../manifest.js';

const log = logger('ssh');

export type SshTransportConfig = Extract<TransportConfig, { kind: 'ssh' }>;

/** Where and as whom to connect, everything resolved. */
export interface SshTarget {
  /** Device name, for messages. */
  device: string;
  host: string;
  port: number;
  user: string;
  keyPath: string;
  trustOnFirstUse: boolean;
  /** Where the address came from, for messages ("alias customer-prod" or "manifest"). */
  origin: string;
}

// ---- target resolution ------------------------------------------------------------------------

function expandHome(p: string): string {
  return p.replace(/^~(?=$|\/)/, os.homedir());
}

/** The ssh config file aliases are read from: MESHPILOT_SSH_CONFIG, else ~/.ssh/config. */
export function sshConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env['MESHPILOT_SSH_CONFIG'];
  return fromEnv && fromEnv.trim() ? expandHome(fromEnv.trim()) : path.join(os.homedir(), '.ssh', 'config');
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** The keys tried when the manifest names none, in order. */
export function defaultKeyCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  return [
    path.join(resolveHome(env), 'keys', 'ssh', 'id_ed25519'),
    path.join(os.homedir(), '.ssh', 'id_ed25519'),
    path.join(os.homedir(), '.ssh', 'id_rsa'),
  ];
}

interface AliasSettings { host?: string; port?: number; user?: string; key?: string }

/** Looks up `alias` in the ssh config file (HostName, Port, User, IdentityFile; ProxyJump is refused). */
export function resolveAlias(alias: string, configFile: string = sshConfigPath()): AliasSettings {
  let text: string;
  try {
    text = readFileSync(configFile, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new MeshpilotError('config', `ssh alias ${alias}: cannot read ${configFile}${code === 'ENOENT' ? ' (it does not exist)' : ''}`);
  }
  if (text.length > 1024 * 1024) throw new MeshpilotError('config', `ssh alias ${alias}: ${configFile} is larger than 1 MiB`);
  let computed: Record<string, string | string[]>;
  try {
    // matchExec: false — never run `Match exec` commands from a config file on our behalf.
    computed = SSHConfig.parse(text).compute(alias, { ignoreCase: true, matchExec: false });
  } catch (err) {
    throw new MeshpilotError('config', `ssh alias ${alias}: cannot parse ${configFile}: ${(err as Error).message}`);
  }
  const proxyJump = first(computed['proxyjump']);
  if (proxyJump && proxyJump.toLowerCase() !== 'none') {
    throw new MeshpilotError('config', `ssh alias ${alias} uses ProxyJump ${proxyJump}: ProxyJump is not supported yet by meshpilot's ssh transport; enroll the device with the mesh transport, or give the manifest a host reachable directly`);
  }
  const proxyCommand = first(computed['proxycommand']);
  if (proxyCommand && proxyCommand.toLowerCase() !== 'none') {
    throw new MeshpilotError('config', `ssh alias ${alias} uses ProxyCommand: ProxyCommand is not supported by meshpilot's ssh transport`);
  }
  const out: AliasSettings = {};
  const hostName = first(computed['hostname']);
  out.host = (hostName ?? alias).replace(/%h/g, alias);
  const port = first(computed['port']);
  if (port !== undefined) {
    const n = Number(port);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new MeshpilotError('config', `ssh alias ${alias}: Port ${port} is not a port number`);
    out.port = n;
  }
  const user = first(computed['user']);
  if (user) out.user = user;
  const ids = computed['identityfile'];
  const id = first(ids);
  if (id) {
    out.key = expandHome(id.replace(/%d/g, os.homedir()).replace(/%h/g, out.host).replace(/%r/g, out.user ?? '').replace(/%%/g, '%'));
  }
  return out;
}

function currentUser(): string {
  try { return os.userInfo().username; } catch { return 'root'; }
}

/** Manifest fields win over the alias's; the key falls back to the default candidates. */
export function resolveTarget(
  device: string,
  t: SshTransportConfig,
  opts: { configFile?: string; env?: NodeJS.ProcessEnv; /** false: no key needed (probing the host key) */ needKey?: boolean } = {},
): SshTarget {
  const fromAlias = t.alias ? resolveAlias(t.alias, opts.configFile ?? sshConfigPath(opts.env)) : {};
  const host = t.host ?? fromAlias.host;
  if (!host) throw new MeshpilotError('config', `device ${device}: the ssh transport needs host or alias`);
  let keyPath = t.key ? expandHome(t.key) : fromAlias.key;
  if (!keyPath) {
    keyPath = defaultKeyCandidates(opts.env).find((k) => existsSync(k));
    if (!keyPath && opts.needKey === false) keyPath = '';
    if (keyPath === undefined) {
      throw new MeshpilotError('auth', `device ${device}: no ssh key: set transport.key in its manifest, or create ${defaultKeyCandidates(opts.env).join(' or ')}`);
    }
  }
  return {
    device,
    host,
    port: t.port ?? fromAlias.port ?? 22,
    user: t.user ?? fromAlias.user ?? currentUser(),
    keyPath,
    trustOnFirstUse: t.trust_on_first_use ?? false,
    origin: t.alias ? `alias ${t.alias}` : 'manifest',
  };
}

// ---- known_hosts --------------------------------------------------------------------------------

export function knownHostsPath(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(resolveHome(env), 'known_hosts');
}

/** `[host]:port`, the key of a known_hosts line. */
export function hostPattern(host: string, port: number): string {
  return `[${host.toLowerCase()}]:${port}`;
}

/** OpenSSH's SHA256 fingerprint of a public key blob. */
export function fingerprintOf(keyBlob: Buffer): string {
  return `SHA256:${createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '')}`;
}

/** The key type named at the start of an ssh public key blob (`ssh-ed25519`, `ecdsa-sha2-nistp256`, …). */
export function keyTypeOf(keyBlob: Buffer): string {
  if (keyBlob.length < 4) return 'unknown';
  const n = keyBlob.readUInt32BE(0);
  if (n === 0 || n > 64 || 4 + n > keyBlob.length) return 'unknown';
  return keyBlob.subarray(4, 4 + n).toString('latin1');
}

export interface KnownHostKey { pattern: string; keyType: string; fingerprint: string }

const FP_RE = /^SHA256:[A-Za-z0-9+/]{43}$/;
const KEYTYPE_RE = /^[a-z0-9@.-]{3,64}$/;

export function readKnownHosts(file: string = knownHostsPath()): KnownHostKey[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new MeshpilotError('config', `cannot read ${file}: ${(err as Error).message}`);
  }
  const out: KnownHostKey[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const [pattern, keyType, fingerprint] = line.split(/\s+/);
    if (!pattern || !keyType || !fingerprint || !FP_RE.test(fingerprint)) continue;
    out.push({ pattern: pattern.toLowerCase(), keyType, fingerprint });
  }
  return out;
}

export function knownKeysFor(host: string, port: number, file: string = knownHostsPath()): KnownHostKey[] {
  const p = hostPattern(host, port);
  return readKnownHosts(file).filter((k) => k.pattern === p);
}

export interface AcceptHostKeyOptions {
  host: string;
  port: number;
  keyType: string;
  fingerprint: string;
  /** Replace an existing, different key of the same type (after a reinstall). Default: refuse. */
  replace?: boolean;
  file?: string;
}

/**
 * Trusts a host key: writes `[host]:port keyType SHA256:…` to meshpilot's known_hosts.
 * Refuses to overwrite a different key of the same type unless `replace` is set.
 * Returns 'added', 'replaced' or 'unchanged'.
 */
export function acceptHostKey(o: AcceptHostKeyOptions): 'added' | 'replaced' | 'unchanged' {
  const file = o.file ?? knownHostsPath();
  if (!FP_RE.test(o.fingerprint)) throw new MeshpilotError('usage', `${o.fingerprint} is not a SHA256 fingerprint (SHA256: followed by 43 base64 characters)`);
  if (!KEYTYPE_RE.test(o.keyType)) throw new MeshpilotError('usage', `${o.keyType} is not an ssh key type`);
  if (!o.host || /\s/.test(o.host)) throw new MeshpilotError('usage', 'host must be a name or address without spaces');
  const pattern = hostPattern(o.host, o.port);
  const existing = readKnownHosts(file).filter((k) => k.pattern === pattern && k.keyType === o.keyType);
  if (existing.some((k) => k.fingerprint === o.fingerprint)) return 'unchanged';
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const line = `${pattern} ${o.keyType} ${o.fingerprint}\n`;
  if (existing.length > 0) {
    if (!o.replace) {
      throw new MeshpilotError('host_key', `${pattern} already has a different ${o.keyType} key (${existing.map((k) => k.fingerprint).join(', ')}) in ${file}; pass --replace to replace it`);
    }
    const kept = readFileSync(file, 'utf8').split('\n').filter((raw) => {
      const [p, t] = raw.trim().split(/\s+/);
      return !(p?.toLowerCase() === pattern && t === o.keyType);
    });
    const body = kept.join('\n').replace(/\n*$/, '\n').replace(/^\n$/, '');
    writeFileSync(file, body + line, { mode: 0o600 });
    chmodSync(file, 0o600);
    return 'replaced';
  }
  if (!existsSync(file)) writeFileSync(file, '# meshpilot known_hosts: [host]:port key-type SHA256:fingerprint\n', { mode: 0o600 });
  appendFileSync(file, line, { mode: 0o600 });
  chmodSync(file, 0o600);
  return 'added';
}

/** What the host-key check decided during a handshake, kept to explain a refusal. */
export type HostKeyVerdict =
  | { ok: true; keyType: string; fingerprint: string; tofu: boolean }
  | { ok: false; error: MeshpilotError; keyType: string; fingerprint: string };

export function verifyHostKey(target: SshTarget, keyBlob: Buffer, file: string): HostKeyVerdict {
  const keyType = keyTypeOf(keyBlob);
  const fingerprint = fingerprintOf(keyBlob);
  const pattern = hostPattern(target.host, target.port);
  const known = knownKeysFor(target.host, target.port, file);
  if (known.length === 0) {
    if (target.trustOnFirstUse) {
      acceptHostKey({ host: target.host, port: target.port, keyType, fingerprint, file });
      log.warn({ device: target.device, host: pattern, keyType, fingerprint }, 'trusted host key on first use');
      return { ok: true, keyType, fingerprint, tofu: true };
    }
    return {
      ok: false, keyType, fingerprint,
      error: new MeshpilotError('host_key',
        `the host key of ${target.device} (${pattern}) is not known yet: it presented ${keyType} ${fingerprint}. ` +
        `Check it on the server (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then run: ` +
        `meshpilot ssh trust ${target.device} --fingerprint ${fingerprint} ` +
        `(or set trust_on_first_use: true in its manifest's transport)`),
    };
  }
  const same = known.filter((k) => k.keyType === keyType);
  if (same.some((k) => k.fingerprint === fingerprint)) return { ok: true, keyType, fingerprint, tofu: false };
  const old = (same.length ? same : known).map((k) => `${k.keyType} ${k.fingerprint}`).join(', ');
  return {
    ok: false, keyType, fingerprint,
    error: new MeshpilotError('host_key',
      `HOST KEY CHANGED for ${target.device} (${pattern}): known ${old}, presented ${keyType} ${fingerprint}. ` +
      `Refusing to connect: this is what a man-in-the-middle looks like (or the server was reinstalled). ` +
      `If the change is expected, check the new key on the server, then run: ` +
      `meshpilot ssh trust ${target.device} --fingerprint ${fingerprint} --replace (or remove the ${pattern} line from ${file})`),
  };
}
