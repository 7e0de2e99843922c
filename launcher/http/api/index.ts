/**
 * The `/v1` API: a placeholder until the routes land (health only).
 */
import { Hono } from 'hono';
import type { HttpEnv, HttpSurface } from '../types.js';

export function apiSurface(): HttpSurface {
  return {
    path: '/v1',
    create: () => {
      const app = new Hono<HttpEnv>();
      app.get('/health', (c) => c.json({ ok: true }));
      return app;
    },
  };
}
