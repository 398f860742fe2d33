// Reconnect with a fresh ticket, in Chromium: the console page sits in an iframe of a real parent
// page on another origin (127.0.0.2), behind HAProxy in front of two gateway processes. Draining
// the one serving the console makes the page ask its parent for a ticket and reconnect through
// the other.
import type { ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { Browser, Frame, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintTicket } from '../src/console/ticket.js';
import { launchBrowser } from './helpers/browser.js';
import { startServeProcess } from './helpers/cli.js';
import { SECRET, TEST_ENV, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { startHaproxy, type Haproxy } from './helpers/haproxy.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { startXvnc, type Xvnc } from './helpers/xvnc.js';

let database: TestDatabase;
let xvnc: Xvnc;
let lb: Haproxy;
let a: { child: ChildProcess; url: string; output(): string };
let b: TestGateway;
let browser: Browser;
let parent: Server;
let rogue: Server;
const parentPort = () => (parent.address() as { port: number }).port;
const gatewayOrigin = () => `http://127.0.0.1:${lb.port}`;

/**
 * The frontend's page: it embeds the console and answers ticket requests by asking its own backend
 * (here: /ticket, minting with the shared secret). `mode=silent` never answers; `mode=rogue` sends
 * tickets unasked. window.requests records what the console page asked.
 */
function parentPage(consoleUrl: string, mode: string): string {
  return `<!doctype html><title>frontend</title>
<iframe id="console" src="${consoleUrl}" width="900" height="650"></iframe>
<script>
  const gateway = ${JSON.stringify(gatewayOrigin())};
  window.requests = [];
  window.answering = ${JSON.stringify(mode === 'answer')};
  const frame = document.getElementById('console');
  addEventListener('message', async (event) => {
    if (event.origin !== gateway || event.data?.type !== 'console-gateway:ticket-request') return;
    window.requests.push(event.data);
    if (!window.answering) return;
    const { ticket } = await (await fetch('/ticket' + location.search, { method: 'POST' })).json();
    event.source.postMessage({ type: 'console-gateway:ticket', ticket }, gateway);
  });
  if (${JSON.stringify(mode === 'rogue')}) {
    setInterval(async () => {
      const { ticket } = await (await fetch('/ticket' + location.search, { method: 'POST' })).json();
      frame.contentWindow.postMessage({ type: 'console-gateway:ticket', ticket }, '*');
    }, 300);
  }
</script>`;
}

function frontend(host: string): Promise<Server> {
  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://frontend');
    const session = url.searchParams.get('session');
    if (session === null) return void res.writeHead(404).end();
    if (url.pathname === '/ticket') {
      const { ticket } = await mintTicket({ sessionId: session, key: SECRET });
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ticket }));
      return;
    }
    const { ticket } = await mintTicket({ sessionId: session, key: SECRET });
    const page = parentPage(`${gatewayOrigin()}/console?ticket=${ticket}`, url.searchParams.get('mode') ?? 'answer');
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page);
  });
  return new Promise((resolve) => server.listen(0, host, () => resolve(server)));
}

beforeAll(async () => {
  [database, xvnc, lb, browser, parent, rogue] = await Promise.all([
    createTestDatabase(),
    startXvnc(),
    startHaproxy(['a', 'b']),
    launchBrowser(),
    frontend('127.0.0.2'),
    frontend('127.0.0.3'),
  ]);
  const env = {
    ...TEST_ENV,
    DATABASE_URL: database.url,
    // The frontend that embeds the page; '*' lets the rogue page (127.0.0.3) frame it too, so the
    // page's own origin check is what keeps that one out. ALLOWED_ORIGINS stays unset: the page
    // is same-origin with the gateway, through the load balancer.
    FRAME_ANCESTORS: `http://127.0.0.2:${parentPort()},*`,
    TARGET_WAIT_TIMEOUT_SECONDS: '1',
    // Long enough for the load balancer to see /readyz answer 503 before the live console closes.
    DRAIN_TIMEOUT_SECONDS: '2',
  };
  [a, b] = await Promise.all([startServeProcess(env), startTestGateway(env, database.url)]);
  await lb.setServer('a', Number(new URL(a.url).port));
  await lb.setServer('b', Number(new URL(b.url).port));
  // Both servers pass their first health check before any test runs: the load balancer answering
  // is not enough, as the backup (b) may come up first and take the first console.
  await Promise.all([lb.waitUp('a'), lb.waitUp('b')]);
}, 90_000);
afterAll(async () => {
  a?.child.kill('SIGKILL');
  await browser?.close();
  await Promise.all([b?.stop(), xvnc?.close(), lb?.close()]);
  parent?.close();
  rogue?.close();
  await database?.drop();
});

async function session(target = true): Promise<string> {
  const body = target ? { protocol: 'vnc', target: { host: '127.0.0.1', port: xvnc.port } } : { protocol: 'vnc' };
  return (await b.api('POST', '/api/v1/sessions', body)).body.id;
}

async function openFrontend(origin: string, id: string, mode: string): Promise<{ page: Page; console: Frame }> {
  const page = await browser.newPage({ viewport: { width: 1000, height: 750 } });
  await page.goto(`${origin}/?session=${id}&mode=${mode}`);
  await expect.poll(() => page.frames().length, { timeout: 10_000 }).toBe(2);
  return { page, console: page.frames()[1]! };
}

const state = (frame: Frame) => frame.locator('#status').getAttribute('data-state');

describe('reconnect with a fresh ticket from the embedding frontend', () => {
  it('drained replica: the page asks its parent for a ticket and reconnects through the other', async () => {
    const id = await session();
    const { page, console } = await openFrontend(`http://127.0.0.2:${parentPort()}`, id, 'answer');
    await expect.poll(() => state(console), { timeout: 30_000 }).toBe('connected');
    expect(a.output()).toContain('"console connected"'); // the primary serves it

    const states: string[] = [];
    const watch = setInterval(() => void state(console).then((s) => s && states.at(-1) !== s && states.push(s), () => {}), 50);
    a.child.kill('SIGTERM');
    await expect.poll(() => b.logs.some((l) => l.msg === 'console connected' && l.sessionId === id), { timeout: 30_000 }).toBe(true);
    await expect.poll(() => state(console), { timeout: 15_000 }).toBe('connected');
    clearInterval(watch);
    expect(states).toContain('reconnecting');
    // One request per attempt: a retry that reached the draining replica again (before the load
    // balancer's next health check) asks once more, for the same reason.
    const requests = await page.evaluate(() => (window as unknown as { requests: unknown[] }).requests);
    expect(requests.length).toBeGreaterThanOrEqual(1);
    for (const request of requests) expect(request).toEqual({ type: 'console-gateway:ticket-request', code: 1001, reason: 'the gateway is shutting down; reconnect' });
    // The screen is drawn again through the other replica.
    await expect.poll(async () => (await console.locator('#screen canvas').screenshot()).length, { timeout: 10_000 }).toBeGreaterThan(2000);
    await page.close();
    // The drained replica is gone before the next test opens consoles through the load balancer.
    if (a.child.exitCode === null) await new Promise((resolve) => a.child.once('exit', resolve));
    expect(a.child.exitCode).toBe(0);
  }, 90_000);

  it('a parent that does not answer leaves "Disconnected: <reason>" and a Reconnect button that asks again', async () => {
    const id = await session(false); // never ready: the console closes with 1013 after 1 s
    const { page, console } = await openFrontend(`http://127.0.0.2:${parentPort()}`, id, 'silent');
    await expect.poll(() => state(console), { timeout: 20_000 }).toBe('disconnected');
    expect(await console.locator('#status').textContent()).toBe('Disconnected: the VM address was not committed within 1 s; try again');
    expect(await console.locator('#status').getAttribute('data-close-code')).toBe('1013');
    const button = console.locator('#reconnect');
    expect(await button.isVisible()).toBe(true);
    expect(await page.evaluate(() => (window as unknown as { requests: unknown[] }).requests.length)).toBe(1);

    // The VM comes up; the frontend answers now; the button repeats the request and connects.
    await b.api('PUT', `/api/v1/sessions/${id}/target`, { host: '127.0.0.1', port: xvnc.port });
    await page.evaluate(() => ((window as unknown as { answering: boolean }).answering = true));
    await button.click();
    await expect.poll(() => state(console), { timeout: 15_000 }).toBe('connected');
    expect(await page.evaluate(() => (window as unknown as { requests: unknown[] }).requests.length)).toBe(2);
    expect(await button.isHidden()).toBe(true);
    await page.close();
  }, 60_000);

  it('ignores tickets from a parent whose origin is not allowed, and never posts to it', async () => {
    const id = await session(false); // never ready at first: the console closes with 1013 after 1 s
    const { page, console } = await openFrontend(`http://127.0.0.3:${(rogue.address() as { port: number }).port}`, id, 'rogue');
    await expect.poll(() => state(console), { timeout: 20_000 }).toBe('reconnecting');
    // From now on the rogue parent's tickets would connect, if the page took them.
    await b.api('PUT', `/api/v1/sessions/${id}/target`, { host: '127.0.0.1', port: xvnc.port });
    const states: string[] = [];
    const watch = setInterval(() => void state(console).then((s) => s && states.at(-1) !== s && states.push(s), () => {}), 50);
    await expect.poll(() => state(console), { timeout: 20_000 }).toBe('disconnected');
    await page.waitForTimeout(1_000);
    clearInterval(watch);
    expect(states).not.toContain('connected');
    expect(await state(console)).toBe('disconnected');
    expect(await page.evaluate(() => (window as unknown as { requests: unknown[] }).requests.length)).toBe(0);
    await page.close();
  }, 60_000);
});
