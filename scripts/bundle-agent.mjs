#!/usr/bin/env node
// `npm run bundle:agent`: builds dist/meshpilot-agent.mjs, the device agent as ONE file that runs
// with node >= 18 on linux/darwin/windows, arm64/x64 (pure JS: no native modules, no ssh2).
//   node dist/meshpilot-agent.mjs --config /etc/meshpilot/agent.yaml
// Fails when a native or controller-only dependency (better-sqlite3, ssh2, *.node) gets pulled in.
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outfile = process.env.MESHPILOT_AGENT_OUT ?? join(root, 'dist', 'meshpilot-agent.mjs');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const FORBIDDEN = [/node_modules[\\/](better-sqlite3|ssh2|cpu-features|bindings|node-gyp-build)[\\/]/, /\.node$/, /capabilities[\\/]transports[\\/](ssh|mesh)\.ts$/, /audit-sqlite\.ts$|[\\/]db\.ts$/];

// pino loads thread-stream (worker-thread transports, node >= 20) at startup; the agent logs to
// stderr synchronously and never uses transports, so a stub keeps the bundle node-18 clean.
const stubThreadStream = {
  name: 'stub-thread-stream',
  setup(b) {
    b.onResolve({ filter: /^thread-stream$/ }, () => ({ path: 'thread-stream', namespace: 'mp-stub' }));
    b.onLoad({ filter: /.*/, namespace: 'mp-stub' }, () => ({
      contents: "module.exports = class ThreadStream { constructor() { throw new Error('pino transports are not available in the meshpilot agent bundle'); } };",
      loader: 'js',
    }));
  },
};

mkdirSync(dirname(outfile), { recursive: true });
const started = Date.now();
const result = await build({
  entryPoints: [join(root, 'capabilities', 'agent', 'main.ts')],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node18',
  minify: false,
  sourcemap: false,
  legalComments: 'none',
  metafile: true,
  logLevel: 'warning',
  plugins: [stubThreadStream],
  define: { __MESHPILOT_AGENT_VERSION__: JSON.stringify(pkg.version) },
  banner: {
    js: [
      '#!/usr/bin/env node',
      `// meshpilot-agent ${pkg.version}: bundled by scripts/bundle-agent.mjs; run: node meshpilot-agent.mjs --config <file>`,
      "import { createRequire as __mpCreateRequire } from 'node:module';",
      'const require = __mpCreateRequire(import.meta.url);',
      'globalThis.__MESHPILOT_AGENT_BUNDLE__ = true;',
    ].join('\n'),
  },
});

const inputs = Object.keys(result.metafile.inputs);
const bad = inputs.filter((p) => FORBIDDEN.some((re) => re.test(p)));
if (bad.length) {
  process.stderr.write(`bundle-agent: refusing to build, these must not be in the agent bundle:\n  ${bad.join('\n  ')}\n`);
  process.exit(1);
}
const size = statSync(outfile).size;
process.stderr.write(`bundle-agent: ${relative(root, outfile)} ${(size / 1024).toFixed(0)} KiB from ${inputs.length} files in ${Date.now() - started} ms\n`);
