/**
 * LLM conversation memory for one device's bot, in the controller database (meshpilot.db):
 * - history per room, stored as whole exchanges (one operator message and everything the turn
 *   added: tool_use / tool_result pairs and the final answer), bounded by an approximate token
 *   count (characters / 4) by dropping the oldest exchanges, so a pair is never split;
 * - daily token usage per device (UTC days), which the turn budget reads.
 *
 * Import this module before opening the database: its tables are a registered migration.
 * One writer per room at a time: the bot serialises turns per room.
 */
import type { Statement } from 'better-sqlite3';
import { z } from 'zod';
import { registerMigration, type Db } from '../capabilities/db.js';
import { MeshpilotError } from '../capabilities/errors.js';
import type { MessageParam, TokenUsage, TurnBudget } from './llm.js';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS llm_history (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  device TEXT NOT NULL,
  room_id TEXT NOT NULL,
  exchange INTEGER NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
  content TEXT NOT NULL,
  tokens INTEGER NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS llm_history_room ON llm_history (device, room_id, exchange, id);
CREATE TABLE IF NOT EXISTS llm_usage (
  device TEXT NOT NULL,
  day TEXT NOT NULL,
  input_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  calls INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (device, day)
);`;

registerMigration('bots.conversation.v1', SCHEMA);

/** Rough token estimate used for bounding: characters of the JSON form / 4. */
export function approxTokens(content: unknown): number {
  const s = typeof content === 'string' ? content : JSON.stringify(content);
  return Math.ceil(s.length / 4);
}

export function utcDay(now: Date = new Date()): string {
  return now.toISOString().slice(0, 10);
}

// What we read back from the database is checked before it goes to the model again.
const StoredBlock = z.looseObject({ type: z.string().max(64) });
const StoredContent = z.union([z.string(), z.array(StoredBlock).max(512)]);

export interface ConversationOptions {
  device: string;
  /** Bound on the stored history per room, in approximate tokens (default 24000). */
  maxHistoryTokens?: number;
  /** Exchanges kept per room at most, whatever their size (default 100). */
  maxExchanges?: number;
}

export interface DailyUsage {
  day: string;
  input: number;
  output: number;
  total: number;
  calls: number;
}

/**
 * Checks that messages form whole exchanges: start with user, alternate, end with assistant, and
 * every tool_use has its tool_result in the next message. Returns the problem, or null.
 */
export function exchangeProblem(messages: readonly MessageParam[]): string | null {
  if (messages.length === 0) return 'no messages';
  if (messages[0]!.role !== 'user') return 'an exchange must start with the operator message';
  if (messages.at(-1)!.role !== 'assistant') return 'an exchange must end with an assistant message';
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    if (i > 0 && messages[i - 1]!.role === m.role) return `messages ${i - 1} and ${i} have the same role`;
    if (m.role !== 'assistant' || typeof m.content === 'string') continue;
    const ids = m.content.filter((b) => b.type === 'tool_use').map((b) => (b as { id: string }).id);
    if (ids.length === 0) continue;
    const next = messages[i + 1];
    const answered = new Set(
      next && typeof next.content !== 'string' ? next.content.filter((b) => b.type === 'tool_result').map((b) => (b as { tool_use_id: string }).tool_use_id) : [],
    );
    const missing = ids.filter((id) => !answered.has(id));
    if (missing.length) return `tool_use ${missing.join(', ')} has no tool_result in the next message`;
  }
  return null;
}

/** A large exchange reduced to the operator's words and the final answer (tool steps dropped together). */
export function compactExchange(messages: readonly MessageParam[]): MessageParam[] {
  const textOf = (m: MessageParam | undefined): string => {
    if (!m) return '';
    if (typeof m.content === 'string') return m.content;
    return m.content.filter((b) => b.type === 'text').map((b) => (b as { text: string }).text).join('\n');
  };
  const user = textOf(messages[0]) || '(message)';
  const answer = textOf(messages.at(-1)) || '(no reply)';
  return [
    { role: 'user', content: [{ type: 'text', text: user }] },
    { role: 'assistant', content: [{ type: 'text', text: `[tool steps of this exchange omitted to save space]\n${answer}` }] },
  ];
}

interface ExchangeRow {
  exchange: number;
  tokens: number;
}

export class ConversationStore {
  readonly device: string;
  readonly maxHistoryTokens: number;
  readonly maxExchanges: number;
  private readonly db: Db;
  private readonly stmts: {
    load: Statement<[string, string], { role: string; content: string; exchange: number }>;
    exchanges: Statement<[string, string], ExchangeRow>;
    nextExchange: Statement<[string, string], { n: number }>;
    insert: Statement<[string, string, number, string, string, number, string]>;
    dropExchange: Statement<[string, string, number]>;
    reset: Statement<[string, string]>;
    addUsage: Statement<[string, string, number, number]>;
    usage: Statement<[string, string], { input_tokens: number; output_tokens: number; calls: number }>;
  };

  constructor(db: Db, opts: ConversationOptions) {
    this.db = db;
    this.device = opts.device;
    this.maxHistoryTokens = Math.max(256, Math.floor(opts.maxHistoryTokens ?? 24_000));
    this.maxExchanges = Math.max(1, Math.floor(opts.maxExchanges ?? 100));
    // A database opened before this module was imported missed the migration: the schema is idempotent.
    db.exec(SCHEMA);
    this.stmts = {
      load: db.prepare('SELECT role, content, exchange FROM llm_history WHERE device = ? AND room_id = ? ORDER BY exchange, id'),
      exchanges: db.prepare('SELECT exchange, SUM(tokens) AS tokens FROM llm_history WHERE device = ? AND room_id = ? GROUP BY exchange ORDER BY exchange'),
      nextExchange: db.prepare('SELECT COALESCE(MAX(exchange), 0) + 1 AS n FROM llm_history WHERE device = ? AND room_id = ?'),
      insert: db.prepare('INSERT INTO llm_history (device, room_id, exchange, role, content, tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      dropExchange: db.prepare('DELETE FROM llm_history WHERE device = ? AND room_id = ? AND exchange = ?'),
      reset: db.prepare('DELETE FROM llm_history WHERE device = ? AND room_id = ?'),
      addUsage: db.prepare(`INSERT INTO llm_usage (device, day, input_tokens, output_tokens, calls) VALUES (?, ?, ?, ?, 1)
        ON CONFLICT (device, day) DO UPDATE SET input_tokens = input_tokens + excluded.input_tokens,
          output_tokens = output_tokens + excluded.output_tokens, calls = calls + 1`),
      usage: db.prepare('SELECT input_tokens, output_tokens, calls FROM llm_usage WHERE device = ? AND day = ?'),
    };
  }

  /** The room's history, oldest first; whole exchanges only (an unreadable exchange is skipped). */
  load(roomId: string): MessageParam[] {
    const rows = this.stmts.load.all(this.device, roomId);
    const byExchange = new Map<number, MessageParam[]>();
    const bad = new Set<number>();
    for (const r of rows) {
      let content: MessageParam['content'] | undefined;
      try {
        const parsed = StoredContent.safeParse(JSON.parse(r.content));
        if (parsed.success) content = parsed.data as MessageParam['content'];
      } catch { /* handled below */ }
      if (content === undefined || (r.role !== 'user' && r.role !== 'assistant')) {
        bad.add(r.exchange);
        continue;
      }
      const list = byExchange.get(r.exchange) ?? [];
      list.push({ role: r.role, content });
      byExchange.set(r.exchange, list);
    }
    const out: MessageParam[] = [];
    for (const [ex, msgs] of byExchange) {
      if (bad.has(ex) || exchangeProblem(msgs) !== null) continue;
      out.push(...msgs);
    }
    return out;
  }

  /**
   * Stores one exchange (what runTurn returned in `messages`), then trims the room to the bounds.
   * An exchange larger than the whole bound is stored compacted (tool steps dropped), or not at all.
   */
  append(roomId: string, messages: readonly MessageParam[]): void {
    if (messages.length === 0) return;
    const problem = exchangeProblem(messages);
    if (problem) throw new MeshpilotError('internal', `conversation: refusing to store a malformed exchange (${problem})`);
    let toStore: readonly MessageParam[] = messages;
    const size = (ms: readonly MessageParam[]): number => ms.reduce((n, m) => n + approxTokens(m.content), 0);
    if (size(toStore) > this.maxHistoryTokens) {
      toStore = compactExchange(messages);
      if (size(toStore) > this.maxHistoryTokens) return;
    }
    const now = new Date().toISOString();
    this.db.transaction(() => {
      const exchange = this.stmts.nextExchange.get(this.device, roomId)!.n;
      for (const m of toStore) {
        const json = JSON.stringify(m.content);
        this.stmts.insert.run(this.device, roomId, exchange, m.role, json, approxTokens(json), now);
      }
      this.trim(roomId);
    }).immediate();
  }

  /** Approximate tokens the room's stored history holds. */
  historyTokens(roomId: string): number {
    return this.stmts.exchanges.all(this.device, roomId).reduce((n, r) => n + r.tokens, 0);
  }

  /** Forgets the room's history; returns the number of messages removed. */
  reset(roomId: string): number {
    return this.stmts.reset.run(this.device, roomId).changes;
  }

  private trim(roomId: string): void {
    const exchanges = this.stmts.exchanges.all(this.device, roomId);
    let total = exchanges.reduce((n, r) => n + r.tokens, 0);
    let count = exchanges.length;
    for (const ex of exchanges) {
      if (total <= this.maxHistoryTokens && count <= this.maxExchanges) break;
      this.stmts.dropExchange.run(this.device, roomId, ex.exchange);
      total -= ex.tokens;
      count--;
    }
  }

  // ---- usage ----------------------------------------------------------------------------------

  addUsage(usage: TokenUsage, now: Date = new Date()): void {
    const n = (v: number): number => (Number.isFinite(v) && v > 0 ? Math.round(v) : 0);
    this.stmts.addUsage.run(this.device, utcDay(now), n(usage.input), n(usage.output));
  }

  usageToday(now: Date = new Date()): DailyUsage {
    const day = utcDay(now);
    const r = this.stmts.usage.get(this.device, day);
    const input = r?.input_tokens ?? 0;
    const output = r?.output_tokens ?? 0;
    return { day, input, output, total: input + output, calls: r?.calls ?? 0 };
  }

  /** The turn budget for this device: `dailyTokens` input + output tokens per UTC day. */
  budget(dailyTokens: number, clock: () => Date = () => new Date()): TurnBudget {
    return {
      limit: dailyTokens,
      remaining: () => dailyTokens - this.usageToday(clock()).total,
      record: (u) => this.addUsage(u, clock()),
    };
  }
}
