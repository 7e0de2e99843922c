/**
 * The controller's SQLite database (MESHPILOT_HOME/meshpilot.db). Several processes write it
 * (launcher, bots, CLI), so: WAL, a busy timeout, and short transactions.
 * Migrations are numbered; `user_version` records the last one applied.
 */
import Database from 'better-sqlite3';

export type Db = Database.Database;

const MIGRATIONS: string[] = [
  // 1: bookkeeping. Tables of each module come as named migrations (registerMigration).
  `CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);`,
];

/** Extra migrations registered by other modules (bots, launcher) before the first open. */
const extraMigrations: Array<{ name: string; sql: string }> = [];
export function registerMigration(name: string, sql: string): void {
  if (!extraMigrations.some((m) => m.name === name)) extraMigrations.push({ name, sql });
}

export function openDatabase(file: string): Db {
  const db = new Database(file);
  // First: switching a new file to WAL takes a lock that processes opening it at once contend for.
  db.pragma('busy_timeout = 10000');
  db.pragma('journal_mode = WAL');
  // NORMAL in WAL mode: a process crash loses nothing; only an OS crash may lose the last commits.
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  const version = (): number => db.pragma('user_version', { simple: true }) as number;
  if (version() < MIGRATIONS.length) {
    db.transaction(() => {
      // read again under the write lock: processes opening a new database at once (bots started
      // together) all saw 0 above, and only the first may apply the migrations
      for (let i = version(); i < MIGRATIONS.length; i++) db.exec(MIGRATIONS[i]!);
      db.pragma(`user_version = ${MIGRATIONS.length}`);
    }).immediate();
  }
  applyNamedMigrations(db);
}

/**
 * Named migrations from other modules: applied once each, tracked in meta. openDatabase applies those
 * registered before it; a store whose module loads after the database opened calls this itself.
 */
export function applyNamedMigrations(db: Db): void {
  for (const m of extraMigrations) {
    const key = `migration:${m.name}`;
    const done = db.prepare('SELECT 1 FROM meta WHERE key = ?').get(key);
    if (done) continue;
    db.transaction(() => {
      if (db.prepare('SELECT 1 FROM meta WHERE key = ?').get(key)) return;
      db.exec(m.sql);
      db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run(key, new Date().toISOString());
    }).immediate();
  }
}
