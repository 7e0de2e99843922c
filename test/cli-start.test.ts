/**
 * `meshpilot --help` (and every command before its handler runs) loads commander and the command
 * declarations only: each family file imports its code inside its handlers. This walks the static
 * imports from the CLI's entry (esbuild's metafile: dynamic imports are not followed) and fails when
 * a heavy module became reachable without an `await import()`.
 */
import * as path from 'node:path';
import { build, type Metafile } from 'esbuild';
import { describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../capabilities/home.js';

const HEAVY = [
  /node_modules\/(ssh2|undici|matrix-bot-sdk|better-sqlite3|pino|yaml|node-cron|hono|@anthropic-ai)\//,
  /^capabilities\/(transports|catalog|agent)\//,
  /^capabilities\/(invoke|manifest|audit|audit-sqlite|db|registry|config|policy)\.ts$/,
  /^bots\/matrix\//,
  /^launcher\/(health|enroll)\//,
  // token-args.ts is the API tokens' argument schemas, kept import-free for this reason.
  /^launcher\/http\/(?!token-args\.ts$)/,
  /^launcher\/(runtime|runtime-core|setup|up|supervisor|operator-room|revoke|wg|audit-anchors)\.ts$/,
];

function staticClosure(meta: Metafile, entry: string): string[] {
  const seen = new Set<string>();
  const walk = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const imp of meta.inputs[file]?.imports ?? []) {
      if (imp.kind === 'import-statement' && !imp.external) walk(imp.path);
    }
  };
  walk(entry);
  return [...seen];
}

describe('CLI start', () => {
  it('loads commander and the declarations, no command code', async () => {
    const r = await build({
      entryPoints: [path.join(PACKAGE_ROOT, 'launcher', 'cli.ts')], absWorkingDir: PACKAGE_ROOT,
      bundle: true, write: false, metafile: true, platform: 'node', format: 'esm', outdir: 'unused', splitting: true, logLevel: 'silent',
      external: ['better-sqlite3', 'ssh2', 'cpu-features', '@matrix-org/matrix-sdk-crypto-nodejs'],
    });
    const loaded = staticClosure(r.metafile, 'launcher/cli.ts');
    expect(loaded).toContain('launcher/commands/index.ts');
    expect(loaded.some((f) => f.includes('node_modules/commander/'))).toBe(true);
    expect(loaded.filter((f) => HEAVY.some((re) => re.test(f)))).toEqual([]);
  }, 60_000);
});
