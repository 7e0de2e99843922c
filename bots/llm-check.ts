/**
 * `meshpilot doctor`'s LLM line: one cheap call (the Models API, `GET /v1/models/{model}`, no
 * tokens spent) that checks the key and the configured model together, and a verdict with one plain
 * line naming what to change.
 */
import Anthropic, { APIConnectionError, APIError } from '@anthropic-ai/sdk';
import { toMpError } from '../capabilities/errors.js';
import { KEY_SETTING, MODEL_SETTING, llmConfigProblem, retiredModelLine } from './llm-errors.js';
import { DEFAULT_LLM_MODEL } from '../capabilities/llm-model.js';

export interface LlmCheckInput {
  /** From config.yaml or ANTHROPIC_API_KEY (loadConfig applies the override). */
  api_key?: string | undefined;
  base_url?: string | undefined;
  model: string;
}

export interface LlmCheck {
  verdict: 'ok' | 'warn' | 'FAIL';
  detail: string;
}

export async function checkLlm(llm: LlmCheckInput, opts: { timeoutMs?: number } = {}): Promise<LlmCheck> {
  if (!llm.api_key) return { verdict: 'warn', detail: `no LLM configured (no Anthropic key): bots answer !commands only; set ${KEY_SETTING}` };
  const client = new Anthropic({
    apiKey: llm.api_key,
    ...(llm.base_url ? { baseURL: llm.base_url } : {}),
    maxRetries: 0,
    timeout: opts.timeoutMs ?? 15_000,
  });
  try {
    const info = await client.models.retrieve(llm.model);
    // Retired models stay in the catalogue (inference with them fails); deprecated ones still work.
    if (info.lifecycle === 'retired') return { verdict: 'FAIL', detail: retiredModelLine(llm.model) };
    if (info.lifecycle === 'deprecated') {
      const when = info.retires_at ? ` on ${info.retires_at.slice(0, 10)}` : '';
      return { verdict: 'warn', detail: `key valid; the model "${llm.model}" is deprecated and retires${when}: set ${MODEL_SETTING} to a current model such as ${DEFAULT_LLM_MODEL}` };
    }
    return { verdict: 'ok', detail: `key valid, model ${llm.model}` };
  } catch (err) {
    const problem = llmConfigProblem(err, llm.model);
    // A 404 that is not Anthropic's own may be an Anthropic-compatible server without a Models API.
    if (problem && err instanceof APIError && err.status === 404 && err.type !== 'not_found_error') {
      return { verdict: 'warn', detail: `could not check the model: ${llm.base_url ?? 'the API'} has no Models API (${problem.message})` };
    }
    if (problem) return { verdict: 'FAIL', detail: problem.message };
    if (err instanceof APIConnectionError) return { verdict: 'warn', detail: `could not reach the Anthropic API${llm.base_url ? ` at ${llm.base_url}` : ''} to check the key: ${err.message}` };
    if (err instanceof APIError) return { verdict: 'warn', detail: `could not check the key: the API answered ${err.status ?? '?'} (${err.type ?? 'error'}); try again later` };
    return { verdict: 'warn', detail: `could not check the key: ${toMpError(err).message.split('\n')[0]}` };
  }
}
