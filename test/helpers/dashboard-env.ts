/**
 * The dashboard on a real HTTP server (launcher/http/server.ts with every surface) over a temporary
 * MESHPILOT_HOME, and a headless Chromium (Debian's package, driven by playwright-core) logged in
 * through a magic link. Used by test/dashboard*.test.ts; the bench builds its own server the same way.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { logger } from '../../capabilities/log.js';
import { startHttpServer, type RunningHttpServer } from '../../launcher/http/server.js';
import { dashboardSurface, createLoginLink, type DashboardOptions } from '../../launcher/http/dashboard/index.js';
import { openRuntime, type Runtime } from '../../launcher/runtime.js';

export const CHROMIUM = '/usr/bin/chromium';

export interface DashboardEnv {
  home: string;
  rt: Runtime;
  server: RunningHttpServer;
  link(actor?: string): string;
  stop(): Promise<void>;
}

export async function startDashboard(opts: DashboardOptions & { home?: string } = {}): Promise<DashboardEnv> {
  const home = opts.home ?? mkdtempSync(path.join(tmpdir(), 'mp-dash-'));
  const rt = openRuntime({ root: home });
  const { apiSurface } = await import('../../launcher/http/api/index.js');
  const server = await startHttpServer({
    runtime: rt, http: { listen: '127.0.0.1:0', max_body_bytes: 64 * 1024, auth_failures_per_min: 10 }, logger: logger('http'),
  }, [apiSurface(), dashboardSurface(opts)]);
  return {
    home, rt, server,
    link: (actor) => createLoginLink({ runtime: rt }, server.url, actor),
    async stop() {
      await server.close();
      await rt.close();
      if (!opts.home) rmSync(home, { recursive: true, force: true });
    },
  };
}

export interface BrowserEnv {
  browser: Browser;
  context: BrowserContext;
  page: Page;
  close(): Promise<void>;
}

/** Headless Chromium with a phone-or-desktop viewport. As root Chromium needs --no-sandbox. */
export async function startBrowser(viewport = { width: 1280, height: 900 }): Promise<BrowserEnv> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  return { browser, context, page, close: () => browser.close() };
}

/** Opens the link and presses "Log in": the page lands on the fleet grid with a session. */
export async function logIn(page: Page, link: string): Promise<void> {
  await page.goto(link);
  await Promise.all([page.waitForURL((u) => u.pathname === '/'), page.click('#login')]);
}
