/**
 * The steps of `add-pc --via wg`: a WireGuard peer of the hub running the device agent.
 *
 *   1 preflight   ssh (BatchMode, host key), uname -sm, root or passwordless sudo   (common-steps.ts)
 *   2 keys        WireGuard key pair + preshared key (X25519, raw base64) and the agent's HMAC
 *                 secret, 0600 under MESHPILOT_HOME/keys/<device>/
 *   3 ip          a free address of the hub's subnet (mesh_ips, UNIQUE; freed on undo/revoke)
 *   4 hub         `wg set <if> peer … preshared-key /dev/stdin allowed-ips <ip>/32` on the hub
 *                 (over ssh, or locally) and a marked [Peer] block in its wg-quick config
 *   5 target      WireGuard tools and node >= 18 (installed with the package manager when
 *                 missing), <wg_dir>/<iface>.conf, `wg-quick up` (falls back to wireguard-go
 *                 where there is no kernel module)
 *   6 agent       bundle + manifest + agent config + secret + service (systemd unit, or a
 *                 supervised background process with a pid file); uploads are checked by sha256 (wg-agent.ts)
 *   7 health      the agent's /health over the mesh answers with this device and manifest hash
 *   8 matrix      the bot's Matrix user (matrix.ts)
 *   9 register    MESHPILOT_HOME/manifests/<device>.yaml; wait for the bot's "✓ live" (common-steps.ts)
 *
 * The device's interface is mp<10 hex of sha256(device)> (unique per device, 12 characters).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { MeshpilotError } from '../../capabilities/errors.js';
import { loadManifest } from '../../capabilities/manifest.js';
import { HealthResponseSchema } from '../../capabilities/agent/protocol.js';
import type { MeshConfig } from '../../capabilities/config.js';
import { NODE_MIN_MAJOR, preflightStep, registerStep } from './common-steps.js';
import { keysDir, sha256, writeSecret, type EnrollContext, type Step } from './context.js';
import { matrixStep } from './matrix.js';
import {
  expandHome, HASH_FN, hubConfFile, hubRemote, ifaceFor, intToIp, mesh, readKey, subnetOf, wgKeyPair, wgPublicKey,
} from './mesh.js';
import { q } from './remote.js';
import { agentStep, installDir } from './wg-agent.js';

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
