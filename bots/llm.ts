/**
 * The LLM loop for one device, independent of Matrix: the operator's message goes to the model
 * (Anthropic Messages API, tool use) with the device's allowed capabilities as tools; every
 * tool call goes through the caller's `invoke` (the one Invoker: validation, policy, approval,
 * audit) and its outcome goes back as a tool_result, until the model ends its turn, the step cap
 * or the token budget stops it, or the LLM cannot be reached.
 *
 * Nothing here reaches a transport or the audit log directly.
 */
import Anthropic, { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from '@anthropic-ai/sdk';
import type { Logger } from 'pino';
import type { AnyCapability, Risk } from '../capabilities/capability.js';
import { toJsonSchema } from '../capabilities/capability.js';
import { MeshpilotError, toMpError, type ErrorCode, type MpError } from '../capabilities/errors.js';
import type { InvokeResult } from '../capabilities/invoke.js';
import { type CapabilityOptions, type DeviceOs, type TransportConfig, type WorkspaceSection } from '../capabilities/manifest.js';
import { needsApproval } from '../capabilities/policy.js';
import { logger as makeLogger } from '../capabilities/log.js';
import { builtinRegistry, type CapabilityRegistry } from '../capabilities/registry.js';
import { httpFetch } from './http.js';
import { llmConfigProblem } from './llm-errors.js';

export type MessageParam = Anthropic.Messages.MessageParam;
export type ContentBlockParam = Anthropic.Messages.ContentBlockParam;
export type ToolDefinition = Anthropic.Messages.Tool;
export type LlmMessage = Anthropic.Messages.Message;

/** Said whenever the model cannot help, so the operator knows the way that still works. */
export const COMMAND_MODE_HINT = 'Command mode still works: send `!help` for the commands.';

// ---- client ------------------------------------------------------------------------------------

export interface LlmClientOptions {
  apiKey: string;
  /** Default: ANTHROPIC_BASE_URL, else https://api.anthropic.com */
  baseURL?: string;
  model: string;
  maxTokens: number;
  /** Per attempt. */
  timeoutMs: number;
  /** Retries after the first attempt on 408/409/429/5xx/529 and connection failures (default 2, at most 5). */
  maxRetries?: number;
  /** First backoff delay (default 500 ms), doubled per retry, with jitter. */
  retryBaseMs?: number;
  /** Cap on any single wait, including a server's retry-after (default 8000 ms). */
  maxRetryDelayMs?: number;
  /** Use the SSE streaming endpoint for each model call (default false). */
  stream?: boolean;
  logger?: Logger;
}

export interface LlmRequest {
  system: Anthropic.Messages.TextBlockParam[];
  tools: ToolDefinition[];
  messages: MessageParam[];
}

export interface LlmClient {
  readonly model: string;
  readonly maxTokens: number;
  /** The SDK client, for callers that need more than `createMessage`. */
  readonly anthropic: Anthropic;
  /** One model call, with bounded retries; throws a MeshpilotError ('unreachable' / 'auth' / 'internal') whose message mentions `!help`. */
  createMessage(req: LlmRequest): Promise<LlmMessage>;
}

/** What a conversation needs of a client (a lazily created client offers just this). */
export type LlmCaller = Pick<LlmClient, 'model' | 'maxTokens' | 'createMessage'>;

const MAX_RETRIES_CAP = 5;

export function createLlmClient(opts: LlmClientOptions): LlmClient {
  const baseURL = opts.baseURL ?? process.env['ANTHROPIC_BASE_URL'] ?? undefined;
  const maxRetries = Math.max(0, Math.min(MAX_RETRIES_CAP, Math.floor(opts.maxRetries ?? 2)));
  const retryBaseMs = Math.max(0, opts.retryBaseMs ?? 500);
  const maxRetryDelayMs = Math.max(0, opts.maxRetryDelayMs ?? 8000);
  const log = opts.logger ?? makeLogger('llm');
  if (!opts.apiKey) throw new MeshpilotError('config', 'no Anthropic API key configured for the LLM');
  const anthropic = new Anthropic({
    apiKey: opts.apiKey,
    ...(baseURL ? { baseURL } : {}),
    timeout: opts.timeoutMs,
    // Node's global fetch would load its bundled undici (+8 MB per bot process, bots/http.ts). The SDK
    // types `fetch` with the DOM's Request/Response, of which httpFetch implements what the SDK uses.
    fetch: httpFetch as unknown as NonNullable<ConstructorParameters<typeof Anthropic>[0]>['fetch'],
    // Retries are ours (below): bounded waits, honouring retry-after up to maxRetryDelayMs, logged.
    maxRetries: 0,
  });

  const once = async (req: LlmRequest): Promise<LlmMessage> => {
    const params = { model: opts.model, max_tokens: opts.maxTokens, system: req.system, tools: req.tools, messages: req.messages };
    if (opts.stream) return anthropic.messages.stream(params).finalMessage();
    return anthropic.messages.create(params);
  };

  return {
    model: opts.model,
    maxTokens: opts.maxTokens,
    anthropic,
    async createMessage(req) {
      let attempt = 0;
      for (;;) {
        try {
          return await once(req);
        } catch (err) {
          const retry = attempt < maxRetries && isRetryable(err);
          const status = err instanceof APIError ? err.status : undefined;
          log.warn({ attempt: attempt + 1, status, type: err instanceof APIError ? err.type : undefined, retry }, 'LLM call failed');
          if (!retry) throw llmError(err, attempt + 1, opts.model);
          const wait = Math.min(maxRetryDelayMs, retryAfterMs(err) ?? backoffMs(retryBaseMs, attempt));
          await new Promise((r) => setTimeout(r, wait));
          attempt++;
        }
      }
    },
  };
}

function isRetryable(err: unknown): boolean {
  if (err instanceof APIUserAbortError) return false;
  if (err instanceof APIConnectionError) return true; // includes timeouts
  if (err instanceof APIError) {
    const should = err.headers?.get('x-should-retry');
    if (should === 'false') return false;
    if (should === 'true') return true;
    if (err.status === undefined) return err.type === 'overloaded_error' || err.type === 'api_error'; // mid-stream `event: error`
    return err.status === 408 || err.status === 409 || err.status === 429 || err.status >= 500;
  }
  return false;
}

function retryAfterMs(err: unknown): number | undefined {
  if (!(err instanceof APIError) || !err.headers) return undefined;
  const ms = Number.parseFloat(err.headers.get('retry-after-ms') ?? '');
  if (Number.isFinite(ms) && ms >= 0) return ms;
  const s = Number.parseFloat(err.headers.get('retry-after') ?? '');
  if (Number.isFinite(s) && s >= 0) return s * 1000;
  return undefined;
}

function backoffMs(base: number, attempt: number): number {
  return base * 2 ** attempt * (1 - Math.random() * 0.25);
}

/** The operator-facing error for a model call that failed for good. */
function llmError(err: unknown, attempts: number, model: string): MeshpilotError {
  const tries = attempts > 1 ? ` after ${attempts} attempts` : '';
  if (err instanceof MeshpilotError) return err;
  // A bad key or a retired model: one line naming the config key to change (bots/llm-errors.ts).
  const problem = llmConfigProblem(err, model);
  if (problem) return new MeshpilotError(problem.code, `${problem.message} ${COMMAND_MODE_HINT}`, { cause: err });
  if (err instanceof APIConnectionError) {
    const what = err instanceof APIConnectionTimeoutError ? 'timed out' : 'cannot be reached';
    return new MeshpilotError('unreachable', `The LLM (Anthropic API) ${what}${tries}. ${COMMAND_MODE_HINT}`, { cause: err });
  }
  if (err instanceof APIError) {
    const detail = err.type ?? (err.status !== undefined ? `HTTP ${err.status}` : 'error');
    const status = err.status;
    if (status === undefined || status === 408 || status === 409 || status === 429 || status >= 500) {
      const why = err.type === 'overloaded_error' || status === 529 ? 'is overloaded' : err.type === 'rate_limit_error' || status === 429 ? 'is rate-limiting this bot' : 'is unavailable';
      return new MeshpilotError('unreachable', `The LLM (Anthropic API) ${why} (${detail}${status !== undefined ? `, HTTP ${status}` : ''})${tries}. ${COMMAND_MODE_HINT}`, { cause: err });
    }
    const msg = (err.apiMessage ?? '').slice(0, 300);
    return new MeshpilotError('internal', `The LLM refused the request (${detail}${msg ? `: ${msg}` : ''}). ${COMMAND_MODE_HINT}`, { cause: err });
  }
  const e = toMpError(err, 'unreachable');
  return new MeshpilotError(e.code, `The LLM call failed: ${e.message.slice(0, 300)}. ${COMMAND_MODE_HINT}`, { cause: err });
}

// ---- tools -------------------------------------------------------------------------------------

const TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

/** `fs.read` → `fs_read` (tool names cannot contain dots). */
export function toToolName(capability: string): string {
  return capability.replace(/\./g, '_');
}

/** `fs_read` → `fs.read`, `vm_image_import` → `vm.image.import`: capability names have no underscores. */
export function toCapabilityName(tool: string): string {
  return tool.replace(/_/g, '.');
}

/** Whether a capability name survives the round trip and is a valid tool name. */
export function isToolMappable(capability: string): boolean {
  const t = toToolName(capability);
  return TOOL_NAME.test(t) && toCapabilityName(t) === capability;
}

/**
 * Anthropic tool definitions for the capabilities a device allows (pass `invoker.allowedCapabilities(device)`).
 * Sorted by name so the list (and the prompt cache) is stable; the last tool carries the cache breakpoint.
 */
export function buildTools(defs: readonly AnyCapability[], log: Logger = makeLogger('llm')): ToolDefinition[] {
  const tools: ToolDefinition[] = [];
  for (const def of [...defs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    if (!isToolMappable(def.name)) {
      log.warn({ capability: def.name }, 'capability name cannot be a tool name; not offered to the LLM');
      continue;
    }
    const schema = toJsonSchema(def);
    if (schema['type'] !== 'object') {
      log.warn({ capability: def.name }, 'capability input is not an object schema; not offered to the LLM');
      continue;
    }
    tools.push({
      name: toToolName(def.name),
      description: `${def.description} (capability ${def.name}, risk: ${def.risk})`,
      input_schema: schema as ToolDefinition['input_schema'],
    });
  }
  const last = tools.at(-1);
  if (last) last.cache_control = { type: 'ephemeral' };
  return tools;
}

// ---- system prompt -----------------------------------------------------------------------------

export interface SystemPromptInput {
  device: string;
  os: DeviceOs;
  transport: TransportConfig;
  /** The manifest's capabilities section (a Manifest can be passed as a whole). */
  capabilities: Record<string, CapabilityOptions | undefined>;
  description?: string;
  /** Extra instructions from the operator's config (bounded to 4000 characters). */
  operatorPrompt?: string;
  /** Where capability risk classes come from (default: the built-in registry). */
  registry?: CapabilityRegistry;
  /** A workspace's manifest section (issue 18): the role becomes the core of the prompt. */
  workspace?: WorkspaceSection;
  /** A workspace's direct children (the ones it may hand tasks to), sorted. */
  children?: readonly string[];
}

const MAX_OPERATOR_PROMPT = 4000;

function list(xs: readonly string[] | undefined, max = 24): string {
  if (!xs || xs.length === 0) return '';
  const shown = xs.slice(0, max).join(', ');
  return xs.length > max ? `${shown}, … (${xs.length - max} more)` : shown;
}

function capabilityLine(name: string, o: CapabilityOptions, risk: Risk | undefined): string {
  const parts: string[] = [];
  if (risk) parts.push(risk);
  if (needsApproval(risk, o.approval)) parts.push('needs operator approval');
  if (o.paths_allowed?.length) parts.push(`paths: ${list(o.paths_allowed)}`);
  if (o.paths_denied?.length) parts.push(`never: ${list(o.paths_denied)}`);
  if (o.binaries?.length) parts.push(`binaries: ${list(o.binaries, 48)}`);
  if (o.env_allowed?.length) parts.push(`env: ${list(o.env_allowed)}`);
  if (o.containers?.length) parts.push(`containers: ${list(o.containers)}`);
  if (o.services?.length) parts.push(`services: ${list(o.services)}`);
  if (o.packages?.length) parts.push(`packages: ${list(o.packages)}`);
  return `- ${name} (tool ${toToolName(name)}${parts.length ? `; ${parts.join('; ')}` : ''})`;
}

/**
 * The system prompt for a device. Deterministic for a given manifest and operator prompt (no
 * dates, no counters), so it stays in the prompt cache across turns and restarts.
 */
export function buildSystemPrompt(input: SystemPromptInput): string {
  const transport = input.transport.kind === 'local' ? 'local (this machine)' : input.transport.kind === 'ssh' ? 'ssh'
    : input.transport.kind === 'vm' ? `inside the VM ${input.transport.vm} (its own file system)` : 'mesh agent';
  const names = Object.keys(input.capabilities).filter((n) => input.capabilities[n] !== undefined).sort();
  const registry = input.registry ?? builtinRegistry();
  const caps = names.map((n) => capabilityLine(n, input.capabilities[n]!, registry.get(n)?.risk));
  const ws = input.workspace;
  const lines = [
    ...(ws ? workspaceLines(input.device, ws, input.os, transport, names.includes('workspace.delegate'), input.children ?? []) : [
      `You are the meshpilot bot for the device "${input.device}" (${input.os}, transport: ${transport}).`,
      ...(input.description ? [`Device description: ${input.description.slice(0, 500)}`] : []),
    ]),
    'The operator talks to you from a chat app, often on a phone. You act on the device only through the tools;',
    'each tool is one allowlisted capability, and every call is checked against the device manifest and recorded in a hash-chained audit log.',
    '',
    'Rules:',
    '- Use tools to find facts; never invent command output, file contents or system state.',
    '- A denied or failed call comes back as an error: tell the operator plainly what was refused and why. Do not try to get around a denial with another tool.',
    '- Calls that change the device may wait for the operator to approve them in the chat; that is expected.',
    '- Never say you did something (deleted, ran, restarted, installed, killed, wrote…) unless a tool call in this turn did it and succeeded. If a call was denied, rejected, expired or failed, say it did not happen. Every reply carries an audit footer of the calls that ran, and the bot flags replies that claim actions the footer does not show.',
    '- Prefer the narrowest read-only capability that answers the question. Ask before anything destructive the operator did not clearly request.',
    '- Keep replies short and readable on a phone: a sentence or two, then the relevant lines. No preamble.',
    `- If you cannot help, say so and point to command mode (\`!help\`).`,
    '',
    ws ? `What your manifest allows (paths narrowed to your home ${ws.home}):` : 'What the manifest allows on this device:',
    ...(caps.length ? caps : ['- nothing: no capabilities are enabled']),
  ];
  const extra = input.operatorPrompt?.trim();
  if (extra) lines.push('', 'Operator instructions:', extra.slice(0, MAX_OPERATOR_PROMPT));
  return lines.join('\n');
}

/** The head of a workspace's prompt: who it is, its role, its home, whom it reports to, its team. */
function workspaceLines(name: string, ws: WorkspaceSection, os: DeviceOs, transport: string, canDelegate: boolean, children: readonly string[]): string[] {
  const lines = [
    `You are the workspace "${name}", an agent with a job, run by meshpilot on the device "${ws.host}" (${os}, transport: ${transport}).`,
    `Your role: ${ws.role.trim()}`,
    `Your home directory on ${ws.host}: ${ws.home}. Work inside it; your capabilities reach nothing outside it.`,
    ws.parent
      ? `You report to the workspace "${ws.parent}": its tasks reach you as messages starting "Task from ${ws.parent}", and your answer goes back to it with the audit references of your calls.`
      : 'You report to the operators directly (you have no parent workspace).',
  ];
  if (canDelegate) {
    lines.push(children.length
      ? `Your team (workspaces that report to you): ${list(children, 48)}. Hand one of them a task with the tool ${toToolName('workspace.delegate')}; its answer comes back with its own audit references. Quote them when you report what it did.`
      : `No workspace reports to you yet, so ${toToolName('workspace.delegate')} has no one to hand a task to.`);
  }
  return lines;
}

// ---- the turn ----------------------------------------------------------------------------------

export interface TokenUsage {
  input: number;
  output: number;
}

/** Per-device daily token budget (see ConversationStore.budget). Checked before each model call. */
export interface TurnBudget {
  /** Tokens still available; <= 0 means exhausted. */
  remaining(): number;
  /** Records one model call's usage (called right after it, so usage survives a crash mid-turn). */
  record(usage: TokenUsage): void;
  /** The daily limit, for the message. */
  readonly limit: number;
}

export interface TurnAction {
  capability: string;
  ok: boolean;
  /** The audit entry recording the outcome (null only when nothing was audited, e.g. an unknown device). */
  auditSeq: number | null;
  exitCode?: number;
  errorCode?: string;
}

export type StoppedBy = 'end_turn' | 'max_steps' | 'budget' | 'error';

export interface TurnResult {
  /** The reply for the operator (without the audit footer: see auditFooter). */
  text: string;
  actions: TurnAction[];
  usage: TokenUsage & { cacheRead: number; cacheWrite: number };
  stoppedBy: StoppedBy;
  /** Set when stoppedBy is 'error'. */
  error?: MpError;
  /** Model calls made. */
  steps: number;
  /**
   * The messages this turn adds to the history, starting with the operator's, always ending with
   * an assistant message (so the history stays alternating and every tool_use has its result).
   * Empty when the very first model call failed (nothing worth remembering).
   */
  messages: MessageParam[];
}

export type InvokeFn = (capability: string, args: unknown) => Promise<InvokeResult>;

export interface RunTurnOptions {
  client: LlmCaller;
  /** From buildSystemPrompt. */
  system: string;
  /** From buildTools. */
  tools: ToolDefinition[];
  /** Earlier exchanges (not modified). */
  history: readonly MessageParam[];
  userText: string;
  invoke: InvokeFn;
  /** Model calls per request (default 8). */
  maxSteps?: number;
  budget?: TurnBudget;
  logger?: Logger;
}

export const MAX_USER_TEXT = 16 * 1024;
export const MAX_TOOL_RESULT_BYTES = 16 * 1024;
/** Tool calls the loop executes from one model response; more are answered with an error. */
export const MAX_TOOL_CALLS_PER_STEP = 16;
const MAX_TOOL_INPUT_BYTES = 64 * 1024;

export async function runTurn(opts: RunTurnOptions): Promise<TurnResult> {
  const log = opts.logger ?? makeLogger('llm');
  const maxSteps = Math.max(1, Math.floor(opts.maxSteps ?? 8));
  const userText = opts.userText.length > MAX_USER_TEXT ? `${opts.userText.slice(0, MAX_USER_TEXT)}\n[message truncated]` : opts.userText;
  const fresh: MessageParam[] = [{ role: 'user', content: [{ type: 'text', text: userText.trim() ? userText : '(empty message)' }] }];
  const systemBlocks: Anthropic.Messages.TextBlockParam[] = [{ type: 'text', text: opts.system, cache_control: { type: 'ephemeral' } }];
  const actions: TurnAction[] = [];
  const usage = { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 };
  let steps = 0;
  let lastText = '';

  const finish = (stoppedBy: StoppedBy, text: string, error?: MpError): TurnResult => {
    const r: TurnResult = { text, actions, usage, stoppedBy, steps, messages: fresh };
    if (error) r.error = error;
    return r;
  };
  /** Closes a turn that did not end with the model's own answer, keeping the history well-formed. */
  const closeWith = (note: string): void => {
    fresh.push({ role: 'assistant', content: [{ type: 'text', text: `[${note}]` }] });
  };

  for (;;) {
    if (opts.budget && opts.budget.remaining() <= 0) {
      const used = opts.budget.limit - opts.budget.remaining();
      const msg = `Today's LLM token budget for this device is used up (${used} of ${opts.budget.limit} tokens). ${COMMAND_MODE_HINT} The budget resets at midnight UTC.`;
      if (steps === 0) {
        fresh.length = 0; // nothing was asked of the model: do not record the message
        return finish('budget', msg);
      }
      closeWith('stopped: daily token budget used up');
      return finish('budget', joinText(lastText, msg));
    }
    if (steps >= maxSteps) {
      closeWith(`stopped: step limit of ${maxSteps} model calls reached`);
      return finish('max_steps', joinText(lastText, `I stopped after ${maxSteps} steps without finishing (step limit). Ask me to continue, or use command mode (\`!help\`).`));
    }

    let response: LlmMessage;
    try {
      response = await opts.client.createMessage({ system: systemBlocks, tools: opts.tools, messages: withCacheBreakpoint([...opts.history, ...fresh]) });
    } catch (err) {
      const e = toMpError(err, 'unreachable');
      log.warn({ code: e.code, steps }, 'LLM turn failed');
      if (steps === 0) {
        fresh.length = 0;
      } else {
        closeWith('stopped: the LLM could not be reached');
      }
      return finish('error', joinText(lastText, e.message), e);
    }
    steps++;
    const u = response.usage;
    const callUsage = { input: u.input_tokens + (u.cache_creation_input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0), output: u.output_tokens };
    usage.input += callUsage.input;
    usage.output += callUsage.output;
    usage.cacheRead += u.cache_read_input_tokens ?? 0;
    usage.cacheWrite += u.cache_creation_input_tokens ?? 0;
    opts.budget?.record(callUsage);

    const text = response.content.filter((b): b is Anthropic.Messages.TextBlock => b.type === 'text').map((b) => b.text).join('\n').trim();
    if (text) lastText = text;
    const toolUses = response.content.filter((b): b is Anthropic.Messages.ToolUseBlock => b.type === 'tool_use');

    if (response.stop_reason !== 'tool_use' || toolUses.length === 0) {
      // end_turn, stop_sequence, refusal, pause_turn, max_tokens: the turn is over. A cut-off reply
      // may hold a half-written tool call: keep only its text.
      const content = assistantContent(response.content, false);
      fresh.push({ role: 'assistant', content: content.length ? content : [{ type: 'text', text: '[no reply]' }] });
      const cut = response.stop_reason === 'max_tokens' ? '\n\n(reply cut at the token limit)' : '';
      return finish('end_turn', (text || '(no reply)') + cut);
    }

    fresh.push({ role: 'assistant', content: assistantContent(response.content, true) });
    const results: Anthropic.Messages.ToolResultBlockParam[] = [];
    for (const [i, tu] of toolUses.entries()) {
      if (i >= MAX_TOOL_CALLS_PER_STEP) {
        results.push({ type: 'tool_result', tool_use_id: tu.id, is_error: true, content: `not run: at most ${MAX_TOOL_CALLS_PER_STEP} tool calls per step` });
        continue;
      }
      const capability = toCapabilityName(tu.name);
      const inputSize = Buffer.byteLength(JSON.stringify(tu.input ?? {}));
      if (inputSize > MAX_TOOL_INPUT_BYTES) {
        actions.push({ capability, ok: false, auditSeq: null, errorCode: 'invalid_args' });
        results.push({ type: 'tool_result', tool_use_id: tu.id, is_error: true, content: `not run: tool input of ${inputSize} bytes exceeds ${MAX_TOOL_INPUT_BYTES}` });
        continue;
      }
      let r: InvokeResult;
      try {
        r = await opts.invoke(capability, tu.input ?? {});
      } catch (err) {
        const e = toMpError(err);
        log.error({ capability, code: e.code }, 'invoke threw');
        actions.push({ capability, ok: false, auditSeq: null, errorCode: e.code });
        results.push({ type: 'tool_result', tool_use_id: tu.id, is_error: true, content: `${e.code}: ${e.message}` });
        continue;
      }
      actions.push(toAction(capability, r));
      const block: Anthropic.Messages.ToolResultBlockParam = { type: 'tool_result', tool_use_id: tu.id, content: serializeResult(r) };
      if (!r.ok) block.is_error = true;
      results.push(block);
    }
    fresh.push({ role: 'user', content: results });
  }
}

function joinText(a: string, b: string): string {
  return a ? `${a}\n\n${b}` : b;
}

/** The assistant message to keep: text and (when the turn goes on) tool_use blocks, nothing else. */
function assistantContent(content: LlmMessage['content'], withTools: boolean): ContentBlockParam[] {
  const out: ContentBlockParam[] = [];
  for (const b of content) {
    if (b.type === 'text' && b.text) out.push({ type: 'text', text: b.text });
    else if (b.type === 'tool_use' && withTools) out.push({ type: 'tool_use', id: b.id, name: b.name, input: b.input ?? {} });
  }
  return out;
}

/**
 * A copy of the messages with a cache breakpoint on the last block, so each step of a turn (and
 * the next turn) reads the conversation prefix from the cache. The stored history is not touched.
 */
function withCacheBreakpoint(messages: MessageParam[]): MessageParam[] {
  const out = messages.map((m) => ({ ...m }));
  const last = out.at(-1);
  if (!last) return out;
  const blocks: ContentBlockParam[] = typeof last.content === 'string' ? [{ type: 'text', text: last.content }] : last.content.map((b) => ({ ...b }));
  const tail = blocks.at(-1);
  if (tail && (tail.type === 'text' || tail.type === 'tool_result' || tail.type === 'tool_use')) tail.cache_control = { type: 'ephemeral' };
  last.content = blocks;
  return out;
}

function toAction(capability: string, r: InvokeResult): TurnAction {
  const a: TurnAction = { capability: r.capability || capability, ok: r.ok, auditSeq: r.audit?.seq ?? null };
  const exit = r.result?.exitCode;
  if (exit !== undefined) a.exitCode = exit;
  const code = r.error?.code ?? r.result?.error?.code;
  if (!r.ok && code) a.errorCode = code;
  return a;
}

/** Cuts text to at most `max` UTF-8 bytes on a character boundary, with a note saying how much was cut. */
export function capForModel(text: string, max: number = MAX_TOOL_RESULT_BYTES): string {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= max) return text;
  const note = `\n[… truncated: ${buf.length - max} more bytes not shown; narrow the request to see them]`;
  let end = Math.max(0, max - Buffer.byteLength(note));
  while (end > 0 && ((buf[end] ?? 0) & 0xc0) === 0x80) end--;
  return buf.subarray(0, end).toString('utf8') + note;
}

/** A compact text form of an invoke outcome for the model: output first, JSON data only when there is no text. */
export function serializeResult(r: InvokeResult, max: number = MAX_TOOL_RESULT_BYTES): string {
  const parts: string[] = [];
  const res = r.result;
  if (!r.ok) {
    const err = r.error ?? res?.error;
    parts.push(`${err?.code ?? 'error'}: ${err?.message ?? 'failed'}`);
  } else if (res?.exitCode !== undefined && res.exitCode !== 0) {
    parts.push(`[exit code ${res.exitCode}]`);
  }
  if (res) {
    if (res.stdout) parts.push(res.encoding === 'base64' ? `[binary content, base64]\n${res.stdout}` : res.stdout);
    if (res.stderr) parts.push(`[stderr]\n${res.stderr}`);
    if (!res.stdout && !res.stderr && res.data !== undefined && r.ok) parts.push(compactJson(res.data));
    if (res.truncated) parts.push('[output truncated by the device limits]');
  }
  if (parts.length === 0) parts.push('(no output)');
  return capForModel(parts.join('\n'), max);
}

function compactJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? 'null';
  } catch {
    return '[unserialisable data]';
  }
}

// ---- audit footer ------------------------------------------------------------------------------

const STATUS_WORDS: Partial<Record<ErrorCode, string>> = {
  policy_denied: 'denied',
  approval_rejected: 'rejected',
  invalid_args: 'invalid args',
  unknown_capability: 'unknown',
  unknown_device: 'unknown device',
  timeout: 'timeout',
  not_found: 'not found',
  permission: 'permission denied',
  unreachable: 'unreachable',
};

/** A footer entry: a turn action, marked `expired` when its approval timed out (or the bot restarted). */
export type FooterAction = TurnAction & { expired?: boolean };

// Refusals read as what they are; anything else that did not succeed reads "failed (…)".
const REFUSALS = new Set<string>(['policy_denied', 'approval_rejected', 'invalid_args', 'unknown_capability', 'unknown_device']);

function actionStatus(a: FooterAction): string {
  if (a.ok) return a.exitCode !== undefined && a.exitCode !== 0 ? `exit ${a.exitCode}` : 'ok';
  if (a.expired) return 'expired';
  if (a.errorCode && REFUSALS.has(a.errorCode)) return STATUS_WORDS[a.errorCode as ErrorCode] ?? a.errorCode;
  if (a.exitCode !== undefined && a.exitCode !== 0) return `failed (exit ${a.exitCode})`;
  if (a.errorCode && a.errorCode !== 'exec_failed') return `failed (${STATUS_WORDS[a.errorCode as ErrorCode] ?? a.errorCode})`;
  return 'failed';
}

/** The footer of a reply where nothing ran: said, so a reply's claims can be read against it. */
export const NO_ACTION_FOOTER = '🧾 no action taken';

/**
 * `🧾 #1042 fs.list ok · #1043 shell.exec failed (exit 1) · #1044 fs.read denied · #1045 svc.restart rejected`
 * — every action of the reply with its audit entry; `🧾 no action taken` when there were none. An action
 * without an entry shows `#—`.
 */
export function auditFooter(actions: readonly FooterAction[]): string {
  if (actions.length === 0) return NO_ACTION_FOOTER;
  return `🧾 ${actions.map((a) => `${a.auditSeq !== null ? `#${a.auditSeq}` : '#—'} ${a.capability} ${actionStatus(a)}`).join(' · ')}`;
}
