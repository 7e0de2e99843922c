/**
 * The steps of `add-pc --via ssh`: nothing is installed on the device; the controller reaches it
 * with the ssh transport, and the audit stays on the controller.
 *
 *   1 preflight  ssh in BatchMode (key only), host key recorded with the operator's confirmation
 *                (terminal) or --accept-host-key, OS detection with `uname -sm`   (common-steps.ts)
 *   2 manifest   the ssh.readonly template: device, os, transport {kind: ssh, host, port, user, key}
 *   3 matrix     the bot's Matrix user                                           (matrix.ts)
 *   4 register   MESHPILOT_HOME/manifests/<device>.yaml, then wait for the bot's "✓ live" (common-steps.ts)
 */
import { parseDocument } from 'yaml';
import { MeshpilotError } from '../../capabilities/errors.js';
import { templateText } from '../../capabilities/home.js';
import { parseManifest, renderTemplate } from '../../capabilities/manifest.js';
import { resolveTarget } from '../../capabilities/transports/ssh.js';
import { preflightStep, registerStep } from './common-steps.js';
import type { EnrollContext, Step } from './context.js';
import { matrixStep } from './matrix.js';

export function sshManifestText(ctx: EnrollContext): string {
  const t = resolveTarget(ctx.device, ctx.targetTransport, {});
  const transport = { kind: 'ssh' as const, host: t.host, port: t.port, user: t.user, ...(t.keyPath ? { key: t.keyPath } : {}) };
  const doc = parseDocument(renderTemplate(templateText('ssh.readonly'), ctx.device, transport));
  doc.set('os', ctx.data.os ?? 'linux');
  const text = doc.toString();
  const parsed = parseManifest(text, `${ctx.device}.yaml`);
  if (!parsed.ok) throw new MeshpilotError('internal', `the generated manifest is invalid: ${parsed.issues.map((i) => `${i.field} ${i.message}`).join('; ')}`);
  return text;
}

const manifestStep: Step = {
  id: 'manifest', title: 'writing the manifest (ssh.readonly)',
  async check(ctx) {
    return ctx.data.manifestText !== undefined && ctx.data.manifestText === sshManifestText(ctx);
  },
  async apply(ctx) {
    ctx.data.manifestText = sshManifestText(ctx);
    return 'read-only capabilities, audit on the controller';
  },
  async undo(ctx) {
    delete ctx.data.manifestText;
    return undefined;
  },
};

export function sshSteps(): Step[] {
  return [preflightStep({ needRoot: false }), manifestStep, matrixStep, registerStep];
}
