/**
 * Step 6 of `add-pc --via wg`: the agent on the device. Bundle, manifest, agent config, secret and
 * service (a systemd unit, or a supervised background process with a pid file) are uploaded when
 * their sha256 differs, checked again after the upload, then the agent is (re)started.
 */
import { existsSync, readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { parseDocument, isMap, isSeq } from 'yaml';
import { MeshpilotError } from '../../capabilities/errors.js';
import { PACKAGE_ROOT, templateText } from '../../capabilities/home.js';
import { parseManifest, renderTemplate } from '../../capabilities/manifest.js';
import { renderService } from '../../capabilities/agent/services.js';
import { sha256, type EnrollContext, type Step } from './context.js';
import { expandHome, HASH_FN, mesh, readKey } from './mesh.js';
import { q } from './remote.js';

/** Where the agent lives on the device: <install_dir>/<device>. */
export function installDir(ctx: EnrollContext): string {
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

export const agentStep: Step = {
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
