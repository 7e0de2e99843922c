/**
 * `meshpilot doctor`'s LLM check (issue 14, 2.2), by the real CLI against the Anthropic fixture:
 * one Models API call checks key and model, and a problem is one line naming the config key.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DEFAULT_LLM_MODEL } from '../capabilities/llm-model.js';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { startAnthropicFixture, type AnthropicFixture } from './fixtures/anthropic.js';
import { tempDir } from './helpers/tmp.js';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs');
const KEY = 'sk-ant-doctor-test-77';
let fixture: AnthropicFixture;

beforeAll(async () => {
  fixture = await startAnthropicFixture({ apiKey: KEY });
});
afterAll(async () => {
  await fixture?.close();
});
beforeEach(() => {
  fixture.reset();
});

/** Runs `meshpilot doctor` with this llm section (async: the fixture answers from this process). */
async function doctor(llm: Record<string, string> | null): Promise<{ code: number | null; out: string; llmLine: string }> {
  const home = path.join(tempDir('mp-doctor-'), 'home');
  mkdirSync(home, { recursive: true });
  const lines = [
    'matrix:',
    '  homeserver_url: http://127.0.0.1:9', // nothing listens: the homeserver line fails fast, not our concern here
    'operators: ["@you:example.org"]',
  ];
  if (llm) lines.push('llm:', ...Object.entries(llm).map(([k, v]) => `  ${k}: "${v}"`));
  writeFileSync(path.join(home, 'config.yaml'), `${lines.join('\n')}\n`, { mode: 0o600 });
  const env: NodeJS.ProcessEnv = { ...process.env, MESHPILOT_HOME: home, MESHPILOT_LOG_LEVEL: 'warn' };
  delete env['ANTHROPIC_API_KEY'];
  delete env['ANTHROPIC_BASE_URL'];
  const child = spawn(process.execPath, [BIN, 'doctor'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  const llmLine = out.split('\n').find((l) => /^\S+\s+llm\s/.test(l)) ?? `(no llm line)\nstdout:\n${out}\nstderr:\n${err}`;
  expect(err).not.toMatch(/\n\s+at /); // never a stack trace
  return { code, out, llmLine };
}

const modelLookups = (): string[] => fixture.requests.filter((r) => r.method === 'GET').map((r) => r.path);

describe('meshpilot doctor: the LLM line', { timeout: 120_000 }, () => {
  it('default model, good key: ok after one Models API call and no tokens spent', async () => {
    const r = await doctor({ api_key: KEY, base_url: fixture.url });
    expect(r.llmLine).toMatch(new RegExp(`^ok\\s+llm\\s+key valid, model ${DEFAULT_LLM_MODEL}$`));
    expect(modelLookups()).toEqual([`/v1/models/${DEFAULT_LLM_MODEL}`]);
    expect(fixture.requests.filter((q) => q.path === '/v1/messages')).toHaveLength(0);
    expect(fixture.requests[0]!.apiKey).toBe(KEY);
  });

  it('a retired model (claude-sonnet-4-5, still listed by the API): FAIL naming llm.model', async () => {
    const r = await doctor({ api_key: KEY, base_url: fixture.url, model: 'claude-sonnet-4-5' });
    expect(r.llmLine).toMatch(/^FAIL\s+llm\s+The model "claude-sonnet-4-5" is retired: set `llm.model` in config.yaml to a current model such as claude-sonnet-5-5/);
    expect(r.code).toBe(1);
  });

  it('an unknown model (404): FAIL naming llm.model', async () => {
    const r = await doctor({ api_key: KEY, base_url: fixture.url, model: 'claude-nonesuch-9' });
    expect(r.llmLine).toMatch(/^FAIL\s+llm\s+The Anthropic API has no model "claude-nonesuch-9".*`llm.model` in config.yaml/);
    expect(r.llmLine).not.toContain('{"type"');
  });

  it('a deprecated model: warn with its retirement date', async () => {
    const r = await doctor({ api_key: KEY, base_url: fixture.url, model: 'claude-opus-4-5' });
    expect(r.llmLine).toMatch(/^warn\s+llm\s+key valid; the model "claude-opus-4-5" is deprecated and retires on 2027-01-22: set `llm.model`/);
  });

  it('a refused key (401): FAIL naming llm.api_key and ANTHROPIC_API_KEY, without the key', async () => {
    const r = await doctor({ api_key: 'sk-ant-wrong-55', base_url: fixture.url });
    expect(r.llmLine).toMatch(/^FAIL\s+llm\s+The Anthropic API refused the API key.*`llm.api_key` in config.yaml \(or ANTHROPIC_API_KEY\)/);
    expect(r.out).not.toContain('sk-ant-wrong-55');
    expect(fixture.requests.map((q) => q.status)).toEqual([401]);
  });

  it('no LLM configured: says so, and calls nothing', async () => {
    const r = await doctor(null);
    expect(r.llmLine).toMatch(/^warn\s+llm\s+no LLM configured/);
    expect(r.llmLine).toContain('`llm.api_key` in config.yaml (or ANTHROPIC_API_KEY)');
    expect(fixture.requests).toHaveLength(0);
  });
});
