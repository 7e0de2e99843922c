/**
 * HTTP API figures, on the real server (launcher/http/, the /v1 surface) over a temporary
 * MESHPILOT_HOME, with a device `box` (local transport) and fs.list of a small folder: a capability
 * that runs in the launcher process (readdir), so the figures are the API's own cost.
 *
 *   api.exec_overhead_p50  ms     p50 of POST /v1/exec (keep-alive HTTP, bearer auth, token bucket,
 *                                 body validation, scopes, invoke, JSON answer) minus p50 of the same
 *                                 invoke called directly, interleaved over 1,000 calls each
 *   api.throughput         req/s  8 concurrent keep-alive clients (in a process of their own) posting
 *                                 /v1/exec for 3 s
 *   api.command_overhead_p50 ms   p50 of POST /v1/commands/audit/tail {n: 5, device: box} (a route derived
 *                                 from the declaration: auth, scope, body through the args schema, the
 *                                 handler with collected output, JSON answer) minus p50 of the same
 *                                 declaration run in process (runCommand), interleaved over 1,000 calls each
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { pino } from 'pino';
import { HttpConfigSchema } from '../capabilities/config.js';
import { isGroup } from '../capabilities/commands.js';
import type { CliCommand } from '../launcher/commands/context.js';
import { HTTP_COMMAND_TABLE } from '../launcher/commands/http-table.js';
import { runCommand } from '../launcher/http/api/commands.js';
import { apiSurface } from '../launcher/http/api/index.js';
import { startHttpServer } from '../launcher/http/server.js';
import { TokenStore } from '../launcher/http/tokens.js';
import { openRuntime } from '../launcher/runtime.js';
import type { BenchFigure } from './run.js';

export const figures = ['api.exec_overhead_p50', 'api.throughput', 'api.command_overhead_p50'];

const CALLS = 1000;
const CLIENTS = 8;
const THROUGHPUT_MS = 3000;

/** 8 keep-alive clients posting /v1/exec in a loop for the given time; prints {done, bad, ms}. */
const CLIENTS_JS = `
const http = require('node:http');
const [url, token, body, n, ms] = process.argv.slice(1);
const u = new URL(url);
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(n) });
const post = () => new Promise((resolve, reject) => {
  const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', agent, headers: { authorization: 'Bearer ' + token, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
  req.on('error', reject);
  req.end(body);
});
(async () => {
  let done = 0, bad = 0;
  const t0 = performance.now();
  const until = t0 + Number(ms);
  await Promise.all(Array.from({ length: Number(n) }, async () => { while (performance.now() < until) { if ((await post()) === 200) done++; else bad++; } }));
  process.stdout.write(JSON.stringify({ done, bad, ms: performance.now() - t0 }));
  agent.destroy();
})().catch((e) => { console.error(e); process.exit(1); });
`;

function p50(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

export async function run(): Promise<BenchFigure[]> {
  const root = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-api-'));
  const rt = openRuntime({ root });
  const dir = path.join(root, 'files');
  mkdirSync(dir);
  for (const f of ['a', 'b', 'c']) writeFileSync(path.join(dir, f), f);
  writeFileSync(path.join(rt.home.manifests, 'box.yaml'), `device: box\nos: linux\ntransport: { kind: local }\ncapabilities:\n  fs.list: { paths_allowed: ["${dir}/**", "${dir}"] }\n`);
  const srv = await startHttpServer({ runtime: rt, http: HttpConfigSchema.parse({ listen: '127.0.0.1:0' }), logger: pino({ level: 'silent' }) }, [apiSurface()]);
  const { token } = new TokenStore(rt.db, rt.audit).create({ name: 'bench', devices: ['box'], capabilities: ['fs.*', 'audit.tail'], expiresInS: 86400, rate: { count: 100_000, windowS: 1 }, by: 'bench' });
  const body = JSON.stringify({ device: 'box', capability: 'fs.list', args: { path: dir } });
  const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
  const url = new URL(`${srv.url}/v1/exec`);
  const post = (): Promise<number> => new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', agent, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(body);
  });
  const direct = (): Promise<unknown> => rt.invoker.invoke({ device: 'box', capability: 'fs.list', args: { path: dir }, actor: 'bench' });
  try {
    for (let i = 0; i < 100; i++) { await direct(); if ((await post()) !== 200) throw new Error('POST /v1/exec did not answer 200'); }
    const viaHttp: number[] = [];
    const inProcess: number[] = [];
    for (let i = 0; i < CALLS; i++) {
      const t0 = performance.now();
      await direct();
      const t1 = performance.now();
      await post();
      viaHttp.push(performance.now() - t1);
      inProcess.push(t1 - t0);
    }
    const overhead = p50(viaHttp) - p50(inProcess);
    process.stderr.write(`# api: invoke p50 ${p50(inProcess).toFixed(3)} ms, POST /v1/exec p50 ${p50(viaHttp).toFixed(3)} ms\n`);

    // The clients run in a process of their own: in this one they would take the server's CPU.
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, ['-e', CLIENTS_JS, url.href, token, body, String(CLIENTS), String(THROUGHPUT_MS)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let text = '';
      child.stdout.on('data', (d: Buffer) => (text += d.toString()));
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`the client process exited with ${code}`))));
    });
    const { done, bad, ms } = JSON.parse(out) as { done: number; bad: number; ms: number };
    const rps = done / (ms / 1000);
    if (bad) process.stderr.write(`# api: ${bad} answers were not 200\n`);

    // A derived command route against the same declaration run in process.
    const tail = HTTP_COMMAND_TABLE.find((e): e is CliCommand => !isGroup(e) && e.name === 'audit tail')!;
    const cmdUrl = new URL(`${srv.url}/v1/commands/audit/tail`);
    const cmdBody = JSON.stringify({ n: 5, device: 'box' });
    const postCmd = (): Promise<number> => new Promise((resolve, reject) => {
      const req = request({ host: cmdUrl.hostname, port: cmdUrl.port, path: cmdUrl.pathname, method: 'POST', agent, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(cmdBody) } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end(cmdBody);
    });
    const caller = { actor: 'api:bench', allowsDevice: () => true };
    const inProc = (): Promise<unknown> => runCommand(tail, { n: 5, device: 'box' }, { runtime: rt, logger: pino({ level: 'silent' }) }, caller);
    for (let i = 0; i < 100; i++) { await inProc(); if ((await postCmd()) !== 200) throw new Error('POST /v1/commands/audit/tail did not answer 200'); }
    const cmdHttp: number[] = [];
    const cmdIn: number[] = [];
    for (let i = 0; i < CALLS; i++) {
      const t0 = performance.now();
      await inProc();
      const t1 = performance.now();
      await postCmd();
      cmdHttp.push(performance.now() - t1);
      cmdIn.push(t1 - t0);
    }
    process.stderr.write(`# api: audit tail in process p50 ${p50(cmdIn).toFixed(3)} ms, POST /v1/commands/audit/tail p50 ${p50(cmdHttp).toFixed(3)} ms\n`);
    return [
      { name: 'api.exec_overhead_p50', value: overhead, unit: 'ms', target: '<= 2' },
      { name: 'api.throughput', value: Math.round(rps), unit: 'req/s', target: '>= 500' },
      { name: 'api.command_overhead_p50', value: p50(cmdHttp) - p50(cmdIn), unit: 'ms', target: '<= 2' },
    ];
  } finally {
    agent.destroy();
    await srv.close();
    await rt.close();
    rmSync(root, { recursive: true, force: true });
  }
}
