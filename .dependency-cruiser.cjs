/**
 * The layers of meshpilot (docs/architecture.md), checked by test/architecture.test.ts in `npm test`:
 *
 *   launcher/  processes and fleet     may import bots/ and capabilities/
 *   bots/      Matrix and conversation may import only capabilities/ (and bots/)
 *   capabilities/ the one invoke path  imports nothing above it
 *
 * and no circular imports anywhere (sources, tests, benches). Type-only imports count: a layer that
 * needs another's types depends on it.
 * By hand: `npx depcruise capabilities bots launcher bin scripts test bench`.
 */
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'capabilities-imports-nothing-above',
      comment: 'capabilities/ is the bottom layer: every surface builds on it, so it must not reach up into bots/ or launcher/.',
      severity: 'error',
      from: { path: '^capabilities/' },
      to: { path: '^(bots|launcher|bin|scripts|test|bench)/' },
    },
    {
      name: 'bots-import-only-capabilities',
      comment: 'A bot process needs the capability layer, not the launcher: shared code goes to capabilities/.',
      severity: 'error',
      from: { path: '^bots/' },
      to: { path: '^(launcher|bin|scripts|test|bench)/' },
    },
    {
      name: 'no-circular',
      comment: 'A circle means two files share one job, or a shared part belongs in a third file.',
      severity: 'error',
      from: { path: '^(capabilities|bots|launcher|bin|scripts|test|bench)/' },
      to: { circular: true },
    },
  ],
  options: {
    // TypeScript 7 has no JavaScript API for dependency-cruiser to parse with; swc parses the .ts files.
    parser: 'swc',
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/|/crypto-optional/' },
    // './x.js' that is x.ts (NodeNext) resolves as tsc resolves it: dependency-cruiser retries .ts itself.
    enhancedResolveOptions: { extensions: ['.ts', '.js', '.mjs', '.cjs', '.json'] },
    moduleSystems: ['es6', 'cjs'],
    skipAnalysisNotInRules: true,
  },
};
