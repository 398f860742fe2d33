// WebSocket pass-through to websockify targets: a real Debian websockify for the happy path, and
// scripted peers for what a real one will not do on demand (answer non-101, record headers).
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { startWebsockify } from './helpers/websockify.js';

let gateway: TestGateway;
let database: TestDatabase;
let vnc: DemoVncServer;
let websockify: { port: number; close(): Promise<void> };
let recorder: Server;
let seen: IncomingMessage[] = [];
const targetSockets = new Set<Socket>();

beforeAll(async () => {
  // PostgreSQL: starts in a second where the embedded database can take a minute on a busy machine.
  database = await createTestDatabase();
  [gateway, vnc] = await Promise.all([startTestGateway({}, database.url), startDemoVncServer()]);
  websockify = await startWebsockify(vnc.port);
  // A websockify stand-in that records what reached it and answers 404 on /missing.
  recorder = createServer((_req, res) => res.writeHead(404).end());
  const wss = new WebSocketServer({ noServer: true, handleProtocols: (p) => (p.has('binary') ? 'binary' : false) });
  recorder.on('upgrade', (req, socket, head) => {
    seen.push(req);
    targetSockets.add(socket as Socket);
    socket.on('close', () => targetSockets.delete(socket as Socket));
    if (req.url === '/missing') return void socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    wss.handleUpgrade(req, socket, head, (ws) => ws.send(Buffer.from('RFB 003.008\n')));
  });
  await new Promise<void>((r) => recorder.listen(0, '127.0.0.1', r));
});
afterAll(async () => {
  await gateway?.stop();
  await Promise.all([vnc?.close(), websockify?.close()]);
  recorder?.closeAllConnections();
  recorder?.close();
  await database?.drop();
});

async function websockifySession(port: number, path = '/'): Promise<string> {
  const created = await gateway.api('POST', '/api/v1/sessions', { protocol: 'websockify', target: { host: '127.0.0.1', port, path } });
  expect(created.status).toBe(201);
  return created.body.id;
}

const recorderPort = () => (recorder.address() as { port: number }).port;

describe('websockify targets', () => {
  it('passes the console through to a real websockify, bytes unchanged', async () => {
    const id = await websockifySession(websockify.port);
    const outcome = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, { untilMessages: 1 });
    expect(outcome.protocol).toBe('binary');
    expect(outcome.messages[0]!.toString()).toBe('RFB 003.008\n');
  });

  it('forwards neither the ticket nor the browser cookies, and dials the session path', async () => {
    seen = [];
    const id = await websockifySession(recorderPort(), '/websockify?token=vm-7');
    const ticket = await gateway.mint(id);
    const outcome = await openConsole(gateway.wsUrl, {
      protocols: ['binary', `ticket.${ticket}`],
      headers: { Cookie: 'session=browser-secret', Authorization: 'Bearer nope' },
      untilMessages: 1,
    });
    expect(outcome.messages[0]!.toString()).toBe('RFB 003.008\n');
    const req = seen[0]!;
    expect(req.url).toBe('/websockify?token=vm-7');
    expect(req.headers['sec-websocket-protocol']).toBe('binary');
    expect(req.headers.cookie).toBeUndefined();
    expect(req.headers.authorization).toBeUndefined();
    expect(JSON.stringify(req.headers)).not.toContain(ticket);
  });

  it('closes 4502 with the status when the target does not upgrade', async () => {
    const id = await websockifySession(recorderPort(), '/missing');
    expect(await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`)).toMatchObject({
      code: 4502,
      reason: "the VM's websockify refused the WebSocket (HTTP 404)",
    });
  });

  it('closes 4502 when the target refuses the connection', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as { port: number }).port;
    await new Promise((r) => closed.close(r));
    const id = await websockifySession(port);
    expect(await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`)).toMatchObject({ code: 4502, reason: expect.stringMatching(/refused/) });
  });

  it('closes the target connection when the browser leaves, and the browser connection with 4409 when the session stops', async () => {
    const id = await websockifySession(recorderPort());
    const first = new WebSocket(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, ['binary']);
    await new Promise((r) => first.once('message', r));
    expect(targetSockets.size).toBe(1);
    first.terminate();
    await vi.waitFor(() => expect(targetSockets.size).toBe(0));
    await vi.waitFor(() => expect(gateway.running.gateway.consoles.live.size).toBe(0));

    const second = new WebSocket(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, ['binary']);
    second.on('error', () => {});
    await new Promise((r) => second.once('message', r));
    const closed = new Promise<[number, string]>((r) => second.once('close', (c, reason) => r([c, reason.toString()])));
    await gateway.api('DELETE', `/api/v1/sessions/${id}`);
    expect(await closed).toEqual([4409, 'the console session was stopped']);
    await vi.waitFor(() => expect(targetSockets.size).toBe(0));
    await vi.waitFor(() => expect(gateway.running.gateway.consoles.live.size).toBe(0));
  });
});
