/**
 * Voice commands, offline: what the bot can be asked by voice, as a JSGF grammar for pocketsphinx
 * (plus a pronunciation dictionary limited to the grammar's words), and the mapping of a transcript
 * back to an explicit command (`!status`, `!cap svc.status service=nginx`).
 *
 * One source: each intent is written in a small pattern language (words, `( a | b )`, `[optional]`,
 * `<slot>`), compiled both to JSGF (what the recogniser may hear) and to an anchored RegExp (what the
 * transcript means). Slots are filled from the device manifest: service, container and path names,
 * and the device's own name. Names are spoken as their parts (`web-api` → "web api").
 *
 * Pronunciations: the CMU dictionary shipped with pocketsphinx-en-us, then a maintained dictionary of
 * sysadmin words it lacks (nginx, uptime, systemd …), then a generated fallback (a compound of CMU
 * words, else spelled letter by letter, digits one by one). A word without a pronunciation makes
 * pocketsphinx output nothing, so every grammar word gets one.
 */
import { readFileSync } from 'node:fs';
import type { Manifest } from '../capabilities/manifest.js';

export const CMU_DICT = '/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict';

// ------------------------------------------------------------------------------------------- lexicon

/** Sysadmin words missing from (or badly covered by) the CMU dictionary. ARPAbet, as in cmudict-en-us. */
export const EXTRA_PRONUNCIATIONS: Readonly<Record<string, readonly string[]>> = {
  nginx: ['EH N JH IH N EH K S'],
  uptime: ['AH P T AY M'],
  systemd: ['S IH S T AH M D IY'],
  systemctl: ['S IH S T AH M K AH N T R OW L'],
  journalctl: ['JH ER N AH L K AH N T R OW L'],
  journald: ['JH ER N AH L D IY'],
  sshd: ['EH S EH S EY CH D IY'],
  ssh: ['EH S EH S EY CH'],
  postgres: ['P OW S T G R EH S'],
  postgresql: ['P OW S T G R EH S K Y UW EH L'],
  mysql: ['M AY EH S K Y UW EH L', 'M AY S IY K W AH L'],
  mariadb: ['M AA R IY AH D IY B IY'],
  mongodb: ['M AA NG G OW D IY B IY'],
  mongod: ['M AA NG G OW D IY'],
  redis: ['R EH D IH S'],
  memcached: ['M EH M K AE SH T'],
  haproxy: ['EY CH EY P R AA K S IY'],
  httpd: ['EY CH T IY T IY P IY D IY'],
  apache2: ['AH P AE CH IY T UW'],
  caddy: ['K AE D IY'],
  traefik: ['T R AE F IH K'],
  grafana: ['G R AH F AA N AH'],
  prometheus: ['P R OW M IY TH IY AH S'],
  kubelet: ['K Y UW B L AH T'],
  kubectl: ['K Y UW B K AH N T R OW L'],
  kubernetes: ['K UW B ER N EH T IY Z'],
  containerd: ['K AH N T EY N ER D IY'],
  dockerd: ['D AA K ER D IY'],
  docker: ['D AA K ER'],
  crond: ['K R AA N D IY'],
  cron: ['K R AA N'],
  rsyslog: ['AA R S IH S L AO G'],
  syslog: ['S IH S L AO G'],
  wireguard: ['W AY ER G AA R D'],
  tailscale: ['T EY L S K EY L'],
  pihole: ['P AY HH OW L'],
  nextcloud: ['N EH K S T K L AW D'],
  jellyfin: ['JH EH L IY F IH N'],
  plex: ['P L EH K S'],
  mosquitto: ['M AH S K IY T OW'],
  homeassistant: ['HH OW M AH S IH S T AH N T'],
  gitea: ['G IH T IY AH'],
  gitlab: ['G IH T L AE B'],
  github: ['G IH T HH AH B'],
  jenkins: ['JH EH NG K IH N Z'],
  rabbitmq: ['R AE B IH T EH M K Y UW'],
  elasticsearch: ['IH L AE S T IH K S ER CH'],
  kibana: ['K IH B AA N AH'],
  ollama: ['OW L AA M AH'],
  ufw: ['Y UW EH F D AH B AH L Y UW'],
  fail2ban: ['F EY L T UW B AE N'],
  cpu: ['S IY P IY Y UW'],
  ram: ['R AE M'],
  df: ['D IY EH F'],
  tmp: ['T EH M P'],
  var: ['V AA R'],
  usr: ['Y UW Z ER'],
  etc: ['EH T S IY'],
  opt: ['AA P T'],
  srv: ['EH S AA R V IY'],
  config: ['K AH N F IH G'],
  api: ['EY P IY AY', 'AE P IY'],
  db: ['D IY B IY'],
  app: ['AE P'],
  www: ['D AH B AH L Y UW D AH B AH L Y UW D AH B AH L Y UW'],
  meshpilot: ['M EH SH P AY L AH T'],
  localhost: ['L OW K AH L HH OW S T'],
};

const LETTERS: Record<string, string> = {
  a: 'EY', b: 'B IY', c: 'S IY', d: 'D IY', e: 'IY', f: 'EH F', g: 'JH IY', h: 'EY CH', i: 'AY', j: 'JH EY',
  k: 'K EY', l: 'EH L', m: 'EH M', n: 'EH N', o: 'OW', p: 'P IY', q: 'K Y UW', r: 'AA R', s: 'EH S', t: 'T IY',
  u: 'Y UW', v: 'V IY', w: 'D AH B AH L Y UW', x: 'EH K S', y: 'W AY', z: 'Z IY',
};
const DIGITS = ['Z IH R OW', 'W AH N', 'T UW', 'TH R IY', 'F AO R', 'F AY V', 'S IH K S', 'S EH V AH N', 'EY T', 'N AY N'];

let cmuCache: { file: string; map: Map<string, string[]> } | undefined;

/** word → pronunciations (first is the main one). Loaded once per file (~135k lines, ~100 ms). */
export function loadCmuDict(file = CMU_DICT): Map<string, string[]> {
  if (cmuCache?.file === file) return cmuCache.map;
  const map = new Map<string, string[]>();
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    text = '';
  }
  for (const line of text.split('\n')) {
    const sp = line.indexOf(' ');
    if (sp <= 0) continue;
    const head = line.slice(0, sp);
    const word = head.replace(/\(\d+\)$/, '');
    const phones = line.slice(sp + 1).replace(/#.*$/, '').trim();
    if (!phones) continue;
    const list = map.get(word);
    if (list) list.push(phones);
    else map.set(word, [phones]);
  }
  cmuCache = { file, map };
  return map;
}

/** Drops the cached dictionary (tens of MB in a bot process that only needs it to build a grammar). */
export function releaseCmuDict(): void {
  cmuCache = undefined;
}

export type PronunciationSource = 'cmu' | 'extra' | 'compound' | 'spelled';

export class Lexicon {
  constructor(private readonly cmu: Map<string, string[]> = loadCmuDict(), private readonly extra: Readonly<Record<string, readonly string[]>> = EXTRA_PRONUNCIATIONS) {}

  /** Whether the stock dictionary knows the word. */
  known(word: string): boolean {
    return this.cmu.has(word);
  }

  pronounce(word: string): { phones: string[]; source: PronunciationSource } {
    const extra = this.extra[word];
    if (extra) return { phones: [...extra], source: 'extra' };
    const cmu = this.cmu.get(word);
    if (cmu) return { phones: cmu, source: 'cmu' };
    const parts = this.split(word);
    if (parts) return { phones: [parts.map((p) => this.cmu.get(p)![0]!).join(' ')], source: 'compound' };
    return { phones: [spell(word)], source: 'spelled' };
  }

  /** Fewest CMU words (each ≥ 2 letters, at most 4) that concatenate to `word`, or undefined. */
  private split(word: string): string[] | undefined {
    if (word.length < 4 || word.length > 40 || !/^[a-z]+$/.test(word)) return undefined;
    const best: Array<string[] | undefined> = new Array<string[] | undefined>(word.length + 1).fill(undefined);
    best[0] = [];
    for (let end = 2; end <= word.length; end++) {
      for (let start = 0; start <= end - 2; start++) {
        const prev = best[start];
        if (!prev || prev.length >= 4) continue;
        const part = word.slice(start, end);
        if (part.length < 3 && part !== 'up' && part !== 'in' && part !== 'on') continue;
        if (!this.cmu.has(part)) continue;
        const cand = [...prev, part];
        const cur = best[end];
        if (!cur || cand.length < cur.length) best[end] = cand;
      }
    }
    const r = best[word.length];
    return r && r.length >= 2 ? r : undefined;
  }
}

function spell(word: string): string {
  const out: string[] = [];
  for (const ch of word) {
    if (ch >= '0' && ch <= '9') out.push(DIGITS[Number(ch)]!);
    else if (LETTERS[ch]) out.push(LETTERS[ch]);
  }
  return out.join(' ') || 'AH';
}

/** `Web-API_2` → ["web", "api", "2"]; words are what the grammar uses, the name is what the command gets. */
export function spokenTokens(name: string): string[] {
  return name
    .toLowerCase()
    .replace(/\.service$/, '')
    .split(/[^a-z0-9']+|(?<=[a-z])(?=[0-9])|(?<=[0-9])(?=[a-z])/)
    .flatMap((t) => (/^[0-9]+$/.test(t) ? t.split('') : [t]))
    .filter((t) => t.length > 0);
}

// ------------------------------------------------------------------------------------------- pattern language

type Node =
  | { t: 'word'; w: string }
  | { t: 'slot'; name: SlotName }
  | { t: 'seq'; items: Node[] }
  | { t: 'alt'; alts: Node[] }
  | { t: 'opt'; node: Node };

export type SlotName = 'service' | 'container' | 'path' | 'device' | 'unit';
const SLOT_NAMES: readonly SlotName[] = ['service', 'container', 'path', 'device', 'unit'];

function parsePattern(src: string): Node {
  const toks = src.match(/\(|\)|\[|\]|\||<[a-z]+>|[a-z0-9']+/g) ?? [];
  let i = 0;
  const seq = (): Node => {
    const alts: Node[] = [];
    let items: Node[] = [];
    while (i < toks.length) {
      const t = toks[i]!;
      if (t === ')' || t === ']') break;
      i++;
      if (t === '|') {
        alts.push({ t: 'seq', items });
        items = [];
      } else if (t === '(') {
        items.push(seq());
        i++; // ')'
      } else if (t === '[') {
        items.push({ t: 'opt', node: seq() });
        i++; // ']'
      } else if (t.startsWith('<')) {
        const name = t.slice(1, -1) as SlotName;
        if (!SLOT_NAMES.includes(name)) throw new Error(`unknown slot ${t}`);
        items.push({ t: 'slot', name });
      } else {
        items.push({ t: 'word', w: t });
      }
    }
    alts.push({ t: 'seq', items });
    return alts.length === 1 ? alts[0]! : { t: 'alt', alts };
  };
  return seq();
}

function slotsOf(n: Node, out = new Set<SlotName>()): Set<SlotName> {
  if (n.t === 'slot') out.add(n.name);
  else if (n.t === 'seq') n.items.forEach((x) => slotsOf(x, out));
  else if (n.t === 'alt') n.alts.forEach((x) => slotsOf(x, out));
  else if (n.t === 'opt') slotsOf(n.node, out);
  return out;
}

function wordsOf(n: Node, out: Set<string>): void {
  if (n.t === 'word') out.add(n.w);
  else if (n.t === 'seq') n.items.forEach((x) => wordsOf(x, out));
  else if (n.t === 'alt') n.alts.forEach((x) => wordsOf(x, out));
  else if (n.t === 'opt') wordsOf(n.node, out);
}

function toJsgf(n: Node): string {
  switch (n.t) {
    case 'word': return n.w;
    case 'slot': return `<${n.name}>`;
    case 'seq': return n.items.map(toJsgf).join(' ');
    case 'alt': return `( ${n.alts.map(toJsgf).join(' | ')} )`;
    case 'opt': return `[ ${toJsgf(n.node)} ]`;
  }
}

const reEscape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Matches against `normalized + ' '`: every word is followed by one space. */
function toRegex(n: Node, slotAlt: (s: SlotName) => string): string {
  switch (n.t) {
    case 'word': return `${reEscape(n.w)} `;
    case 'slot': return `(?<${n.name}>${slotAlt(n.name)})`;
    case 'seq': return n.items.map((x) => toRegex(x, slotAlt)).join('');
    case 'alt': return `(?:${n.alts.map((x) => toRegex(x, slotAlt)).join('|')})`;
    case 'opt': return `(?:${toRegex(n.node, slotAlt)})?`;
  }
}

// ------------------------------------------------------------------------------------------- intents

type Slots = Partial<Record<SlotName, string>>;

interface IntentDef {
  id: string;
  /** Capabilities that must all be enabled on the device. */
  needs: string[];
  patterns: string[];
  build(s: Slots, names: NameTable): string | undefined;
}

const SHOW = '( show | check ) [ me ] [ the ]';

/**
 * The phrases the bot understands offline. Kept deliberately tight: every optional word and alternative
 * is one more way for the recogniser to go wrong (measured in bench/voice.bench.ts).
 */
const INTENTS: IntentDef[] = [
  { id: 'status', needs: ['sys.info', 'sys.health'], patterns: ['[ check ] [ the ] status', 'status report'], build: () => '!status' },
  { id: 'disk', needs: ['sys.info'], patterns: [`${SHOW} disk ( usage | space )`, 'how much disk space is left'], build: () => '!cap sys.info' },
  { id: 'memory', needs: ['sys.info'], patterns: [`${SHOW} memory [ usage ]`, 'how much memory is free'], build: () => '!cap sys.info' },
  { id: 'uptime', needs: ['sys.info'], patterns: [`${SHOW} uptime`], build: () => '!cap sys.info' },
  { id: 'health', needs: ['sys.health'], patterns: [`${SHOW} health`, 'health check'], build: () => '!cap sys.health' },
  { id: 'procs', needs: ['proc.list'], patterns: ['( list | show ) [ the ] [ top ] processes'], build: () => '!cap proc.list' },
  { id: 'procs-mem', needs: ['proc.list'], patterns: ['( list | show ) [ the ] processes by memory'], build: () => '!cap proc.list sort=mem' },
  { id: 'containers', needs: ['docker.ps'], patterns: ['( list | show ) [ the ] containers'], build: () => '!cap docker.ps' },
  { id: 'containers-all', needs: ['docker.ps'], patterns: ['( list | show ) all containers'], build: () => '!cap docker.ps all=true' },
  {
    id: 'unit-status', needs: [], patterns: ['[ show | check ] [ the ] status of <unit>', 'is <unit> running'],
    build: (s, n) => unitCommand(n, s.unit, { service: (x) => `!cap svc.status service=${x}`, container: () => '!cap docker.ps all=true' }),
  },
  {
    id: 'unit-logs', needs: [], patterns: ['( show | get ) [ me ] [ the ] logs of <unit>'],
    build: (s, n) => unitCommand(n, s.unit, { service: (x) => `!cap svc.logs service=${x}`, container: (x) => `!cap docker.logs container=${x}` }),
  },
  {
    id: 'unit-restart', needs: [], patterns: ['restart <unit>'],
    build: (s, n) => unitCommand(n, s.unit, { service: (x) => `!cap svc.restart service=${x}`, container: (x) => `!cap docker.restart container=${x}` }),
  },
  { id: 'list-path', needs: ['fs.list'], patterns: ['list [ files in ] <path>'], build: (s, n) => (s.path && n.path.get(s.path) ? `!cap fs.list path=${n.path.get(s.path)}` : undefined) },
  { id: 'audit', needs: [], patterns: ['show [ me ] [ the ] audit log'], build: () => '!audit' },
  { id: 'help', needs: [], patterns: ['help'], build: () => '!help' },
];

const SUFFIX = '[ on the ( server | machine ) | please ]';

interface NameTable {
  /** spoken → service name (enabled svc.* capability lists it). */
  service: Map<string, string>;
  container: Map<string, string>;
  path: Map<string, string>;
  device: Map<string, string>;
  caps: Set<string>;
}

function unitCommand(n: NameTable, spoken: string | undefined, b: { service(x: string): string; container(x: string): string }): string | undefined {
  if (!spoken) return undefined;
  const svc = n.service.get(spoken);
  const ctr = n.container.get(spoken);
  // A name that is both a service and a container: the service wins.
  if (svc !== undefined) return b.service(svc);
  if (ctr !== undefined) return b.container(ctr);
  return undefined;
}

// ------------------------------------------------------------------------------------------- grammar from a manifest

export interface CommandGrammar {
  /** JSGF text: public rule <command>. */
  jsgf: string;
  /** Open word loop over the grammar's words plus common English words: the confidence reference. */
  loopJsgf: string;
  /** pocketsphinx dictionary text for every word of both grammars. */
  dict: string;
  words: string[];
  /** Words not in the CMU dictionary and where their pronunciation came from. */
  added: Record<string, PronunciationSource>;
  /** Names by slot (spoken form → real name). */
  names: { service: Record<string, string>; container: Record<string, string>; path: Record<string, string>; device: Record<string, string> };
  /** Transcript → explicit command, or undefined when it is none of the grammar's phrases. */
  toCommand(transcript: string): string | undefined;
  /** A few example phrases (for help text). */
  examples: string[];
}

const GLOB = /[*?[\]{}!]/;
const MAX_NAMES = 200;

function literalNames(list: readonly string[] | undefined): string[] {
  return (list ?? []).filter((n) => n.length > 0 && n.length <= 64 && !GLOB.test(n));
}

/** The literal directory of a path pattern (`/var/log/**` → `/var/log`); undefined if it is a glob inside. */
function literalDir(p: string): string | undefined {
  const stripped = p.replace(/\/\*\*?$/, '').replace(/\/+$/, '') || '/';
  if (GLOB.test(stripped) || !stripped.startsWith('/') || stripped.length > 200) return undefined;
  return stripped;
}

function addName(map: Map<string, string>, tokens: string[], name: string): void {
  if (tokens.length === 0 || tokens.length > 8 || map.size >= MAX_NAMES) return;
  const spoken = tokens.join(' ');
  if (!map.has(spoken)) map.set(spoken, name);
}

/** Common English words for the open loop, so that speech outside the grammar has somewhere to go. */
const LOOP_WORDS = (
  'a an and are as at be been but by can could did do does for from go going had has have he her him his how i if in into is it its ' +
  'just know like make me more my no not now of off okay one out over please put right see she so some take tell than that the their ' +
  'them then there these they think this time to today two up us want was way we well were what when where which who why will with ' +
  'would yes you your about after again all also any back because before being both come day down even first get give good here ' +
  'new old only other our people same say should still such thing those through under very weather sandwich music play call send ' +
  'message open close turn light lights start stop engine car house door window coffee tea food lunch dinner morning night week year ' +
  'name number money work home city town world water fire book game song movie phone email picture photo'
).split(/\s+/);

export function buildCommandGrammar(manifest: Manifest, opts: { lexicon?: Lexicon; allowed?: readonly string[] } = {}): CommandGrammar {
  const lex = opts.lexicon ?? new Lexicon();
  const caps = new Set(opts.allowed ?? Object.keys(manifest.capabilities).filter((k) => manifest.capabilities[k] !== undefined));
  const n: NameTable = { service: new Map(), container: new Map(), path: new Map(), device: new Map(), caps };
  for (const cap of ['svc.status', 'svc.logs', 'svc.restart']) if (caps.has(cap)) for (const s of literalNames(manifest.capabilities[cap]?.services)) addName(n.service, spokenTokens(s), s.replace(/\.service$/, ''));
  for (const cap of ['docker.logs', 'docker.restart', 'docker.start', 'docker.stop']) if (caps.has(cap)) for (const c of literalNames(manifest.capabilities[cap]?.containers)) addName(n.container, spokenTokens(c), c);
  if (caps.has('fs.list')) {
    for (const p of manifest.capabilities['fs.list']?.paths_allowed ?? []) {
      const dir = literalDir(p);
      if (!dir) continue;
      const segs = dir.split('/').filter(Boolean);
      // The whole path ("var log") and its last part ("log") both name it; the whole path wins a clash.
      addName(n.path, segs.flatMap(spokenTokens), dir);
      if (segs.length > 1) addName(n.path, spokenTokens(segs[segs.length - 1]!), dir);
    }
  }
  addName(n.device, spokenTokens(manifest.device), manifest.device);

  const slotValues = (s: SlotName): string[] => {
    if (s === 'unit') return [...new Set([...n.service.keys(), ...n.container.keys()])];
    return [...n[s].keys()];
  };
  // Unit-level intents need the matching capability for at least one kind of unit.
  const unitNeeds: Record<string, [string, string]> = { 'unit-status': ['svc.status', 'docker.ps'], 'unit-logs': ['svc.logs', 'docker.logs'], 'unit-restart': ['svc.restart', 'docker.restart'] };
  const suffix = parsePattern(SUFFIX);
  const usable: Array<{ def: IntentDef; nodes: Node[] }> = [];
  for (const def of INTENTS) {
    if (!def.needs.every((c) => caps.has(c))) continue;
    const un = unitNeeds[def.id];
    if (un && !((caps.has(un[0]) && n.service.size > 0) || (caps.has(un[1]) && n.container.size > 0))) continue;
    const nodes = def.patterns
      .map((p) => parsePattern(p))
      .filter((node) => [...slotsOf(node)].every((s) => slotValues(s).length > 0))
      .map((node): Node => ({ t: 'seq', items: [node, suffix] }));
    if (nodes.length) usable.push({ def, nodes });
  }

  // JSGF
  const rule = (id: string): string => `i_${id.replace(/[^a-z0-9]/g, '_')}`;
  const lines = ['#JSGF V1.0;', 'grammar meshpilot;'];
  lines.push(`public <command> = ${usable.map((u) => `<${rule(u.def.id)}>`).join(' | ') || 'help'};`);
  for (const u of usable) lines.push(`<${rule(u.def.id)}> = ${u.nodes.map(toJsgf).join(' | ')};`);
  const used = new Set<SlotName>();
  for (const u of usable) for (const node of u.nodes) for (const s of slotsOf(node)) used.add(s);
  for (const s of SLOT_NAMES) if (used.has(s)) lines.push(`<${s}> = ${slotValues(s).join(' | ')};`);
  const jsgf = `${lines.join('\n')}\n`;

  // Words
  const words = new Set<string>(['help']);
  for (const u of usable) for (const node of u.nodes) wordsOf(node, words);
  for (const s of used) for (const v of slotValues(s)) for (const w of v.split(' ')) words.add(w);
  const commandWords = [...words].sort();
  const loopWords = [...new Set([...commandWords, ...LOOP_WORDS.filter((w) => lex.known(w))])].sort();
  const loopJsgf = `#JSGF V1.0;\ngrammar loop;\npublic <loop> = <w>+;\n<w> = ${loopWords.join(' | ')};\n`;

  const added: Record<string, PronunciationSource> = {};
  const dictLines: string[] = [];
  for (const w of loopWords) {
    const p = lex.pronounce(w);
    if (p.source !== 'cmu') added[w] = p.source;
    p.phones.forEach((ph, i) => dictLines.push(`${i === 0 ? w : `${w}(${i + 1})`} ${ph}`));
  }

  // Transcript → command
  const slotAlt = (s: SlotName): string =>
    slotValues(s).sort((a, b) => b.length - a.length).map((v) => `${reEscape(v)} `).join('|');
  const matchers = usable.flatMap((u) => u.nodes.map((node) => ({ def: u.def, re: new RegExp(`^${toRegex(node, slotAlt)}$`) })));
  const toCommand = (transcript: string): string | undefined => {
    const norm = normalizeTranscript(transcript);
    if (!norm) return undefined;
    for (const m of matchers) {
      const hit = m.re.exec(`${norm} `);
      if (!hit) continue;
      const slots: Slots = {};
      for (const [k, v] of Object.entries(hit.groups ?? {})) if (v !== undefined) slots[k as SlotName] = v.trim();
      const cmd = m.def.build(slots, n);
      if (cmd) return cmd;
    }
    return undefined;
  };

  const examples = usable.slice(0, 6).map((u) => u.def.patterns[0]!.replace(/\[[^\]]*\]/g, '').replace(/\(\s*([^|)]+?)\s*\|[^)]*\)/g, '$1').replace(/\s+/g, ' ').trim());
  return {
    jsgf, loopJsgf, dict: `${dictLines.join('\n')}\n`, words: commandWords, added,
    names: { service: Object.fromEntries(n.service), container: Object.fromEntries(n.container), path: Object.fromEntries(n.path), device: Object.fromEntries(n.device) },
    toCommand, examples,
  };
}

/** Lower case, words of a-z 0-9 ', single spaces (whisper adds punctuation and capitals). */
export function normalizeTranscript(t: string): string {
  return t
    .toLowerCase()
    .replace(/[\u2019`]/g, "'") // ’
    .replace(/[^a-z0-9' ]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim()
    .slice(0, 2000);
}

/**
 * Agreement of the grammar-constrained transcript with the open-loop one, 0…1 (Dice coefficient of
 * their longest common word subsequence): 1 when the open recogniser heard exactly the command.
 */
export function agreement(constrained: string, open: string): number {
  const a = normalizeTranscript(constrained).split(' ').filter(Boolean);
  const b = normalizeTranscript(open).split(' ').filter(Boolean);
  if (a.length === 0 || b.length === 0) return 0;
  const dp: number[][] = Array.from({ length: a.length + 1 }, () => new Array<number>(b.length + 1).fill(0));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      dp[i]![j] = a[i - 1] === b[j - 1] ? dp[i - 1]![j - 1]! + 1 : Math.max(dp[i - 1]![j]!, dp[i]![j - 1]!);
    }
  }
  return (2 * dp[a.length]![b.length]!) / (a.length + b.length);
}
