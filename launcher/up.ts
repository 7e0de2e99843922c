/**
 * `meshpilot up` (`npm start`): checks the data directory, devices and audit log, then runs
 * what is configured. Without a config it says exactly what to configure next.
 */
import { existsSync } from 'node:fs';
import { formatIssue } from '../capabilities/manifest.js';
import type { CliIo } from './cli.js';
import type { Runtime } from './runtime.js';

export async function runUp(rt: Runtime, io: CliIo): Promise<number> {
  io.out(`meshpilot 0.1.0 · home ${rt.home.root}\n`);
  if (rt.created) io.out(`created ${rt.home.root} (database, manifests/, keys/)\n`);
  if (rt.enrolledLocal) io.out(`enrolled this machine as device "local" with the read-only template: ${rt.home.manifests}/local.yaml\n`);
  const list = rt.devices.list();
  for (const l of list) {
    if (l.manifest) io.out(`device ${l.device}: ${l.manifest.transport.kind}, ${l.manifest.os}, ${Object.keys(l.manifest.capabilities).length} capabilities\n`);
    else io.out(`device ${l.device}: INVALID manifest\n${l.issues?.map((i) => `  ${formatIssue(i)}\n`).join('')}`);
  }
  const local = rt.devices.get('local');
  if (local) {
    const r = await rt.invoker.invoke({ device: 'local', capability: 'sys.health', args: {}, actor: 'launcher' });
    io.out(`local health: ${r.ok ? (r.result?.stdout.trim() ?? 'ok') : r.error?.message}\n`);
  }
  let broken = false;
  for (const d of rt.audit.devices()) {
    const v = rt.audit.verify(d);
    if (!v.ok) {
      broken = true;
      io.out(`AUDIT BROKEN for ${d} at seq ${v.badSeq}: ${v.reason}\n`);
    } else io.out(`audit ${d}: ok ${v.count} entries\n`);
  }
  if (!existsSync(rt.home.config)) {
    io.out([
      '',
      'Matrix is not configured yet, so no device bots are running. Next:',
      `  1. npx meshpilot init        # homeserver URL, operator Matrix ID, bot tokens, Anthropic key -> ${rt.home.config}`,
      '  2. npm start                 # starts one bot per device',
      'Meanwhile, from this terminal:',
      '  npx meshpilot cap local sys.info',
      '  npx meshpilot cap local fs.list path=/var/log',
      '  npx meshpilot audit verify',
      '',
    ].join('\n'));
  }
  return broken ? 1 : 0;
}
