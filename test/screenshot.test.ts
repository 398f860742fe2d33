// Screenshots of real TigerVNC servers (one behind a stored password, one behind websockify): the
// PNG's size and pixels are the test VM's, viewers stay connected, and every bound answers clearly.
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { Screenshots } from '../src/control/screenshot.js';
import { TEST_ENV, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { handshakeAsBrowser, openSocket } from './helpers/rfb-client.js';
import { startWebsockify, type Websockify } from './helpers/websockify.js';
import { startXvnc, type Xvnc } from './helpers/xvnc.js';

const PASSWORD = 'shot-pw1';
// test/fixtures/x-app.py paints its full-screen window in #202020 (text only in the middle).
const VM_BACKGROUND = [0x20, 0x20, 0x20];
const KEY = randomBytes(32).toString('base64');

let database: TestDatabase;
let gateway: TestGateway;
let locked: Xvnc;
let open: Xvnc;
let websockify: Websockify;
let silent: Server;

beforeAll(async () => {
  database = await createTestDatabase();
  [gateway, locked, open] = await Promise.all([
    startTestGateway({ CREDENTIALS_KEY: KEY }, database.url),
    startXvnc({ password: PASSWORD, geometry: '1024x640' }),
    startXvnc(),
  ]);
  websockify = await startWebsockify(open.port);
  // A "VM" that completes the handshake and then never sends its ServerInit.
  silent = createServer((s) => {
    s.on('error', () => {});
    s.write('RFB 003.008\n');
    s.once('data', () => s.write(Buffer.from([1, 1])));
  });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
}, 90_000);
afterAll(async () => {
  silent?.close();
  await Promise.all([gateway?.stop(), locked?.close(), open?.close(), websockify?.close()]);
  await database?.drop();
});

async function session(target: Record<string, unknown>, protocol = 'vnc'): Promise<string> {
  const res = await gateway.api('POST', '/api/v1/sessions', { protocol, target: { host: '127.0.0.1', ...target } });
  expect(res.status).toBe(201);
  return res.body.id;
}

async function screenshot(id: string, query = ''): Promise<Response> {
  return fetch(`${gateway.url}/api/v1/sessions/${id}/screenshot${query}`, { headers: { authorization: `Bearer ${TEST_ENV.CONTROL_TOKEN}` } });
}

function pixel(png: ReturnType<typeof decode>, x: number, y: number): number[] {
  const at = (y * png.width + x) * png.channels;
  return [...png.data.slice(at, at + 3)];
}

describe('screenshots', () => {
  it('captures the VM behind a stored password at its own size, without kicking a live viewer', async () => {
    const id = await session({ port: locked.port, credentials: { password: PASSWORD } });
    const viewer = await openSocket(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`);
    await handshakeAsBrowser(viewer.io);

    const res = await screenshot(id);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
    const png = decode(new Uint8Array(await res.arrayBuffer()));
    expect([png.width, png.height]).toEqual([1024, 640]);
    for (const [x, y] of [[2, 2], [1021, 2], [2, 637], [1021, 637]]) expect(pixel(png, x!, y!)).toEqual(VM_BACKGROUND);

    // The shared flag kept the viewer connected: it still gets the screen on request.
    viewer.io.write(Buffer.from([3, 0, 0, 0, 0, 0, 0, 8, 0, 8]));
    expect((await viewer.io.read(1))[0]).toBe(0);
    viewer.ws.close();
    expect(gateway.rawLogs()).not.toContain(PASSWORD);
  });

  it('scales to maxWidth keeping the aspect, and reads a websockify target over its WebSocket', async () => {
    const id = await session({ port: websockify.port, path: '/' }, 'websockify');
    const png = decode(new Uint8Array(await (await screenshot(id, '?maxWidth=200')).arrayBuffer()));
    expect([png.width, png.height]).toEqual([200, 150]);
    expect(pixel(png, 1, 1)).toEqual(VM_BACKGROUND);
  });

  it('takes one screenshot of a session at a time', async () => {
    const config = loadConfig({ ...TEST_ENV, DATABASE_URL: database.url, CREDENTIALS_KEY: KEY });
    const screenshots = new Screenshots(config, gateway.running.store.db, { timeoutMs: 1_000, maxPixels: 4096 * 4096, maxConcurrent: 4 });
    const hung = await session({ port: (silent.address() as { port: number }).port });
    const first = screenshots.take(hung, undefined);
    first.catch(() => {});
    await new Promise((r) => setTimeout(r, 200)); // the first one is connected and waiting
    await expect(screenshots.take(hung, undefined)).rejects.toMatchObject({ code: 'CONFLICT', message: 'a screenshot of this session is being taken; try again shortly' });
    await expect(first).rejects.toMatchObject({ code: 'SCREENSHOT_TIMEOUT' });
    // Once it is over, the next one may start (and here times out the same way).
    await expect(screenshots.take(hung, undefined)).rejects.toMatchObject({ code: 'SCREENSHOT_TIMEOUT' });
  });

  it('answers 409 for a session that is not ready, 400 for a bad maxWidth, 4xx/5xx with reasons for VMs that fail', async () => {
    const pending = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc' })).body.id;
    const notReady = await screenshot(pending);
    expect([notReady.status, (await notReady.json()).error.message]).toEqual([409, 'the session is pending: a screenshot needs a ready console']);
    const ready = await session({ port: open.port });
    expect((await screenshot(ready, '?maxWidth=wide')).status).toBe(400);
    const wrong = await screenshot(await session({ port: locked.port, credentials: { password: 'nope-nope' } }));
    expect([wrong.status, (await wrong.json()).error.message]).toEqual([502, 'the VM refused the stored console credentials']);
    const noPassword = await screenshot(await session({ port: locked.port }));
    expect([noPassword.status, (await noPassword.json()).error.message]).toEqual([502, 'the VM console asks for a password: store it with the target (target.credentials)']);
  });

  it('gives up after its deadline, and refuses a screen over the pixel limit before reading it', async () => {
    const config = loadConfig({ ...TEST_ENV, DATABASE_URL: database.url, CREDENTIALS_KEY: KEY });
    const db = gateway.running.store.db;
    const quick = new Screenshots(config, db, { timeoutMs: 500, maxPixels: 4096 * 4096, maxConcurrent: 4 });
    const hung = await session({ port: (silent.address() as { port: number }).port });
    const started = Date.now();
    await expect(quick.take(hung, undefined)).rejects.toMatchObject({ code: 'SCREENSHOT_TIMEOUT', message: 'the VM did not send its screen within 0.5 s' });
    expect(Date.now() - started).toBeLessThan(3_000);
    const small = new Screenshots(config, db, { timeoutMs: 5_000, maxPixels: 1000, maxConcurrent: 4 });
    await expect(small.take(await session({ port: open.port }), undefined)).rejects.toMatchObject({
      code: 'SCREENSHOT_FAILED',
      message: "the VM's screen (800x600) is larger than screenshots allow (1000 pixels)",
    });
  });
});
