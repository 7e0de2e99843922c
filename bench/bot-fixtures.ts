/**
 * Child process of bench/bot.bench.ts: the homeserver and Anthropic fixtures, on loopback.
 *
 * They run apart from the bench process because the operator's phone runs there: matrix-js-sdk with its
 * WebAssembly crypto takes tens of ms of CPU per message, and on the fixtures' event loop that time
 * would be added to every request the measured bot makes (a real homeserver is another machine).
 *
 * IPC: → { type: 'ready', hsUrl, serverName, registrationSharedSecret, llmUrl };
 *      ← { id, cmd: 'register', localpart, password } → { id, user: { userId, accessToken, deviceId } }.
 * The LLM answers every request with the text "ok". Exits when the parent goes away.
 */
import { startAnthropicFixture, textReply } from '../test/fixtures/anthropic.js';
import { startHomeserver } from '../test/fixtures/homeserver.js';

const hs = await startHomeserver();
const llm = await startAnthropicFixture({ apiKey: 'sk-test' });
llm.respond(() => textReply('ok'));

process.on('message', (m: { id?: number; cmd?: string; localpart?: string; password?: string }) => {
  if (m.cmd === 'register' && typeof m.localpart === 'string' && typeof m.password === 'string') {
    process.send?.({ id: m.id, user: hs.registerUser(m.localpart, m.password) });
  }
});
process.on('disconnect', () => {
  void Promise.allSettled([llm.close(), hs.stop()]).then(() => process.exit(0));
});
process.send?.({ type: 'ready', hsUrl: hs.url, serverName: hs.serverName, registrationSharedSecret: hs.registrationSharedSecret, llmUrl: llm.url });
