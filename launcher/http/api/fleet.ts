/**
 * Write endpoints: POST /v1/devices (add-pc, its progress as server-sent events: `start`, one `step`
 * event per step when it has finished (`step-start` when it begins), `undo` per rollback, `info`/`warn`,
 * then one `result`) and DELETE /v1/devices/<d>?confirm=<d>
 * (revoke). Both need the token's device globs to match the name and its capability globs to match
 * `fleet.add-pc` / `fleet.revoke` (a `*` token does). The enrollment and revoke flows audit themselves,
 * with actor `api:<token name>`.
 */
import { Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { EnrollEvent } from '../../enroll/types.js';
import type { HttpDeps } from '../types.js';
import { httpError } from '../errors.js';
import type { ApiEnv } from './auth.js';
import { jsonBody, query } from './body.js';
import { AddDeviceRequestSchema, RevokeQuerySchema } from './schemas.js';

export const FLEET_ADD = 'fleet.add-pc';
export const FLEET_REVOKE = 'fleet.revoke';

export function fleetRoutes(deps: HttpDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  const home = deps.runtime.home.root;

  app.post('/devices', async (c) => {
    const body = await jsonBody(c, AddDeviceRequestSchema);
    if (!body.ok) return body.res;
    const b = body.data;
    const p = c.get('principal');
    if (!p.allowsDevice(b.name) || !p.allowsCapability(FLEET_ADD)) return httpError(c, 'forbidden', `token ${p.name} may not add ${b.name} (needs ${FLEET_ADD} and the device name in its scopes)`);
    const { runAddPc } = await import('../../enroll/index.js');
    const abort = new AbortController();
    return streamSSE(c, async (stream) => {
      stream.onAbort(() => abort.abort());
      let chain = Promise.resolve();
      const send = (e: EnrollEvent): void => {
        // One `step` event per step, when it has finished (done, skipped, failed); its start is `step-start`.
        const event = e.type === 'step' && e.status === 'running' ? 'step-start' : e.type;
        chain = chain.then(() => stream.writeSSE({ event, data: JSON.stringify(e) })).catch(() => undefined);
      };
      await runAddPc({
        name: b.name, via: b.via, ssh: b.ssh, home, actor: p.actor, signal: abort.signal,
        ...(b.accept_host_key ? { acceptHostKey: b.accept_host_key } : {}),
        ...(b.profile ? { profile: b.profile } : {}),
        ...(b.dry_run ? { dryRun: true } : {}),
        ...(deps.addPcFault ? { fault: deps.addPcFault } : {}),
      }, send);
      await chain;
    });
  });

  app.delete('/devices/:device', async (c) => {
    const device = c.req.param('device');
    const q = query(c, RevokeQuerySchema);
    if (!q.ok) return q.res;
    const p = c.get('principal');
    if (!p.allowsDevice(device) || !p.allowsCapability(FLEET_REVOKE)) return httpError(c, 'forbidden', `token ${p.name} may not revoke ${device.slice(0, 64)} (needs ${FLEET_REVOKE} and the device in its scopes)`);
    if (q.data.confirm !== device) return httpError(c, 'usage', `to revoke, repeat the device name: ?confirm=${device.slice(0, 64)}`);
    const { runRevoke } = await import('../../revoke.js');
    const r = await runRevoke({ name: device, yes: true, home, actor: p.actor });
    if (!r.ok) return httpError(c, r.exit === 2 ? 'usage' : 'exec_failed', r.message, r.exit === 2 ? 400 : 500);
    return c.json({ ok: true, device, status: r.status, message: r.message }, 200);
  });

  return app;
}
