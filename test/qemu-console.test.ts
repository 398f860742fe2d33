// Real VM consoles: QEMU (TCG, no disk, the SeaBIOS screen) behind the gateway, with the readiness
// gate on, shown in headless Chromium on the gateway's own page. Four kinds of target: QEMU's VNC
// on TCP, its native WebSocket listener (no web root) through a websockify session, its VNC with a
// password (asked by the page, or stored with the target), and its VNC on a unix socket. What the page draws is compared with what QEMU itself
// says its display shows (QMP screendump).
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode } from 'fast-png';
import type { Browser, Page } from 'playwright-core';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { diagnose } from '../src/control/diagnose.js';
import { probeSession } from '../src/fleet/probe.js';
import { launchBrowser } from './helpers/browser.js';
import { CONTROL_TOKEN, startTestGateway, TEST_ENV, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { startQemu, type Qemu, type Screen } from './helpers/qemu.js';

const PASSWORD = 'qemu-pw1'; // VNC passwords are at most 8 characters
const READY_TIMEOUT_SECONDS = 4;

let dir: string;
let sockets: string;
let database: TestDatabase;
let gateway: TestGateway;
let browser: Browser;
let vm: Qemu; // VNC on TCP and the WebSocket listener
let locked: Qemu; // VNC with a password
let onSocket: Qemu; // VNC on a unix socket
let env: Record<string, string>;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cg-qemu-test-'));
  sockets = join(dir, 'vms');
  await mkdir(join(sockets, 'vm-3'), { recursive: true });
  database = await createTestDatabase();
  env = {
    NOVNC_READY_GATING_ENABLED: 'true',
    NOVNC_READY_POLL_INTERVAL_SECONDS: '0.2',
    NOVNC_READY_TIMEOUT_SECONDS: String(READY_TIMEOUT_SECONDS),
    TARGET_WAIT_TIMEOUT_SECONDS: '5',
    TARGET_ALLOWED_SOCKET_DIRS: sockets,
    CREDENTIALS_KEY: randomBytes(32).toString('base64'),
  };
  [gateway, browser, vm, locked, onSocket] = await Promise.all([
    startTestGateway(env, database.url),
    launchBrowser(),
    startQemu({ websocket: true }),
    startQemu({ password: PASSWORD }),
    startQemu({ socket: join(sockets, 'vm-3', 'vnc.sock') }),
  ]);
}, 90_000);

afterAll(async () => {
  await browser?.close();
  await Promise.all([gateway?.stop(), vm?.close(), locked?.close(), onSocket?.close()]);
  await database?.drop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Creates a session with a committed target: provisioning until the gate has probed it. */
async function createSession(protocol: 'vnc' | 'websockify', target: Record<string, unknown>): Promise<string> {
  const created = await gateway.api('POST', '/api/v1/sessions', { protocol, target });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  expect(created.body.status).toBe('provisioning');
  return created.body.id;
}

const statusOf = async (id: string) => (await gateway.api('GET', `/api/v1/sessions/${id}`)).body;

/** Creates a session and waits until the readiness gate has marked it ready. */
async function readySession(protocol: 'vnc' | 'websockify', target: Record<string, unknown>): Promise<string> {
  const id = await createSession(protocol, target);
  await expect.poll(async () => (await statusOf(id)).status, { timeout: 20_000 }).toBe('ready');
  return id;
}

async function openPage(id: string): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  await page.goto(`${gateway.url}/console?ticket=${await gateway.mint(id)}`);
  return page;
}

const state = (page: Page) => page.locator('#status').getAttribute('data-state');

/** The noVNC canvas read back pixel by pixel (the framebuffer, not the scaled view). */
async function canvasScreen(page: Page): Promise<Screen | undefined> {
  const read = await page.locator('#screen canvas').evaluate((canvas: any) => {
    if (!canvas.width || !canvas.height) return undefined;
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    const rgb = new Uint8Array(canvas.width * canvas.height * 3);
    for (let i = 0, j = 0; i < data.length; i += 4, j += 3) {
      rgb[j] = data[i];
      rgb[j + 1] = data[i + 1];
      rgb[j + 2] = data[i + 2];
    }
    let text = '';
    for (let i = 0; i < rgb.length; i += 0x8000) text += String.fromCharCode(...rgb.subarray(i, i + 0x8000));
    return { width: canvas.width as number, height: canvas.height as number, rgb: btoa(text) };
  });
  return read && { width: read.width, height: read.height, rgb: Buffer.from(read.rgb, 'base64') };
}

/** Pixels that are not (nearly) black: the firmware's text. */
function litPixels(screen: Screen): number {
  let lit = 0;
  for (let i = 0; i < screen.rgb.length; i += 3) if (screen.rgb[i]! + screen.rgb[i + 1]! + screen.rgb[i + 2]! > 96) lit++;
  return lit;
}

/** Share of pixels that agree (every channel within 16), 0 when the sizes differ. */
function agreement(a: Screen, b: Screen): number {
  if (a.width !== b.width || a.height !== b.height) return 0;
  let same = 0;
  for (let i = 0; i < a.rgb.length; i += 3) {
    if (Math.abs(a.rgb[i]! - b.rgb[i]!) <= 16 && Math.abs(a.rgb[i + 1]! - b.rgb[i + 1]!) <= 16 && Math.abs(a.rgb[i + 2]! - b.rgb[i + 2]!) <= 16) same++;
  }
  return same / (a.width * a.height);
}

/**
 * Waits until the page's canvas shows what QEMU's display shows: the same size, at least 99 % of
 * the pixels alike (the text cursor blinks), and text on it, not a black screen.
 */
async function expectFirmwareScreen(page: Page, qemu: Qemu): Promise<void> {
  let last = { agreement: 0, lit: 0, size: '' };
  await expect
    .poll(
      async () => {
        const [shown, truth] = await Promise.all([canvasScreen(page), qemu.screendump()]);
        if (shown === undefined) return false;
        last = { agreement: agreement(shown, truth), lit: litPixels(shown), size: `${shown.width}x${shown.height} vs ${truth.width}x${truth.height}` };
        return last.agreement >= 0.99 && last.lit > 1_000 && litPixels(truth) > 1_000;
      },
      { timeout: 20_000, interval: 500 },
    )
    .toBe(true);
  expect(last.size).toBe('720x400 vs 720x400'); // SeaBIOS's text mode
}

describe('QEMU consoles in Chromium, readiness gate on', () => {
  it('shows the firmware screen through a vnc session to QEMU on TCP, and the keyboard reaches the VM', async () => {
    const id = await readySession('vnc', { host: '127.0.0.1', port: vm.port });
    const page = await openPage(id);
    await expect.poll(() => state(page), { timeout: 15_000 }).toBe('connected');
    await expectFirmwareScreen(page, vm);
    // Input reaches the VM: the page's Ctrl+Alt+Del makes SeaBIOS reset the machine.
    const resets = vm.events().filter((e) => e === 'RESET').length;
    await page.click('#ctrl-alt-del');
    await expect.poll(() => vm.events().filter((e) => e === 'RESET').length, { timeout: 10_000 }).toBeGreaterThan(resets);
    await expectFirmwareScreen(page, vm);
    await page.close();
  });

  it("shows it through a websockify session to QEMU's own WebSocket listener, which has no web root", async () => {
    const id = await readySession('websockify', { host: '127.0.0.1', port: vm.websocketPort, path: '/', webRoot: false });
    expect((await statusOf(id)).target).toEqual({ host: '127.0.0.1', port: vm.websocketPort, path: '/', webRoot: false });
    const page = await openPage(id);
    await expect.poll(() => state(page), { timeout: 15_000 }).toBe('connected');
    await expectFirmwareScreen(page, vm);
    await page.close();
  });

  it('asks for the VNC password of a QEMU that has one, and shows its screen after it', async () => {
    const id = await readySession('vnc', { host: '127.0.0.1', port: locked.port });
    const page = await openPage(id);
    await page.locator('#password-dialog').waitFor({ state: 'visible', timeout: 15_000 });
    await page.locator('#password').click();
    await page.fill('#password', PASSWORD);
    await page.click('#password-submit');
    await expect.poll(() => state(page), { timeout: 15_000 }).toBe('connected');
    await expectFirmwareScreen(page, locked);
    await page.close();
  });

  it('connects to a QEMU with a password without asking, when the password is stored with the target', async () => {
    const id = await readySession('vnc', { host: '127.0.0.1', port: locked.port, credentials: { password: PASSWORD } });
    const page = await openPage(id);
    await expect.poll(() => state(page), { timeout: 15_000 }).toBe('connected');
    expect(await page.locator('#password-dialog').isHidden()).toBe(true);
    await expectFirmwareScreen(page, locked);
    await page.close();
  });

  it('shows it through a vnc session to QEMU on a unix socket inside TARGET_ALLOWED_SOCKET_DIRS, and so does a screenshot', async () => {
    const id = await readySession('vnc', { socket: onSocket.socket });
    expect((await statusOf(id)).target).toEqual({ socket: onSocket.socket });
    const page = await openPage(id);
    await expect.poll(() => state(page), { timeout: 15_000 }).toBe('connected');
    await expectFirmwareScreen(page, onSocket);
    await page.close();
    // The screenshot API reaches it through the same checked socket path.
    const res = await fetch(`${gateway.url}/api/v1/sessions/${id}/screenshot`, { headers: { authorization: `Bearer ${CONTROL_TOKEN}` } });
    expect(res.status).toBe(200);
    const png = decode(new Uint8Array(await res.arrayBuffer()));
    expect([png.width, png.height]).toEqual([720, 400]);
  });
});

describe('readiness of a WebSocket target without a web root', () => {
  const probe = (webRoot: boolean, readyPaths: string[]) =>
    probeSession({ host: '127.0.0.1', port: vm.websocketPort!, path: '/', webRoot }, 'websockify', {
      allowed: loadConfig({ ...TEST_ENV, ...env }).targetAllowedCidrs,
      socketDirs: [],
      readyPaths,
      attemptTimeoutMs: 3_000,
    });

  it('is decided by the handshake and the RFB banner when the target says webRoot: false', async () => {
    const result = await probe(false, ['vnc.html', 'vnc_lite.html', '']);
    expect(result).toMatchObject({ ok: true });
  });

  it('is decided the same way for every target with NOVNC_READY_PATHS=[]', async () => {
    expect(loadConfig({ ...TEST_ENV, NOVNC_READY_PATHS: '[]' }).readyPaths).toEqual([]);
    expect(await probe(true, [])).toMatchObject({ ok: true });
  });

  it("still asks a target that claims a web root for noVNC's page, which QEMU does not serve", async () => {
    const result = await probe(true, ['vnc.html']);
    expect(result).toMatchObject({ ok: false, reason: 'HTTP 404 on /vnc.html' });
  });

  it('diagnose probes without the HTTP step too, and over the unix socket', async () => {
    const config = loadConfig({ ...TEST_ENV, ...env, DATABASE_URL: database.url });
    const ws = await readySession('websockify', { host: '127.0.0.1', port: vm.websocketPort, webRoot: false });
    const unix = await readySession('vnc', { socket: onSocket.socket });
    for (const id of [ws, unix]) {
      const { healthy, report } = await diagnose({ db: gateway.running.store.db, config }, id);
      expect(report.probe, JSON.stringify(report.probe)).toMatchObject({ ok: true });
      expect(healthy).toBe(true);
    }
  });
});

describe('unix-socket targets committed with plain SQL', () => {
  it('start the readiness deadline again when a backend commits another socket', async () => {
    const db = gateway.running.store.db;
    const id = await createSession('vnc', { socket: join(sockets, 'vm-8', 'vnc.sock') }); // no VM yet
    const since = async () =>
      (await sql<{ since: Date }>`select provisioning_since as since from console_sessions where id = ${id}`.execute(db)).rows[0]!.since.getTime();
    const first = await since();
    await new Promise((resolve) => setTimeout(resolve, 20));
    await sql`update console_sessions set target_socket = ${join(sockets, 'vm-9', 'vnc.sock')} where id = ${id}`.execute(db);
    expect(await since()).toBeGreaterThan(first);
    expect((await statusOf(id)).status).toBe('provisioning');
  });
});

describe('a QEMU that dies', () => {
  it('fails its sessions after the readiness timeout, with the reason, and not before', async () => {
    const targets: ['vnc' | 'websockify', Record<string, unknown>][] = [
      ['vnc', { host: '127.0.0.1', port: vm.port }],
      ['websockify', { host: '127.0.0.1', port: vm.websocketPort, webRoot: false }],
      ['vnc', { socket: onSocket.socket }],
    ];
    await Promise.all([vm.kill(), onSocket.kill()]);
    const started = Date.now();
    const ids = await Promise.all(targets.map(([protocol, target]) => createSession(protocol, target)));
    await new Promise((resolve) => setTimeout(resolve, (READY_TIMEOUT_SECONDS - 1) * 1000));
    for (const id of ids) expect((await statusOf(id)).status).toBe('provisioning');
    const reasons: string[] = [];
    for (const id of ids) {
      await expect.poll(async () => (await statusOf(id)).status, { timeout: 15_000 }).toBe('failed');
      reasons.push((await statusOf(id)).failureReason);
    }
    expect(Date.now() - started).toBeGreaterThanOrEqual(READY_TIMEOUT_SECONDS * 1000 - 500);
    expect(reasons[0]).toMatch(/^not ready after \d+\.\d s: TCP connect refused$/);
    expect(reasons[1]).toMatch(/^not ready after \d+\.\d s: TCP connect refused$/);
    // QEMU's socket file outlives it; nobody accepts on it any more.
    expect(reasons[2]).toMatch(/^not ready after \d+\.\d s: unix socket connect refused \(no server listening\)$/);
  });
});
