#!/usr/bin/env node
// `node bin/meshpilot.mjs …` as before: the entry point is bin/meshpilot.cjs (package.json "bin").
import { createRequire } from 'node:module';

createRequire(import.meta.url)('./meshpilot.cjs');
