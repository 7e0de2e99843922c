/**
 * Dashboard figures, on the real HTTP server (all surfaces) over a temporary MESHPILOT_HOME with 100
 * devices (manifests from the read-only template, a health record each):
 *   dashboard.grid_100     server time to answer GET / (session lookup + the grid of 100 devices), p50
 *                          over 200 requests through the app in process (no socket: the server's own time)
 *   dashboard.sse_latency  from a health transition written to meshpilot.db to the `grid` event carrying
 *                          it on the wire of an open /events stream (a real socket), p50 of 30
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { DashboardLogins } from '../capabilities/dashboard-login.js';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { logger } from '../capabilities/log.js';
import { dashboardSurface } from '../launcher/http/dashboard/index.js';
import { startHttpServer } from '../launcher/http/server.js';
import { HealthStore, type DeviceHealth, type DeviceState } from '../launcher/health/state.js';
import { openRuntime } from '../launcher/runtime.js';
import type { BenchFigure } from './run.js';

export const figures = ['dashboard.grid_100', 'dashboard.sse_latency'];

const DEVICES = 100;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

function writeHealth(store: HealthStore, device: string, state: DeviceState, now: number): void {
  const info: DeviceHealth = { device, state, since: now, detail: `bench ${state}`, transport: 'local', meshIp: null, lastHandshake: Math.floor(now / 1000) - 30, agent: null, ssh: null, bot: 'running', chain: null };
  store.write((w) => {
    w.save({ device, state, since_ms: now, detail: info.detail, info: JSON.stringify(info), agent_failures: 0, ssh_failures: 0, bot_bad: null, reminded_ms: null, updated_ms: now });
    w.transition(device, now, null, state, info.detail);
  });
}

export async function run(): Promise<BenchFigure[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-dash-'));
  const rt = openRuntime({ root: dir });
  const template = readFileSync(path.join(PACKAGE_ROOT, 'manifests', 'templates', 'linux.readonly.yaml'), 'utf8');
  const store = new HealthStore(rt.db, Date.now);
  for (let i = 0; i < DEVICES; i++) {
    const name = `pc-${String(i).padStart(3, '0')}`;
    writeFileSync(path.join(rt.home.manifests, `${name}.yaml`), template.replace(/^device: .*$/m, `device: ${name}`));
    writeHealth(store, name, i % 7 === 0 ? 'stale' : 'online', Date.now());
  }
  const server = await startHttpServer({
    runtime: rt, http: { listen: '127.0.0.1:0', max_body_bytes: 64 * 1024, auth_failures_per_min: 10 }, logger: logger('bench'),
  }, [dashboardSurface()]);
  const out: BenchFigure[] = [];
  try {
    const logins = new DashboardLogins(rt.db);
    const r = logins.consumeLink(logins.createLink('cli:bench'));
    if (!r.ok) throw new Error('could not log in');
    const cookie = `meshpilot_session=${r.sessionId}`;
    const headers = { cookie, host: '127.0.0.1' };

    // Grid: in process, the server's own time (routing, session, grid data from SQLite and manifests, HTML).
    const first = await server.app.request('/', { headers });
    const body = await first.text();
    const rows = body.match(/<tr id="dev-/g)?.length ?? 0;
    if (first.status !== 200 || rows !== DEVICES + 1) throw new Error(`GET / answered ${first.status} with ${rows} device rows`);
    for (let i = 0; i < 30; i++) await (await server.app.request('/', { headers })).text();
    const times: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t0 = performance.now();
      await (await server.app.request('/', { headers })).text();
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    out.push({ name: 'dashboard.grid_100', value: percentile(times, 50), unit: 'ms', target: '<= 50' });
    process.stderr.write(`# grid_100: p50 ${percentile(times, 50).toFixed(2)} ms, p95 ${percentile(times, 95).toFixed(2)} ms, ${body.length} bytes\n`);

    // SSE: a real stream; each transition's timestamp against the event that shows it.
    const lat: number[] = [];
    await new Promise<void>((resolve, reject) => {
      const req = request(`${server.url}/events`, { headers }, (res) => {
        res.setEncoding('utf8');
        let buf = '';
        let expect: { state: string; t0: number } | undefined;
        let n = 0;
        const next = (): void => {
          if (n >= 30) { req.destroy(); resolve(); return; }
          const state: DeviceState = n % 2 === 0 ? 'unreachable' : 'online';
          n++;
          // Spread over the poll period, as real transitions are.
          setTimeout(() => {
            expect = { state, t0: performance.now() };
            writeHealth(store, 'pc-050', state, Date.now());
          }, 20 + Math.random() * 150);
        };
        res.on('data', (chunk: string) => {
          buf += chunk;
          let end: number;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const ev = buf.slice(0, end);
            buf = buf.slice(end + 2);
            if (!ev.includes('event: grid')) continue;
            if (!expect) { next(); continue; } // the first push: the grid as of now
            const m = /id="dev-pc-050" data-state="([a-z]+)"/.exec(ev);
            if (m?.[1] === expect.state) {
              lat.push(performance.now() - expect.t0);
              expect = undefined;
              next();
            }
          }
        });
        res.on('error', reject);
      });
      req.on('error', (err) => { if (lat.length < 30) reject(err); });
      req.end();
    });
    lat.sort((a, b) => a - b);
    out.push({ name: 'dashboard.sse_latency', value: percentile(lat, 50), unit: 'ms', target: '<= 200' });
    process.stderr.write(`# sse_latency: p50 ${percentile(lat, 50).toFixed(1)} ms, max ${lat[lat.length - 1]!.toFixed(1)} ms (poll every 100 ms)\n`);
  } finally {
    await server.close();
    await rt.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}
