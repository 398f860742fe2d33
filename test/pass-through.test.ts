// The pass-through pump's close frames at frame boundaries, against a scripted websockify target:
// a real one cannot be made to stop halfway through a frame, which is the case under test. Also
// its streaming, whole and in order, through a browser that stalls.
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Receiver, WebSocket } from 'ws';
import { closesNow, closesSince, expectEnding, expectSilentBrowserDropped } from './helpers/endings.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

let gateway: TestGateway;
let database: TestDatabase;
let target: Server;
let nextTarget: (socket: Socket) => void = () => {};

/** Answers the WebSocket handshake by hand, then hands the raw socket to the test. */
function acceptByHand(socket: Socket): void {
  let head = '';
  socket.on('error', () => {});
  const onData = (chunk: Buffer) => {
    head += chunk.toString('latin1');
    if (!head.includes('\r\n\r\n')) return;
    socket.off('data', onData);
    const key = /sec-websocket-key: *(.+)\r\n/i.exec(head)![1]!.trim();
    const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: binary\r\n\r\n`);
    nextTarget(socket);
  };
  socket.on('data', onData);
}

beforeAll(async () => {
  database = await createTestDatabase();
  // No reconciler: its first pass probes ready sessions, and the scripted target takes the first
  // WebSocket it accepts as the console's.
  gateway = await startTestGateway({ RECONCILIATION_ENABLED: 'false' }, database.url);
  target = createServer(acceptByHand);
  await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
});
afterAll(async () => {
  await gateway?.stop();
  target?.close();
  await database?.drop();
});

/** A frame header for a binary frame of `length` bytes, unmasked (server to browser). */
function binaryHeader(length: number): Buffer {
  return Buffer.from([0x82, 126, length >> 8, length & 0xff]);
}

async function consoleToScriptedTarget(): Promise<{ id: string; ws: WebSocket; vm: Socket; closed: Promise<{ code: number; reason: string }>; messages: Buffer[] }> {
  const { port } = target.address() as { port: number };
  const id = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'websockify', target: { host: '127.0.0.1', port } })).body.id as string;
  const vmConnected = new Promise<Socket>((resolve) => (nextTarget = resolve));
  const ws = new WebSocket(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, ['binary']);
  ws.on('error', () => {});
  const messages: Buffer[] = [];
  ws.on('message', (data: Buffer) => messages.push(data));
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise((resolve) => ws.once('open', resolve));
  return { id, ws, vm: await vmConnected, closed, messages };
}

/** The close frame the gateway sends the target, read as a WebSocket server reads a client. */
function closeFrameFrom(vm: Socket): Promise<{ code: number; reason: string }> {
  const receiver = new Receiver({ isServer: true });
  vm.on('data', (chunk: Buffer) => receiver.write(chunk));
  return new Promise((resolve) => receiver.on('conclude', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('ending a pass-through console mid-frame', () => {
  it('lets the target finish its frame, then sends the browser its close frame and the target a masked one', async () => {
    const { id, vm, closed, messages } = await consoleToScriptedTarget();
    const toTarget = closeFrameFrom(vm);
    const payload = Buffer.alloc(1000, 7);
    vm.write(Buffer.concat([binaryHeader(1000), payload.subarray(0, 500)]));
    await sleep(200);
    const before = await closesNow(gateway);
    await gateway.api('DELETE', `/api/v1/sessions/${id}`);
    await sleep(200);
    vm.write(payload.subarray(500));
    expect(await closed).toEqual({ code: 4409, reason: 'the console session was stopped' });
    expect(messages).toHaveLength(1);
    expect(messages[0]!.equals(payload)).toBe(true);
    expect(await toTarget).toEqual({ code: 4409, reason: 'the console session was stopped' });
    await expectEnding(gateway, id, await closed, 'SESSION_ENDED');
    expect(await closesSince(gateway, before)).toEqual({ 4409: 1 });
  });

  it('completes the frame a vanished target left unfinished, so the browser still gets 4502', async () => {
    const { id, vm, closed, messages } = await consoleToScriptedTarget();
    vm.write(Buffer.concat([binaryHeader(1000), Buffer.alloc(500, 7)]));
    await sleep(200);
    const before = await closesNow(gateway);
    vm.destroy();
    expect(await closed).toEqual({ code: 4502, reason: "the VM's websockify closed the connection without a close frame" });
    expect(messages).toHaveLength(1);
    expect(messages[0]!.equals(Buffer.concat([Buffer.alloc(500, 7), Buffer.alloc(500)]))).toBe(true);
    await expectEnding(gateway, id, await closed, 'VM_CONNECTION_LOST');
    expect(await closesSince(gateway, before)).toEqual({ 4502: 1 });
  });

  it('drops a browser that never answers its close frame after a few seconds', async () => {
    const { id, ws, vm } = await consoleToScriptedTarget();
    await expectSilentBrowserDropped(gateway, { id, ws, vm });
  });

  it('passes the target’s own close frame on, code and reason as they are', async () => {
    const { id, vm, closed } = await consoleToScriptedTarget();
    const before = await closesNow(gateway);
    const reason = Buffer.from('Target closed');
    vm.write(Buffer.concat([Buffer.from([0x88, 2 + reason.length, 0x03, 0xe8]), reason]));
    expect(await closed).toEqual({ code: 1000, reason: 'Target closed' });
    await expectEnding(gateway, id, await closed, 'VM_CLOSED');
    expect(await closesSince(gateway, before)).toEqual({ 1000: 1 });
  });
});

describe('streaming through a pass-through console', () => {
  it('delivers every frame of a fast target to a browser that stalls, unchanged and in order', async () => {
    const { ws, vm, messages } = await consoleToScriptedTarget();
    // The browser stops reading, so the gateway parks the target while its reads are still held
    // by queued writes; the target keeps writing frames of many sizes.
    ws.pause();
    const sent = createHash('sha256');
    let frames = 0;
    for (let bytes = 0; bytes < 32 * 1024 * 1024; frames++) {
      const payload = randomBytes(randomInt(126, 65536));
      sent.update(payload);
      vm.write(Buffer.concat([binaryHeader(payload.length), payload]));
      bytes += payload.length;
    }
    await sleep(500);
    ws.resume();
    await expect.poll(() => messages.length, { timeout: 20_000 }).toBe(frames);
    const received = createHash('sha256');
    for (const message of messages) received.update(message);
    expect(received.digest('hex')).toBe(sent.digest('hex'));
    ws.close();
  });
});
