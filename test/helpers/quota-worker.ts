/** A separate process reserving a VM in a shared meshpilot.db (test/quota.test.ts): waits for "go", then reserves once. */
import { openDatabase } from '../../capabilities/db.js';
import { ConfigSchema } from '../../capabilities/config.js';
import { SqliteQuotaStore } from '../../capabilities/vm/quota-sqlite.js';

const [file, name] = process.argv.slice(2) as [string, string];
const db = openDatabase(file);
const config = ConfigSchema.parse({ matrix: { homeserver_url: 'http://127.0.0.1:1' }, operators: ['@op:x'] });
const store = new SqliteQuotaStore(db, config.quotas);
process.send?.({ ready: true });
process.on('message', () => {
  const v = store.reserve('citizen', '@ann:x', 'nas', name, { cpus: 1, memory_mb: 256, disk_mb: 1024, ttl_h: 1 });
  process.send?.(v, () => { db.close(); process.exit(0); });
});
