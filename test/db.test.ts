/** capabilities/db.ts: the shared SQLite database, opened by several real processes at once. */
import { describe, expect, it } from 'vitest';
import { fork } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { execArgvFor } from '../launcher/bot-child.js';
import { tempDir } from './helpers/tmp.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'open-db.ts');

describe('database', () => {
  it('migrates a new file once when many processes open it at the same moment (bots starting together)', async () => {
    const file = path.join(tempDir(), 'meshpilot.db');
    const at = Date.now() + 2_500; // past every child's start-up
    const runs = Array.from({ length: 8 }, () =>
      new Promise<{ code: number | null; out: string }>((resolve) => {
        const c = fork(CHILD, [file, String(at)], { execArgv: execArgvFor(CHILD), stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
        let out = '';
        c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
        c.on('exit', (code) => resolve({ code, out: out.trim() }));
      }),
    );
    const results = await Promise.all(runs);
    expect(results).toEqual(Array.from({ length: 8 }, () => ({ code: 0, out: 'ok' })));
    const db = new Database(file, { readonly: true });
    expect(db.pragma('user_version', { simple: true })).toBe(1);
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect((db.prepare('SELECT COUNT(*) AS n FROM test_rows').get() as { n: number }).n).toBe(8);
    expect((db.prepare("SELECT COUNT(*) AS n FROM meta WHERE key = 'migration:test-rows'").get() as { n: number }).n).toBe(1);
    db.close();
  }, 30_000);
});
