#!/usr/bin/env node
'use strict';
// Entry point (package.json "bin"): runs the pre-built bundle (dist/meshpilot.cjs, see launcher/bundle.ts).
// When a source file changed since it was built, it is rebuilt first (in a child process), so an edit is
// never run stale. Only if that build fails do the TypeScript sources run through tsx's loader.
// CommonJS, as the bundle is: an ES entry would start Node's ES module loader for nothing (~5-10 ms).
const { buildBundles, bundlesFresh, CLI_BUNDLE } = require('../scripts/bundle-fresh.cjs');

if (bundlesFresh() || buildBundles()) {
  require(CLI_BUNDLE);
} else {
  process.stderr.write('[meshpilot] running from the TypeScript sources instead (slower start)\n');
  void import('tsx/esm/api').then(({ register }) => {
    register();
    return import('../launcher/main.ts');
  });
}
