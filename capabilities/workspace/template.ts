/**
 * Reading an org template: YAML with line numbers (the manifest's lineOf/fieldName), `!include`
 * resolved relative to the including file and kept inside the template's directory (lexically and
 * by realpath, so a symlink cannot lead out), include cycles and depth (16) refused, size limits
 * (file bytes, file count, workspaces), `spawning: false` propagated to the whole subtree.
 * Errors are values: `file:line path: message` for every problem found (formatTemplateIssue).
 * Checks against devices and names across the tree are in validate.ts.
 */
import { readFileSync, realpathSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, visit, type Node as YamlNode, type ScalarTag, type YAMLMap } from 'yaml';
import { fieldName, lineOf } from '../manifest.js';
import {
  TEMPLATE_LIMITS, TemplateHeadSchema, WorkspaceNodeSchema,
  type OrgTemplate, type TemplateDefaults, type TemplateIssue, type TemplateWorkspace,
} from './schema.js';

/** `!include path.yaml`: kept as a string by the YAML parser, resolved by the walker (which knows the including file). */
const includeTag: ScalarTag = { tag: '!include', resolve: (str: string) => str };
const INCLUDE = '!include';

/** The files a directory template may start from, in this order. */
export const TEMPLATE_FILES = ['org.yaml', 'org.yml'];

export type TemplateLimits = { -readonly [K in keyof typeof TEMPLATE_LIMITS]: number };

export type TemplateParse = { ok: true; template: OrgTemplate } | { ok: false; issues: TemplateIssue[] };

/** `teams/backup.yaml:4 workspaces[0].name: …` with the file relative to the template's directory. */
export function formatTemplateIssue(i: TemplateIssue, root?: string): string {
  const rel = root && i.file.startsWith(root + path.sep) ? path.relative(root, i.file) : path.basename(i.file);
  const where = i.line === null ? rel : `${rel}:${i.line}`;
  return `${where} ${i.field ? i.field + ': ' : ''}${i.message}`;
}

interface ParsedFile {
  file: string;
  doc: ReturnType<typeof parseDocument>;
  counter: LineCounter;
}

/** Where a YAML node sits: its file and its path from that file's top. */
interface At {
  pf: ParsedFile;
  docPath: Array<string | number>;
}

class Walker {
  readonly issues: TemplateIssue[] = [];
  readonly all: TemplateWorkspace[] = [];
  private readonly files = new Map<string, ParsedFile | null>();
  private tooMany = false;

  constructor(readonly root: string, readonly limits: TemplateLimits, readonly defaults: () => TemplateDefaults) {}

  fileList(): string[] {
    return [...this.files.keys()];
  }

  issue(at: At, sub: ReadonlyArray<string | number>, message: string, linePath?: ReadonlyArray<string | number>): void {
    const p = [...at.docPath, ...sub];
    this.issues.push({ file: at.pf.file, line: lineOf(at.pf.doc, at.pf.counter, linePath ? [...at.docPath, ...linePath] : p), field: fieldName(p), message });
  }

  /** Reads and parses one file (once); an issue (at `from`, when given) and null when it cannot. */
  read(file: string, from?: { at: At; sub: Array<string | number>; label: string }): ParsedFile | null {
    const cached = this.files.get(file);
    if (cached !== undefined) return cached;
    const fail = (message: string): null => {
      if (from) this.issue(from.at, from.sub, `${from.label}: ${message}`);
      else this.issues.push({ file, line: null, field: '', message });
      this.files.set(file, null);
      return null;
    };
    if (this.files.size >= this.limits.files) return fail(`more than ${this.limits.files} files in one template`);
    let size: number;
    try {
      const st = statSync(file);
      if (!st.isFile()) return fail('not a file');
      size = st.size;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return fail(code === 'ENOENT' ? 'file not found' : `cannot read: ${(err as Error).message}`);
    }
    if (size > this.limits.fileBytes) return fail(`${size} bytes; a template file may have at most ${this.limits.fileBytes}`);
    const text = readFileSync(file, 'utf8');
    const counter = new LineCounter();
    const doc = parseDocument(text, { lineCounter: counter, prettyErrors: false, uniqueKeys: true, customTags: [includeTag] });
    const pf: ParsedFile = { file, doc, counter };
    this.files.set(file, pf);
    if (doc.errors.length > 0) {
      for (const e of doc.errors) {
        this.issues.push({ file, line: e.linePos?.[0]?.line ?? counter.linePos(e.pos[0]).line, field: '', message: `YAML syntax: ${e.message.split('\n')[0] ?? e.message}` });
      }
      return null;
    }
    for (const w of doc.warnings) {
      // An unknown tag (a typo of !include) would otherwise be read as a plain string.
      this.issues.push({ file, line: w.linePos?.[0]?.line ?? counter.linePos(w.pos[0]).line, field: '', message: `YAML: ${w.message.split('\n')[0] ?? w.message}` });
    }
    return pf;
  }

  /** Resolves `!include <rel>` written at `at`+`sub` in the file at the end of `chain`. */
  include(at: At, sub: Array<string | number>, rel: unknown, chain: string[]): ParsedFile | null {
    const bad = (message: string): null => {
      this.issue(at, sub, message);
      return null;
    };
    if (typeof rel !== 'string' || rel.trim() === '' || rel.length > 1024 || rel.includes('\0')) return bad(`${INCLUDE} needs a relative file path`);
    const target = rel.trim();
    if (path.isAbsolute(target)) return bad(`${INCLUDE} ${target}: must be relative to the including file`);
    const candidate = path.resolve(path.dirname(at.pf.file), target);
    if (escapes(this.root, candidate)) return bad(`${INCLUDE} ${target}: outside the template's directory`);
    let real: string;
    try {
      real = realpathSync(candidate);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return bad(`${INCLUDE} ${target}: ${code === 'ENOENT' ? 'file not found' : (err as Error).message}`);
    }
    if (escapes(this.root, real)) return bad(`${INCLUDE} ${target}: outside the template's directory (a link to ${real})`);
    if (chain.includes(real)) {
      const names = [...chain.slice(chain.indexOf(real)), real].map((f) => path.relative(this.root, f));
      return bad(`${INCLUDE} ${target}: include cycle ${names.join(' → ')}`);
    }
    if (chain.length > this.limits.includeDepth) return bad(`${INCLUDE} ${target}: includes nested deeper than ${this.limits.includeDepth}`);
    return this.read(real, { at, sub, label: `${INCLUDE} ${target}` });
  }

  /** `!include` anywhere but an item of `listKey` (workspaces/children) is refused, not read as a plain string. */
  strayIncludes(map: YAMLMap, at: At, listKey: string): void {
    for (const pair of map.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : '';
      if (key === listKey || !pair.value) continue;
      visit(pair.value as YamlNode, {
        Scalar: (_k, n) => {
          if (n.tag !== INCLUDE) return;
          const off = n.range?.[0];
          this.issues.push({
            file: at.pf.file, line: off === undefined ? null : at.pf.counter.linePos(off).line,
            field: fieldName([...at.docPath, key]), message: `${INCLUDE} works only for an item of workspaces or children`,
          });
        },
      });
    }
  }

  /** Walks a `workspaces:` or `children:` sequence. */
  walkList(seq: unknown, at: At, parent: TemplateWorkspace | null, skippedBy: string | undefined, chain: string[], out: TemplateWorkspace[]): void {
    if (!isSeq(seq)) return; // the schema reported it
    seq.items.forEach((item, i) => this.walkItem(item, { pf: at.pf, docPath: [...at.docPath, i] }, parent, skippedBy, chain, out));
  }

  private walkItem(item: unknown, at: At, parent: TemplateWorkspace | null, skippedBy: string | undefined, chain: string[], out: TemplateWorkspace[]): void {
    if (this.tooMany) return;
    if (isScalar(item) && item.tag === INCLUDE) {
      const pf = this.include(at, [], item.value, chain);
      if (!pf) return;
      const top = pf.doc.contents;
      const inner = [...chain, pf.file];
      if (isMap(top)) this.walkItem(top, { pf, docPath: [] }, parent, skippedBy, inner, out);
      else if (isSeq(top)) top.items.forEach((it, i) => this.walkItem(it, { pf, docPath: [i] }, parent, skippedBy, inner, out));
      else this.issues.push({ file: pf.file, line: 1, field: '', message: 'an included file holds one workspace (a mapping) or a list of them' });
      return;
    }
    if ((item as YamlNode | null)?.tag === INCLUDE) return this.issue(at, [], `${INCLUDE} takes a file path`);
    if (!isMap(item)) return this.issue(at, [], `a workspace is a mapping (name, role, home, …) or ${INCLUDE} file.yaml`);
    const before = this.issues.length;
    this.strayIncludes(item, at, 'children');
    if (this.issues.length > before) return;
    const parsed = WorkspaceNodeSchema.safeParse(item.toJS(at.pf.doc, { maxAliasCount: 50 }));
    if (!parsed.success) {
      for (const iss of parsed.error.issues) {
        if (iss.code === 'unrecognized_keys') for (const k of iss.keys) this.issue(at, [...iss.path.map(String), k], 'unknown field');
        else this.issue(at, iss.path.map((s) => (typeof s === 'number' ? s : String(s))), iss.message);
      }
      return;
    }
    if (this.all.length >= this.limits.workspaces) {
      this.tooMany = true;
      return this.issue(at, [], `more than ${this.limits.workspaces} workspaces in one template`);
    }
    const node = parsed.data;
    const d = this.defaults();
    const here = `${path.relative(this.root, at.pf.file)}:${lineOf(at.pf.doc, at.pf.counter, [...at.docPath, 'spawning'])}`;
    const skip = skippedBy ?? (node.spawning === false ? here : undefined);
    const caps = node.capabilities ?? d.capabilities ?? [];
    const ws: TemplateWorkspace = {
      name: node.name,
      parent: parent?.name ?? null,
      role: node.role ?? '',
      home: node.home ?? `~/workspaces/${node.name}`,
      device: node.device ?? d.device,
      vm: node.vm,
      model: node.model ?? d.model,
      capabilities: [...new Set(caps)],
      spawning: skip === undefined,
      ...(skip !== undefined ? { skippedBy: skip } : {}),
      depth: parent ? parent.depth + 1 : 0,
      children: [],
      source: { file: at.pf.file, line: lineOf(at.pf.doc, at.pf.counter, [...at.docPath, 'name']), path: fieldName(at.docPath) },
      capabilitiesFrom: node.capabilities ? 'node' : 'defaults',
      lines: {
        device: lineOf(at.pf.doc, at.pf.counter, [...at.docPath, node.device !== undefined ? 'device' : 'name']),
        vm: node.vm !== undefined ? lineOf(at.pf.doc, at.pf.counter, [...at.docPath, 'vm']) : null,
        capabilities: caps.map((_, i) => (node.capabilities ? lineOf(at.pf.doc, at.pf.counter, [...at.docPath, 'capabilities', i]) : null)),
      },
    };
    this.all.push(ws);
    out.push(ws);
    this.walkList(item.get('children', true), { pf: at.pf, docPath: [...at.docPath, 'children'] }, ws, skip, chain, ws.children);
  }
}

function escapes(root: string, p: string): boolean {
  const rel = path.relative(root, p);
  return rel === '..' || rel.startsWith('..' + path.sep) || path.isAbsolute(rel);
}

/** The main file of a template given as a directory (org.yaml) or a file. */
export function templateEntry(target: string): { file: string; root: string } | { error: string } {
  let real: string;
  try {
    real = realpathSync(target);
  } catch {
    return { error: `${target}: not found` };
  }
  if (statSync(real).isDirectory()) {
    for (const f of TEMPLATE_FILES) {
      try {
        if (statSync(path.join(real, f)).isFile()) return { file: path.join(real, f), root: real };
      } catch { /* next */ }
    }
    return { error: `${target}: a template directory needs ${TEMPLATE_FILES.join(' or ')}` };
  }
  return { file: real, root: path.dirname(real) };
}

/**
 * Parses a template (a directory with org.yaml, or a file) into its workspace tree, or lists every
 * problem. Device checks: validateTemplate (validate.ts); loadOrgTemplate does both.
 */
export function parseTemplate(target: string, limits: Partial<TemplateLimits> = {}): TemplateParse {
  const entry = templateEntry(target);
  if ('error' in entry) return { ok: false, issues: [{ file: target, line: null, field: '', message: entry.error }] };
  let defaults: TemplateDefaults = {};
  const w = new Walker(entry.root, { ...TEMPLATE_LIMITS, ...limits }, () => defaults);
  const pf = w.read(entry.file);
  if (!pf) return { ok: false, issues: w.issues };
  if (w.issues.length > 0) return { ok: false, issues: w.issues };
  const top: At = { pf, docPath: [] };
  if (isMap(pf.doc.contents)) w.strayIncludes(pf.doc.contents, top, 'workspaces');
  if (w.issues.length > 0) return { ok: false, issues: sortIssues(w.issues) };
  const head = TemplateHeadSchema.safeParse(pf.doc.toJS({ maxAliasCount: 50 }) ?? {});
  if (!head.success) {
    for (const iss of head.error.issues) {
      if (iss.code === 'unrecognized_keys') for (const k of iss.keys) w.issue(top, [...iss.path.map(String), k], 'unknown field');
      else w.issue(top, iss.path.map((s) => (typeof s === 'number' ? s : String(s))), iss.message);
    }
    return { ok: false, issues: sortIssues(w.issues) };
  }
  defaults = head.data.defaults;
  const workspaces: TemplateWorkspace[] = [];
  w.walkList(isMap(pf.doc.contents) ? pf.doc.contents.get('workspaces', true) : undefined, { pf, docPath: ['workspaces'] }, null, undefined, [pf.file], workspaces);
  if (w.issues.length > 0) return { ok: false, issues: sortIssues(w.issues) };
  return {
    ok: true,
    template: {
      name: head.data.name,
      ...(head.data.description !== undefined ? { description: head.data.description } : {}),
      root: entry.root, file: entry.file, defaults, workspaces, all: w.all, files: w.fileList(),
    },
  };
}

/** Issues by file (in the order files were first named), then by line. */
export function sortIssues(issues: TemplateIssue[]): TemplateIssue[] {
  const order = new Map<string, number>();
  for (const i of issues) if (!order.has(i.file)) order.set(i.file, order.size);
  return issues.sort((a, b) => order.get(a.file)! - order.get(b.file)! || (a.line ?? 0) - (b.line ?? 0));
}
