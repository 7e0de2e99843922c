#!/usr/bin/env node
// Entry point: runs the pre-built bundle (dist/meshpilot.mjs, see launcher/bundle.ts). When a source
// file changed since it was built, it is rebuilt first (in a child process), so an edit is never run
// stale. Only if that build fails do the TypeScript sources run through tsx's loader.
import { buildBundles, bundlesFresh, CLI_BUNDLE } from '../scripts/bundle-fresh.mjs';

if (bundlesFresh() || buildBundles()) {
  await import(CLI_BUNDLE);
} else {
  process.stderr.write('[meshpilot] running from the TypeScript sources instead (slower start)\n');
  const { register } = await import('tsx/esm/api');
  register();
  await import('../launcher/main.ts');
}
