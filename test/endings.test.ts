// Every way a console can end, for raw VNC (Xvnc direct) and websockify pass-through (Xvnc behind
// Debian websockify), on real peers and gateways on PostgreSQL: the close code and reason the
// browser got, the change in console_gateway_closes_total and the gateway's one log line agree,
// and none is 1006.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import { mintTicket } from '../src/console/ticket.js';
import { webSocketIo, type RfbIo } from '../src/console/rfb-io.js';
import { CATALOGUE } from '../src/errors.js';
import { closesNow, closesSince, expectEnding } from './helpers/endings.js';
import { SECRET, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { handshakeAsBrowser } from './helpers/rfb-client.js';
import { startWebsockify, type Websockify } from './helpers/websockify.js';
import { startXvnc, type Xvnc } from './helpers/xvnc.js';

type Kind = 'vnc' | 'websockify';
const KINDS: Kind[] = ['vnc', 'websockify'];
const VNCCONFIG = process.env.VNCCONFIG_PATH ?? '/usr/bin/vncconfig';
const run = promisify(execFile);

interface Peer {
  xvnc: Xvnc;
  websockify: Websockify;
}

const databases: TestDatabase[] = [];
let peer: Peer;
/** Everyday consoles, and a second replica on the same database. */
let main: TestGateway;
let replica: TestGateway;
/** Short idle and duration limits and heartbeat. */
let limited: TestGateway;

async function database(): Promise<string> {
  const db = await createTestDatabase();
  databases.push(db);
  return db.url;
}

async function startPeer(): Promise<Peer> {
  const xvnc = await startXvnc();
  return { xvnc, websockify: await startWebsockify(xvnc.port) };
}

beforeAll(async () => {
  const [shared, limits] = await Promise.all([database(), database()]);
  [peer, main, replica, limited] = await Promise.all([
    startPeer(),
    startTestGateway({}, shared),
    startTestGateway({}, shared),
    startTestGateway({ CONSOLE_IDLE_TIMEOUT_SECONDS: '2', CONSOLE_MAX_DURATION_SECONDS: '6', CONSOLE_HEARTBEAT_SECONDS: '1' }, limits),
  ]);
}, 120_000);
afterEach(async () => {
  // No test leaves a console behind for the next one to trip over.
  for (const g of [main, replica, limited]) await vi.waitFor(() => expect(g.running.gateway.consoles.live.size).toBe(0), { timeout: 10_000 });
});
afterAll(async () => {
  await Promise.all([main?.stop(), replica?.stop(), limited?.stop()]);
  await Promise.all([peer?.xvnc.close(), peer?.websockify.close()]);
  await Promise.all(databases.map((db) => db.drop()));
});

async function sessionOn(gateway: TestGateway, kind: Kind, to: Peer = peer): Promise<string> {
  const port = kind === 'vnc' ? to.xvnc.port : to.websockify.port;
  const created = await gateway.api('POST', '/api/v1/sessions', { protocol: kind, target: { host: '127.0.0.1', port } });
  expect(created.status).toBe(201);
  return created.body.id;
}

interface Browser {
  ws: WebSocket;
  io: RfbIo;
  closed: Promise<{ code: number; reason: string }>;
}

/** A console client that can play an unresponsive browser (`autoPong: false`). */
async function connect(gateway: TestGateway, id: string, options: { autoPong?: boolean; viewOnly?: boolean; handshake?: boolean } = {}): Promise<Browser> {
  const { ticket } = await mintTicket({ sessionId: id, key: SECRET, viewOnly: options.viewOnly ?? false });
  const ws = new WebSocket(`${gateway.wsUrl}?ticket=${ticket}`, ['binary'], { autoPong: options.autoPong ?? true });
  const io = webSocketIo(ws);
  ws.on('error', () => {});
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise((resolve, reject) => ws.once('open', resolve).once('close', reject));
  if (options.handshake ?? true) await handshakeAsBrowser(io);
  return { ws, io, closed };
}

/** Keeps a console busy with incremental update requests (input a VNC server answers only on change). */
function keepBusy(browser: Browser): () => void {
  const request = Buffer.from([3, 1, 0, 0, 0, 0, 0, 16, 0, 16]);
  const timer = setInterval(() => browser.ws.readyState === WebSocket.OPEN && browser.ws.send(request), 300);
  return () => clearInterval(timer);
}

/** Checks that the browser's close, the metric and the log line agree; returns the close. */
async function agree(gateway: TestGateway, id: string, browser: Browser, before: Record<string, number>, endCode: string, options: { reasonChosenByBrowser?: boolean } = {}) {
  const close = await browser.closed;
  expect(close.code).not.toBe(1006);
  await expectEnding(gateway, id, options.reasonChosenByBrowser ? { code: close.code } : close, endCode);
  expect(await closesSince(gateway, before)).toEqual({ [close.code]: 1 });
  return close;
}

describe.each(KINDS)('a %s console', (kind) => {
  it('ends when the browser closes it', async () => {
    const id = await sessionOn(main, kind);
    const browser = await connect(main, id);
    const before = await closesNow(main);
    browser.ws.close(1000);
    expect((await agree(main, id, browser, before, 'BROWSER_CLOSED', { reasonChosenByBrowser: true })).code).toBe(1000);
  });

  it('ends with the VM’s close when the VM closes the connection', async () => {
    const id = await sessionOn(main, kind);
    const browser = await connect(main, id);
    const before = await closesNow(main);
    await run(VNCCONFIG, ['-display', `:${peer.xvnc.display}`, '-disconnect']);
    const close = await agree(main, id, browser, before, 'VM_CLOSED');
    // websockify says so in its own words, which the gateway forwards as they are.
    expect(close).toEqual(kind === 'vnc' ? { code: 1000, reason: 'the VM closed the console connection' } : { code: 1000, reason: 'Target closed' });
  });

  it('ends with a close code when the VM dies', async () => {
    const doomed = await startPeer();
    try {
      const id = await sessionOn(main, kind, doomed);
      const browser = await connect(main, id);
      const before = await closesNow(main);
      await doomed.xvnc.crash();
      const close = await browser.closed;
      // The kernel ends a killed process's connections with FIN, or RST when data was unread.
      expect([1000, 4502]).toContain(close.code);
      await agree(main, id, browser, before, close.code === 1000 ? 'VM_CLOSED' : 'VM_CONNECTION_LOST');
    } finally {
      await Promise.all([doomed.xvnc.close(), doomed.websockify.close()]);
    }
  });

  it('ends with 4409 when its session is stopped through another replica', async () => {
    const id = await sessionOn(main, kind);
    const browser = await connect(main, id);
    const before = await closesNow(main);
    expect((await replica.api('DELETE', `/api/v1/sessions/${id}`)).status).toBe(200);
    const close = await agree(main, id, browser, before, 'SESSION_ENDED');
    expect(close).toEqual({ code: 4409, reason: 'the console session was stopped' });
  });

  it('ends with 4408 at the idle limit', async () => {
    const id = await sessionOn(limited, kind);
    const browser = await connect(limited, id);
    const before = await closesNow(limited);
    const close = await agree(limited, id, browser, before, 'IDLE_TIMEOUT');
    expect(close).toEqual({ code: 4408, reason: 'console idle for 2 s' });
  });

  it('ends with 4408 at the duration limit, however busy', async () => {
    const id = await sessionOn(limited, kind);
    const browser = await connect(limited, id);
    const before = await closesNow(limited);
    const stop = keepBusy(browser);
    try {
      const close = await agree(limited, id, browser, before, 'MAX_DURATION');
      expect(close).toEqual({ code: 4408, reason: 'maximum console duration of 6 s reached' });
    } finally {
      stop();
    }
  });

  it('ends with 4408 when the browser stops answering pings', async () => {
    const id = await sessionOn(limited, kind);
    const browser = await connect(limited, id, { autoPong: false });
    const before = await closesNow(limited);
    const stop = keepBusy(browser);
    try {
      const close = await agree(limited, id, browser, before, 'BROWSER_UNRESPONSIVE');
      expect(close).toEqual({ code: 4408, reason: 'the browser stopped answering pings' });
    } finally {
      stop();
    }
  });

  it('ends with 1008 when a view-only console sends what the filter cannot parse', async () => {
    const id = await sessionOn(main, kind);
    const browser = await connect(main, id, { viewOnly: true, handshake: false });
    const before = await closesNow(main);
    await browser.io.read(12);
    browser.ws.send(Buffer.from('RFB 003.003\n'));
    const close = await agree(main, id, browser, before, 'VIEW_ONLY_VIOLATION');
    expect(close).toEqual({ code: 1008, reason: 'view-only console: cannot pass client protocol version (RFB 3.7 or later is needed)' });
  });
});

describe('a websockify pass-through console', () => {
  it('ends with 4502 and a close frame of the gateway’s own when the websockify in front of the VM dies', async () => {
    const doomed = await startPeer();
    try {
      const id = await sessionOn(main, 'websockify', doomed);
      const browser = await connect(main, id);
      const before = await closesNow(main);
      await doomed.websockify.crash();
      const close = await agree(main, id, browser, before, 'VM_CONNECTION_LOST');
      expect(close.code).toBe(4502);
      expect(close.reason).toMatch(/^(the VM's websockify closed the connection without a close frame|lost the connection to the VM console \(ECONNRESET\))$/);
    } finally {
      await Promise.all([doomed.xvnc.close(), doomed.websockify.close()]);
    }
  });
});

describe('draining', () => {
  it('ends consoles of both kinds with 1001 at the drain deadline', async () => {
    const gateway = await startTestGateway({ DRAIN_TIMEOUT_SECONDS: '1' }, await database());
    let stopped = false;
    try {
      const ids = await Promise.all(KINDS.map((kind) => sessionOn(gateway, kind)));
      const browsers = await Promise.all(ids.map((id) => connect(gateway, id)));
      const before = await closesNow(gateway);
      await gateway.stop();
      stopped = true;
      for (const [i, browser] of browsers.entries()) {
        expect(await browser.closed).toEqual({ code: 1001, reason: 'the gateway is shutting down; reconnect' });
        await expectEnding(gateway, ids[i]!, await browser.closed, 'SHUTTING_DOWN');
      }
      expect(await closesSince(gateway, before)).toEqual({ 1001: 2 });
    } finally {
      if (!stopped) await gateway.stop();
    }
  });
});

describe('losing the database', () => {
  it('refuses the upgrade with the catalogue’s code and reason, counted and logged alike', async () => {
    const db = await createTestDatabase();
    const gateway = await startTestGateway({}, db.url);
    try {
      const ids = await Promise.all(KINDS.map((kind) => sessionOn(gateway, kind)));
      await db.drop();
      for (const id of ids) {
        const before = await closesNow(gateway);
        const { ticket } = await mintTicket({ sessionId: id, key: SECRET });
        const ws = new WebSocket(`${gateway.wsUrl}?ticket=${ticket}`, ['binary']);
        ws.on('error', () => {});
        const close = await new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
        expect(close).toEqual({ code: CATALOGUE.DATABASE_UNAVAILABLE.close, reason: 'the console database is unreachable; try again shortly' });
        await expectEnding(gateway, id, close, 'DATABASE_UNAVAILABLE', 'console refused');
        expect(await closesSince(gateway, before)).toEqual({ [close.code]: 1 });
      }
    } finally {
      await gateway.stop();
      await db.drop();
    }
  });
});
