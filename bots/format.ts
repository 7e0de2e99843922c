/**
 * How results read on a phone: a one-line status, then output in a code block. Outputs over 4 KiB go
 * as a file attachment with a short summary inline.
 */
import type { InvokeResult } from '../capabilities/invoke.js';
import type { Manifest } from '../capabilities/manifest.js';

export const INLINE_LIMIT = 4096;

export interface ChatReply {
  plain: string;
  html: string;
  /** Long output to attach as a file. */
  attachment?: { name: string; bytes: Buffer; mimetype: string };
}

export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function status(r: InvokeResult): string {
  if (r.ok) return `✅ ${r.capability} on ${r.device}`;
  if (r.decision === 'denied') return `⛔ ${r.capability} denied`;
  if (r.decision === 'rejected') return `✋ ${r.capability} not approved`;
  const code = r.result?.exitCode;
  return `❌ ${r.capability} failed${code !== undefined ? ` (exit ${code})` : ''}`;
}

/** The text a person wants to see from a result: stdout, or the data as JSON when there is no stdout. */
export function resultText(r: InvokeResult): string {
  const res = r.result;
  if (!res) return '';
  let text = res.stdout;
  if (!text && res.data !== undefined) text = JSON.stringify(res.data, null, 2);
  if (!res.ok && res.stderr) text = text ? `${text}\n${res.stderr}` : res.stderr;
  if (res.encoding === 'base64') text = `(binary, ${Buffer.from(res.stdout, 'base64').length} bytes, base64)\n${text}`;
  return text.replace(/\s+$/, '');
}

export function auditRef(r: InvokeResult): string {
  return r.audit ? `🧾 #${r.audit.seq} ${r.capability} ${r.ok ? 'ok' : r.result?.exitCode !== undefined ? `exit ${r.result.exitCode}` : (r.error?.code ?? 'error')}` : '';
}

export function formatResult(r: InvokeResult): ChatReply {
  const head = status(r);
  const error = r.error && !r.ok ? r.error.message : '';
  const text = resultText(r);
  const footer = auditRef(r);
  const truncated = r.result?.truncated ? ' (truncated at the manifest limit)' : '';
  let attachment: ChatReply['attachment'];
  let shown = text;
  if (Buffer.byteLength(text) > INLINE_LIMIT) {
    attachment = { name: `${r.device}-${r.capability}-${r.audit?.seq ?? 'out'}.txt`, bytes: Buffer.from(text), mimetype: 'text/plain' };
    const lines = text.split('\n');
    shown = `${lines.slice(0, 12).join('\n')}\n… ${lines.length} lines, ${Buffer.byteLength(text)} bytes: full output attached`;
  }
  const plainParts = [head + truncated, error, shown ? shown : '', footer].filter(Boolean);
  const htmlParts = [
    `<b>${escapeHtml(head)}</b>${escapeHtml(truncated)}`,
    error ? escapeHtml(error) : '',
    shown ? `<pre><code>${escapeHtml(shown)}</code></pre>` : '',
    footer ? `<small>${escapeHtml(footer)}</small>` : '',
  ].filter(Boolean);
  const reply: ChatReply = { plain: plainParts.join('\n'), html: htmlParts.join('<br>') };
  if (attachment) reply.attachment = attachment;
  return reply;
}

/** Markdown-ish LLM text to HTML: code fences and inline code, everything else escaped. */
export function llmTextToHtml(text: string): string {
  const parts = text.split(/```[a-zA-Z0-9_-]*\n?/);
  return parts
    .map((part, i) => (i % 2 === 1
      ? `<pre><code>${escapeHtml(part.replace(/\n$/, ''))}</code></pre>`
      : escapeHtml(part).replace(/`([^`\n]+)`/g, '<code>$1</code>').replace(/\*\*([^*\n]+)\*\*/g, '<b>$1</b>').replace(/\n/g, '<br>')))
    .join('');
}

/** The first message in a new DM with an operator: a workspace says whom it reports to (issue 18). */
export function liveText(device: string, m: Pick<Manifest, 'workspace'> | undefined): { plain: string; html: string } {
  const ws = m?.workspace;
  if (ws) {
    const to = ws.parent ?? '—';
    return { plain: `✓ ${device} live (reports to ${to})`, html: `✓ <b>${escapeHtml(device)}</b> live (reports to ${escapeHtml(to)})` };
  }
  return { plain: `✓ ${device} live. Ask me anything, or send !help.`, html: `✓ <b>${escapeHtml(device)}</b> live. Ask me anything, or send <code>!help</code>.` };
}
