/**
 * Issue 14, 2.2, as the operator sees it: when the API refuses the model or the key, the real device
 * bot answers in the DM with one plain line naming the config key to change, never a stack trace.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorReply } from './fixtures/anthropic.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';

let env: BotEnv;
let room: string;
let botUserId: string;

/** The bot's answer to `text`: the first message of the bot after it that is not an approval or notice. */
async function ask(text: string, match: RegExp): Promise<string> {
  const idx = env.phone.events.length;
  await env.phone.client.sendTextMessage(room, text);
  const e = await env.phone.waitFor((x: ClientEvent) => x.sender === botUserId && x.type === 'm.room.message' && env.phone.events.indexOf(x) >= idx && match.test(bodyOf(x)), 20_000);
  return bodyOf(e);
}

/** The reply's own text (a footer line may follow it), checked to be one plain line. */
function errorLine(body: string, needle: string): string {
  expect(body).not.toMatch(/\n\s+at |\{"type"|Error:/); // no stack frame, no raw API body
  const lines = body.split('\n').filter((l) => l.includes(needle));
  expect(lines).toHaveLength(1);
  return lines[0]!;
}

beforeAll(async () => {
  env = await createBotEnv();
  botUserId = (await env.registerBot('box')).userId;
  env.writeManifest('box', '  sys.info: {}\n');
  ({ room } = await env.startBotInDm('box'));
}, 60_000);

afterAll(async () => {
  await env?.cleanup();
});

describe('the bot on a refused model or key', { timeout: 60_000 }, () => {
  it('a model the API does not serve (404 not_found_error): one line naming llm.model', async () => {
    env.llm.enqueue(errorReply(404, { message: 'model: claude-test' }));
    const body = await ask('how full is the disk?', /llm\.model/);
    const line = errorLine(body, 'llm.model');
    expect(line).toMatch(/^The Anthropic API has no model "claude-test" \(retired or misspelled\): set `llm\.model` in config\.yaml to a current model such as claude-sonnet-5-5, then restart meshpilot\. Command mode still works/);
  });

  it('a refused key (401): one line naming llm.api_key and ANTHROPIC_API_KEY', async () => {
    env.llm.enqueue(errorReply(401));
    const body = await ask('and the memory?', /llm\.api_key/);
    const line = errorLine(body, 'llm.api_key');
    expect(line).toContain('`llm.api_key` in config.yaml (or ANTHROPIC_API_KEY)');
    expect(body).not.toContain('sk-test');
  });
});
