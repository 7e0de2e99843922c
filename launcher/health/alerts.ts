/**
 * Alerts: their text ([ALERT] / [RECOVERED] / [REMINDER], a [DIGEST] when digest_min or more come in
 * one cycle) and the SQLite outbox (health_outbox) every message goes through: sent in order, kept
 * when it cannot be delivered and retried, marked `(late: N min)` when it waited over a minute.
 */
import type { Logger } from 'pino';
import type { Db } from '../../capabilities/db.js';
import { toMpError } from '../../capabilities/errors.js';
import type { DeviceState } from './state.js';

export const DAY_S = 24 * 3600;

/** Where alert text goes; throws when it cannot be delivered now (the outbox keeps it). */
export type AlertSender = (text: string) => Promise<void>;

export interface Transition {
  device: string;
  kind: 'alert' | 'recovered' | 'reminder';
  from: DeviceState | null;
  to: DeviceState;
  text: string;
}

// ---- text ---------------------------------------------------------------------------------------

export function ago(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}min`;
  if (s < 2 * DAY_S) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / DAY_S)}d`;
}

export function duration(ms: number): string {
  const min = Math.max(0, Math.round(ms / 60_000));
  if (min < 120) return `${min} min`;
  if (min < 48 * 60) return `${Math.floor(min / 60)} h`;
  return `${Math.floor(min / 1440)} d`;
}

export function alertText(device: string, state: DeviceState, detail: string): string {
  return `[ALERT] device_id=${device} status=${state}${detail ? ` (${detail})` : ''}`;
}
export function recoveredText(device: string, was: DeviceState, forMs: number): string {
  return `[RECOVERED] device_id=${device} status=online (was ${was} ${duration(forMs)})`;
}
export function reminderText(device: string, state: DeviceState, forMs: number, detail: string): string {
  return `[REMINDER] device_id=${device} status=${state} (down ${duration(forMs)}${detail ? `: ${detail}` : ''})`;
}
export function botAlertText(device: string, bot: string, state: DeviceState): string {
  return `[ALERT] device_id=${device} bot=${bot} (status ${state})`;
}
export function botRecoveredText(device: string, was: string): string {
  return `[RECOVERED] device_id=${device} bot=running (was ${was})`;
}

// ---- the outbox ---------------------------------------------------------------------------------

export interface OutboxOptions {
  db: Db;
  send?: AlertSender | undefined;
  now: () => number;
  log: Logger;
  /** A cycle with this many messages or more sends one digest instead. */
  digestMin: number;
}

export class AlertOutbox {
  private flushing: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly o: OutboxOptions) {}

  private now(): number {
    return this.o.now();
  }

  /** Retries after a failed delivery are scheduled again (the monitor was started). */
  resume(): void {
    this.stopped = false;
  }

  /** No more retries after a failed delivery. */
  stop(): void {
    this.stopped = true;
    if (this.retryTimer) { clearTimeout(this.retryTimer); this.retryTimer = undefined; }
  }

  /** Resolves when no flush is in flight. */
  async settled(): Promise<void> {
    await this.flushing?.catch(() => undefined);
  }

  /** Queues a cycle's transitions (a digest when there are digestMin or more); returns the texts queued. */
  enqueue(transitions: Transition[], now: number): string[] {
    if (!transitions.length) return [];
    const digestMin = this.o.digestMin;
    let texts: string[];
    if (transitions.length >= digestMin) {
      const counts = new Map<string, number>();
      for (const t of transitions) counts.set(t.kind, (counts.get(t.kind) ?? 0) + 1);
      const summary = [...counts].map(([k, c]) => `${c} ${k === 'alert' ? 'alerts' : k === 'recovered' ? 'recovered' : 'reminders'}`).join(', ');
      const shown = transitions.slice(0, 200).map((t) => t.text);
      const more = transitions.length > shown.length ? [`… and ${transitions.length - shown.length} more (see !devices)`] : [];
      texts = [[`[DIGEST] ${transitions.length} device changes (${summary})`, ...shown, ...more].join('\n')];
    } else texts = transitions.map((t) => t.text);
    const ins = this.o.db.prepare('INSERT INTO health_outbox (created_ms, text) VALUES (?, ?)');
    this.o.db.transaction(() => { for (const t of texts) ins.run(now, t); }).immediate();
    return texts;
  }

  /** Pending outbox messages, oldest first. */
  pending(): Array<{ id: number; created_ms: number; text: string; attempts: number }> {
    return this.o.db.prepare('SELECT id, created_ms, text, attempts FROM health_outbox WHERE sent_ms IS NULL ORDER BY id').all() as Array<{ id: number; created_ms: number; text: string; attempts: number }>;
  }

  /** Sends what the outbox holds, in order, stopping at the first failure (retried a little later). */
  flush(): Promise<void> {
    this.flushing ??= this.doFlush().finally(() => { this.flushing = undefined; });
    return this.flushing;
  }

  private async doFlush(): Promise<void> {
    const send = this.o.send;
    if (!send) return;
    const mark = this.o.db.prepare('UPDATE health_outbox SET sent_ms = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?');
    const fail = this.o.db.prepare('UPDATE health_outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?');
    for (const msg of this.pending()) {
      const lateMs = this.now() - msg.created_ms;
      const text = lateMs >= 60_000 ? `${msg.text} (late: ${duration(lateMs)})` : msg.text;
      try {
        await send(text);
        mark.run(this.now(), msg.id);
      } catch (err) {
        fail.run(toMpError(err).message.slice(0, 300), msg.id);
        this.o.log.warn({ pending: this.pending().length, err: toMpError(err).message }, 'alert not delivered; kept in the outbox');
        if (!this.stopped && !this.retryTimer) {
          this.retryTimer = setTimeout(() => { this.retryTimer = undefined; void this.flush(); }, 15_000);
          this.retryTimer.unref();
        }
        return;
      }
    }
  }
}
