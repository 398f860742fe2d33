// End to end in headless Chromium on the gateway's own page, against a real TigerVNC Xvnc (with a
// small X client that reacts to clicks and keys) and a real Debian websockify.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser } from './helpers/browser.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { startWebsockify } from './helpers/websockify.js';
import { startXvnc } from './helpers/xvnc.js';

type Peer = { port: number; close(): Promise<void> };

let gateway: TestGateway;
let browser: Browser;
let xvnc: Peer;
let xvncWithPassword: Peer;
let websockify: Peer;
let web: string | undefined;
const PASSWORD = 'sekrit12';

beforeAll(async () => {
  [gateway, browser, xvnc, xvncWithPassword] = await Promise.all([
    startTestGateway({ TARGET_WAIT_TIMEOUT_SECONDS: '3', NOVNC_READY_GATING_ENABLED: 'true', NOVNC_READY_POLL_INTERVAL_SECONDS: '0.2' }),
    launchBrowser(),
    startXvnc(),
    startXvnc({ password: PASSWORD }),
  ]);
  // A lab container's noVNC: websockify serving its pages, so the gate's HTTP probe finds vnc.html.
  web = await mkdtemp(join(tmpdir(), 'cg-novnc-web-'));
  await writeFile(join(web, 'vnc.html'), '<!doctype html><title>noVNC</title>');
  websockify = await startWebsockify(xvnc.port, { web });
}, 90_000);
afterAll(async () => {
  await browser?.close();
  await Promise.all([gateway?.stop(), xvnc?.close(), xvncWithPassword?.close(), websockify?.close()]);
  if (web) await rm(web, { recursive: true, force: true });
});

async function readySession(port: number, protocol: 'vnc' | 'websockify' = 'vnc'): Promise<string> {
  const target = protocol === 'vnc' ? { host: '127.0.0.1', port } : { host: '127.0.0.1', port, path: '/' };
  const created = await gateway.api('POST', '/api/v1/sessions', { protocol, target });
  expect(created.status).toBe(201);
  await expect.poll(async () => (await gateway.api('GET', `/api/v1/sessions/${created.body.id}`)).body.status, { timeout: 15_000 }).toBe('ready');
  return created.body.id;
}

async function openPage(ticket: string): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  await page.goto(`${gateway.url}/console?ticket=${ticket}`);
  return page;
}

const status = (page: Page) => page.locator('#status');

async function canvasShot(page: Page): Promise<Buffer> {
  return page.locator('#screen canvas').screenshot();
}

/** Waits until the canvas differs from `before` (the VM redrew after our input). */
async function changedFrom(page: Page, before: Buffer): Promise<Buffer> {
  let after = before;
  await expect.poll(async () => !(after = await canvasShot(page)).equals(before), { timeout: 10_000 }).toBe(true);
  return after;
}

describe('the console page in Chromium', () => {
  it('connects to a real Xvnc, draws the first frame, and a click and a key reach the VM', async () => {
    const id = await readySession(xvnc.port);
    const page = await openPage(await gateway.mint(id));
    await expect.poll(() => status(page).getAttribute('data-state'), { timeout: 15_000 }).toBe('connected');
    expect(page.url()).not.toContain('ticket=');
    const canvas = page.locator('#screen canvas');
    const box = (await canvas.boundingBox())!;
    expect(box.width).toBeGreaterThan(100);

    // The first frame: the X client paints its window, so the canvas is not one flat colour.
    await expect.poll(async () => (await canvasShot(page)).length, { timeout: 10_000 }).toBeGreaterThan(2000);
    const first = await canvasShot(page);

    // No window manager: keys go to the window under the pointer, so click first.
    await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
    const afterClick = await changedFrom(page, first);
    await page.keyboard.type('hello');
    await changedFrom(page, afterClick);
    await page.close();
  });

  it('asks for the VNC password and connects with it', async () => {
    const id = await readySession(xvncWithPassword.port);
    const page = await openPage(await gateway.mint(id));
    await page.locator('#password-dialog').waitFor({ state: 'visible', timeout: 15_000 });
    await page.fill('#password', PASSWORD);
    await page.click('#password-submit');
    await expect.poll(() => status(page).getAttribute('data-state'), { timeout: 15_000 }).toBe('connected');
    await page.close();
  });

  it('shows why a replayed ticket is refused', async () => {
    const id = await readySession(xvnc.port);
    const ticket = await gateway.mint(id);
    const first = await openPage(ticket);
    await expect.poll(() => status(first).getAttribute('data-state'), { timeout: 15_000 }).toBe('connected');
    const replay = await openPage(ticket);
    await expect.poll(() => status(replay).getAttribute('data-state'), { timeout: 15_000 }).toBe('disconnected');
    expect(await status(replay).getAttribute('data-close-code')).toBe('4401');
    expect(await status(replay).textContent()).toBe('Disconnected: ticket already used: ask for a new console link');
    await Promise.all([first.close(), replay.close()]);
  });

  it('shows that it is waiting for the VM, then why an unready session could not connect', async () => {
    const created = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc' });
    const page = await openPage(await gateway.mint(created.body.id));
    await expect.poll(() => status(page).getAttribute('data-state'), { timeout: 5_000 }).toBe('waiting');
    expect(await status(page).textContent()).toBe('Waiting for the VM to be ready…');
    await expect.poll(() => status(page).getAttribute('data-state'), { timeout: 10_000 }).toBe('disconnected');
    expect(await status(page).getAttribute('data-close-code')).toBe('1013');
    // 1013 is "try again later": the page says the failure is temporary.
    expect(await status(page).textContent()).toBe(
      'Disconnected: the VM address was not committed within 3 s; try again — this is temporary: reload the page to try again',
    );
    await page.close();
  });

  it('passes a websockify session through to a real websockify in front of Xvnc', async () => {
    const id = await readySession(websockify.port, 'websockify');
    const page = await openPage(await gateway.mint(id));
    await expect.poll(() => status(page).getAttribute('data-state'), { timeout: 15_000 }).toBe('connected');
    const box = (await page.locator('#screen canvas').boundingBox())!;
    const before = await canvasShot(page);
    await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
    await changedFrom(page, before);
    await page.close();
  });
});
