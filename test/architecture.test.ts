/**
 * The layers point one way (issue 15, item 3): capabilities/ imports nothing above it, bots/ imports
 * only capabilities/ (and bots/), launcher/ may import both, and no circular imports. The rules are
 * in .dependency-cruiser.cjs; this runs them over the sources, and over a small tree with one
 * violation of each, so a rule (or the .ts parsing it needs) that stops seeing imports fails too.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cruise, type ICruiseOptions, type ICruiseResult } from 'dependency-cruiser';
import extractDepcruiseOptions from 'dependency-cruiser/config-utl/extract-depcruise-options';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers/tmp.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SOURCES = ['capabilities', 'bots', 'launcher', 'bin', 'scripts', 'test', 'bench'];

async function run(baseDir: string, dirs: string[]): Promise<ICruiseResult> {
  const options: ICruiseOptions = { ...(await extractDepcruiseOptions(path.join(ROOT, '.dependency-cruiser.cjs'))), baseDir };
  const out = await cruise(dirs, options);
  // The reporter output is the result object itself when no outputType is set.
  return out.output as ICruiseResult;
}

function describeViolations(r: ICruiseResult): string[] {
  return r.summary.violations.map((v) =>
    `${v.rule.name}: ${v.from} -> ${v.to}${v.cycle?.length ? ` (circle: ${v.from} -> ${v.cycle.map((c) => c.name).join(' -> ')})` : ''}`);
}

describe('architecture', () => {
  it('the sources follow the layer rules; no circular imports in sources, tests and benches', async () => {
    const r = await run(ROOT, SOURCES);
    expect(describeViolations(r)).toEqual([]);
    // It saw the sources and resolved their './x.js' imports to x.ts (else no rule could fire).
    expect(r.summary.totalCruised).toBeGreaterThan(100);
    const deviceMain = r.modules.find((m) => m.source === 'bots/device-main.ts');
    expect(deviceMain?.dependencies.map((d) => d.resolved)).toContain('capabilities/invoke.ts');
  }, 60_000);

  it('catches each kind of violation (a tree made for it)', async () => {
    const dir = tempDir('mp-arch-');
    const files: Record<string, string> = {
      'capabilities/low.ts': "import { b } from '../bots/mid.js';\nexport const low = b;\n",
      'bots/mid.ts': "import type { L } from '../launcher/top.js';\nexport const b = 1;\nexport type M = L;\n",
      'launcher/top.ts': "export type L = number;\n",
      'capabilities/x.ts': "import { y } from './y.js';\nexport const x = () => y;\n",
      'capabilities/y.ts': "import { x } from './x.js';\nexport const y = () => x;\n",
      // A circle of a lazy import and a type-only one still counts (launcher/cli.ts <-> up.ts was one).
      'launcher/a.ts': "export type A = number;\nexport const a = () => import('./b.js');\n",
      'launcher/b.ts': "import type { A } from './a.js';\nexport const b: A = 1;\n",
    };
    for (const [f, text] of Object.entries(files)) {
      mkdirSync(path.join(dir, path.dirname(f)), { recursive: true });
      writeFileSync(path.join(dir, f), text);
    }
    const r = await run(dir, ['capabilities', 'bots', 'launcher']);
    const found = describeViolations(r);
    expect(found).toEqual(expect.arrayContaining([
      'capabilities-imports-nothing-above: capabilities/low.ts -> bots/mid.ts',
      'bots-import-only-capabilities: bots/mid.ts -> launcher/top.ts',
      expect.stringMatching(/^no-circular: capabilities\/(x|y)\.ts -> capabilities\/(y|x)\.ts/),
      expect.stringMatching(/^no-circular: launcher\/(a|b)\.ts -> launcher\/(b|a)\.ts/),
    ]));
    expect(found).toHaveLength(4);
  }, 60_000);
});
