// ES face of scripts/bundle-fresh.cjs (the one implementation; bin/meshpilot.cjs requires it directly).
import { createRequire } from 'node:module';

const fresh = createRequire(import.meta.url)('./bundle-fresh.cjs');

/** The package root. */
export const ROOT = fresh.ROOT;
/** dist/meshpilot.cjs, the CLI bundle's entry. */
export const CLI_BUNDLE = fresh.CLI_BUNDLE;
/** @type {(root?: string) => boolean} True when the bundles exist and no source listed in the stamp changed since the build started. */
export const bundlesFresh = fresh.bundlesFresh;
/** @type {(root?: string, opts?: { verbose?: boolean }) => boolean} Builds both bundles in a child process; false (with esbuild's message on stderr) when that fails. */
export const buildBundles = fresh.buildBundles;
