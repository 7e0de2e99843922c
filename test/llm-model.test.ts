/**
 * The default model (issue 14, 2.2): what a config without `llm.model` gets must be a model the API
 * serves, and the SDK must not print its per-call deprecation warning for it.
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createLlmClient } from '../bots/llm.js';
import { DEFAULT_LLM_MODEL } from '../capabilities/llm-model.js';
import { loadConfig } from '../capabilities/config.js';
import { startAnthropicFixture, textReply, type AnthropicFixture } from './fixtures/anthropic.js';
import { tempDir } from './helpers/tmp.js';

const KEY = 'sk-ant-model-test';
let fixture: AnthropicFixture;

beforeEach(async () => {
  fixture = await startAnthropicFixture({ apiKey: KEY });
});
afterEach(async () => {
  vi.restoreAllMocks();
  await fixture.close();
});

/** The model a config.yaml without `llm.model` ends up with, through the real loader. */
function defaultModelFromConfig(): string {
  const file = path.join(tempDir('mp-model-'), 'config.yaml');
  writeFileSync(file, 'matrix:\n  homeserver_url: https://matrix.example.org\noperators: ["@you:example.org"]\nllm:\n  api_key: sk-ant-x\n');
  const r = loadConfig(file, {});
  if (!r.ok) throw new Error(r.missing ? 'missing' : r.errors.join('; '));
  return r.config.llm.model;
}

/** console.warn lines (the SDK's deprecation notice goes there) during one call with `model`. */
async function warningsFor(model: string, stream: boolean): Promise<string[]> {
  const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
  fixture.enqueue(textReply('ok'));
  const c = createLlmClient({ apiKey: KEY, baseURL: fixture.url, model, maxTokens: 256, timeoutMs: 5000, maxRetries: 0, stream });
  const m = await c.createMessage({ system: [{ type: 'text', text: 's' }], tools: [], messages: [{ role: 'user', content: 'hi' }] });
  expect(m.model).toBe(model); // the call did reach the API with that model
  const lines = warn.mock.calls.map((args) => args.map(String).join(' '));
  warn.mockRestore();
  return lines;
}

describe('the default model', () => {
  it('is what a config without llm.model gets, in both places the config module defaults it', () => {
    expect(defaultModelFromConfig()).toBe(DEFAULT_LLM_MODEL);
    const file = path.join(tempDir('mp-model-'), 'config.yaml');
    writeFileSync(file, 'matrix:\n  homeserver_url: https://matrix.example.org\noperators: ["@you:example.org"]\n'); // no llm section at all
    const r = loadConfig(file, {});
    expect(r.ok && r.config.llm.model).toBe(DEFAULT_LLM_MODEL);
  });

  it('draws no SDK deprecation warning, plain or streaming (and a deprecated model does, so the check can fail)', async () => {
    const model = defaultModelFromConfig();
    expect(await warningsFor(model, false)).toEqual([]);
    expect(await warningsFor(model, true)).toEqual([]);
    // claude-opus-4-5 is in SDK 1.15's deprecated-model table (end of life 2027-01-22).
    const deprecated = await warningsFor('claude-opus-4-5', false);
    expect(deprecated.join('\n')).toMatch(/claude-opus-4-5' is deprecated/);
  });

  it('is listed as active by the Models API (the fixture serves the catalogue of 2026-12-02)', async () => {
    const c = createLlmClient({ apiKey: KEY, baseURL: fixture.url, model: DEFAULT_LLM_MODEL, maxTokens: 256, timeoutMs: 5000 });
    const info = await c.anthropic.models.retrieve(defaultModelFromConfig());
    expect(info.lifecycle).toBe('active');
    expect(info.retires_at).toBeNull();
  });
});
