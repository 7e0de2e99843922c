/**
 * Does the LLM's reply claim an action that did not happen? The model may write "I deleted the file"
 * or "Ran it." when no call (or only a rejected one) was made. The bot checks each reply's claims
 * against the successful actions of that turn and adds one warning line for the unbacked ones.
 *
 * Deliberately eager: a false claim must never pass unmarked, and a needless warning on a true one is
 * the lesser harm (test/claims.test.ts measures that rate on a corpus).
 */

/** The subset of a turn's action this needs (bots/llm.ts TurnAction). */
export interface ClaimAction {
  capability: string;
  ok: boolean;
}

type Backer = (capability: string) => boolean;

interface ClaimKind {
  /** How the warning names it: "nothing was <said>". */
  said: string;
  /** Past participles / simple past forms that claim the action. */
  verbs: readonly string[];
  /** Which successful capabilities plausibly did it. */
  backedBy: Backer;
}

/** Runs anything: a successful shell call backs any claim. */
const shell: Backer = (c) => c === 'shell.exec' || c === 'shell.eval';
const any = (...names: string[]): Backer => (c) => shell(c) || names.includes(c);

const KINDS: readonly ClaimKind[] = [
  { said: 'deleted', verbs: ['deleted', 'removed', 'erased', 'wiped', 'purged', 'unlinked', 'cleaned up', 'cleared out', 'freed up', 'uninstalled'], backedBy: any('fs.delete', 'pkg.install', 'pkg.upgrade') },
  { said: 'restarted', verbs: ['restarted', 'rebooted', 'reloaded', 're-started', 'started', 'stopped', 'relaunched', 'brought back up', 'bounced'], backedBy: any('svc.restart') },
  { said: 'installed', verbs: ['installed', 'upgraded', 'reinstalled', 'patched'], backedBy: any('pkg.install', 'pkg.upgrade') },
  { said: 'killed', verbs: ['killed', 'terminated', 'sent sigterm', 'sent sigkill', 'sent the signal', 'signalled', 'signaled'], backedBy: any('proc.kill') },
  { said: 'written', verbs: ['wrote', 'written', 'saved', 'created', 'edited', 'modified', 'overwrote', 'overwritten', 'appended', 'updated', 'changed', 'replaced', 'renamed', 'moved', 'copied', 'chmodded', 'set up', 'configured', 'fixed', 'applied'], backedBy: any('fs.write', 'fs.delete', 'git.pull', 'git.clone', 'pkg.install', 'pkg.upgrade', 'svc.restart', 'proc.kill') },
  { said: 'pulled or cloned', verbs: ['pulled', 'cloned', 'fetched and merged', 'checked out'], backedBy: any('git.pull', 'git.clone') },
  // "Ran it." — any successful call is something that ran.
  { said: 'run', verbs: ['ran', 'executed', 'run', 'invoked', 'launched'], backedBy: () => true },
];

// Claim forms: "I (have|'ve|just|already|successfully) VERB", "(has|have|was|were|'s|is now|are now) (been) (successfully) VERB",
// or the reply/sentence opening with the verb ("Deleted /tmp/x.", "Done — restarted nginx").
const ADVERBS = String.raw`(?:(?:just|already|now|successfully|also|then|quickly|finally|went ahead and|have|'ve|had|'d|been)\s+)*`;
/** Right before "I …": a condition, not a report. */
const CONDITIONAL_SUBJECT = /\b(?:if|unless|whether|until)\s*$/i;
/** Before "was/has been …": a negated subject ("Nothing was", "No files were") or a modal ("I would have"). */
const NEGATED_SUBJECT = /(?:\b(?:nothing|none|neither|nor|never|not|would|could|should|might|may|must|if|unless|whether)\b|\bno\s+[a-z-]+(?:\s+[a-z-]+)?|n't)\s*$/i;
/** Timestamps of the past ("was restarted 3 days ago", "last restarted at 10:02") report state, they do not claim this turn acted. */
const HISTORICAL = /^\s*(?:\S+\s+){0,4}?(?:ago\b|since\b|on\s+\d|at\s+\d|in\s+(?:19|20)\d\d|yesterday\b|last\s+(?:week|month|night|year)\b)/;

export interface Claim {
  kind: string;
  verb: string;
  /** The sentence it was found in. */
  sentence: string;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/\s+/g, '\\s+');
}

const PATTERNS = KINDS.map((k) => {
  const verbs = k.verbs.map(escapeRe).join('|');
  return {
    kind: k,
    firstPerson: new RegExp(String.raw`\b(?:i|we)(?:'ve|'d)?\s+${ADVERBS}(${verbs})\b`, 'gi'),
    // "I killed it and then restarted the worker", "I deleted the file, restarted nginx": the same subject.
    continued: new RegExp(String.raw`(?:,|\band\b|\bthen\b|&)\s+${ADVERBS}(${verbs})\b`, 'i'),
    passive: new RegExp(String.raw`\b(?:has|have|had|was|were|is\s+now|are\s+now|got|'s|is|are)\s+${ADVERBS}(${verbs})\b`, 'gi'),
    opening: new RegExp(String.raw`^(?:(?:ok(?:ay)?|done|all\s+done|sure|great|right)[\s,.:;!\u2014\u2013-]*)?(?:i\s+)?${ADVERBS}(${verbs})\b`, 'i'),
  };
});

/** Sentences, roughly: on ., !, ?, newlines and dashes that join clauses; code spans are dropped. */
function sentences(text: string): string[] {
  const prose = text.replace(/```[\s\S]*?(?:```|$)/g, ' ').replace(/`[^`\n]*`/g, 'X');
  return prose.split(/(?<=[.!?;])\s+|\n+|\s+[\u2014\u2013]\s+|,\s+(?:but|and|so)\s+|\s+but\s+/i).map((s) => s.trim()).filter(Boolean);
}

/** The words before a match in its sentence: a negated subject or a condition cancels the claim. */
function negated(sentence: string, index: number, firstPerson: boolean): boolean {
  const before = sentence.slice(0, index).trimEnd().split(/\s+/).slice(-4).join(' ');
  return (firstPerson ? CONDITIONAL_SUBJECT : NEGATED_SUBJECT).test(before);
}

/** The action claims a reply makes (one per kind and sentence). */
export function findClaims(text: string): Claim[] {
  const out: Claim[] = [];
  for (const sentence of sentences(text.replace(/[\u2018\u2019]/g, "'"))) {
    const before = out.length;
    // A question ("Should I restart it?") or a status phrased as "is installed" is not a claim of this turn.
    if (/\?\s*$/.test(sentence)) continue;
    if (/^(?:all\s+)?done\b[\s.!]*$/i.test(sentence)) out.push({ kind: 'run', verb: 'done', sentence });
    for (const p of PATTERNS) {
      let hit: { verb: string; index: number; end: number } | undefined;
      const opening = p.opening.exec(sentence);
      if (opening?.[1]) hit = { verb: opening[1], index: 0, end: opening[0].length };
      if (hit?.verb.toLowerCase() === 'run') hit = undefined; // "Run `!help`": an imperative
      for (const re of [p.firstPerson, p.passive]) {
        if (hit) break;
        re.lastIndex = 0;
        for (let m = re.exec(sentence); m; m = re.exec(sentence)) {
          const verb = m[1] ?? '';
          // "is installed" / "are running" describe state; "is now installed" claims a change.
          if (/^(?:is|are)\s+(?!now\b)/i.test(m[0]) && !/\bbeen\b/i.test(m[0])) continue;
          // "I run as …" is the present tense: "run" claims only after have/had/been.
          if (verb.toLowerCase() === 'run' && !/\b(?:have|had|'ve|'d|been|was|were|got)\b/i.test(m[0])) continue;
          if (negated(sentence, m.index, re === p.firstPerson)) continue;
          hit = { verb, index: m.index, end: m.index + m[0].length };
          break;
        }
      }
      if (!hit) continue;
      if (HISTORICAL.test(sentence.slice(hit.end))) continue;
      if (/\blast\s+$/i.test(sentence.slice(0, hit.end - hit.verb.length))) continue;
      out.push({ kind: p.kind.said, verb: hit.verb.toLowerCase(), sentence });
    }
    if (out.length === before) continue;
    for (const p of PATTERNS) {
      if (out.some((c, i) => i >= before && c.kind === p.kind.said)) continue;
      const m = p.continued.exec(sentence);
      if (m?.[1] && m[1].toLowerCase() !== 'run') out.push({ kind: p.kind.said, verb: m[1].toLowerCase(), sentence });
    }
  }
  return out;
}

/** Claims that no successful action of the turn backs. */
export function unbackedClaims(text: string, actions: readonly ClaimAction[]): Claim[] {
  const done = actions.filter((a) => a.ok).map((a) => a.capability);
  return findClaims(text).filter((c) => {
    const kind = KINDS.find((k) => k.said === c.kind);
    return !kind || !done.some((cap) => kind.backedBy(cap));
  });
}

/**
 * The one warning line for a reply whose text claims actions that did not happen, or '' when every
 * claim is backed by a successful action of this turn.
 */
export function claimWarning(text: string, actions: readonly ClaimAction[]): string {
  const kinds = [...new Set(unbackedClaims(text, actions).map((c) => c.kind))];
  if (kinds.length === 0) return '';
  const what = kinds.length === 1 ? kinds[0] : `${kinds.slice(0, -1).join(', ')} or ${kinds.at(-1)}`;
  return `⚠️ Nothing was ${what} by this reply: no such action succeeded in this turn, whatever the text above says (see the audit footer).`;
}
