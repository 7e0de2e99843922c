'use strict';
// dist/meshpilot.cjs, the CLI bundle's entry: launcher/bundle.ts writes this file there with its two
// placeholders filled (the main chunk, the build's id). Node 20 keeps no compiled code between runs of an
// ES module, so the CLI's chunks are CommonJS (converted from esbuild's split ES build) and this loader
// compiles each through vm.Script with V8's code cache: `<chunk>.<build>.v8cache` beside it, written by
// the first one-shot command that loaded the chunk (after it ran, so the functions it compiled are in it).
// A cache V8 rejects (another node, other V8 flags) or cannot read is ignored: the chunk compiles as usual.
// MESHPILOT_CODE_CACHE=off neither reads nor writes caches; =report prints what happened to stderr at exit.
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const { createRequire } = require('node:module');
const { pathToFileURL } = require('node:url');

const MAIN = '__MESHPILOT_MAIN_CHUNK__';
const BUILD = '__MESHPILOT_BUILD_ID__';
/** The specifiers chunks use for each other (`require("./meshpilot-chunk-ABCD1234.cjs")`). */
const CHUNK = /^\.\/meshpilot-[\w-]+\.cjs$/;
const mode = process.env.MESHPILOT_CODE_CACHE ?? 'on';
const useCache = mode !== 'off';

// One require for every chunk (they all sit in this folder), and their URLs from this folder's: chunk
// names are [\w-]+.cjs, nothing in them to escape.
const nodeRequire = createRequire(__filename);
const dirUrl = pathToFileURL(__dirname).href;
const modules = new Map();
/** Chunks compiled without an accepted cache: written by save(). */
const uncached = [];
let accepted = 0;
let rejected = 0;

const cacheFile = (file) => `${file.slice(0, -'.cjs'.length)}.${BUILD}.v8cache`;

function load(file) {
  const known = modules.get(file);
  if (known) return known.exports;
  const module = { exports: {} };
  modules.set(file, module);
  // Each chunk is a function expression (exports, require, module, __mpUrl), strict like the ES modules it was
  // built from, with no __dirname/__filename, which they never had: its text goes to V8 as it is read.
  const source = fs.readFileSync(file, 'utf8');
  let cachedData;
  if (useCache) {
    try { cachedData = fs.readFileSync(cacheFile(file)); } catch { /* none yet */ }
  }
  const script = new vm.Script(source, cachedData ? { filename: file, cachedData } : { filename: file });
  if (cachedData && !script.cachedDataRejected) accepted++;
  else {
    if (cachedData) rejected++;
    uncached.push([file, script]);
  }
  script.runInThisContext().call(module.exports, module.exports, req, module, `${dirUrl}/${path.basename(file)}`);
  return module.exports;
}

function req(id) {
  return CHUNK.test(id) ? load(path.join(__dirname, id)) : nodeRequire(id);
}
req.resolve = nodeRequire.resolve;
req.cache = nodeRequire.cache;

/** Writes the caches this process lacked (atomically; a read-only dist/ simply keeps none). launcher/main.ts calls it. */
function save() {
  if (useCache) {
    for (const [file, script] of uncached.splice(0)) {
      const tmp = `${cacheFile(file)}.${process.pid}.tmp`;
      try {
        fs.writeFileSync(tmp, script.createCachedData());
        fs.renameSync(tmp, cacheFile(file));
      } catch {
        try { fs.rmSync(tmp, { force: true }); } catch { /* nothing to remove */ }
      }
    }
  }
}

if (mode === 'report') {
  process.on('exit', () => process.stderr.write(`[meshpilot] code cache: ${accepted} accepted, ${rejected} rejected, ${modules.size - accepted} compiled\n`));
}
globalThis[Symbol.for('meshpilot.codeCache')] = { save };
load(path.join(__dirname, MAIN));
