// The console page in Chromium against a password-protected TigerVNC whose password is stored
// with the target: no prompt, and the password is in no API answer, log line or page source.
import type { Browser } from 'playwright-core';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser } from './helpers/browser.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { startXvnc, type Xvnc } from './helpers/xvnc.js';

const PASSWORD = 'Pw4-vnc!';
let database: TestDatabase;
let gateway: TestGateway;
let browser: Browser;
let xvnc: Xvnc;

beforeAll(async () => {
  database = await createTestDatabase();
  [gateway, browser, xvnc] = await Promise.all([
    startTestGateway({ CREDENTIALS_KEY: randomBytes(32).toString('base64') }, database.url),
    launchBrowser(),
    startXvnc({ password: PASSWORD }),
  ]);
}, 90_000);
afterAll(async () => {
  await browser?.close();
  await Promise.all([gateway?.stop(), xvnc?.close()]);
  await database?.drop();
});

async function sessionWith(password: string): Promise<{ id: string; answers: string }> {
  const created = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: xvnc.port, credentials: { password } } });
  const read = await gateway.api('GET', `/api/v1/sessions/${created.body.id}`);
  return { id: created.body.id, answers: JSON.stringify([created.body, read.body]) };
}

describe('stored VNC credentials in Chromium', () => {
  it('connects with no password prompt, and the password appears nowhere the browser or logs can see', async () => {
    const { id, answers } = await sessionWith(PASSWORD);
    const page = await browser.newPage();
    const bodies: string[] = [];
    page.on('response', (res) => void res.text().then((t) => bodies.push(t), () => {}));
    await page.goto(`${gateway.url}/console?ticket=${await gateway.mint(id)}`);
    await expect.poll(() => page.locator('#status').getAttribute('data-state'), { timeout: 15_000 }).toBe('connected');
    expect(await page.locator('#password-dialog').isHidden()).toBe(true);
    // The first frame arrives: the X client's window, not a blank canvas.
    await expect.poll(async () => (await page.locator('#screen canvas').screenshot()).length, { timeout: 10_000 }).toBeGreaterThan(2000);
    expect(await page.content()).not.toContain(PASSWORD);
    expect(bodies.join('\n')).not.toContain(PASSWORD);
    expect(answers).not.toContain(PASSWORD);
    expect(gateway.rawLogs()).not.toContain(PASSWORD);
    await page.close();
  });

  it('shows the 4502 reason when the VM refuses the stored password', async () => {
    const { id } = await sessionWith('not-it!!');
    const page = await browser.newPage();
    await page.goto(`${gateway.url}/console?ticket=${await gateway.mint(id)}`);
    await expect.poll(() => page.locator('#status').getAttribute('data-close-code'), { timeout: 15_000 }).toBe('4502');
    expect(await page.locator('#status').getAttribute('data-close-reason')).toBe('the VM refused the stored console credentials');
    expect(await page.locator('#password-dialog').isHidden()).toBe(true);
    await page.close();
  });
});
