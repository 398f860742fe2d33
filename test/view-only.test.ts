import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { ViewOnlyFilter } from '../src/console/view-only.js';
import { mintTicket } from '../src/console/ticket.js';
import { closesNow, closesSince, expectEnding } from './helpers/endings.js';
import { SECRET, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { startWebsockify, type Websockify } from './helpers/websockify.js';

const version = Buffer.from('RFB 003.008\n');
const pointer = Buffer.from([5, 1, 0, 10, 0, 20]);
const key = Buffer.from([4, 1, 0, 0, 0, 0, 0, 0x61]);
const fbur = Buffer.from([3, 1, 0, 0, 0, 0, 2, 128, 1, 144]);
const encodings = Buffer.from([2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
const cutText = Buffer.concat([Buffer.from([6, 0, 0, 0, 0, 0, 0, 3]), Buffer.from('abc')]);
const xvpReboot = Buffer.from([250, 0, 1, 3]);
const stream = Buffer.concat([version, Buffer.from([2]), Buffer.alloc(16, 7), Buffer.from([0]), encodings, pointer, fbur, key, cutText, xvpReboot, fbur]);
const allowed = Buffer.concat([version, Buffer.from([2]), Buffer.alloc(16, 7), Buffer.from([1]), encodings, fbur, fbur]);

describe('view-only filter', () => {
  it('passes the handshake and update requests, forces the shared flag, and drops input', () => {
    expect(new ViewOnlyFilter().filter(stream).equals(allowed)).toBe(true);
  });

  it('gives the same result when the stream arrives one byte at a time', () => {
    const filter = new ViewOnlyFilter();
    const out = Buffer.concat([...stream].map((byte) => filter.filter(Buffer.from([byte]))));
    expect(out.equals(allowed)).toBe(true);
  });

  it('refuses what it cannot parse instead of passing it through', () => {
    const filter = new ViewOnlyFilter();
    filter.filter(Buffer.concat([version, Buffer.from([1, 1])]));
    expect(() => filter.filter(Buffer.from([99, 0, 0, 0]))).toThrow(/cannot pass client message type 99/);
    expect(() => new ViewOnlyFilter().filter(Buffer.from('RFB 003.003\n'))).toThrow(/RFB 3.7 or later/);
    expect(() => new ViewOnlyFilter().filter(Buffer.concat([version, Buffer.from([19])]))).toThrow(/security type 19/);
  });
});

describe('view-only tickets through the gateway', () => {
  let gateway: TestGateway;
  let database: TestDatabase;
  let vm: Server;
  let received: Buffer[] = [];
  let websockify: Websockify;
  beforeAll(async () => {
    // PostgreSQL: starts in a second where the embedded database can take a minute on a busy machine.
    database = await createTestDatabase();
    gateway = await startTestGateway({}, database.url);
    vm = createServer((socket) => {
      socket.on('error', () => {});
      socket.on('data', (d) => received.push(d));
    });
    await new Promise<void>((r) => vm.listen(0, '127.0.0.1', r));
    websockify = await startWebsockify((vm.address() as { port: number }).port);
  });
  afterAll(async () => {
    await gateway?.stop();
    await websockify?.close();
    vm?.close();
    await database?.drop();
  });

  const sessionTo = async (protocol = 'vnc', port = (vm.address() as { port: number }).port) => {
    return (await gateway.api('POST', '/api/v1/sessions', { protocol, target: { host: '127.0.0.1', port } })).body.id as string;
  };

  it('never lets a view-only console send input to the VM', async () => {
    received = [];
    const id = await sessionTo();
    const { ticket } = await mintTicket({ sessionId: id, key: SECRET, viewOnly: true });
    const ws = new WebSocket(`${gateway.wsUrl}?ticket=${ticket}`, ['binary']);
    await new Promise((r) => ws.once('open', r));
    for (const byte of stream) ws.send(Buffer.from([byte]));
    await expect.poll(() => Buffer.concat(received).length, { timeout: 5000 }).toBe(allowed.length);
    expect(Buffer.concat(received).equals(allowed)).toBe(true);
    ws.close();
  });

  it('closes a view-only console that sends what the filter cannot parse', async () => {
    const id = await sessionTo();
    const { ticket } = await mintTicket({ sessionId: id, key: SECRET, viewOnly: true });
    const ws = new WebSocket(`${gateway.wsUrl}?ticket=${ticket}`, ['binary']);
    const closed = new Promise<[number, string]>((r) => ws.on('close', (c, reason) => r([c, reason.toString()])));
    await new Promise((r) => ws.once('open', r));
    ws.send(Buffer.from('RFB 003.003\n'));
    expect(await closed).toEqual([1008, 'view-only console: cannot pass client protocol version (RFB 3.7 or later is needed)']);
  });

  it('filters the input of a view-only console passed through to a real websockify', async () => {
    received = [];
    const id = await sessionTo('websockify', websockify.port);
    const { ticket } = await mintTicket({ sessionId: id, key: SECRET, viewOnly: true });
    const ws = new WebSocket(`${gateway.wsUrl}?ticket=${ticket}`, ['binary']);
    await new Promise((r) => ws.once('open', r));
    // Frames of every size, one RFB message split across several of them.
    for (let at = 0; at < stream.length; ) {
      const size = 1 + (at % 7);
      ws.send(stream.subarray(at, at + size));
      at += size;
    }
    await expect.poll(() => Buffer.concat(received).length, { timeout: 5000 }).toBe(allowed.length);
    expect(Buffer.concat(received).equals(allowed)).toBe(true);
    ws.close();
  });

  it('closes a view-only pass-through console with 1008 when its input cannot be parsed, and counts and logs it', async () => {
    const id = await sessionTo('websockify', websockify.port);
    const { ticket } = await mintTicket({ sessionId: id, key: SECRET, viewOnly: true });
    const before = await closesNow(gateway);
    const ws = new WebSocket(`${gateway.wsUrl}?ticket=${ticket}`, ['binary']);
    const closed = new Promise<[number, string]>((r) => ws.on('close', (c, reason) => r([c, reason.toString()])));
    await new Promise((r) => ws.once('open', r));
    ws.send(Buffer.from('RFB 003.003\n'));
    const [code, reason] = await closed;
    expect([code, reason]).toEqual([1008, 'view-only console: cannot pass client protocol version (RFB 3.7 or later is needed)']);
    await expectEnding(gateway, id, { code, reason }, 'VIEW_ONLY_VIOLATION');
    expect(await closesSince(gateway, before)).toEqual({ 1008: 1 });
  });
});
