/**
 * config.yaml defaults (issue 15, item 8): each default is stated once, on its field; a section that is
 * absent, empty or partial gets the same field defaults (zod .prefault({}) on the section).
 */
import { describe, expect, it } from 'vitest';
import { ConfigSchema } from '../capabilities/config.js';
import { DEFAULT_LLM_MODEL } from '../capabilities/llm-model.js';

const base = { matrix: { homeserver_url: 'https://m.example.org' }, operators: ['@you:example.org'] };

describe('config defaults', () => {
  it('an absent section gets every field default', () => {
    const c = ConfigSchema.parse(base);
    expect(c.llm).toEqual({ model: DEFAULT_LLM_MODEL, max_tokens: 2048, max_steps: 8, daily_token_budget: 1_000_000, timeout_s: 60 });
    expect(c.approvals).toEqual({ timeout_s: 300 });
    expect(c.supervisor).toEqual({ max_crashes: 5, crash_window_s: 300, backoff_max_s: 60 });
    expect(c.voice).toEqual({ engine: 'pocketsphinx', max_bytes: 10 * 1024 * 1024, max_duration_s: 120, min_confidence: 0.7 });
    expect(c.health).toEqual({ schedule: '* * * * *', stale_after_s: 600, unreachable_after: 2, remind_after_s: 21_600, digest_min: 5 });
    expect(c.matrix).toEqual({ homeserver_url: 'https://m.example.org', bot_prefix: 'meshpilot-', operator_bot: 'meshpilot', encryption: 'auto' });
    expect(c.mesh).toBeUndefined();
  });

  it('an empty section equals an absent one; a partial one keeps what it says', () => {
    const empty = ConfigSchema.parse({ ...base, llm: {}, approvals: {}, supervisor: {}, voice: {}, health: {} });
    expect(empty).toEqual(ConfigSchema.parse(base));
    const partial = ConfigSchema.parse({ ...base, llm: { max_steps: 3 }, health: { digest_min: 9 } });
    expect(partial.llm).toMatchObject({ model: DEFAULT_LLM_MODEL, max_steps: 3, max_tokens: 2048 });
    expect(partial.health).toMatchObject({ digest_min: 9, stale_after_s: 600 });
  });

  it('a section is still checked: unknown keys, bounds, and the whisper rule', () => {
    expect(ConfigSchema.safeParse({ ...base, llm: { modle: 'x' } }).success).toBe(false);
    expect(ConfigSchema.safeParse({ ...base, approvals: { timeout_s: 0 } }).success).toBe(false);
    const r = ConfigSchema.safeParse({ ...base, voice: { engine: 'whisper-http' } });
    expect(!r.success && r.error.issues.map((i) => i.path.join('.'))).toEqual(['voice.whisper']);
  });
});
