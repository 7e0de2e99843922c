/**
 * Anthropic API refusals that only a config change fixes (a bad key, a model the API does not
 * serve), as one plain line naming the config key to change. Used by the bot's turn
 * (bots/llm.ts) and by `meshpilot doctor` (bots/llm-check.ts), so both say the same thing.
 */
import { APIError } from '@anthropic-ai/sdk';
import { DEFAULT_LLM_MODEL } from '../capabilities/llm-model.js';

export const KEY_SETTING = '`llm.api_key` in config.yaml (or ANTHROPIC_API_KEY)';
export const MODEL_SETTING = '`llm.model` in config.yaml';
export const BASE_URL_SETTING = '`llm.base_url` in config.yaml (or ANTHROPIC_BASE_URL)';

export interface LlmConfigProblem {
  code: 'auth' | 'config';
  /** One line, no trailing hint: callers add their own (command mode, exit status). */
  message: string;
}

/** The line for a model the Models API lists as retired (inference with it fails). */
export function retiredModelLine(model: string): string {
  return `The model "${model}" is retired: set ${MODEL_SETTING} to a current model such as ${DEFAULT_LLM_MODEL}, then restart meshpilot.`;
}

/**
 * The config problem behind an API error, or null when the error is not one (overload, rate limit,
 * network: those pass by themselves). `model` is the configured model, named in the line.
 */
export function llmConfigProblem(err: unknown, model: string): LlmConfigProblem | null {
  if (!(err instanceof APIError) || err.status === undefined) return null;
  if (err.status === 401) {
    return { code: 'auth', message: `The Anthropic API refused the API key (authentication_error): set ${KEY_SETTING} to a valid key, then restart meshpilot.` };
  }
  if (err.status === 403) {
    return { code: 'auth', message: `The Anthropic API key is not allowed to use this (permission_error): set ${KEY_SETTING} to a key with access to ${model}, or change ${MODEL_SETTING}.` };
  }
  if (err.status === 404) {
    // The Messages and Models endpoints name only the model: an Anthropic-shaped 404 is about it.
    // A 404 without that shape comes from a server that is not the Anthropic API at all.
    if (err.type === 'not_found_error') {
      return { code: 'config', message: `The Anthropic API has no model "${model}" (retired or misspelled): set ${MODEL_SETTING} to a current model such as ${DEFAULT_LLM_MODEL}, then restart meshpilot.` };
    }
    return { code: 'config', message: `The LLM endpoint answered 404 (not an Anthropic API there?): check ${BASE_URL_SETTING}.` };
  }
  return null;
}
