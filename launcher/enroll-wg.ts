/**
 * The steps of `add-pc --via wg`: a WireGuard peer of the hub running the device agent.
 *
 *   1 preflight   ssh (BatchMode, host key), uname -sm, root or passwordless sudo   (enroll.ts)
 *   2 keys        WireGuard key pair + preshared key (X25519, raw base64) and the agent's HMAC
 *                 secret, 0600 under MESHPILOT_HOME/keys/<device>/
 *   3 ip          a free address of the hub's subnet (mesh_ips, UNIQUE; freed on undo/revoke)
 *   4 hub         `wg set <if> peer … preshared-key /dev/stdin allowed-ips <ip>/32` on the hub
 *                 (over ssh, or locally) and a marked [Peer] block in its wg-quick config
 *   5 target      WireGuard tools and node >= 18 (installed with the package manager when
 *                 missing), <wg_dir>/<iface>.conf, `wg-quick up` (falls back to wireguard-go
 *                 where there is no kernel module)
 *   6 agent       bundle + manifest + agent config + secret + service (systemd unit, or a
 *                 supervised background process with a pid file); uploads are checked by sha256
 *   7 health      the agent's /health over the mesh answers with this device and manifest hash
 *   8 matrix      the bot's Matrix user (enroll.ts)
 *   9 register    MESHPILOT_HOME/manifests/<device>.yaml; wait for the bot's "✓ live" (enroll.ts)
 *
 * The device's interface is mp<10 hex of sha256(device)> (unique per device, 12 characters).
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { parseDocument, isMap, isSeq } from 'yaml';
import { MeshpilotError } from '../capabilities/errors.js';
import { PACKAGE_ROOT, templateText } from '../capabilities/home.js';
import { loadManifest, parseManifest, renderTemplate } from '../capabilities/manifest.js';
import { HealthResponseSchema } from '../capabilities/agent/protocol.js';
import { renderService } from '../capabilities/agent/services.js';
import type { Config, MeshConfig } from './config.js';
import {
  keysDir, localRemote, matrixStep, parseSshSpec, preflightStep, q, registerStep, sha256, sshRemote, writeSecret,
  NODE_MIN_MAJOR, type EnrollContext, type Remote, type Step,
} from './enroll.js';

// ---- helpers ------------------------------------------------------------------------------------

function mesh(ctx: EnrollContext): MeshConfig {
  if (!ctx.config.mesh) throw new MeshpilotError('config', 'config.yaml has no `mesh` section');
  return ctx.config.mesh;
}

export function ifaceFor(device: string): string {
  return `mp${sha256(device).slice(0, 10)}`;
}

function ipToInt(ip: string): number {
  const p = ip.split('.').map(Number);
  if (p.length !== 4 || p.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) throw new MeshpilotError('config', `${ip} is not an IPv4 address`);
  return ((p[0]! << 24) >>> 0) + (p[1]! << 16) + (p[2]! << 8) + p[3]!;
}

function intToIp(n: number): string {
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

function wgKeyPair(): { privateKey: string; publicKey: string } {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  const d = privateKey.export({ format: 'jwk' }).d;
  const x = publicKey.export({ format: 'jwk' }).x;
  if (!d || !x) throw new MeshpilotError('internal', 'X25519 key generation failed');
  return { privateKey: Buffer.from(d, 'base64url').toString('base64'), publicKey: Buffer.from(x, 'base64url').toString('base64') };
}

function readKey(ctx: EnrollContext, name: string): string {
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

function hubConfFile(m: MeshConfig): string {
  return m.hub.config_file ?? `/etc/wireguard/${m.hub.interface}.conf`;
}

function expandHome(p: string, home: string): string {
  return p.replace(/^~(?=$|\/)/, home.replace(/\/+$/, '') || '/');
}

const HASH_FN = 'h() { if command -v sha256sum >/dev/null 2>&1; then sha256sum "$@"; else shasum -a 256 "$@"; fi; }';

// ---- 2 keys -------------------------------------------------------------------------------------

const keysStep: Step = {
  id: 'keys', title: 'generating WireGuard keys and the agent secret',
  async check(ctx) {
    const dir = keysDir(ctx);
    for (const f of ['wg.key', 'wg.psk', 'agent.secret']) {
      const file = path.join(dir, f);
      if (!existsSync(file) || (statSync(file).mode & 0o077) !== 0) return false;
    }
    const pub = wgPublicKey(readKey(ctx, 'wg.key'));
    if (ctx.data.publicKey !== pub) return false;
    return true;
  },
  async apply(ctx) {
    const dir = keysDir(ctx);
    const kp = wgKeyPair();
    writeSecret(path.join(dir, 'wg.key'), `${kp.privateKey}\n`);
    writeSecret(path.join(dir, 'wg.psk'), `${randomBytes(32).toString('base64')}\n`);
    writeSecret(path.join(dir, 'agent.secret'), `${randomBytes(32).toString('hex')}\n`);
    ctx.data.publicKey = kp.publicKey;
    return `public key ${kp.publicKey.slice(0, 8)}…`;
  },
  async undo(ctx) {
    const dir = keysDir(ctx);
    if (ctx.revoking || !existsSync(dir)) return undefined;
    for (const f of ['wg.key', 'wg.psk', 'agent.secret']) rmSync(path.join(dir, f), { force: true });
    if (readdirSync(dir).length === 0) rmSync(dir, { recursive: true, force: true });
    return 'keys deleted';
  },
};

// ---- 3 ip ---------------------------------------------------------------------------------------

/** Mesh addresses of devices that have a mesh manifest but no allocation (enrolled by hand). */
function manualMeshAddresses(ctx: EnrollContext): Set<string> {
  const out = new Set<string>();
  let files: string[] = [];
  try { files = readdirSync(ctx.home.manifests).filter((f) => f.endsWith('.yaml')); } catch { /* none */ }
  for (const f of files) {
    const r = loadManifest(path.join(ctx.home.manifests, f));
    if (r.ok && r.manifest.transport.kind === 'mesh' && r.manifest.device !== ctx.device) out.add(r.manifest.transport.address);
  }
  return out;
}

const ipStep: Step = {
  id: 'ip', title: 'allocating a mesh IP',
  async check(ctx) {
    const ip = ctx.store.ipOf(ctx.device);
    if (!ip) return false;
    ctx.data.ip = ip;
    return true;
  },
  async apply(ctx) {
    const sn = subnetOf(mesh(ctx).hub.address);
    const taken = manualMeshAddresses(ctx);
    taken.add(sn.hub);
    function* candidates(): Generator<string> {
      for (let n = sn.first; n <= sn.last; n++) yield intToIp(n);
    }
    const ip = ctx.store.allocateIp(ctx.device, candidates(), taken);
    if (!ip) throw new MeshpilotError('config', `no free address left in ${sn.network}/${sn.prefix}`);
    ctx.data.ip = ip;
    return ip;
  },
  async undo(ctx) {
    const ip = ctx.store.ipOf(ctx.device);
    ctx.store.freeIp(ctx.device);
    return ip ? `${ip} freed` : undefined;
  },
};

// ---- 4 hub --------------------------------------------------------------------------------------

function peerBlockScript(m: MeshConfig, device: string): { begin: string; end: string; strip: string } {
  const begin = `# meshpilot:${device} begin`;
  const end = `# meshpilot:${device} end`;
  const strip = `awk -v b=${q(begin)} -v e=${q(end)} '$0==b{skip=1} !skip{print} $0==e{skip=0}'`;
  void m;
  return { begin, end, strip };
}

const hubStep: Step = {
  id: 'hub', title: 'adding the peer on the hub',
  async check(ctx) {
    const m = mesh(ctx);
    if (!ctx.data.publicKey || !ctx.data.ip) return false;
    const hub = hubRemote(ctx.config);
    try {
      const { begin } = peerBlockScript(m, ctx.device);
      const r = await hub.sh([
        `wg show ${q(m.hub.interface)} public-key`,
        `wg show ${q(m.hub.interface)} allowed-ips | grep -qxF ${q(`${ctx.data.publicKey}\t${ctx.data.ip}/32`)} && echo peer`,
        `grep -qxF ${q(begin)} ${q(hubConfFile(m))} && echo persisted`,
      ].join('\n'), { privileged: true, timeoutMs: 20_000 });
      const lines = r.stdout.trim().split('\n');
      if (lines[0]) ctx.data.hubPublicKey = lines[0].trim();
      return lines.includes('peer') && lines.includes('persisted') && !!ctx.data.hubPublicKey;
    } finally {
      await hub.close();
    }
  },
  async apply(ctx) {
    const m = mesh(ctx);
    const pub = ctx.data.publicKey;
    const ip = ctx.data.ip;
    if (!pub || !ip) throw new MeshpilotError('internal', 'keys and ip must come first');
    const psk = readKey(ctx, 'wg.psk');
    const { begin, end, strip } = peerBlockScript(m, ctx.device);
    const conf = hubConfFile(m);
    const iface = q(m.hub.interface);
    const script = [
      'set -e',
      'IFS= read -r psk',
      `conf=${q(conf)}`,
      `[ -f "$conf" ] || { echo "the hub's WireGuard config $conf does not exist (set mesh.hub.config_file)" >&2; exit 3; }`,
      `other=$(wg show ${iface} allowed-ips | grep -F ${q(`${ip}/32`)} | grep -vF ${q(pub)} || true)`,
      `[ -z "$other" ] || { echo "${ip} is already used on the hub by a peer meshpilot does not know" >&2; exit 4; }`,
      `printf '%s\\n' "$psk" | wg set ${iface} peer ${q(pub)} preshared-key /dev/stdin allowed-ips ${q(`${ip}/32`)}`,
      'tmp="$conf.mp.$$"',
      'umask 077',
      `${strip} "$conf" > "$tmp"`,
      `printf '%s\\n[Peer]\\nPublicKey = %s\\nPresharedKey = %s\\nAllowedIPs = %s\\n%s\\n' ${q(begin)} ${q(pub)} "$psk" ${q(`${ip}/32`)} ${q(end)} >> "$tmp"`,
      'mv "$tmp" "$conf"',
      `wg show ${iface} public-key`,
    ].join('\n');
    const hub = hubRemote(ctx.config);
    try {
      await hub.shOk('true', { what: 'reaching the hub', timeoutMs: 20_000 });
      ctx.data.hubTouched = true;
      ctx.save();
      const out = await hub.shOk(script, { stdin: `${psk}\n`, privileged: true, what: 'adding the WireGuard peer', timeoutMs: 30_000 });
      const hubPub = out.trim().split('\n').pop()?.trim();
      if (!hubPub || !/^[A-Za-z0-9+/]{43}=$/.test(hubPub)) throw new MeshpilotError('exec_failed', `the hub did not report its WireGuard public key (is ${m.hub.interface} up?)`);
      ctx.data.hubPublicKey = hubPub;
      return `${hub.where}: ${m.hub.interface} peer ${ip}/32`;
    } finally {
      await hub.close();
    }
  },
  async undo(ctx) {
    const m = mesh(ctx);
    if (!ctx.data.hubTouched && !ctx.revoking) return 'the hub was never changed';
    const { strip } = peerBlockScript(m, ctx.device);
    const conf = hubConfFile(m);
    const script = [
      'set -e',
      ...(ctx.data.publicKey ? [`wg set ${q(m.hub.interface)} peer ${q(ctx.data.publicKey)} remove 2>/dev/null || true`] : []),
      `conf=${q(conf)}`,
      'if [ -f "$conf" ]; then tmp="$conf.mp.$$"; umask 077; ' + `${strip} "$conf" > "$tmp"; mv "$tmp" "$conf"; fi`,
    ].join('\n');
    const hub = hubRemote(ctx.config);
    try {
      await hub.shOk(script, { privileged: true, what: 'removing the WireGuard peer', timeoutMs: 30_000 });
      ctx.data.hubTouched = false;
    } finally {
      await hub.close();
    }
    return 'hub peer removed';
  },
};

// ---- 5 target -----------------------------------------------------------------------------------

function wgConfPath(ctx: EnrollContext): string {
  const m = mesh(ctx);
  return `${expandHome(m.wg_dir, ctx.data.home ?? '/root').replace(/\/+$/, '')}/${ctx.data.iface ?? ifaceFor(ctx.device)}.conf`;
}

function wgConfText(ctx: EnrollContext): string {
  const m = mesh(ctx);
  const sn = subnetOf(m.hub.address);
  if (!ctx.data.ip || !ctx.data.hubPublicKey) throw new MeshpilotError('internal', 'the ip and hub steps must come first');
  return [
    `# meshpilot: WireGuard for device ${ctx.device} (written by meshpilot add-pc)`,
    '[Interface]',
    `PrivateKey = ${readKey(ctx, 'wg.key')}`,
    `Address = ${ctx.data.ip}/${sn.prefix}`,
    '',
    '[Peer]',
    `PublicKey = ${ctx.data.hubPublicKey}`,
    `PresharedKey = ${readKey(ctx, 'wg.psk')}`,
    `Endpoint = ${m.hub.endpoint}`,
    `AllowedIPs = ${sn.network}/${sn.prefix}`,
    ...(m.persistent_keepalive_s > 0 ? [`PersistentKeepalive = ${m.persistent_keepalive_s}`] : []),
    '',
  ].join('\n');
}

function nodeMajor(v: string | undefined): number {
  const m = /^v?(\d+)\./.exec(v ?? '');
  return m ? Number(m[1]) : 0;
}

const INSTALL_SCRIPT = (wg: boolean, node: boolean): string => {
  const pk = (apt: string[], dnf: string[], pac: string[], apk: string[], brew: string[]) => ({ apt, dnf, pac, apk, brew });
  const p = pk(
    [...(wg ? ['wireguard-tools'] : []), ...(node ? ['nodejs'] : [])],
    [...(wg ? ['wireguard-tools'] : []), ...(node ? ['nodejs'] : [])],
    [...(wg ? ['wireguard-tools'] : []), ...(node ? ['nodejs'] : [])],
    [...(wg ? ['wireguard-tools'] : []), ...(node ? ['nodejs'] : [])],
    [...(wg ? ['wireguard-tools', 'wireguard-go'] : []), ...(node ? ['node'] : [])],
  );
  return [
    'set -e',
    `if command -v apt-get >/dev/null 2>&1; then export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq ${p.apt.join(' ')}`,
    `elif command -v dnf >/dev/null 2>&1; then dnf install -y -q ${p.dnf.join(' ')}`,
    `elif command -v pacman >/dev/null 2>&1; then pacman -S --noconfirm --needed ${p.pac.join(' ')}`,
    `elif command -v apk >/dev/null 2>&1; then apk add -q ${p.apk.join(' ')}`,
    `elif command -v brew >/dev/null 2>&1; then brew install ${p.brew.join(' ')}`,
    'else echo "no known package manager (apt-get, dnf, pacman, apk, brew): install WireGuard tools and node >= 18 by hand" >&2; exit 3; fi',
  ].join('\n');
};

const targetStep: Step = {
  id: 'target', title: 'setting up WireGuard on the device',
  async check(ctx) {
    if (!ctx.data.ip || !ctx.data.publicKey || !ctx.data.hubPublicKey) return false;
    ctx.data.iface ??= ifaceFor(ctx.device);
    const conf = wgConfPath(ctx);
    const r = await ctx.target().sh([
      HASH_FN,
      `[ -f ${q(conf)} ] && [ "$(h < ${q(conf)} | cut -c1-64)" = ${q(sha256(wgConfText(ctx)))} ] || exit 1`,
      `[ "$(wg show ${q(ctx.data.iface)} public-key 2>/dev/null)" = ${q(ctx.data.publicKey)} ] || exit 1`,
      `ip -4 addr show dev ${q(ctx.data.iface)} 2>/dev/null | grep -qF ${q(`inet ${ctx.data.ip}/`)} || ifconfig ${q(ctx.data.iface)} 2>/dev/null | grep -qF ${q(`inet ${ctx.data.ip} `)} || exit 1`,
      `[ ${nodeMajor((await ctx.target().sh('node --version 2>/dev/null || true')).stdout.trim())} -ge ${NODE_MIN_MAJOR} ] || exit 1`,
      'echo ok',
    ].join('\n'), { privileged: true, timeoutMs: 20_000 });
    return r.code === 0 && r.stdout.includes('ok');
  },
  async apply(ctx) {
    ctx.data.iface ??= ifaceFor(ctx.device);
    const t = ctx.target();
    const probe = (await t.sh('command -v wg >/dev/null 2>&1 && command -v wg-quick >/dev/null 2>&1 && echo wg; node --version 2>/dev/null || true', { privileged: true })).stdout;
    const needWg = !probe.includes('wg\n') && !probe.startsWith('wg');
    const nodeVersion = probe.split('\n').find((l) => l.startsWith('v'))?.trim();
    const needNode = nodeMajor(nodeVersion) < NODE_MIN_MAJOR;
    if (needWg || needNode) {
      ctx.info(`installing ${[needWg ? 'WireGuard tools' : '', needNode ? 'node' : ''].filter(Boolean).join(' and ')} on ${ctx.device}…`);
      const t0 = performance.now();
      await t.shOk(INSTALL_SCRIPT(needWg, needNode), { privileged: true, timeoutMs: 600_000, what: 'installing packages' });
      ctx.data.installMs = Math.round(performance.now() - t0);
      const after = (await t.sh('node --version 2>/dev/null || true')).stdout.trim();
      if (nodeMajor(after) < NODE_MIN_MAJOR) throw new MeshpilotError('tool_missing', `${ctx.device} has node ${after || 'none'} after installing; the agent needs node >= ${NODE_MIN_MAJOR}`);
    }
    const node = (await t.sh('command -v node')).stdout.trim();
    if (node) ctx.data.node = node;
    const conf = wgConfPath(ctx);
    const iface = ctx.data.iface;
    await t.shOk([
      'set -e',
      'umask 077',
      `mkdir -p ${q(path.posix.dirname(conf))}`,
      `cat > ${q(`${conf}.tmp`)}`,
      `mv ${q(`${conf}.tmp`)} ${q(conf)}`,
      `wg-quick down ${q(conf)} >/dev/null 2>&1 || true`,
      'out=$(mktemp)',
      `if ! wg-quick up ${q(conf)} </dev/null >"$out" 2>&1; then cat "$out" >&2; rm -f "$out"; exit 1; fi`,
      'rm -f "$out"',
      ...(ctx.data.systemd && conf === `/etc/wireguard/${iface}.conf` ? [`systemctl enable ${q(`wg-quick@${iface}`)} >/dev/null 2>&1 || true`] : []),
    ].join('\n'), { stdin: wgConfText(ctx), privileged: true, timeoutMs: 60_000, what: 'bringing WireGuard up' });
    return `${iface} up with ${ctx.data.ip}`;
  },
  async undo(ctx) {
    const iface = ctx.data.iface ?? ifaceFor(ctx.device);
    const conf = ctx.data.home ? wgConfPath(ctx) : `/etc/wireguard/${iface}.conf`;
    await ctx.target().shOk([
      `if [ -f ${q(conf)} ]; then wg-quick down ${q(conf)} >/dev/null 2>&1 || true; fi`,
      `ip link del ${q(iface)} >/dev/null 2>&1 || true`,
      `rm -f /var/run/wireguard/${iface}.sock`,
      ...(ctx.data.systemd ? [`systemctl disable ${q(`wg-quick@${iface}`)} >/dev/null 2>&1 || true`] : []),
      `rm -f ${q(conf)} ${q(`${conf}.tmp`)}`,
    ].join('\n'), { privileged: true, timeoutMs: 30_000, what: 'removing WireGuard' });
    return `${iface} down, ${conf} removed`;
  },
};

// ---- 6 agent ------------------------------------------------------------------------------------

function installDir(ctx: EnrollContext): string {
  return `${expandHome(mesh(ctx).install_dir, ctx.data.home ?? '/root').replace(/\/+$/, '')}/${ctx.device}`;
}

function unitName(device: string): string {
  return `meshpilot-agent-${device}.service`;
}

/** The bundle to upload: MESHPILOT_AGENT_BUNDLE, else dist/meshpilot-agent.mjs (built when missing). */
export function agentBundle(): Buffer {
  const file = process.env['MESHPILOT_AGENT_BUNDLE'] || path.join(PACKAGE_ROOT, 'dist', 'meshpilot-agent.mjs');
  if (!existsSync(file)) {
    const r = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'scripts', 'bundle-agent.mjs')], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
    if (r.status !== 0 || !existsSync(file)) throw new MeshpilotError('internal', `cannot build the agent bundle: ${(r.stderr ?? '').trim().slice(0, 300)}`);
  }
  return readFileSync(file);
}

/** The device manifest: the per-OS template, ~ filled in with the device's home, transport mesh, the agent's folder denied. */
export function agentManifestText(ctx: EnrollContext): string {
  const m = mesh(ctx);
  const osName = ctx.data.os ?? 'linux';
  const profile = ctx.opts.profile ?? 'readonly';
  const home = ctx.data.home ?? '/root';
  if (!ctx.data.ip) throw new MeshpilotError('internal', 'no mesh IP yet');
  const rendered = renderTemplate(templateText(`${osName}.${profile}`), ctx.device, { kind: 'mesh', address: ctx.data.ip, port: m.agent_port });
  const doc = parseDocument(rendered);
  const caps = doc.get('capabilities');
  const dir = installDir(ctx);
  if (isMap(caps)) {
    for (const item of caps.items) {
      const opts = item.value;
      if (!isMap(opts)) continue;
      for (const key of ['paths_allowed', 'paths_denied']) {
        const seq = opts.get(key);
        if (!isSeq(seq)) continue;
        const values = seq.items.map((n) => String((n as { value?: unknown }).value ?? n));
        opts.set(key, doc.createNode(values.map((v) => expandHome(v, home)), { flow: true }));
      }
      const name = String((item.key as { value?: unknown }).value ?? '');
      if (name.startsWith('fs.')) {
        const denied = opts.get('paths_denied');
        const list = isSeq(denied) ? denied.items.map((n) => String((n as { value?: unknown }).value ?? n)) : [];
        opts.set('paths_denied', doc.createNode([...list, `${dir}/**`], { flow: true }));
      }
    }
  }
  doc.set('os', osName);
  const text = doc.toString();
  const parsed = parseManifest(text, `${ctx.device}.yaml`);
  if (!parsed.ok) throw new MeshpilotError('internal', `the generated manifest is invalid: ${parsed.issues.map((i) => `${i.field} ${i.message}`).join('; ')}`);
  return text;
}

interface AgentFile { name: string; data: Buffer; mode: number }

function agentFiles(ctx: EnrollContext): AgentFile[] {
  const m = mesh(ctx);
  const dir = installDir(ctx);
  const node = ctx.data.node ?? '/usr/bin/node';
  const manifest = agentManifestText(ctx);
  ctx.data.manifestText = manifest;
  ctx.data.installDir = dir;
  const files: AgentFile[] = [
    { name: 'meshpilot-agent.mjs', data: agentBundle(), mode: 0o644 },
    { name: 'manifest.yaml', data: Buffer.from(manifest), mode: 0o600 },
    { name: 'agent.yaml', data: Buffer.from([
      `# meshpilot agent of ${ctx.device} (written by meshpilot add-pc)`,
      `device: ${ctx.device}`,
      `listen: { address: ${ctx.data.ip}, port: ${m.agent_port} }`,
      'manifest: manifest.yaml',
      'audit_log: audit.jsonl',
      'secret_file: agent.secret',
      '',
    ].join('\n')), mode: 0o600 },
    { name: 'agent.secret', data: Buffer.from(`${readKey(ctx, 'agent.secret')}\n`), mode: 0o600 },
  ];
  if (useSystemd(ctx)) {
    files.push({ name: unitName(ctx.device), data: Buffer.from(renderService('systemd', { node, agent: `${dir}/meshpilot-agent.mjs`, config: `${dir}/agent.yaml`, user: ctx.data.uid === 0 || ctx.data.sudo ? 'root' : 'root', workdir: dir })), mode: 0o644 });
  } else {
    files.push({ name: 'run.sh', data: Buffer.from([
      '#!/bin/sh',
      `# meshpilot agent of ${ctx.device}, supervised without systemd (written by meshpilot add-pc): restarts it when it exits.`,
      `cd ${q(dir)} || exit 1`,
      'echo $$ > agent.pid',
      'child=',
      `trap '[ -n "$child" ] && kill "$child" 2>/dev/null; rm -f agent.pid; exit 0' TERM INT HUP`,
      'while :; do',
      `  ${q(node)} ${q(`${dir}/meshpilot-agent.mjs`)} --config ${q(`${dir}/agent.yaml`)} &`,
      '  child=$!',
      '  wait "$child"',
      '  child=',
      '  sleep 2',
      'done',
      '',
    ].join('\n')), mode: 0o700 });
  }
  return files;
}

function useSystemd(ctx: EnrollContext): boolean {
  const s = mesh(ctx).service;
  return s === 'systemd' || (s === 'auto' && ctx.data.systemd === true);
}

async function remoteState(ctx: EnrollContext, files: AgentFile[]): Promise<{ hashes: Map<string, string>; running: boolean }> {
  const dir = installDir(ctx);
  const r = await ctx.target().sh([
    HASH_FN,
    `cd ${q(dir)} 2>/dev/null || exit 0`,
    `for f in ${files.map((f) => q(f.name)).join(' ')}; do [ -f "$f" ] && echo "$(h "$f" | cut -c1-64) $f"; done`,
    useSystemd(ctx)
      ? `systemctl is-active --quiet ${q(unitName(ctx.device))} && echo "running -"`
      : '[ -f agent.pid ] && kill -0 "$(cat agent.pid)" 2>/dev/null && echo "running -"',
    'true',
  ].join('\n'), { privileged: true, timeoutMs: 20_000 });
  const hashes = new Map<string, string>();
  let running = false;
  for (const line of r.stdout.split('\n')) {
    const [a, b] = line.trim().split(' ');
    if (a === 'running') running = true;
    else if (a && b) hashes.set(b, a);
  }
  return { hashes, running };
}

const agentStep: Step = {
  id: 'agent', title: 'installing and starting the agent',
  async check(ctx) {
    if (!ctx.data.ip || !ctx.data.home) return false;
    const files = agentFiles(ctx);
    const st = await remoteState(ctx, files);
    return st.running && files.every((f) => st.hashes.get(f.name) === sha256(f.data));
  },
  async apply(ctx) {
    const t = ctx.target();
    const dir = installDir(ctx);
    const files = agentFiles(ctx);
    const before = await remoteState(ctx, files);
    const changed = files.filter((f) => before.hashes.get(f.name) !== sha256(f.data));
    for (const f of changed) {
      const dest = f.name.endsWith('.service') ? `/etc/systemd/system/${f.name}` : `${dir}/${f.name}`;
      await t.shOk([
        'set -e', 'umask 077', `mkdir -p ${q(dir)}`,
        `cat > ${q(`${dest}.mp-tmp`)}`, `chmod ${f.mode.toString(8)} ${q(`${dest}.mp-tmp`)}`, `mv ${q(`${dest}.mp-tmp`)} ${q(dest)}`,
        ...(dest !== `${dir}/${f.name}` ? [`cp ${q(dest)} ${q(`${dir}/${f.name}`)}`] : []),
      ].join('\n'), { stdin: f.data, privileged: true, timeoutMs: 120_000, what: `uploading ${f.name}` });
    }
    if (ctx.opts.fault === 'corrupt-upload') {
      await t.sh(`printf 'X' | dd of=${q(`${dir}/meshpilot-agent.mjs`)} bs=1 seek=4096 conv=notrunc 2>/dev/null`, { privileged: true });
    }
    const after = await remoteState(ctx, files);
    const bad = files.filter((f) => after.hashes.get(f.name) !== sha256(f.data));
    if (bad.length) {
      throw new MeshpilotError('exec_failed', `the upload to ${ctx.device} arrived corrupted: ${bad.map((f) => `${f.name} (sha256 ${after.hashes.get(f.name)?.slice(0, 12) ?? 'missing'}… ≠ ${sha256(f.data).slice(0, 12)}…)`).join(', ')}`);
    }
    if (useSystemd(ctx)) {
      const unit = q(unitName(ctx.device));
      await t.shOk(`set -e\nsystemctl daemon-reload\nsystemctl enable ${unit} >/dev/null 2>&1\nsystemctl restart ${unit}`, { privileged: true, what: 'starting the agent service', timeoutMs: 60_000 });
      return `${changed.length} files uploaded, ${unitName(ctx.device)} started`;
    }
    await t.shOk([
      `cd ${q(dir)}`,
      'if [ -f agent.pid ] && kill -0 "$(cat agent.pid)" 2>/dev/null; then p=$(cat agent.pid); kill -TERM "-$p" 2>/dev/null || kill -TERM "$p"; i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; fi',
      'rm -f agent.pid',
      `setsid sh ${q(`${dir}/run.sh`)} </dev/null >>agent.log 2>&1 &`,
      'i=0; while [ ! -s agent.pid ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done',
      '[ -s agent.pid ] || { echo "the agent supervisor did not start" >&2; tail -n 5 agent.log >&2; exit 1; }',
    ].join('\n'), { privileged: true, what: 'starting the agent', timeoutMs: 30_000 });
    return `${changed.length} of ${files.length} files uploaded, agent started (pid file)`;
  },
  async undo(ctx) {
    if (!ctx.data.home) return undefined;
    const dir = installDir(ctx);
    const unit = q(unitName(ctx.device));
    await ctx.target().shOk([
      `if [ -f ${q(`${dir}/agent.pid`)} ]; then p=$(cat ${q(`${dir}/agent.pid`)}); kill -TERM "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; fi`,
      `if command -v systemctl >/dev/null 2>&1 && [ -f /etc/systemd/system/${unitName(ctx.device)} ]; then systemctl disable --now ${unit} >/dev/null 2>&1 || true; rm -f /etc/systemd/system/${unitName(ctx.device)}; systemctl daemon-reload || true; fi`,
      `rm -rf ${q(dir)}`,
    ].join('\n'), { privileged: true, timeoutMs: 30_000, what: 'removing the agent' });
    return `agent stopped, ${dir} removed`;
  },
};

// ---- 7 health -----------------------------------------------------------------------------------

async function probeHealth(ctx: EnrollContext): Promise<{ ok: true } | { ok: false; why: string }> {
  const m = mesh(ctx);
  const ip = ctx.data.ip;
  if (!ip || !ctx.data.manifestText) return { ok: false, why: 'not installed yet' };
  try {
    const res = await fetch(`http://${ip}:${m.agent_port}/health`, { signal: AbortSignal.timeout(3000) });
    const text = await res.text();
    if (text.length > 64 * 1024) return { ok: false, why: 'the answer is too large' };
    const p = HealthResponseSchema.safeParse(JSON.parse(text));
    if (!p.success) return { ok: false, why: 'it did not answer like a meshpilot agent' };
    if (p.data.device !== ctx.device) return { ok: false, why: `it is the agent of ${p.data.device}` };
    const want = sha256(ctx.data.manifestText);
    if (p.data.manifest.sha256 !== want || !p.data.manifest.valid) return { ok: false, why: `manifest ${p.data.manifest.sha256?.slice(0, 12) ?? 'none'}… ≠ ${want.slice(0, 12)}…${p.data.manifest.error ? ` (${p.data.manifest.error})` : ''}` };
    return { ok: true };
  } catch (err) {
    const e = err as { cause?: { code?: string }; message?: string };
    return { ok: false, why: e.cause?.code ?? e.message ?? String(err) };
  }
}

const healthStep: Step = {
  id: 'health', title: 'waiting for the agent over the mesh',
  async check(ctx) {
    return (await probeHealth(ctx)).ok;
  },
  async apply(ctx) {
    const deadline = Date.now() + mesh(ctx).health_timeout_s * 1000;
    let last = '';
    while (Date.now() < deadline) {
      if (ctx.opts.signal?.aborted) break;
      const r = await probeHealth(ctx);
      if (r.ok) return `http://${ctx.data.ip}:${mesh(ctx).agent_port}/health ok`;
      last = r.why;
      await new Promise((res) => setTimeout(res, 200));
    }
    let logTail = '';
    try {
      logTail = (await ctx.target().sh(`tail -n 3 ${q(`${installDir(ctx)}/agent.log`)} 2>/dev/null`, { privileged: true })).stdout.trim().replace(/\s+/g, ' ').slice(0, 300);
    } catch { /* best effort */ }
    throw new MeshpilotError('unreachable', `the agent of ${ctx.device} did not answer on ${ctx.data.ip}:${mesh(ctx).agent_port} over the mesh (${last})${logTail ? `; agent log: ${logTail}` : ''}`);
  },
  async undo() {
    return undefined;
  },
};

export function wgSteps(): Step[] {
  return [preflightStep({ needRoot: true }), keysStep, ipStep, hubStep, targetStep, agentStep, healthStep, matrixStep, registerStep];
}
