// The console page in Chromium says in words why its console ended, for websockify pass-through
// (the gateway's own close frame between websockify's) and raw VNC alike.
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser } from './helpers/browser.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { startWebsockify, type Websockify } from './helpers/websockify.js';
import { startXvnc, type Xvnc } from './helpers/xvnc.js';

let browser: Browser;
let xvnc: Xvnc;
let websockify: Websockify;
let database: TestDatabase;
let gateway: TestGateway;
let stopped = false;

beforeAll(async () => {
  database = await createTestDatabase();
  [browser, xvnc, gateway] = await Promise.all([launchBrowser(), startXvnc(), startTestGateway({ DRAIN_TIMEOUT_SECONDS: '1' }, database.url)]);
  websockify = await startWebsockify(xvnc.port);
}, 120_000);
afterAll(async () => {
  await browser?.close();
  if (!stopped) await gateway?.stop();
  await Promise.all([xvnc?.close(), websockify?.close()]);
  await database?.drop();
});

async function connectedPage(protocol: 'vnc' | 'websockify'): Promise<{ page: Page; id: string }> {
  const port = protocol === 'vnc' ? xvnc.port : websockify.port;
  const created = await gateway.api('POST', '/api/v1/sessions', { protocol, target: { host: '127.0.0.1', port } });
  expect(created.status).toBe(201);
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  await page.goto(`${gateway.url}/console?ticket=${await gateway.mint(created.body.id)}`);
  await expect.poll(() => page.locator('#status').getAttribute('data-state'), { timeout: 15_000 }).toBe('connected');
  return { page, id: created.body.id };
}

async function shown(page: Page): Promise<{ code: string | null; text: string | null }> {
  const status = page.locator('#status');
  await expect.poll(() => status.getAttribute('data-state'), { timeout: 15_000 }).toBe('disconnected');
  return { code: await status.getAttribute('data-close-code'), text: await status.textContent() };
}

describe('the console page when its console ends', () => {
  it('says the session was stopped, for a websockify pass-through console', async () => {
    const { page, id } = await connectedPage('websockify');
    expect((await gateway.api('DELETE', `/api/v1/sessions/${id}`)).status).toBe(200);
    expect(await shown(page)).toEqual({ code: '4409', text: 'Disconnected: the console session was stopped' });
    await page.close();
  });

  it('says the gateway is shutting down when it drains, for pass-through and raw VNC consoles', async () => {
    const pages = await Promise.all([connectedPage('websockify'), connectedPage('vnc')]);
    stopped = true;
    await gateway.stop();
    for (const { page } of pages) {
      expect(await shown(page)).toEqual({ code: '1001', text: 'Disconnected: the gateway is shutting down; reconnect — this is temporary: reload the page to try again' });
      await page.close();
    }
  });
});
