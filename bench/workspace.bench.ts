/**
 * Org templates: parse, validate against the device manifests and plan a generated 200-workspace
 * template (a main file including 10 team files, each including its members file: 21 files), against
 * a workspaces table holding half of it from an earlier import (so the plan has creates, updates and
 * unchanged rows). Median of 30 runs after 3 warm-ups; the first run is printed too. The ratio is
 * against the bare YAML parse of the same 21 files (read from disk, yaml's parseDocument) measured
 * in the same run. Cold (what one `meshpilot workspace import` process pays): fresh processes, timed
 * from after their imports, ours and the bare parse interleaved, median of 5 each.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { openDatabase } from '../capabilities/db.js';
import { DeviceRegistry } from '../capabilities/device-registry.js';
import { planImport } from '../capabilities/workspace/plan.js';
import { WorkspaceStore } from '../capabilities/workspace/store.js';
import { loadOrgTemplate } from '../capabilities/workspace/validate.js';
import type { BenchFigure } from './run.js';

export const figures = ['workspace.plan_200', 'workspace.plan_200_ratio', 'workspace.plan_200_cold', 'workspace.plan_200_cold_ratio', 'workspace.import_5', 'workspace.bot_rss', 'workspace.import_5_e2ee_off'];

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

function generate(dir: string): string[] {
  const files: string[] = [];
  const put = (rel: string, text: string): void => {
    const f = path.join(dir, rel);
    mkdirSync(path.dirname(f), { recursive: true });
    writeFileSync(f, text);
    files.push(f);
  };
  const teams = Array.from({ length: 10 }, (_, t) => `team${t}`);
  put('org.yaml', `name: bench-org
defaults: { device: server, model: small, capabilities: [fs.read, fs.list] }
workspaces:
  - name: chief
    role: Runs the org.
    children:
${teams.map((t) => `      - !include teams/${t}.yaml`).join('\n')}
`);
  teams.forEach((t, ti) => {
    put(`teams/${t}.yaml`, `name: ${t}-lead\nrole: Leads ${t}.\ndevice: ${ti % 2 ? 'nas' : 'server'}\ncapabilities: [fs.list]\nchildren:\n  - !include members/${t}.yaml\n`);
    const members = Array.from({ length: ti === 0 ? 18 : 19 }, (_, m) => `- name: ${t}-m${m}
  role: Member ${m} of ${t}; checks its part of the lab and reports.
  home: ~/workspaces/${t}/m${m}
${m % 7 === 6 ? '  spawning: false\n' : ''}`);
    put(`teams/members/${t}.yaml`, members.join(''));
  });
  return files;
}

function setup(tmp: string): { dir: string; files: string[] } {
  mkdirSync(path.join(tmp, 'manifests'));
  writeFileSync(path.join(tmp, 'manifests', 'server.yaml'), 'device: server\ncapabilities:\n  fs.read: { paths_allowed: ["~/**"] }\n  fs.list: { paths_allowed: ["~/**"] }\n');
  writeFileSync(path.join(tmp, 'manifests', 'nas.yaml'), 'device: nas\ncapabilities:\n  fs.read: { paths_allowed: ["~/**"] }\n  fs.list: { paths_allowed: ["~/**"] }\n');
  const dir = path.join(tmp, 'org');
  return { dir, files: generate(dir) };
}

function parsePlan(dir: string, devices: DeviceRegistry, store: WorkspaceStore): number {
  const t0 = performance.now();
  const t = loadOrgTemplate(dir, { devices });
  if (!t.ok) throw new Error(`bench template invalid: ${t.issues[0]?.message}`);
  const plan = planImport(t.template, store.list(), 'reconcile');
  const ms = performance.now() - t0;
  if (t.template.all.length !== 200 || plan.blocked.length > 0) throw new Error(`bench plan: ${t.template.all.length} workspaces, blocked ${plan.blocked.join('; ')}`);
  return ms;
}

function bareParse(files: string[]): number {
  const t0 = performance.now();
  for (const f of files) if (parseDocument(readFileSync(f, 'utf8')).errors.length) throw new Error('bad yaml');
  return performance.now() - t0;
}

/** One cold measurement in this fresh process (MP_WS_BENCH_CHILD=ours|bare, argv: tmp dir). */
async function child(kind: string, tmp: string): Promise<void> {
  const dir = path.join(tmp, 'org');
  if (kind === 'bare') {
    const files = [path.join(dir, 'org.yaml')];
    for (let t = 0; t < 10; t++) files.push(path.join(dir, `teams/team${t}.yaml`), path.join(dir, `teams/members/team${t}.yaml`));
    process.stdout.write(`${bareParse(files)}\n`);
    return;
  }
  const db = openDatabase(path.join(tmp, 'meshpilot.db'));
  process.stdout.write(`${parsePlan(dir, new DeviceRegistry(path.join(tmp, 'manifests')), new WorkspaceStore(db))}\n`);
  db.close();
}
if (process.env.MP_WS_BENCH_CHILD) await child(process.env.MP_WS_BENCH_CHILD, process.argv[2]!);

/** The filter `npx tsx bench/run.ts <name>` was given (undefined: everything). */
function filterArg(): string | undefined {
  return process.argv.slice(2).find((a) => !a.startsWith('-'));
}

export async function run(): Promise<BenchFigure[]> {
  const f = filterArg();
  const wantPlan = !f || f === 'workspace' || f.startsWith('workspace.plan');
  const wantLive = !f || f === 'workspace' || f.startsWith('workspace.import') || f.startsWith('workspace.bot');
  const out: BenchFigure[] = [];
  if (wantPlan) out.push(...(await planFigures()));
  if (wantLive) out.push(...(await liveFigures('auto')));
  // the same import with encryption off: how much of import_5 is the new bots' end-to-end key setup
  if (wantLive) out.push(...(await liveFigures('off')).filter((x) => x.name === 'workspace.import_5').map((x) => ({ ...x, name: 'workspace.import_5_e2ee_off' })));
  return out;
}

async function planFigures(): Promise<BenchFigure[]> {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-ws-'));
  try {
    const { dir, files } = setup(tmp);
    const devices = new DeviceRegistry(path.join(tmp, 'manifests'));
    const db = openDatabase(path.join(tmp, 'meshpilot.db'));
    const store = new WorkspaceStore(db);

    const once = (): number => parsePlan(dir, devices, store);
    const bare = (): number => bareParse(files);

    // An earlier import of half the org, some of it since changed: creates, updates and unchanged rows.
    const t = loadOrgTemplate(dir, { devices });
    if (!t.ok) throw new Error('bench template invalid');
    const seed = planImport(t.template, [], 'merge');
    seed.upserts = seed.upserts.filter((_, i) => i % 2 === 0).map((u, i) => (i % 5 === 0 ? { ...u, model: 'older' } : u));
    store.record(seed);

    for (let w = 0; w < 3; w++) { once(); bare(); }
    const ours: number[] = [];
    const base: number[] = [];
    for (let k = 0; k < 30; k++) {
      if (k % 2) { ours.push(once()); base.push(bare()); } else { base.push(bare()); ours.push(once()); }
    }
    db.close();
    const cold = (kind: string): number => Number(execFileSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), tmp], {
      env: { ...process.env, MP_WS_BENCH_CHILD: kind, MESHPILOT_LOG_LEVEL: 'silent' }, encoding: 'utf8',
    }).trim().split('\n').pop());
    const coldOurs: number[] = [];
    const coldBare: number[] = [];
    for (let k = 0; k < 5; k++) { coldBare.push(cold('bare')); coldOurs.push(cold('ours')); }
    const m = median(ours);
    const c = median(coldOurs);
    return [
      { name: 'workspace.plan_200', value: m, unit: 'ms', target: '<= 500' },
      { name: 'workspace.plan_200_ratio', value: m / median(base), unit: 'x (vs bare yaml parse of the 21 files)' },
      { name: 'workspace.plan_200_cold', value: c, unit: 'ms', target: '<= 500' },
      { name: 'workspace.plan_200_cold_ratio', value: c / median(coldBare), unit: 'x (vs a cold bare yaml parse of the 21 files)' },
    ];
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

// ---- a real import: workspace.import_5 and workspace.bot_rss ----------------------------------------

const say = (line: string): void => void process.stderr.write(`# ${line}\n`);
const mb = (kb: number): number => Math.round(kb / 1024);

/**
 * `meshpilot workspace import` of a 5-workspace tree (a lead, two teams of one lead and one member) into
 * a running launcher (`meshpilot up`, one device bot for the host, encryption on as in
 * launcher.tree_rss; and once more with it off), timed from the command's start to its exit, which is after every bot said live.
 * Then, at rest, the launcher's process tree RSS (walked in /proc) against the same tree before the
 * import: the difference per workspace bot. The homeserver: MESHPILOT_TEST_HOMESERVER when set.
 */
async function liveFigures(encryption: 'auto' | 'off'): Promise<BenchFigure[]> {
  const { spawn } = await import('node:child_process');
  const { PACKAGE_ROOT } = await import('../capabilities/home.js');
  const { SETTLE_IDLE_MS } = await import('../bots/memory-settle.js');
  const { buildBundles, bundlesFresh } = await import('../scripts/bundle-fresh.mjs');
  const { processTree } = await import('./proc-tree.js');
  const { createBotEnv } = await import('../test/helpers/bot-env.js');
  if (!bundlesFresh() && !buildBundles()) throw new Error('could not build dist/');
  const BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs');
  const env = await createBotEnv({ encryption });
  const childEnv = { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', MESHPILOT_HOME: env.home, MESHPILOT_LOG_LEVEL: 'warn' };
  let launcher: ReturnType<typeof spawn> | undefined;
  let out = '';
  try {
    say(`homeserver: ${env.hs.kind} ${env.hs.url}; encryption ${encryption}`);
    rmSync(path.join(env.home, 'manifests', 'local.yaml'), { force: true });
    await env.registerBot('host');
    const paths = `["${env.work}/**"]`;
    env.writeManifest('host', ['fs.read', 'fs.list', 'fs.stat', 'fs.write', 'fs.delete'].map((c) => `  ${c}: { paths_allowed: ${paths} }\n`).join(''));
    const ws = (n: string): string => `${env.work}/ws/${n}`;
    const tpl = path.join(env.work, 'org');
    mkdirSync(tpl, { recursive: true });
    writeFileSync(path.join(tpl, 'org.yaml'), [
      'name: bench-five',
      'defaults: { device: host, capabilities: [fs.read, fs.list] }',
      'workspaces:',
      `  - name: lead\n    role: Leads the lab.\n    home: ${ws('lead')}\n    children:`,
      `      - { name: ops, role: Runs operations., home: ${ws('ops')}, children: [{ name: ops-m, role: Checks services., home: ${ws('ops-m')} }] }`,
      `      - { name: data, role: Keeps the data., home: ${ws('data')}, children: [{ name: data-m, role: Checks backups., home: ${ws('data-m')} }] }`,
      '',
    ].join('\n'));
    launcher = spawn(process.execPath, [BIN, 'up'], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let importStart = 0;
    launcher.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      // when each bot's process said ready, from the import's start (where the time goes)
      if (importStart) for (const m of d.toString().matchAll(/bot (\S+): running/g)) say(`  +${((performance.now() - importStart) / 1000).toFixed(1)} s: bot ${m[1]} ready`);
    });
    launcher.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
    const t0 = Date.now();
    while (!/bot host: running/.test(out)) {
      if (Date.now() - t0 > 90_000) throw new Error(`the launcher did not start its host bot:\n${out.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, SETTLE_IDLE_MS + 3000));
    const before = processTree(launcher.pid!);
    const rssBefore = before.reduce((a, p) => a + p.rssKb, 0);
    say(`before: ${before.length} processes, RSS ${mb(rssBefore)} MB`);
    const i0 = performance.now();
    importStart = i0;
    // not spawnSync: the test homeserver's proxy runs in this process and must keep serving
    const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const c = spawn(process.execPath, [BIN, 'workspace', 'import', tpl, '--yes'], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
      let o = '';
      let e = '';
      c.stdout?.on('data', (d: Buffer) => { o += d.toString(); });
      c.stderr?.on('data', (d: Buffer) => { e += d.toString(); });
      c.on('exit', (status) => resolve({ status, stdout: o, stderr: e }));
    });
    const importS = (performance.now() - i0) / 1000;
    if (r.status !== 0) throw new Error(`the import failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
    for (const line of r.stdout.trim().split('\n')) say(`  ${line}`);
    await new Promise((res) => setTimeout(res, SETTLE_IDLE_MS + 3000));
    const after = processTree(launcher.pid!);
    for (const p of after) say(`  pid ${p.pid} ${p.name}: RSS ${mb(p.rssKb)} MB, PSS ${mb(p.pssKb)} MB`);
    const rssAfter = after.reduce((a, p) => a + p.rssKb, 0);
    const bots = after.length - before.length;
    say(`after: ${after.length} processes (${bots} new), RSS ${mb(rssAfter)} MB; tree growth ${mb(rssAfter - rssBefore)} MB`);
    if (bots !== 5) throw new Error(`expected 5 new workspace bots under the launcher, found ${bots}`);
    return [
      { name: 'workspace.import_5', value: importS, unit: 's', target: '<= 10' },
      { name: 'workspace.bot_rss', value: mb((rssAfter - rssBefore) / 5), unit: 'MB', target: '<= 80' },
    ];
  } finally {
    if (launcher && launcher.exitCode === null) {
      const l = launcher;
      const exited = new Promise((res) => l.once('exit', res));
      l.kill('SIGTERM');
      await Promise.race([exited, new Promise((res) => setTimeout(res, 15_000))]);
      if (l.exitCode === null) l.kill('SIGKILL');
    }
    await env.cleanup();
  }
}
