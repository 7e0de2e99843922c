/**
 * A capability's form, generated from its zod input schema (through zod 4's JSON Schema export,
 * capabilities/capability.ts toJsonSchema), and the way back: the submitted fields turned into the
 * arguments `invoke` validates with the same schema.
 *
 *   string            text input (a textarea when it may be long), pattern and maxLength kept
 *   integer / number  number input with its minimum and maximum
 *   boolean           a choice: default / true / false (a checkbox could not say "false" to a default-true field)
 *   enum              a select
 *   array             a textarea, one item per line (argv items may contain commas)
 *   object (record)   a textarea, one KEY=value per line
 * An empty field is left out: the schema's default applies.
 */
import { html } from 'hono/html';
import type { AnyCapability } from '../../../capabilities/capability.js';
import { toJsonSchema } from '../../../capabilities/capability.js';
import type { DashboardSession } from '../../../capabilities/dashboard-login.js';
import { csrfField, type Html } from './layout.js';

interface Prop {
  type?: string;
  enum?: unknown[];
  description?: string;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  maxLength?: number;
  pattern?: string;
  items?: Prop;
}

interface ObjectSchema {
  properties?: Record<string, Prop>;
  required?: string[];
}

function schemaOf(def: AnyCapability): ObjectSchema {
  return toJsonSchema(def) as ObjectSchema;
}

function field(name: string, p: Prop, required: boolean, idPrefix = 'f'): Html {
  const id = `${idPrefix}-${name}`;
  const hint = [p.description ?? '', p.default !== undefined ? `default ${JSON.stringify(p.default)}` : '', required ? 'required' : ''].filter(Boolean).join(' · ');
  const label = (input: Html): Html => html`<label for="${id}">${name}${input}<small>${hint}</small></label>`;
  if (p.enum) {
    return label(html`<select id="${id}" name="${name}">${required ? '' : html`<option value="">(default)</option>`}${p.enum.map((v) => html`<option value="${String(v)}"${v === p.default ? ' selected' : ''}>${String(v)}</option>`)}</select>`);
  }
  switch (p.type) {
    case 'boolean':
      return label(html`<select id="${id}" name="${name}"><option value="">(default)</option><option value="true">true</option><option value="false">false</option></select>`);
    case 'integer':
    case 'number':
      return label(html`<input id="${id}" name="${name}" type="number"${p.type === 'integer' ? html` step="1"` : html` step="any"`}${p.minimum !== undefined ? html` min="${p.minimum}"` : ''}${p.maximum !== undefined && p.maximum < 1e15 ? html` max="${p.maximum}"` : ''}${required ? ' required' : ''}>`);
    case 'array':
      return label(html`<textarea id="${id}" name="${name}" rows="3" placeholder="one item per line"${required ? ' required' : ''}></textarea>`);
    case 'object':
      return label(html`<textarea id="${id}" name="${name}" rows="2" placeholder="KEY=value, one per line"></textarea>`);
    default:
      if ((p.maxLength ?? 0) > 4096) return label(html`<textarea id="${id}" name="${name}" rows="4"${required ? ' required' : ''}></textarea>`);
      return label(html`<input id="${id}" name="${name}" type="text"${p.maxLength ? html` maxlength="${p.maxLength}"` : ''}${required ? ' required' : ''}>`);
  }
}

export interface CapFormOptions {
  /** Where it posts (default /devices/<device>/run). */
  action?: string;
  /** Fields the page sets (hidden, not shown), e.g. the VM a row's form acts on. */
  fixed?: Record<string, string>;
  /** Makes the element ids unique when one page holds the same capability's form more than once. */
  idSuffix?: string;
  /** The summary line (default: the capability's name and risk). */
  summary?: string;
  /** Where htmx puts the result (a CSS selector; default the div under the form). */
  target?: string;
}

/** The form of one capability: posts to /devices/<device>/run; with htmx the result replaces #result-<cap>. */
export function capForm(device: string, def: AnyCapability, session: DashboardSession, o: CapFormOptions = {}): Html {
  const s = schemaOf(def);
  const required = new Set(s.required ?? []);
  const key = `${def.name.replace(/\./g, '-')}${o.idSuffix ? `-${o.idSuffix}` : ''}`;
  const target = `result-${key}`;
  const action = o.action ?? `/devices/${device}/run`;
  const fixed = o.fixed ?? {};
  return html`<details class="capability" id="cap-${key}"><summary>${o.summary ?? def.name} <small class="muted">${def.risk}</small></summary>
<p class="muted"><small>${def.description}</small></p>
<form class="cap" method="post" action="${action}" hx-post="${action}" hx-target="${o.target ?? `#${target}`}" hx-swap="innerHTML">
${csrfField(session)}<input type="hidden" name="_capability" value="${def.name}">${o.action ? html`<input type="hidden" name="_device" value="${device}">` : ''}
${Object.entries(fixed).map(([name, v]) => html`<input type="hidden" name="${name}" value="${v}">`)}
${Object.entries(s.properties ?? {}).filter(([name]) => !(name in fixed)).map(([name, p]) => field(name, p, required.has(name), o.idSuffix ? `f-${o.idSuffix}` : 'f'))}
<button type="submit">Run ${def.name}</button>
</form>
<div id="${target}" aria-live="polite"></div>
</details>`;
}

export type FormArgs = { ok: true; args: Record<string, unknown> } | { ok: false; message: string };

/** The submitted fields as the capability's arguments (validated afterwards by invoke, with the same schema). */
export function argsFromForm(def: AnyCapability, form: Record<string, string>): FormArgs {
  const s = schemaOf(def);
  const args: Record<string, unknown> = {};
  for (const [name, p] of Object.entries(s.properties ?? {})) {
    const raw = form[name];
    if (raw === undefined || raw.trim() === '') continue;
    if (p.enum) { args[name] = p.enum.find((v) => String(v) === raw) ?? raw; continue; }
    switch (p.type) {
      case 'boolean':
        args[name] = raw === 'true' ? true : raw === 'false' ? false : raw;
        break;
      case 'integer':
      case 'number': {
        const n = Number(raw);
        args[name] = Number.isFinite(n) ? n : raw;
        break;
      }
      case 'array': {
        const items = raw.split(/\r?\n/).filter((l) => l !== '');
        args[name] = p.items?.type === 'integer' || p.items?.type === 'number' ? items.map(Number) : items;
        break;
      }
      case 'object': {
        const out: Record<string, string> = {};
        for (const line of raw.split(/\r?\n/).filter((l) => l.trim() !== '')) {
          const eq = line.indexOf('=');
          if (eq <= 0) return { ok: false, message: `${name}: expected KEY=value per line, got "${line.slice(0, 80)}"` };
          out[line.slice(0, eq)] = line.slice(eq + 1);
        }
        args[name] = out;
        break;
      }
      default:
        args[name] = raw;
    }
  }
  return { ok: true, args };
}
