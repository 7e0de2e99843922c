/**
 * What the `--via wg` steps share: the `mesh` config, mesh addresses, WireGuard keys, the hub's
 * shell and paths on the device.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { MeshpilotError } from '../../capabilities/errors.js';
import type { Config, MeshConfig } from '../../capabilities/config.js';
import { keysDir, sha256, type EnrollContext } from './context.js';
import { localRemote, parseSshSpec, sshRemote, type Remote } from './remote.js';

export function mesh(ctx: EnrollContext): MeshConfig {
  if (!ctx.config.mesh) throw new MeshpilotError('config', 'config.yaml has no `mesh` section');
  return ctx.config.mesh;
}

export function ifaceFor(device: string): string {
  return `mp${sha256(device).slice(0, 10)}`;
}

export function ipToInt(ip: string): number {
  const p = ip.split('.').map(Number);
  if (p.length !== 4 || p.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) throw new MeshpilotError('config', `${ip} is not an IPv4 address`);
  return ((p[0]! << 24) >>> 0) + (p[1]! << 16) + (p[2]! << 8) + p[3]!;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export function subnetOf(address: string): { hub: string; prefix: number; network: string; first: number; last: number } {
  const [ip = '', p = ''] = address.split('/');
  const prefix = Number(p);
  const hubInt = ipToInt(ip);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const net = (hubInt & mask) >>> 0;
  const bcast = (net | (~mask >>> 0)) >>> 0;
  return { hub: ip, prefix, network: intToIp(net), first: net + 1, last: bcast - 1 };
}

/** Public key (raw base64) of a WireGuard private key (raw base64). */
export function wgPublicKey(privateB64: string): string {
  const d = Buffer.from(privateB64, 'base64');
  const key = createPrivateKey({ key: { kty: 'OKP', crv: 'X25519', d: d.toString('base64url'), x: '' }, format: 'jwk' } as never);
  const x = createPublicKey(key).export({ format: 'jwk' }).x;
  if (!x) throw new MeshpilotError('internal', 'X25519 public key export failed');
  return Buffer.from(x, 'base64url').toString('base64');
}

export function wgKeyPair(): { privateKey: string; publicKey: string } {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  const d = privateKey.export({ format: 'jwk' }).d;
  const x = publicKey.export({ format: 'jwk' }).x;
  if (!d || !x) throw new MeshpilotError('internal', 'X25519 key generation failed');
  return { privateKey: Buffer.from(d, 'base64url').toString('base64'), publicKey: Buffer.from(x, 'base64url').toString('base64') };
}

export function readKey(ctx: EnrollContext, name: string): string {
  const file = path.join(keysDir(ctx), name);
  if (!existsSync(file)) throw new MeshpilotError('internal', `${file} is missing (run add-pc again: the keys step makes it)`);
  return readFileSync(file, 'utf8').trim();
}

export function hubRemote(config: Config): Remote {
  const hub = config.mesh?.hub;
  if (!hub) throw new MeshpilotError('config', 'config.yaml has no mesh.hub');
  if (hub.ssh === 'local') return localRemote('the hub');
  const t = parseSshSpec(hub.ssh, hub.ssh_key);
  return sshRemote('the hub', t, () => (t.user ?? 'root') !== 'root');
}

export function hubConfFile(m: MeshConfig): string {
  return m.hub.config_file ?? `/etc/wireguard/${m.hub.interface}.conf`;
}

export function expandHome(p: string, home: string): string {
  return p.replace(/^~(?=$|\/)/, home.replace(/\/+$/, '') || '/');
}

/** A sh function `h` that prints sha256 sums (sha256sum on Linux, shasum on macOS). */
export const HASH_FN = 'h() { if command -v sha256sum >/dev/null 2>&1; then sha256sum "$@"; else shasum -a 256 "$@"; fi; }';
