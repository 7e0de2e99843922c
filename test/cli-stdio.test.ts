/**
 * launcher/stdio.ts: the CLI's output without making Node's stdout stream when nothing needs it, and
 * commander's width and colours told without it for output that goes to no terminal.
 */
import { spawnSync } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { tempDir } from './helpers/tmp.js';

const STDIO = path.join(PACKAGE_ROOT, 'launcher', 'stdio.ts');
const COLOR_VARS = ['NO_COLOR', 'FORCE_COLOR', 'CLICOLOR_FORCE'] as const;

/** Runs a snippet against launcher/stdio.ts (through tsx) with fd 1 as given; prints its JSON on stderr. */
function probe(stdout: 'pipe' | 'ignore' | number, code: string): unknown {
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `import * as s from ${JSON.stringify(STDIO)}; ${code}`], {
    stdio: ['ignore', stdout, 'pipe'], encoding: 'utf8', cwd: PACKAGE_ROOT, timeout: 30_000,
  });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stderr.trim().split('\n').at(-1)!);
}

describe('CLI stdio', () => {
  it('a file, a pipe and /dev/null are no terminal, told without making process.stdout', () => {
    const file = path.join(tempDir('mp-stdio-'), 'out.txt');
    const check = "s.watchStdio(() => {}); const no = s.notATerminal(1); const w = s.helpOutput().getOutHelpWidth(); const made = s.madeStreams().length; process.stderr.write(JSON.stringify({ no, w, made }) + '\\n');";
    for (const target of ['pipe', 'ignore', openSync(file, 'w')] as const) {
      expect(probe(target, check)).toEqual({ no: true, w: 80, made: 0 });
    }
  });

  it('writes with fs.writeSync until the stream is made, then through it, in order', () => {
    const file = path.join(tempDir('mp-stdio-'), 'out.txt');
    const code = [
      "let made = 0; s.watchStdio(() => { made++; });",
      "const out = s.stdioWriter('stdout');",
      "out('one\\n'); const before = made;",
      "process.stdout.write('two\\n');", // anything that makes the stream: later writes go through it
      "out('three\\n');",
      "process.stderr.write(JSON.stringify({ before, after: made }) + '\\n');",
    ].join(' ');
    // stderr is made by the probe's own report, stdout by the write above
    expect(probe(openSync(file, 'w'), code)).toEqual({ before: 0, after: 2 });
    expect(readFileSync(file, 'utf8')).toBe('one\ntwo\nthree\n');
  });

  it('colours as commander decides them for output that is no terminal, whatever the environment says', () => {
    const cases: Array<Partial<Record<(typeof COLOR_VARS)[number], string>>> = [{}, { NO_COLOR: '1' }, { FORCE_COLOR: '0' }, { FORCE_COLOR: 'false' }, { FORCE_COLOR: '1' }, { CLICOLOR_FORCE: '' }, { NO_COLOR: '1', FORCE_COLOR: '1' }];
    for (const c of cases) {
      const env: NodeJS.ProcessEnv = { ...process.env };
      for (const k of COLOR_VARS) delete env[k];
      Object.assign(env, c);
      // commander's own default, in a process whose stdout is a pipe as ours is
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `import * as s from ${JSON.stringify(STDIO)}; import { Command } from 'commander'; process.stderr.write(JSON.stringify({ ours: s.helpOutput().getOutHasColors(), env: s.colorFromEnv() ?? null, theirs: Boolean(new Command().configureOutput().getOutHasColors()) }) + '\\n');`], {
        stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', cwd: PACKAGE_ROOT, env, timeout: 30_000,
      });
      expect(r.status, r.stderr).toBe(0);
      const got = JSON.parse(r.stderr.trim().split('\n').at(-1)!) as { ours: boolean; env: boolean | null; theirs: boolean };
      expect({ c, ours: got.ours }).toEqual({ c, ours: got.theirs });
      expect({ c, env: got.env }).toEqual({ c, env: c.NO_COLOR || c.FORCE_COLOR === '0' || c.FORCE_COLOR === 'false' ? false : c.FORCE_COLOR || c.CLICOLOR_FORCE !== undefined ? true : null });
    }
  });
});
