/**
 * Org templates that arrive as text (the HTTP API, the dashboard and the operator room stage them as
 * one file: launcher/org-upload.ts) on the real server (launcher/http/, the /v1 surface) over a
 * temporary MESHPILOT_HOME with two devices:
 *
 *   workspace.api_plan_200  ms  median of POST /v1/workspaces/import {dry_run: true} with a generated
 *                               200-workspace template in one file (10 teams of 19-20, every 7th member
 *                               `spawning: false`), keep-alive, 20 runs after 3 warm-ups: body parse,
 *                               staging, parse + validate + plan, the JSON answer. Same bar as
 *                               workspace.plan_200 (500 ms), which this includes.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pino } from 'pino';
import { HttpConfigSchema } from '../capabilities/config.js';
import { apiSurface } from '../launcher/http/api/index.js';
import { startHttpServer } from '../launcher/http/server.js';
import { TokenStore } from '../launcher/http/tokens.js';
import { openRuntime } from '../launcher/runtime.js';
import type { BenchFigure } from './run.js';

export const figures = ['workspace.api_plan_200'];

const RUNS = 20;

function template(): string {
  const teams = Array.from({ length: 10 }, (_, t) => `team${t}`);
  const lines = ['name: bench-org', 'defaults: { device: server, model: small, capabilities: [fs.read, fs.list] }', 'workspaces:', '  - name: chief', '    role: Runs the org.', '    children:'];
  teams.forEach((t, ti) => {
    lines.push(`      - name: ${t}-lead`, `        role: Leads ${t}.`, `        device: ${ti % 2 ? 'nas' : 'server'}`, '        capabilities: [fs.list]', '        children:');
    for (let m = 0; m < (ti === 0 ? 18 : 19); m++) {
      lines.push(`          - name: ${t}-m${m}`, `            role: Member ${m} of ${t}; checks its part of the lab and reports.`, `            home: ~/workspaces/${t}/m${m}`);
      if (m % 7 === 6) lines.push('            spawning: false');
    }
  });
  return `${lines.join('\n')}\n`;
}

export async function run(): Promise<BenchFigure[]> {
  const root = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-wsapi-'));
  const rt = openRuntime({ root });
  for (const d of ['server', 'nas']) {
    writeFileSync(path.join(rt.home.manifests, `${d}.yaml`), `device: ${d}\ncapabilities:\n  fs.read: { paths_allowed: ["~/**"] }\n  fs.list: { paths_allowed: ["~/**"] }\n`);
  }
  const srv = await startHttpServer({ runtime: rt, http: HttpConfigSchema.parse({ listen: '127.0.0.1:0', max_body_bytes: 1024 * 1024 }), logger: pino({ level: 'silent' }) }, [apiSurface()]);
  try {
    const token = new TokenStore(rt.db, rt.audit).create({ name: 'bench', devices: ['*'], capabilities: ['*'], expiresInS: 3600, rate: { count: 100_000, windowS: 60 }, by: 'bench' }).token;
    const body = JSON.stringify({ yaml: template(), dry_run: true });
    const once = async (): Promise<number> => {
      const t0 = performance.now();
      const res = await fetch(`${srv.url}/v1/workspaces/import`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body });
      const j = (await res.json()) as { plan?: { create: string[]; skipped: string[] } };
      const ms = performance.now() - t0;
      if (res.status !== 200 || (j.plan?.create.length ?? 0) + (j.plan?.skipped.length ?? 0) !== 200) throw new Error(`unexpected answer ${res.status}: ${JSON.stringify(j).slice(0, 300)}`);
      return ms;
    };
    for (let i = 0; i < 3; i++) await once();
    const times: number[] = [];
    for (let i = 0; i < RUNS; i++) times.push(await once());
    const median = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)]!;
    return [{ name: 'workspace.api_plan_200', value: Math.round(median * 10) / 10, unit: 'ms', target: '<= 500' }];
  } finally {
    await srv.close();
    await rt.close();
    rmSync(root, { recursive: true, force: true });
  }
}
