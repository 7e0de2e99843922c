/**
 * Workspaces in the operator room (issue 18): `!org` shows the org tree (launcher/workspaces
 * listWorkspaces, the text of `meshpilot workspace ls`); an org template uploaded into the room by an
 * operator (an m.file named .yaml/.yml or with a YAML mimetype) is downloaded (bounded by the template
 * file limit, 256 KiB; encrypted attachments come decrypted from the session), parsed and validated as
 * a single-file template (`!include` cannot resolve from chat: refused, naming its line), and its plan
 * posted (the tree of the CLI's dry run). An operator's ✅ on that message (or `!org apply <id>
 * [merge|reconcile]`) applies it, with one line per finished step and the summary; ❌ or `!org cancel
 * <id>` drops it. A plan expires after 15 minutes; when the org changed since it was shown (the plan
 * made again from the same file differs), the new plan is posted and needs its own ✅. Anyone else's
 * upload or reaction is ignored (logged).
 * The text is staged as one file by org-upload.ts.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { toMpError } from '../capabilities/errors.js';
import { TEMPLATE_LIMITS } from '../capabilities/workspace/schema.js';
import { APPROVE_KEYS, REJECT_KEYS } from '../bots/approvals.js';
import { stagedName, stageTemplate, type StagedTemplate } from './org-upload.js';
import type { ImportProgress, ImportResult, PreparedImport, WorkspaceOptions } from './workspaces/index.js';

export const ORG_PLAN_TTL_MS = 15 * 60_000;
const MAX_PENDING = 20;
const MAX_ISSUE_LINES = 60;
const YAML_MIMES = new Set(['application/yaml', 'application/x-yaml', 'text/yaml', 'text/x-yaml', 'application/vnd.yaml']);
type Mode = 'merge' | 'reconcile';

/** What an uploaded file looks like when it reaches the operator bot (the session's MatrixMessage). */
export interface UploadLike {
  roomId: string;
  eventId?: string;
  sender: string;
  msgtype?: string;
  body: string;
  filename?: string;
  mxc?: string;
  info?: { mimetype?: string; size?: number };
}

/** An m.file whose name ends .yaml/.yml or whose mimetype is YAML. */
export function isOrgUpload(m: UploadLike): boolean {
  if (m.msgtype !== 'm.file' || !m.mxc) return false;
  const name = (m.filename ?? m.body).toLowerCase();
  return /\.ya?ml$/.test(name) || YAML_MIMES.has((m.info?.mimetype ?? '').toLowerCase().split(';')[0]!.trim());
}

export interface OrgChat {
  say(text: string): Promise<unknown>;
  /** Preformatted text; resolves to the event id when the chat gives one. */
  pre(text: string): Promise<unknown>;
  download(mxc: string, maxBytes: number): Promise<{ bytes: Buffer }>;
}

export interface OrgRoomOptions {
  chat: OrgChat;
  isOperator(userId: string): boolean;
  /** The engine's options for an action by `actor` (a Matrix ID). */
  workspaces(actor: string): WorkspaceOptions;
  now?: () => number;
  logger: Logger;
  /** The engine (tests may replace it); default launcher/workspaces. */
  engine?: () => Promise<Pick<typeof import('./workspaces/index.js'), 'planImport' | 'applyImport' | 'listWorkspaces'>>;
}

interface Pending {
  id: string;
  /** the plan message reactions must point at */
  eventId: string | undefined;
  staged: StagedTemplate;
  file: string;
  filename: string;
  by: string;
  at: number;
  /** what ✅ applies */
  mode: Mode;
  /** the plan text shown for each mode */
  shown: Record<Mode, string>;
}

export class OrgRoom {
  private readonly pending = new Map<string, Pending>();
  /** plan message → plan id of plans that expired (bounded): a late ✅ is told so */
  private readonly expired = new Map<string, string>();
  private readonly now: () => number;
  private running: Promise<void> = Promise.resolve();

  constructor(private readonly o: OrgRoomOptions) {
    this.now = o.now ?? Date.now;
  }

  private engine() {
    return this.o.engine ? this.o.engine() : import('./workspaces/index.js');
  }

  /** `!org`: the tree, as `meshpilot workspace ls` prints it. */
  async list(actor: string): Promise<void> {
    const { listWorkspaces } = await this.engine();
    await this.o.chat.pre(listWorkspaces(this.o.workspaces(actor)).text);
  }

  /** An operator's upload of an org template (the caller checked isOrgUpload and the room). */
  async onUpload(m: UploadLike): Promise<void> {
    if (!this.o.isOperator(m.sender)) {
      this.o.logger.info({ sender: m.sender.slice(0, 256) }, 'org template upload ignored: not an operator');
      return;
    }
    this.sweep();
    const filename = stagedName(m.filename ?? m.body);
    const limit = TEMPLATE_LIMITS.fileBytes;
    if (m.info?.size !== undefined && m.info.size > limit) {
      await this.o.chat.say(`✗ ${filename}: ${m.info.size} bytes; an org template file may have at most ${limit} (${limit / 1024} KiB).`);
      return;
    }
    let bytes: Buffer;
    try {
      bytes = (await this.o.chat.download(m.mxc!, limit)).bytes;
    } catch (err) {
      const e = toMpError(err);
      await this.o.chat.say(e.code === 'output_limit' ? `✗ ${filename}: over ${limit / 1024} KiB, the limit of an org template file.` : `✗ ${filename}: could not download it: ${e.message}`);
      return;
    }
    const text = bytes.toString('utf8');
    if (!Buffer.from(text, 'utf8').equals(bytes)) {
      await this.o.chat.say(`✗ ${filename}: not a UTF-8 text file.`);
      return;
    }
    if (this.pending.size >= MAX_PENDING) {
      await this.o.chat.say(`✗ ${MAX_PENDING} org plans are already waiting: apply or cancel one first (\`!org cancel <id>\`).`);
      return;
    }
    const st = stageTemplate(text, filename);
    if (!st.ok) {
      await this.o.chat.say(`✗ ${st.message}.`);
      return;
    }
    const p: Pending = { id: randomBytes(3).toString('hex'), eventId: undefined, staged: st.staged, file: st.staged.file, filename, by: m.sender, at: this.now(), mode: 'merge', shown: { merge: '', reconcile: '' } };
    const ok = await this.post(p, `📄 ${filename} from ${m.sender}`);
    if (!ok) st.staged.remove();
  }

  /**
   * Plans `p` in `mode` (and the reconcile removals beside a merge plan) and posts it, with how to apply.
   * Keeps it pending when it can be applied; false when it cannot (problems, blocked, nothing to do).
   */
  private async post(p: Pending, head: string): Promise<boolean> {
    const mode = p.mode;
    const { planImport } = await this.engine();
    const opts = this.o.workspaces(p.by);
    const prepared = planImport(p.file, { ...opts, mode });
    if (!prepared.ok) {
      const lines = prepared.issues.slice(0, MAX_ISSUE_LINES);
      const more = prepared.issues.length > lines.length ? [`… and ${prepared.issues.length - lines.length} more`] : [];
      await this.o.chat.pre([`✗ ${p.filename}: ${prepared.issues.length} problem${prepared.issues.length === 1 ? '' : 's'}, nothing planned:`, ...lines, ...more].join('\n'));
      return false;
    }
    for (const line of prepared.closed) await this.o.chat.say(line);
    const plan = prepared.plan;
    p.shown[mode] = prepared.text;
    let also = '';
    if (mode === 'merge') {
      const rec = planImport(p.file, { ...opts, mode: 'reconcile' });
      if (rec.ok) {
        p.shown.reconcile = rec.text;
        also = rec.plan.removals.length > 0
          ? `\nreconcile would also REMOVE ${rec.plan.removals.length}: ${rec.plan.removals.join(', ')} (\`!org apply ${p.id} reconcile\`)`
          : `\n(reconcile: \`!org apply ${p.id} reconcile\`; it would remove nothing)`;
      }
    }
    if (plan.blocked.length > 0) {
      await this.o.chat.pre(`${head}\n${prepared.text}\n✗ the plan is blocked: nothing will be changed.`);
      return false;
    }
    if (plan.noop && !also.includes('REMOVE')) {
      await this.o.chat.pre(`${head}\n${prepared.text}\nnothing to do: the workspaces match the template.`);
      return false;
    }
    const how = plan.noop
      ? `nothing to do in merge mode.${also}\n(plan ${p.id}, expires in ${ORG_PLAN_TTL_MS / 60_000} min; ❌ or \`!org cancel ${p.id}\` drops it)`
      : `react ✅ to apply${mode === 'reconcile' ? ' in reconcile mode' : ''} (or \`!org apply ${p.id}${mode === 'reconcile' ? ' reconcile' : ''}\`), ❌ to drop it; expires in ${ORG_PLAN_TTL_MS / 60_000} min.${also}`;
    const id = await this.o.chat.pre(`${head}\n${prepared.text}\n${how}`);
    p.eventId = typeof id === 'string' ? id : undefined;
    p.at = this.now();
    this.pending.set(p.id, p);
    return true;
  }

  /** An operator's ✅/❌ on a plan message. Returns true when it was one. */
  onReaction(sender: string, relatesTo: string, key: string): boolean {
    const approve = APPROVE_KEYS.has(key);
    if (!approve && !REJECT_KEYS.has(key)) return false;
    this.sweep();
    const p = [...this.pending.values()].find((x) => x.eventId === relatesTo);
    const late = this.expired.get(relatesTo);
    if (!p && late !== undefined && this.o.isOperator(sender)) {
      void this.enqueue(async () => { await this.o.chat.say(`Org plan ${late} expired (plans wait ${ORG_PLAN_TTL_MS / 60_000} min): upload the file again.`); });
      return true;
    }
    if (!p) return false;
    if (!this.o.isOperator(sender)) {
      this.o.logger.info({ sender: sender.slice(0, 256), plan: p.id }, 'reaction on an org plan ignored: not an operator');
      return false;
    }
    void this.enqueue(() => (approve ? this.apply(sender, p.id, undefined) : this.cancel(p.id)));
    return true;
  }

  /** `!org apply <id> [mode]` / `!org cancel <id>` (the sender is an operator: dispatch checked). */
  command(sender: string, action: 'apply' | 'cancel', id: string | undefined, mode: Mode | undefined): Promise<void> {
    if (!id) {
      const ids = [...this.pending.keys()];
      return this.o.chat.say(ids.length ? `Which plan? Waiting: ${ids.join(', ')}` : 'No org plan is waiting: upload an org template (.yaml) here first.').then(() => undefined);
    }
    return this.enqueue(() => (action === 'apply' ? this.apply(sender, id, mode) : this.cancel(id)));
  }

  /** Plans and applies run one at a time, off the room's command queue (an import waits for bots). */
  private enqueue(fn: () => Promise<void>): Promise<void> {
    const run = this.running.then(fn).catch(async (err: unknown) => {
      this.o.logger.error({ err: toMpError(err).message }, 'org plan failed');
      await this.o.chat.say(`Something went wrong: ${toMpError(err).message}`).catch(() => undefined);
    });
    this.running = run;
    return run;
  }

  private take(id: string): Pending | undefined {
    this.sweep();
    return this.pending.get(id);
  }

  private async cancel(id: string): Promise<void> {
    const p = this.take(id);
    if (!p) { await this.o.chat.say(`No org plan ${id.slice(0, 16)} is waiting (applied, dropped or expired).`); return; }
    this.drop(p);
    await this.o.chat.say(`Org plan ${p.id} (${p.filename}) dropped; nothing was changed.`);
  }

  private async apply(sender: string, id: string, asked: Mode | undefined): Promise<void> {
    const p = this.take(id);
    if (!p) { await this.o.chat.say(`No org plan ${id.slice(0, 16)} is waiting (applied, dropped or expired after ${ORG_PLAN_TTL_MS / 60_000} min): upload the file again.`); return; }
    const mode = asked ?? p.mode;
    const { planImport, applyImport } = await this.engine();
    const opts = { ...this.o.workspaces(sender) };
    const prepared: PreparedImport = planImport(p.file, { ...opts, mode });
    if (!prepared.ok || prepared.text !== p.shown[mode]) {
      // The org (or a device) changed since the plan was shown: show the new one, which needs its own ✅.
      this.drop(p, false);
      const again: Pending = { ...p, id: randomBytes(3).toString('hex'), eventId: undefined, mode, shown: { merge: '', reconcile: '' } };
      const kept = await this.post(again, `⚠ the org changed since plan ${p.id} was shown; nothing was applied. The plan now:`);
      if (!kept) p.staged.remove();
      return;
    }
    this.drop(p, false);
    try {
      await this.o.chat.say(`Applying org plan ${p.id} (${p.filename}, ${mode}) for ${sender} …`);
      const r = await applyImport(prepared, opts, (e) => { void this.progress(e); });
      await this.progressChain;
      await this.o.chat.say(summary(r));
    } finally {
      p.staged.remove();
    }
  }

  private progressChain: Promise<unknown> = Promise.resolve();

  /** One line per finished step (in order); `running` is not posted (one message a step is enough). */
  private progress(e: ImportProgress): Promise<unknown> {
    let line: string | undefined;
    if (e.type === 'info') line = e.message;
    else if (e.type === 'start') line = `${e.template} (${e.mode}, import ${e.id.slice(0, 8)}): ${e.total} step${e.total === 1 ? '' : 's'}`;
    else if (e.status !== 'running') {
      const mark = e.action === 'create' ? '+' : e.action === 'update' ? '~' : '-';
      const secs = e.ms === undefined ? '' : ` ${(e.ms / 1000).toFixed(1)} s`;
      line = `[${e.index}/${e.total}] ${mark} ${e.name} ${e.status === 'done' ? 'done' : e.status === 'skipped' ? 'SKIPPED' : 'FAILED'}${secs}: ${e.message ?? ''}`;
    }
    if (line !== undefined) {
      const text = line.slice(0, 4000);
      this.progressChain = this.progressChain.then(() => this.o.chat.say(text)).catch(() => undefined);
    }
    return this.progressChain;
  }

  private drop(p: Pending, removeFile = true): void {
    this.pending.delete(p.id);
    if (removeFile) p.staged.remove();
  }

  /** Expired plans go (their staged files too). */
  private sweep(): void {
    const t = this.now();
    for (const p of [...this.pending.values()]) {
      if (t - p.at <= ORG_PLAN_TTL_MS) continue;
      this.drop(p);
      if (p.eventId === undefined) continue;
      this.expired.set(p.eventId, p.id);
      if (this.expired.size > 100) this.expired.delete(this.expired.keys().next().value as string);
    }
  }

  /** The plans waiting for an operator (tests, status). */
  waiting(): Array<{ id: string; eventId: string | undefined; filename: string }> {
    this.sweep();
    return [...this.pending.values()].map((p) => ({ id: p.id, eventId: p.eventId, filename: p.filename }));
  }

  /** Waits for the plan or import being handled (tests; stop). */
  idle(): Promise<void> {
    return this.running.then(() => this.progressChain).then(() => undefined);
  }

  /** Drops every waiting plan and its staged file. */
  stop(): void {
    for (const p of [...this.pending.values()]) this.drop(p);
  }
}

/** The import's last message: the engine's summary, then each failure with what was undone and left. */
export function summary(r: ImportResult): string {
  const lines = [`${r.ok ? '✅' : '✗'} ${r.message}`];
  for (const f of r.failures.slice(0, 50)) {
    if (f.undone.length === 0 && f.leftovers.length === 0) continue;
    lines.push(`  ${f.name}: ${f.undone.length ? `undone: ${f.undone.join(', ')}` : ''}${f.leftovers.length ? `${f.undone.length ? '; ' : ''}left: ${f.leftovers.join('; ')}` : ''}`);
  }
  return lines.join('\n').slice(0, 8000);
}
