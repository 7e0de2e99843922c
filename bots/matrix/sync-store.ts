/**
 * Where a Matrix session keeps its sync token, filter and the SDK's key/values: one SQLite file
 * (`<storageDir>/sync-state.db`, WAL) per bot user. It has the shape of matrix-bot-sdk's
 * IStorageProvider (structural: this module does not import the SDK).
 *
 * Why not the SDK's SimpleFsStorageProvider: it rewrites a JSON file (truncate + write) on every sync.
 * On ext4 that costs ~1.4 ms of blocked event loop per sync, several per chat message, and a crash in
 * the middle leaves an empty file that no longer parses. Here a token is one small WAL commit.
 *
 * A `bot-sdk.json` left by an earlier version is imported once (sync token, filter, key/values), so an
 * upgrade does not replay old commands, and then removed.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { z } from 'zod';

const LEGACY_FILE = 'bot-sdk.json';
export const SYNC_STATE_FILE = 'sync-state.db';

const legacySchema = z.object({
  syncToken: z.string().max(4096).nullable().optional(),
  filter: z.unknown().optional(),
  kvStore: z.record(z.string(), z.string()).optional(),
});

export interface SyncStateStore {
  setSyncToken(token: string | null): void;
  getSyncToken(): string | null;
  /** matrix-bot-sdk's IFilterInfo ({ id, filter }), kept as JSON. */
  setFilter(filter: unknown): void;
  getFilter(): never;
  storeValue(key: string, value: string): void;
  readValue(key: string): string | null;
  close(): void;
}

export function openSyncStateStore(storageDir: string): SyncStateStore {
  const db = new Database(path.join(storageDir, SYNC_STATE_FILE));
  db.pragma('journal_mode = WAL');
  // NORMAL in WAL mode: a process crash loses nothing; an OS crash (power loss) may lose the last few
  // tokens, as the SDK's unsynced JSON file could too.
  db.pragma('synchronous = NORMAL');
  db.exec('CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
  const get = db.prepare<[string], { value: string }>('SELECT value FROM kv WHERE key = ?');
  const put = db.prepare<[string, string]>('INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value');
  const del = db.prepare<[string]>('DELETE FROM kv WHERE key = ?');
  const read = (key: string): string | null => get.get(key)?.value ?? null;
  const write = (key: string, value: string | null): void => void (value === null ? del.run(key) : put.run(key, value));

  const legacy = path.join(storageDir, LEGACY_FILE);
  if (existsSync(legacy)) {
    let parsed: z.infer<typeof legacySchema> | undefined;
    try {
      const p = legacySchema.safeParse(JSON.parse(readFileSync(legacy, 'utf8')));
      if (p.success) parsed = p.data;
    } catch {
      // unreadable (e.g. emptied by a crash mid-write): nothing to import
    }
    db.transaction(() => {
      if (parsed && read('sync_token') === null) {
        if (parsed.syncToken) write('sync_token', parsed.syncToken);
        if (parsed.filter != null) write('filter', JSON.stringify(parsed.filter));
        for (const [k, v] of Object.entries(parsed.kvStore ?? {})) write(`kv:${k}`, v);
      }
    })();
    rmSync(legacy, { force: true });
  }

  return {
    setSyncToken: (token) => write('sync_token', token),
    getSyncToken: () => read('sync_token'),
    setFilter: (filter) => write('filter', filter == null ? null : JSON.stringify(filter)),
    // never: the SDK's IFilterInfo type stays inside bots/matrix/ (session.ts); null when none is stored
    getFilter: () => {
      const v = read('filter');
      return (v === null ? null : JSON.parse(v)) as never;
    },
    storeValue: (key, value) => write(`kv:${key}`, value),
    readValue: (key) => read(`kv:${key}`),
    close: () => db.close(),
  };
}
