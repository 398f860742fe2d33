// The console page's Content-Security-Policy in real Chromium: an allowed platform page frames it
// and its script runs under script-src 'self'; a page on another origin cannot frame it at all.
import { createServer, type Server } from 'node:http';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { consolePageHeaders } from '../src/console/page-policy.js';
import { launchBrowser } from './helpers/browser.js';
import { TEST_ENV, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

/** A page on its own origin that frames `src`. */
async function framer(): Promise<{ server: Server; origin: string; frame(src: string): string }> {
  let src = '';
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' }).end(`<!doctype html><title>platform</title><iframe id="console" src="${src}"></iframe>`);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return { server, origin, frame: (s) => ((src = s), origin) };
}

describe('the console page in a frame', () => {
  let database: TestDatabase;
  let gateway: TestGateway;
  let browser: Browser;
  let platform: Awaited<ReturnType<typeof framer>>;
  let stranger: Awaited<ReturnType<typeof framer>>;
  beforeAll(async () => {
    [database, browser, platform, stranger] = await Promise.all([createTestDatabase(), launchBrowser(), framer(), framer()]);
    gateway = await startTestGateway({ ALLOWED_ORIGINS: platform.origin }, database.url);
  }, 90_000);
  afterAll(async () => {
    await browser?.close();
    await gateway?.stop();
    platform?.server.close();
    stranger?.server.close();
    await database?.drop();
  });

  it('sends a frame-ancestors policy of the allowed origins, strict script-src and no referrer', async () => {
    const res = await fetch(`${gateway.url}/console`);
    const csp = res.headers.get('content-security-policy') ?? '';
    expect(csp).toContain(`frame-ancestors ${platform.origin}`);
    expect(csp).toContain("script-src 'self';");
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval/);
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
  });

  it('runs inside an allowed page and refuses to render inside a stranger\'s', async () => {
    const page = await browser.newPage();
    try {
      const blocked: string[] = [];
      page.on('console', (message) => message.text().includes('frame-ancestors') && blocked.push(message.text()));

      await page.goto(platform.frame(`${gateway.url}/console`));
      const allowed = page.frame({ url: /\/console/ });
      expect(allowed).not.toBeNull();
      // The page's own script ran under the policy: with no ticket it says so.
      await expect.poll(() => allowed!.locator('#status').getAttribute('data-state'), { timeout: 15_000 }).not.toBe('connecting');
      expect(blocked).toEqual([]);

      await page.goto(stranger.frame(`${gateway.url}/console`));
      await expect.poll(() => blocked.length, { timeout: 15_000 }).toBeGreaterThan(0);
      const frame = page.frames().find((f) => f !== page.mainFrame());
      expect(await frame?.$('#status')).toBeNull();
    } finally {
      await page.close();
    }
  });
});

describe('FRAME_ANCESTORS', () => {
  const policyOf = (env: Record<string, string>) =>
    consolePageHeaders(loadConfig({ ...TEST_ENV, ...env }, { tickets: true }).edge.frameAncestors)['Content-Security-Policy'];

  it('defaults to the allowed origins, or same-origin when none are set, and can be set apart', () => {
    expect(policyOf({ ALLOWED_ORIGINS: 'https://a.example,https://b.example' })).toContain('frame-ancestors https://a.example https://b.example');
    expect(policyOf({})).toContain("frame-ancestors 'self'");
    expect(policyOf({ ALLOWED_ORIGINS: 'https://a.example', FRAME_ANCESTORS: "'none'" })).toContain("frame-ancestors 'none'");
  });

  it('refuses an entry that could smuggle another directive', () => {
    expect(() => loadConfig({ ...TEST_ENV, FRAME_ANCESTORS: "https://a.example; script-src 'unsafe-inline'" })).toThrow(/FRAME_ANCESTORS entry/);
  });
});
