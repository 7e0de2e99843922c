/**
 * An org template that arrives as text (a file dropped into the operator room, the HTTP API's or the
 * dashboard's import): checked as one file (no `!include`: the files it names cannot come with it),
 * bounded by the template file limit, then staged in a private temporary directory (0700) under a safe
 * version of its name, so the workspace engine reads it as the CLI reads a file and its problems read
 * `org.yaml:3 workspaces[0].name: …`. The caller removes the stage when done.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LineCounter, parseDocument, visit, type ScalarTag } from 'yaml';
import { TEMPLATE_LIMITS } from '../capabilities/workspace/schema.js';

/** A safe file name for the staged copy: the base name, [A-Za-z0-9._-] only, ending .yaml/.yml. */
export function stagedName(name: string | undefined): string {
  const base = path.posix.basename((name ?? '').replace(/\\/g, '/')).replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^\.+/, '').slice(0, 100);
  const n = base || 'org.yaml';
  return /\.ya?ml$/i.test(n) ? n : `${n}.yaml`;
}

/** The lines of a YAML text that use `!include` (1-based); none when it does not parse (the parser reports that). */
export function includeLines(text: string): number[] {
  const counter = new LineCounter();
  const tag: ScalarTag = { tag: '!include', resolve: (s: string) => s };
  const doc = parseDocument(text, { lineCounter: counter, customTags: [tag], prettyErrors: false });
  const lines: number[] = [];
  visit(doc, {
    Node: (_k, n) => {
      if (n.tag === '!include') lines.push(n.range ? counter.linePos(n.range[0]).line : 0);
    },
  });
  return lines;
}

export interface StagedTemplate {
  /** the staged file: give it to planImport */
  file: string;
  filename: string;
  /** removes the stage (idempotent) */
  remove(): void;
}

/** Checks and stages one template text; a one-line message for a person when it cannot be. */
export function stageTemplate(text: string, name: string | undefined): { ok: true; staged: StagedTemplate } | { ok: false; message: string } {
  const filename = stagedName(name);
  const limit = TEMPLATE_LIMITS.fileBytes;
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > limit) return { ok: false, message: `${filename}: ${bytes} bytes; an org template file may have at most ${limit} (${limit / 1024} KiB)` };
  if (text.includes('\u0000')) return { ok: false, message: `${filename}: not a text file` };
  const inc = includeLines(text);
  if (inc.length > 0) {
    return { ok: false, message: `${filename}: uses !include (line ${inc.slice(0, 10).join(', ')}): the files it names cannot come with an upload. Send one file with the whole tree, or import the template's directory with \`meshpilot workspace import <dir>\`` };
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'meshpilot-org-'));
  const file = path.join(dir, filename);
  writeFileSync(file, text, { mode: 0o600 });
  return { ok: true, staged: { file, filename, remove: () => rmSync(dir, { recursive: true, force: true }) } };
}
