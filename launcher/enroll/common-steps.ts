/**
 * The steps every enrollment shares, whatever the transport: preflight (ssh access, host key, what
 * the machine is) first, register (the manifest for the controller, then the bot's "live") last.
 * The Matrix step between them is in matrix.ts.
 */
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { MeshpilotError } from '../../capabilities/errors.js';
import { parseManifest } from '../../capabilities/manifest.js';
import { resolveTarget } from '../../capabilities/transports/ssh.js';
import { readCredentials } from '../../bots/credentials.js';
import { readPidFile } from '../pid-file.js';
import type { Step } from './context.js';
import { ensureHostKey, forgetHostKey } from './host-keys.js';
import { waitForLiveMessage } from './matrix.js';

export const NODE_MIN_MAJOR = 18;

const PREFLIGHT_SCRIPT = [
  'uname -sm',
  'id -u',
  'printf "%s\\n" "$HOME"',
  'command -v node 2>/dev/null || echo -',
  '(node --version 2>/dev/null || echo -) | head -n 1',
  'if [ -d /run/systemd/system ]; then echo systemd; else echo nosystemd; fi',
  'if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then echo priv; else echo nopriv; fi',
].join('\n');

export function preflightStep(o: { needRoot: boolean }): Step {
  return {
    id: 'preflight', title: 'checking ssh access and the machine', always: true,
    check: async () => false,
    async apply(ctx) {
      const target = resolveTarget(ctx.device, ctx.targetTransport, {});
      ctx.data.sshTransport = ctx.targetTransport as Record<string, unknown>;
      const added = await ensureHostKey(target, { device: ctx.device, ...(ctx.opts.acceptHostKey ? { accept: ctx.opts.acceptHostKey } : {}), ...(ctx.opts.ask ? { ask: ctx.opts.ask } : {}) });
      if (added) {
        ctx.data.hostKeyAdded = added;
        ctx.save();
      }
      const out = (await ctx.target().shOk(PREFLIGHT_SCRIPT, { what: 'the preflight check', timeoutMs: 20_000 })).split('\n');
      const [sys = '', machine = ''] = (out[0] ?? '').trim().split(/\s+/);
      const detectedOs = sys === 'Linux' ? 'linux' : sys === 'Darwin' ? 'darwin' : undefined;
      const osName = ctx.opts.os ?? detectedOs;
      if (!osName) throw new MeshpilotError('config', `${ctx.device} runs ${sys || 'an unknown system'}: add-pc supports Linux and macOS targets (pass --os to override)`);
      ctx.data.os = osName;
      ctx.data.arch = ctx.opts.arch ?? ({ x86_64: 'x64', amd64: 'x64', aarch64: 'arm64', arm64: 'arm64', armv7l: 'arm' } as Record<string, string>)[machine] ?? machine;
      ctx.data.uid = Number(out[1]);
      ctx.data.home = (out[2] ?? '').trim() || '/';
      const node = (out[3] ?? '').trim();
      ctx.data.node = node && node !== '-' ? node : undefined;
      ctx.data.systemd = (out[5] ?? '').trim() === 'systemd';
      const priv = (out[6] ?? '').trim() === 'priv';
      ctx.data.sudo = ctx.data.uid !== 0;
      if (o.needRoot && !priv) {
        throw new MeshpilotError('permission', `${target.user} on ${ctx.device} is not root and cannot run sudo without a password: WireGuard and the agent service need root (use root@…, or allow passwordless sudo)`);
      }
      return `${ctx.data.os}/${ctx.data.arch}, ${target.user}@${target.host}:${target.port}${added ? ', host key trusted' : ''}`;
    },
    async undo(ctx) {
      if (ctx.data.hostKeyAdded && !ctx.revoking) {
        forgetHostKey(ctx.data.hostKeyAdded);
        return 'host key forgotten';
      }
      return undefined;
    },
  };
}


/** Writes manifests/<device>.yaml for the controller; the running launcher starts its bot, which says "live". */
export const registerStep: Step = {
  id: 'register', title: 'registering the device and waiting for its bot',
  async check(ctx) {
    const file = path.join(ctx.home.manifests, `${ctx.device}.yaml`);
    if (!ctx.data.manifestText || !existsSync(file)) return false;
    if (readFileSync(file, 'utf8') !== ctx.data.manifestText) return false;
    const launcher = readPidFile(ctx.home.root);
    return ctx.data.live === true || !launcher?.alive;
  },
  async apply(ctx) {
    const text = ctx.data.manifestText;
    if (!text) throw new MeshpilotError('internal', 'no manifest was prepared');
    const parsed = parseManifest(text, `${ctx.device}.yaml`);
    if (!parsed.ok) throw new MeshpilotError('internal', `the generated manifest is invalid: ${parsed.issues.map((i) => i.message).join('; ')}`);
    const file = path.join(ctx.home.manifests, `${ctx.device}.yaml`);
    const tmp = path.join(ctx.home.manifests, `.${ctx.device}.yaml.tmp`);
    writeFileSync(tmp, text, { mode: 0o600 });
    renameSync(tmp, file);
    const launcher = readPidFile(ctx.home.root);
    if (!launcher?.alive) {
      ctx.data.live = false;
      ctx.warn(`no launcher is running, so the bot of ${ctx.device} is not started yet: run \`npm start\` (or \`meshpilot up\`); it will greet you in a DM`);
      return 'registered (no launcher running)';
    }
    try { process.kill(launcher.pid, 'SIGHUP'); } catch { /* it also watches the folder */ }
    const creds = readCredentials(ctx.home.keys, ctx.device);
    if (!creds) throw new MeshpilotError('internal', 'the Matrix credentials are missing');
    const wait = ctx.opts.waitLive ?? waitForLiveMessage;
    await wait({
      device: ctx.device, homeserverUrl: creds.homeserverUrl ?? ctx.config.matrix.homeserver_url, botUserId: creds.userId, botToken: creds.accessToken,
      sinceTs: ctx.data.registeredAt ?? 0, timeoutMs: (ctx.config.mesh?.live_timeout_s ?? 60) * 1000, ...(ctx.opts.signal ? { signal: ctx.opts.signal } : {}),
    });
    ctx.data.live = true;
    return 'the bot said live';
  },
  async undo(ctx) {
    const file = path.join(ctx.home.manifests, `${ctx.device}.yaml`);
    if (!existsSync(file)) return undefined;
    rmSync(file, { force: true });
    const launcher = readPidFile(ctx.home.root);
    if (launcher?.alive) { try { process.kill(launcher.pid, 'SIGHUP'); } catch { /* watched anyway */ } }
    ctx.data.live = false;
    return 'manifest removed (the launcher stops its bot)';
  },
};
