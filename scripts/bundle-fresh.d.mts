// Types of scripts/bundle-fresh.mjs (plain Node: bin/meshpilot.mjs runs it before anything is compiled).
export const ROOT: string;
export const CLI_BUNDLE: string;
export function bundlesFresh(root?: string): boolean;
export function buildBundles(root?: string, opts?: { verbose?: boolean }): boolean;
