// Bad input at the edge, sent the way an attacker or a broken client would, on raw sockets where a
// library would refuse to send it: each gets the documented HTTP status or close code and words.
import { randomUUID } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SECRET, openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { frame, openRawConsole, rawRequest, upgradeRequest } from './helpers/raw-ws.js';

const HEADERS_TIMEOUT_SECONDS = 1;

let database: TestDatabase;
let gateway: TestGateway;
let port: number;
let vm: Server;
/** Bytes each VM connection received, in connection order. */
const received: Buffer[][] = [];
const vmSockets = new Set<Socket>();

beforeAll(async () => {
  // A VM console that says nothing and remembers what reached it.
  vm = createServer((socket) => {
    const chunks: Buffer[] = [];
    received.push(chunks);
    vmSockets.add(socket);
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', () => {});
    socket.on('close', () => vmSockets.delete(socket));
  });
  await new Promise<void>((r) => vm.listen(0, '127.0.0.1', r));
  database = await createTestDatabase();
  gateway = await startTestGateway({ HEADERS_TIMEOUT_SECONDS: String(HEADERS_TIMEOUT_SECONDS) }, database.url);
  port = Number(new URL(gateway.url).port);
});
afterAll(async () => {
  await gateway?.stop();
  for (const s of vmSockets) s.destroy();
  vm?.close();
  await database?.drop();
});

async function session(): Promise<string> {
  const { port: vmPort } = vm.address() as { port: number };
  const res = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vmPort } });
  expect(res.status).toBe(201);
  return res.body.id as string;
}

async function closesOf(code: number): Promise<number> {
  return (await gateway.running.metrics.closes.get()).values.find((v) => v.labels.code === String(code))?.value ?? 0;
}

describe('tickets bounded by the gateway clock', () => {
  it('closes 4401 "ticket issued in the future" for a ticket dated a year ahead with a short lifetime', async () => {
    const id = await session();
    const iat = Math.floor(Date.now() / 1000) + 365 * 86400;
    const ticket = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(id)
      .setJti(randomUUID())
      .setIssuedAt(iat)
      .setExpirationTime(iat + 60)
      .setAudience('console-gateway')
      .sign(new TextEncoder().encode(SECRET));
    expect(await openConsole(`${gateway.wsUrl}?ticket=${ticket}`)).toMatchObject({
      code: 4401,
      reason: 'ticket issued in the future: check the clock of the system that minted it',
    });
  });
});

describe('malformed HTTP at the edge', () => {
  it('answers an upgrade without a Host header with HTTP 400, even with a good ticket', async () => {
    const id = await session();
    const answer = await rawRequest(port, upgradeRequest(`/websockify?ticket=${await gateway.mint(id)}`, { Host: '' }));
    expect(answer.status).toBe(400);
    expect(answer.text).toMatch(/missing Host header/);
    // The same request with a Host is served: only the header made the difference.
    const served = await openRawConsole(port, `/websockify?ticket=${await gateway.mint(id)}`);
    served.socket.destroy();
  });

  it('answers oversized request headers with 431, on a page request and on an upgrade', async () => {
    const big = 'x'.repeat(20 * 1024);
    const page = await rawRequest(port, `GET /console HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${big}\r\n\r\n`);
    expect(page.status).toBe(431);
    expect(page.text).toMatch(/^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
    const upgrade = await rawRequest(port, upgradeRequest('/websockify', { 'X-Big': big }));
    expect(upgrade.status).toBe(431);
  });

  it('answers headers that do not arrive within HEADERS_TIMEOUT_SECONDS with 408 and closes the socket', async () => {
    // The request line and one header, then nothing: a slow-header client.
    const answer = await rawRequest(port, 'GET /console HTTP/1.1\r\nHost: 127.0.0.1\r\n', 10_000);
    expect(answer.status).toBe(408);
    expect(answer.text).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    // Node looks for overdue headers once a second.
    expect(answer.closedAfterMs).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_SECONDS * 1000 - 100);
    expect(answer.closedAfterMs).toBeLessThan(HEADERS_TIMEOUT_SECONDS * 1000 + 2500);
  });

  it('still answers a garbage request line with 400', async () => {
    expect((await rawRequest(port, 'NONSENSE\r\n\r\n')).status).toBe(400);
  });
});

// Frames a live console's browser side may send that break the protocol: each ends the console
// with its code and words, counted once in console_gateway_closes_total and logged once.
const badFrames: [string, number, RegExp, () => Buffer][] = [
  ['a reserved opcode', 1002, /^the browser sent a malformed WebSocket frame; reload the page$/, () => frame(0x3, Buffer.from('x'))],
  ['an unmasked frame', 1002, /malformed WebSocket frame/, () => frame(0x2, Buffer.from('x'), { mask: false })],
  ['a text frame that is not UTF-8', 1007, /^the browser sent text that is not valid UTF-8; reload the page$/, () => frame(0x1, Buffer.from([0xc3, 0x28]))],
  [
    'a message in more fragments than the server takes',
    1008,
    /^the browser split a message into too many fragments; reload the page$/,
    () => Buffer.concat([frame(0x2, Buffer.from('x'), { fin: false }), ...Array.from({ length: 16_400 }, () => frame(0x0, Buffer.from('x'), { fin: false }))]),
  ],
  ['a message over 256 KiB', 1009, /^the browser sent a message over 256 KiB; console input is small, reload the page$/, () => frame(0x2, Buffer.alloc(300 * 1024))],
  ['a text frame', 1003, /^text frames are not supported; the console speaks binary RFB$/, () => frame(0x1, Buffer.from('RFB 003.008\n'))],
];

describe('frames from the browser on a live console', () => {
  it.each(badFrames)('ends the console on %s with %i and a reason in words', async (_what, code, reason, bytes) => {
    const id = await session();
    const before = await closesOf(code);
    const raw = await openRawConsole(port, `/websockify?ticket=${await gateway.mint(id)}`);
    const vmChunks = received.at(-1)!;
    raw.socket.write(bytes());
    const close = await raw.closed;
    expect(close.code).toBe(code);
    expect(close.reason).toMatch(reason);
    raw.socket.destroy();
    await expect.poll(() => gateway.running.gateway.consoles.live.size).toBe(0);
    expect(await closesOf(code)).toBe(before + 1);
    const lines = gateway.logs.filter((l) => l.sessionId === id && /^console (ended|closed)/.test(String(l.msg)));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ code: expect.stringMatching(/^BROWSER_/), closeCode: code, msg: `console ended: ${close.reason}` });
    // Nothing the browser sent in a bad frame reached the VM.
    expect(Buffer.concat(vmChunks).length).toBe(0);
  });

  it('keeps piping binary frames to the VM', async () => {
    const id = await session();
    const raw = await openRawConsole(port, `/websockify?ticket=${await gateway.mint(id)}`);
    const vmChunks = received.at(-1)!;
    raw.socket.write(frame(0x2, Buffer.from('RFB 003.008\n')));
    await expect.poll(() => Buffer.concat(vmChunks).toString()).toBe('RFB 003.008\n');
    raw.socket.destroy();
  });
});
