/**
 * An org template dropped into the operator room of a real launcher (`meshpilot up`: the supervisor,
 * the operator room, real bots), against the test homeserver (the real Synapse when
 * MESHPILOT_TEST_HOMESERVER is set): the operator's ✅ on the plan creates the workspaces, each one's
 * bot comes up under the launcher's supervisor and DMs the operator "✓ <name> live", the room gets the
 * steps and "done", and `!org` shows them live with their bots running.
 */
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';
import { startLauncher, type UpLauncher } from './helpers/launcher-up.js';

let env: BotEnv;
let launcher: UpLauncher;
let room: string;
let opsBot: string;


function operatorRoom(): string | undefined {
  const db = new Database(path.join(env.home, 'meshpilot.db'), { readonly: true });
  try {
    return (db.prepare("SELECT value FROM meta WHERE key = 'operator_room'").get() as { value: string } | undefined)?.value;
  } finally {
    db.close();
  }
}

const inRoom = (pred: (e: ClientEvent) => boolean, from: number, ms = 30_000): Promise<ClientEvent> =>
  env.phone.waitFor((e) => e.room_id === room && e.type === 'm.room.message' && env.phone.events.indexOf(e) >= from && pred(e), ms);

beforeAll(async () => {
  env = await createBotEnv({ withLlm: false });
  rmSync(path.join(env.home, 'manifests', 'local.yaml'), { force: true });
  await env.registerBot('host');
  env.writeManifest('host', ['fs.read', 'fs.list', 'fs.stat', 'fs.write', 'fs.delete'].map((c) => `  ${c}: { paths_allowed: ["${env.work}/**"] }\n`).join(''));
  launcher = startLauncher({ PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', MESHPILOT_HOME: env.home, MESHPILOT_LOG_LEVEL: process.env['MESHPILOT_TEST_LOG'] ?? 'warn' });
  await launcher.waitOut(/launcher running \(pid \d+\)/);
  // The operator bot made its room and invited the operator (the phone accepts invites).
  const deadline = Date.now() + 60_000;
  while (!(room = operatorRoom() ?? '') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  expect(room, launcher.output().slice(-3000)).toMatch(/^!/);
  await env.phone.waitFor((e) => e.room_id === room && e.type === 'm.room.member' && e.state_key === env.operator.userId && (e.content as { membership?: string }).membership === 'join', 30_000);
}, 180_000);

afterAll(async () => {
  await launcher?.stop();
  await env?.cleanup();
}, 60_000);

describe('an org template dropped into the operator room of a running launcher', () => {
  it('✅ creates the workspaces; each bot comes up and DMs the operator "live"; !org shows them running', async () => {
    const yaml = `name: room-lab\ndefaults: { device: host, capabilities: [fs.read] }\nworkspaces:\n  - name: lead\n    role: Leads.\n    home: ${env.work}/ws/lead\n    children:\n      - { name: aide, role: Helps., home: ${env.work}/ws/aide }\n`;
    const up = await fetch(`${env.hs.url}/_matrix/media/v3/upload`, { method: 'POST', headers: { Authorization: `Bearer ${env.operator.accessToken}`, 'Content-Type': 'application/yaml' }, body: yaml });
    expect(up.status).toBe(200);
    const url = ((await up.json()) as { content_uri: string }).content_uri;
    let from = env.phone.events.length;
    await env.phone.client.sendMessage(room, { msgtype: 'm.file', body: 'room-lab.yaml', url, info: { mimetype: 'application/yaml', size: yaml.length } } as never);
    const plan = await inRoom((e) => bodyOf(e).includes('room-lab.yaml from'), from);
    opsBot = plan.sender;
    expect(bodyOf(plan)).toContain('org room-lab (merge): 2 create, 0 update, 0 unchanged, 0 skipped, 0 remove');

    from = env.phone.events.length;
    await env.phone.client.sendEvent(room, 'm.reaction' as never, { 'm.relates_to': { rel_type: 'm.annotation', event_id: plan.event_id, key: '✅' } } as never);
    const done = await inRoom((e) => e.sender === opsBot && /^(✅|✗) room-lab/.test(bodyOf(e)), from, 150_000);
    const said = env.phone.events.slice(from).filter((e) => e.room_id === room && e.sender === opsBot && e.type === 'm.room.message').map(bodyOf);
    expect(bodyOf(done), `${said.join('\n')}\n${launcher.output().slice(-3000)}`).toBe('✅ room-lab: done (2 created, 0 updated, 0 skipped, 0 removed)');
    expect(said.some((t) => /^\[1\/2\] \+ lead done [\d.]+ s: ✓ lead live \(reports to —\)$/.test(t))).toBe(true);
    expect(said.some((t) => /^\[2\/2\] \+ aide done [\d.]+ s: ✓ aide live \(reports to lead\)$/.test(t))).toBe(true);
    // Each workspace's own bot DMed the operator.
    for (const [n, parent] of [['lead', '—'], ['aide', 'lead']] as const) {
      const dm = await env.phone.waitFor((e) => e.type === 'm.room.message' && e.room_id !== room && bodyOf(e) === `✓ ${n} live (reports to ${parent})`, 30_000);
      expect(dm.sender).toMatch(new RegExp(`^@\\S*${n}:`));
    }

    from = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, '!org');
    const tree = bodyOf(await inRoom((e) => e.sender === opsBot && /^2 workspaces/.test(bodyOf(e)), from));
    expect(tree).toMatch(/^2 workspaces \(launcher pid \d+\)$/m);
    expect(tree).toMatch(/^lead {2}live {2}on host .*; bot running\)$/m);
    expect(tree).toMatch(/^└─ aide {2}live {2}on host .*; bot running\)$/m);
  }, 240_000);
});
