/**
 * Adding and revoking devices from the dashboard. Add runs add-pc (launcher/enroll/, the same engine
 * as `meshpilot add-pc` and `!add-pc`) as a job: the page follows its `[3/9] …` steps over SSE as they
 * happen (or, without JavaScript, reloads every 2 s), and a failure shows the steps that were undone.
 * The form's fields are the add-pc command's own declaration (launcher/commands/addpc.ts), validated by
 * its zod schema. Revoke asks for the device name to be typed.
 */
import { randomUUID } from 'node:crypto';
import type { Hono } from 'hono';
import { html, raw } from 'hono/html';
import { streamSSE } from 'hono/streaming';
import type { Logger } from 'pino';
import { validateArgs, type AnyCommand } from '../../../capabilities/commands.js';
import { DEVICE_NAME } from '../../../capabilities/manifest.js';
import { ENROLL_COMMANDS } from '../../commands/addpc.js';
import type { AddPcOptions, EnrollEvent, EnrollResult, OnEvent } from '../../enroll/types.js';
import type { RevokeOptions } from '../../revoke.js';
import type { DashEnv } from './auth.js';
import { formOf, sessionOf } from './auth.js';
import { csrfField, page, type Html } from './layout.js';

/** The device-name rule as an HTML pattern (which always matches the whole value: no anchors). */
const NAME_PATTERN = DEVICE_NAME.source.replace(/^\^|\$$/g, '');

export interface Enroller {
  addPc(opts: AddPcOptions, onEvent: OnEvent): Promise<EnrollResult>;
  revoke(opts: RevokeOptions, onEvent: OnEvent): Promise<EnrollResult>;
}

/** The real engine, loaded when first used. */
export const defaultEnroller: Enroller = {
  addPc: async (opts, onEvent) => (await import('../../enroll/index.js')).runAddPc(opts, onEvent),
  revoke: async (opts, onEvent) => (await import('../../revoke.js')).runRevoke(opts, onEvent),
};

const ADD_PC = ENROLL_COMMANDS.find((c) => c.name === 'add-pc') as AnyCommand<unknown>;
const JOBS_KEPT = 50;

interface Job {
  id: string;
  kind: 'add' | 'revoke';
  device: string;
  actor: string;
  events: EnrollEvent[];
  result?: EnrollResult;
  listeners: Set<() => void>;
}

/** One event as one line of the step list (the CLI printer's wording). */
export function eventLine(e: EnrollEvent): Html | undefined {
  switch (e.type) {
    case 'start':
    case 'info':
      return html`<li class="info">${e.message}</li>`;
    case 'warn':
      return html`<li class="warn">! ${e.message}</li>`;
    case 'step':
      if (e.status === 'running') return undefined;
      return html`<li class="step ${e.status === 'failed' ? 'bad' : e.status === 'done' ? 'ok' : 'muted'}" data-step="${e.step}">[${e.index}/${e.total}] ${e.title} … ${e.status === 'failed' ? `FAILED: ${e.error?.message ?? ''}` : e.status === 'skipped' ? (e.detail ?? 'already done') : `${((e.ms ?? 0) / 1000).toFixed(1)} s${e.detail ? ` (${e.detail})` : ''}`}</li>`;
    case 'undo':
      return e.status === 'done'
        ? html`<li class="undo warn" data-undone="${e.step}">↺ undone ${e.title}${e.message ? `: ${e.message}` : ''}</li>`
        : html`<li class="undo bad">✗ could not undo ${e.title}: ${e.message ?? ''}</li>`;
    case 'result':
      return html`<li class="result ${e.ok ? 'ok' : 'bad'}" data-result="${e.ok ? 'ok' : 'failed'}"><strong>${e.ok ? '✓' : '✗'} ${e.message}</strong>${e.undone?.length ? html`<br>Rolled back: ${e.undone.join(', ')}` : ''}${e.leftovers?.length ? html`<br>Left behind: ${e.leftovers.join('; ')}` : ''}</li>`;
  }
}

export function enrollRoutes(app: Hono<DashEnv>, enroller: Enroller, home: string, log: Logger): { close(): void } {
  const jobs = new Map<string, Job>();

  const start = (kind: Job['kind'], device: string, actor: string, run: (on: OnEvent) => Promise<EnrollResult>): Job => {
    const job: Job = { id: randomUUID(), kind, device, actor, events: [], listeners: new Set() };
    jobs.set(job.id, job);
    if (jobs.size > JOBS_KEPT) jobs.delete(jobs.keys().next().value!);
    const on: OnEvent = (e) => {
      job.events.push(e);
      for (const l of job.listeners) l();
    };
    log.info({ kind, device, actor }, 'job started');
    void run(on).catch((err: unknown) => ({ ok: false, exit: 6, status: 'failed' as const, message: String(err) })).then((r) => {
      log.info({ kind, device, actor, ok: r.ok, exit: r.exit }, 'job finished');
      job.result = r;
      for (const l of job.listeners) l();
    });
    return job;
  };

  const jobPage = (job: Job, s: ReturnType<typeof sessionOf>): Html => {
    const lines = job.events.map(eventLine).filter((l): l is Html => l !== undefined);
    const title = job.kind === 'add' ? `Adding ${job.device}` : `Revoking ${job.device}`;
    return page({ title, session: s, nav: 'add' }, html`${job.result ? '' : raw('<noscript><meta http-equiv="refresh" content="2"></noscript>')}<h1>${title}</h1>
<div${job.result ? '' : html` hx-ext="sse" sse-connect="/jobs/${job.id}/events?from=${job.events.length}" sse-close="done"`}><ol class="steps" id="steps"${job.result ? '' : raw(' sse-swap="line" hx-swap="beforeend"')}>${lines}</ol></div>
<p id="job-state" data-done="${job.result ? 'yes' : 'no'}">${job.result ? html`<a href="/">Back to the fleet</a>` : html`<span class="muted">running…</span>`}</p>`);
  };

  app.get('/add', (c) => {
    const s = sessionOf(c);
    return c.html(page({ title: 'Add a device', session: s, nav: 'add' }, html`<h1>Add a device</h1>
<form method="post" action="/add" class="stack">${csrfField(s)}
<label>Name<input name="name" required pattern="${NAME_PATTERN}" maxlength="32" placeholder="laptop"><small>1-32 of a-z, 0-9, -</small></label>
<label>Via<select name="via"><option value="ssh">ssh: nothing installed on the device</option><option value="wg">wg: WireGuard mesh + agent</option></select></label>
<label>SSH target<input name="ssh" required maxlength="300" placeholder="user@host or an ~/.ssh/config alias"></label>
<label>SSH key<input name="sshKey" maxlength="4096" placeholder="/root/.ssh/id_ed25519 (optional)"></label>
<label>Profile<select name="profile"><option value="readonly">readonly</option><option value="operator">operator</option></select><small>manifest template for wg</small></label>
<label>Accept host key<input name="acceptHostKey" maxlength="100" placeholder="SHA256:… (checked on the machine)"></label>
<label><span><input type="checkbox" name="dryRun" value="true"> dry run (change nothing)</span></label>
<button type="submit">Add</button>
</form>`));
  });

  app.post('/add', async (c) => {
    const s = sessionOf(c);
    const form = await formOf(c);
    const raw: Record<string, unknown> = {};
    for (const k of ['name', 'via', 'ssh', 'sshKey', 'profile', 'acceptHostKey']) if (form[k]) raw[k] = form[k];
    if (form['dryRun'] === 'true') raw['dryRun'] = true;
    const v = validateArgs(ADD_PC, raw);
    if (!v.ok) return c.html(page({ title: 'Add a device', session: s, nav: 'add' }, html`<h1>Add a device</h1><p class="bad">${v.issue.arg || 'arguments'}: ${v.issue.message || 'missing'}</p><p><a href="/add">Back</a></p>`), 400);
    const a = v.args as { name: string; via: 'wg' | 'ssh'; ssh: string; sshKey?: string; profile: 'readonly' | 'operator'; dryRun?: boolean; acceptHostKey?: string };
    const fault = process.env['MESHPILOT_ENROLL_FAULT'];
    const job = start('add', a.name, s.actor, (on) => enroller.addPc({
      name: a.name, via: a.via, ssh: a.ssh, profile: a.profile, home, actor: s.actor,
      ...(a.sshKey ? { sshKey: a.sshKey } : {}), ...(a.dryRun ? { dryRun: true } : {}), ...(a.acceptHostKey ? { acceptHostKey: a.acceptHostKey } : {}),
      ...(fault ? { fault } : {}),
    }, on));
    return c.redirect(`/jobs/${job.id}`, 303);
  });

  app.get('/devices/:device/revoke', (c) => {
    const s = sessionOf(c);
    const device = c.req.param('device');
    return c.html(page({ title: `Revoke ${device}`, session: s, nav: 'fleet' }, html`<h1>Revoke ${device}</h1>
<p>This stops its bot, deactivates its Matrix user, removes its agent and WireGuard peer, and archives its manifest and keys.</p>
<form method="post" action="/devices/${device}/revoke" class="stack">${csrfField(s)}
<label>Type the device name to confirm<input name="confirm" required autocomplete="off" placeholder="${device}"></label>
<button type="submit" class="bad">Revoke ${device}</button>
</form>`));
  });

  app.post('/devices/:device/revoke', async (c) => {
    const s = sessionOf(c);
    const device = c.req.param('device');
    const form = await formOf(c);
    if (form['confirm'] !== device) {
      return c.html(page({ title: `Revoke ${device}`, session: s, nav: 'fleet' }, html`<h1>Revoke ${device}</h1><p class="bad">The name typed does not match: nothing was revoked.</p><p><a href="/devices/${device}/revoke">Try again</a></p>`), 400);
    }
    const job = start('revoke', device, s.actor, (on) => enroller.revoke({ name: device, yes: true, home, actor: s.actor }, on));
    return c.redirect(`/jobs/${job.id}`, 303);
  });

  app.get('/jobs/:id', (c) => {
    const job = jobs.get(c.req.param('id'));
    if (!job) return c.html(page({ title: 'No such job', session: sessionOf(c) }, html`<p>No such job (finished jobs are kept for a while only).</p>`), 404);
    return c.html(jobPage(job, sessionOf(c)));
  });

  app.get('/jobs/:id/events', (c) => {
    const job = jobs.get(c.req.param('id'));
    if (!job) return c.text('no such job', 404);
    // The page showed the first `from` events; the stream goes on from there, so none is lost between the two.
    let cursor = Math.max(0, Math.min(Number(c.req.query('from') ?? 0) || 0, job.events.length));
    return streamSSE(c, async (stream) => {
      let wake: (() => void) | undefined;
      const listener = (): void => wake?.();
      job.listeners.add(listener);
      stream.onAbort(() => wake?.());
      try {
        while (!stream.aborted) {
          while (cursor < job.events.length) {
            const line = eventLine(job.events[cursor++]!);
            if (line) await stream.writeSSE({ event: 'line', data: String(await line) });
          }
          if (job.result) {
            await stream.writeSSE({ event: 'line', data: '<li class="muted"><a href="/">Back to the fleet</a></li>' });
            await stream.writeSSE({ event: 'done', data: '' });
            return;
          }
          await new Promise<void>((resolve) => { wake = resolve; });
        }
      } finally {
        job.listeners.delete(listener);
      }
    });
  });

  return { close: () => jobs.clear() };
}
