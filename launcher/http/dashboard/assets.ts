/**
 * The dashboard's static files, served from the package: htmx and its SSE extension from
 * node_modules (resolved through the packages' own entries, so no path is guessed), and the
 * stylesheet from layout.ts. Nothing comes from a CDN. Read once, kept in memory, cached by the browser
 * for an hour.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import type { Hono } from 'hono';
import type { HttpEnv } from '../types.js';
import { CSS } from './layout.js';

const require = createRequire(import.meta.url);

/** `htmx.org/dist/htmx.min.js` and `htmx-ext-sse/dist/sse.min.js`, by their package roots. */
function packageFile(pkg: string, rel: string): string {
  const root = path.dirname(require.resolve(`${pkg}/package.json`));
  return readFileSync(path.join(root, rel), 'utf8');
}

export function assetRoutes(app: Hono<HttpEnv>): void {
  const files = new Map<string, { body: string; type: string }>();
  const load = (name: string): { body: string; type: string } => {
    let f = files.get(name);
    if (!f) {
      if (name === 'htmx.min.js') f = { body: packageFile('htmx.org', 'dist/htmx.min.js'), type: 'text/javascript; charset=utf-8' };
      else if (name === 'sse.js') f = { body: packageFile('htmx-ext-sse', 'dist/sse.min.js'), type: 'text/javascript; charset=utf-8' };
      else f = { body: CSS, type: 'text/css; charset=utf-8' };
      files.set(name, f);
    }
    return f;
  };
  for (const name of ['htmx.min.js', 'sse.js', 'dashboard.css']) {
    app.get(`/assets/${name}`, (c) => {
      const f = load(name);
      return c.body(f.body, 200, { 'Content-Type': f.type, 'Cache-Control': 'private, max-age=3600' });
    });
  }
}
