/**
 * What an LLM reply carries in the real bot process: the audit footer on every reply (`no action
 * taken` when nothing ran, `expired` for an approval that timed out), and one warning line when its
 * text claims an action that no successful call of the turn backs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { textReply, toolReply } from './fixtures/anthropic.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';

describe('LLM replies: footer and claim warning', () => {
  let env: BotEnv;
  let room: string;
  let botUserId: string;
  const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';
  const ask = async (text: string, answer: RegExp): Promise<string> => {
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, text);
    return bodyOf(await env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= idx && answer.test(bodyOf(e)), 20_000));
  };

  beforeAll(async () => {
    env = await createBotEnv({ approvalTimeoutS: 2 });
    await env.registerBot('box');
    env.writeManifest('box', '  sys.info: {}\n  shell.exec: { binaries: ["echo"], approval: always }\n');
    ({ room, botUserId } = await env.startBotInDm('box'));
  }, 60_000);
  afterAll(async () => {
    await env?.cleanup();
  });

  it('a claim with no tool call: the warning line and "no action taken"', async () => {
    env.llm.enqueue(textReply('I deleted /etc/passwd for you.'));
    const body = await ask('delete /etc/passwd', /deleted \/etc\/passwd/);
    const lines = body.split('\n');
    expect(lines.filter((l) => l.startsWith('⚠️'))).toHaveLength(1);
    expect(body).toMatch(/⚠️ Nothing was deleted/);
    expect(lines.at(-1)).toBe('🧾 no action taken');
  });

  it('"Ran it." next to a call whose approval expired: marked expired, and the warning', async () => {
    env.llm.enqueue(toolReply([{ name: 'shell_exec', input: { argv: ['echo', 'x'] } }]), textReply('Ran it.'));
    const body = await ask('run echo x', /Ran it/);
    expect(body).toMatch(/🧾 #\d+ shell\.exec expired$/);
    expect(body).toMatch(/⚠️ Nothing was run/);
  });

  it('an honest reply after a successful call: footer, no warning', async () => {
    env.llm.enqueue(toolReply([{ name: 'sys_info', input: {} }]), textReply('The host runs Linux.'));
    const body = await ask('what os?', /runs Linux/);
    expect(body).toMatch(/🧾 #\d+ sys\.info ok$/);
    expect(body).not.toContain('⚠️');
  });
});
