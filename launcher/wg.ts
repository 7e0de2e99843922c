/**
 * WireGuard handshake ages from the hub: `wg show <iface> dump`, run on this machine or over SSH on
 * the hub device (capabilities/transports/ssh.ts sshWgDump, the pooled connection).
 *
 * Dump format (tab-separated): the first line is the interface
 *   private-key  public-key  listen-port  fwmark
 * then one line per peer
 *   public-key  preshared-key  endpoint  allowed-ips  latest-handshake  transfer-rx  transfer-tx  persistent-keepalive
 * The first line carries the private key and every peer line a preshared key: the parser drops both
 * at once, the raw text is never logged or stored, and errors never quote it.
 */
import { execFile } from 'node:child_process';
import { z } from 'zod';
import { MeshpilotError } from '../capabilities/errors.js';
import type { Manifest } from '../capabilities/manifest.js';
import { sshWgDump } from '../capabilities/transports/ssh.js';

export const MAX_DUMP_BYTES = 8 * 1024 * 1024;
export const MAX_PEERS = 65_536;
export const WG_IFACE = /^[a-zA-Z0-9_.=+-]{1,15}$/;

export interface WgPeer {
  publicKey: string;
  endpoint: string | null;
  allowedIps: string[];
  /** Unix seconds of the latest completed handshake; 0 = never. */
  latestHandshake: number;
  rxBytes: number;
  txBytes: number;
  keepalive: number | null;
}

export interface WgDump {
  /** The interface's public key and port (its private key is never kept). */
  publicKey: string;
  listenPort: number;
  peers: WgPeer[];
}

const Key = z.string().regex(/^[A-Za-z0-9+/]{42,43}=?$/);
const Uint = z.string().regex(/^\d{1,20}$/).transform(Number);

/** Parses `wg show <iface> dump`. Throws MeshpilotError('exec_failed') on text that is not a dump (without quoting it). */
export function parseWgDump(text: string): WgDump {
  if (text.length > MAX_DUMP_BYTES) throw new MeshpilotError('output_limit', `wg dump is over ${MAX_DUMP_BYTES} bytes`);
  const lines = text.split('\n').filter((l) => l.length > 0);
  const head = lines[0]?.split('\t');
  // Never echo a line: the first holds the private key.
  if (!head || head.length !== 4) throw new MeshpilotError('exec_failed', 'wg dump: the first line is not an interface line (expected 4 tab-separated fields)');
  const pub = Key.safeParse(head[1]);
  const port = Uint.safeParse(head[2]);
  if (!pub.success || !port.success) throw new MeshpilotError('exec_failed', 'wg dump: the interface line has no valid public key or listen port');
  if (lines.length - 1 > MAX_PEERS) throw new MeshpilotError('output_limit', `wg dump lists more than ${MAX_PEERS} peers`);
  const peers: WgPeer[] = [];
  for (let i = 1; i < lines.length; i++) {
    const f = lines[i]!.split('\t');
    if (f.length !== 8) throw new MeshpilotError('exec_failed', `wg dump: peer line ${i} has ${f.length} fields, expected 8`);
    const key = Key.safeParse(f[0]);
    const hs = Uint.safeParse(f[4]);
    const rx = Uint.safeParse(f[5]);
    const tx = Uint.safeParse(f[6]);
    if (!key.success || !hs.success || !rx.success || !tx.success) throw new MeshpilotError('exec_failed', `wg dump: peer line ${i} is malformed`);
    const endpoint = f[2] === '(none)' || !f[2] ? null : f[2].slice(0, 128);
    const allowed = f[3] === '(none)' || !f[3] ? [] : f[3].split(',').slice(0, 256).map((s) => s.trim().slice(0, 64));
    const ka = f[7] === 'off' || !f[7] ? null : Number(f[7]);
    peers.push({
      publicKey: key.data, endpoint, allowedIps: allowed, latestHandshake: hs.data, rxBytes: rx.data, txBytes: tx.data,
      keepalive: ka !== null && Number.isFinite(ka) ? ka : null,
    });
  }
  return { publicKey: pub.data, listenPort: port.data, peers };
}

/** The peer whose allowed-ips hold `address` as a host route (/32 or /128), or that names it exactly. */
export function peerForAddress(dump: WgDump, address: string): WgPeer | undefined {
  const host = address.includes(':') ? `${address}/128` : `${address}/32`;
  return dump.peers.find((p) => p.allowedIps.includes(host)) ?? dump.peers.find((p) => p.allowedIps.some((a) => a.split('/')[0] === address));
}

/** An index address → peer for many lookups (host routes only). */
export function peersByAddress(dump: WgDump): Map<string, WgPeer> {
  const m = new Map<string, WgPeer>();
  for (const p of dump.peers) for (const a of p.allowedIps) {
    const [ip, bits] = a.split('/');
    if (ip && (bits === '32' || bits === '128' || bits === undefined) && !m.has(ip)) m.set(ip, p);
  }
  return m;
}

export type WgDumpReader = () => Promise<string>;

function runLocal(argv: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string; missing: boolean }> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs, maxBuffer: MAX_DUMP_BYTES, encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' } }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: unknown }) | null;
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, stdout, stderr: String(stderr).slice(0, 2000), missing: e?.code === 'ENOENT' });
    });
  });
}

/** `wg show <iface> dump` on this machine (retried with `sudo -n` when not permitted). */
export async function localWgDump(iface: string, timeoutMs = 10_000): Promise<string> {
  if (!WG_IFACE.test(iface)) throw new MeshpilotError('config', `not a WireGuard interface name: ${iface.slice(0, 32)}`);
  let r = await runLocal(['wg', 'show', iface, 'dump'], timeoutMs);
  if (r.missing) throw new MeshpilotError('tool_missing', 'wg (wireguard-tools) is not installed on the launcher machine');
  if (r.code !== 0 && /permitted|permission|denied/i.test(r.stderr)) r = await runLocal(['sudo', '-n', 'wg', 'show', iface, 'dump'], timeoutMs);
  if (r.code !== 0) throw new MeshpilotError('exec_failed', `wg show ${iface} dump failed: ${r.stderr.trim().split('\n')[0]?.slice(0, 300) ?? `exit ${r.code}`}`);
  return r.stdout;
}

/** The reader for the configured hub: over SSH when hubManifest is given, else local. */
export function hubDumpReader(iface: string, hubManifest?: Manifest): WgDumpReader {
  if (hubManifest) {
    if (hubManifest.transport.kind !== 'ssh') {
      return () => Promise.reject(new MeshpilotError('config', `health.hub_device ${hubManifest.device} must use the ssh transport (it uses ${hubManifest.transport.kind})`));
    }
    return () => sshWgDump(hubManifest, iface);
  }
  return () => localWgDump(iface);
}
