/**
 * `npm run bench` runs every bench/*.bench.ts; `npm run bench -- <name>` runs those whose file name
 * or figure names start with <name> (e.g. `audit`, `ssh`, `agent.wg_p50`).
 * Each figure prints as `BENCH <name> <value> <unit>` with its target beside it.
 */
import { readdirSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export interface BenchFigure {
  name: string;
  value: number;
  unit: string;
  /** e.g. '>= 20000' or '<= 1' (same unit). */
  target?: string;
}

export interface BenchModule {
  /** Figure names this module produces (for filtering without running it). */
  figures: string[];
  run(): Promise<BenchFigure[]>;
}

function meets(f: BenchFigure): string {
  if (!f.target) return '';
  const m = /^(>=|<=)\s*([\d.]+)/.exec(f.target);
  if (!m) return `(target ${f.target})`;
  const t = Number(m[2]);
  const ok = m[1] === '>=' ? f.value >= t : f.value <= t;
  return `(target ${f.target} ${f.unit}: ${ok ? 'met' : 'MISSED'})`;
}

export function formatFigure(f: BenchFigure): string {
  const v = Number.isInteger(f.value) ? String(f.value) : f.value.toFixed(f.value < 10 ? 3 : 1);
  return `BENCH ${f.name} ${v} ${f.unit} ${meets(f)}`.trimEnd();
}

const dir = path.dirname(fileURLToPath(import.meta.url));
const filter = process.argv.slice(2).find((a) => !a.startsWith('-'));
const files = readdirSync(dir).filter((f) => f.endsWith('.bench.ts')).sort();
let ran = 0;
let failed = false;
for (const file of files) {
  const mod = (await import(pathToFileURL(path.join(dir, file)).href)) as BenchModule;
  const base = file.replace(/\.bench\.ts$/, '');
  if (filter && !base.startsWith(filter) && !mod.figures.some((n) => n.startsWith(filter) || filter.startsWith(n))) continue;
  ran++;
  process.stderr.write(`# ${file}\n`);
  try {
    for (const f of await mod.run()) {
      if (filter && !base.startsWith(filter) && !f.name.startsWith(filter)) continue;
      console.log(formatFigure(f));
    }
  } catch (err) {
    failed = true;
    process.stderr.write(`# ${file} failed: ${(err as Error).message}\n`);
  }
}
if (ran === 0) {
  process.stderr.write(`no benchmark matches "${filter}"; files: ${files.join(', ')}\n`);
  process.exitCode = 2;
} else if (failed) process.exitCode = 1;
