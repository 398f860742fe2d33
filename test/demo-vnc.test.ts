// The demo VNC server spoken to in raw RFB 3.8 over TCP, as a viewer would.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
// noVNC's own DES, an implementation independent of ours, computes the expected VNC-auth answer.
// @ts-expect-error plain JavaScript without type declarations
import { DESECBCipher } from '../node_modules/@novnc/novnc/core/crypto/des.js';

/** A TCP client that reads exact byte counts however the stream is chunked. */
class RawClient {
  readonly socket: net.Socket;
  private buffered = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private ended = false;

  constructor(port: number) {
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      this.waiter?.();
    });
    this.socket.on('close', () => { this.ended = true; this.waiter?.(); });
    this.socket.on('error', () => {});
  }

  async read(n: number, timeoutMs = 3000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered.length < n) {
      if (this.ended) throw new Error(`connection closed with ${this.buffered.length}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.buffered.length})`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => { clearTimeout(timer); resolve(); };
      });
      this.waiter = null;
    }
    const out = this.buffered.subarray(0, n);
    this.buffered = this.buffered.subarray(n);
    return out;
  }

  /** Resolves with the bytes received within `ms`, without consuming them. */
  async peekAfter(ms: number): Promise<number> {
    await new Promise((r) => setTimeout(r, ms));
    return this.buffered.length;
  }

  closed(): Promise<void> {
    return this.ended ? Promise.resolve() : new Promise((r) => this.socket.once('close', () => r()));
  }

  write(bytes: Buffer | number[]): void {
    this.socket.write(Buffer.from(bytes));
  }
}

const servers: DemoVncServer[] = [];
const clients: RawClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.socket.destroy();
  for (const s of servers.splice(0)) await s.close();
});

async function start(options?: Parameters<typeof startDemoVncServer>[0]): Promise<DemoVncServer> {
  const server = await startDemoVncServer(options);
  servers.push(server);
  return server;
}

function connect(server: DemoVncServer): RawClient {
  const c = new RawClient(server.port);
  clients.push(c);
  return c;
}

/** Version, security type None, ClientInit; returns the ServerInit fields. */
async function handshakeNone(c: RawClient) {
  expect((await c.read(12)).toString('latin1')).toBe('RFB 003.008\n');
  c.write(Buffer.from('RFB 003.008\n'));
  expect([...(await c.read(2))]).toEqual([1, 1]);
  c.write([1]);
  expect((await c.read(4)).readUInt32BE(0)).toBe(0);
  c.write([1]);
  return readServerInit(c);
}

async function readServerInit(c: RawClient) {
  const head = await c.read(24);
  const name = (await c.read(head.readUInt32BE(20))).toString('utf8');
  return { width: head.readUInt16BE(0), height: head.readUInt16BE(2), format: [...head.subarray(4, 20)], name };
}

function updateRequest(incremental: boolean, x: number, y: number, w: number, h: number): Buffer {
  const b = Buffer.alloc(10);
  b[0] = 3;
  b[1] = incremental ? 1 : 0;
  b.writeUInt16BE(x, 2); b.writeUInt16BE(y, 4); b.writeUInt16BE(w, 6); b.writeUInt16BE(h, 8);
  return b;
}

/** Reads one FramebufferUpdate made of Raw rectangles. */
async function readUpdate(c: RawClient, timeoutMs?: number) {
  const head = await c.read(4, timeoutMs);
  expect(head[0]).toBe(0);
  const rects = [];
  for (let i = 0; i < head.readUInt16BE(2); i++) {
    const r = await c.read(12, timeoutMs);
    const rect = { x: r.readUInt16BE(0), y: r.readUInt16BE(2), w: r.readUInt16BE(4), h: r.readUInt16BE(6), encoding: r.readInt32BE(8) };
    rects.push({ ...rect, pixels: await c.read(rect.w * rect.h * 4, timeoutMs) });
  }
  return rects;
}

/**
 * Waits for the next clock tick's frame, so the following ~1 s is free of clock changes and a
 * test can tell its own input's update from the clock's.
 */
async function syncToClock(c: RawClient, w: number, h: number) {
  c.write(updateRequest(false, 0, 0, w, h));
  await readUpdate(c);
  c.write(updateRequest(true, 0, 0, w, h));
  const [rect] = await readUpdate(c, 2500);
  return rect!;
}

/** The pixel at (x, y) of a rectangle, as 0xRRGGBB in the default format (little-endian, shifts 16/8/0). */
function pixelAt(rect: { x: number; y: number; w: number; pixels: Buffer }, x: number, y: number): number {
  return rect.pixels.readUInt32LE(((y - rect.y) * rect.w + (x - rect.x)) * 4) & 0xffffff;
}

describe('demo VNC server', () => {
  it('listens on an ephemeral port of 127.0.0.1 by default', async () => {
    const server = await start();
    expect(server.host).toBe('127.0.0.1');
    expect(server.port).toBeGreaterThan(0);
  });

  it('completes an RFB 3.8 handshake with security None and announces size, format and name', async () => {
    const server = await start({ width: 320, height: 200 });
    const init = await handshakeNone(connect(server));
    expect(init).toEqual({
      width: 320,
      height: 200,
      format: [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0],
      name: 'console-gateway demo',
    });
  });

  it('answers a non-incremental update request with one full Raw frame of width × height × 4 bytes', async () => {
    const server = await start();
    const c = connect(server);
    const { width, height } = await handshakeNone(c);
    expect([width, height]).toEqual([640, 400]);
    c.write(updateRequest(false, 0, 0, width, height));
    const [rect, ...rest] = await readUpdate(c);
    expect(rest).toHaveLength(0);
    expect(rect).toMatchObject({ x: 0, y: 0, w: 640, h: 400, encoding: 0 });
    expect(rect!.pixels.length).toBe(640 * 400 * 4);
  });

  it('holds an incremental request until something changes, then sends the changed pixels of a click', async () => {
    const server = await start({ width: 200, height: 100 });
    const c = connect(server);
    await handshakeNone(c);
    const before = await syncToClock(c, 200, 100);
    c.write(updateRequest(true, 0, 0, 200, 100));
    // Nothing changed yet (the clock ticks once a second), so nothing may arrive at once.
    expect(await c.peekAfter(100)).toBe(0);
    c.write([5, 1, 0, 150, 0, 60]); // left button down at (150, 60)
    c.write([5, 0, 0, 150, 0, 60]);
    const [after] = await readUpdate(c);
    expect(pixelAt(before, 150, 60)).not.toBe(0xff2020);
    expect(pixelAt(after!, 150, 60)).toBe(0xff2020);
  });

  it('shows key presses and advances the clock bar without input', async () => {
    const server = await start({ width: 200, height: 100 });
    const c = connect(server);
    await handshakeNone(c);
    const before = await syncToClock(c, 200, 100);
    c.write(updateRequest(true, 0, 0, 200, 100));
    c.write([4, 1, 0, 0, 0, 0, 0, 0x61]); // 'a' down
    const [afterKey] = await readUpdate(c);
    expect(pixelAt(afterKey!, 100, 20)).not.toBe(pixelAt(before, 100, 20)); // the key band
    expect(pixelAt(afterKey!, 6, 34)).toBe(0xffff00); // the first key-count block
    c.write(updateRequest(true, 0, 0, 200, 100));
    const [ticked] = await readUpdate(c, 2500);
    expect(ticked!.pixels.subarray(0, 200 * 12 * 4).equals(afterKey!.pixels.subarray(0, 200 * 12 * 4))).toBe(false);
  });

  it('coalesces update requests while a slow reader has not drained the previous frame', async () => {
    const server = await start();
    const c = connect(server);
    await handshakeNone(c);
    c.socket.pause(); // a viewer that stops reading: the server's writes start returning false
    for (let i = 0; i < 40; i++) c.write(updateRequest(false, 0, 0, 640, 400));
    await new Promise((r) => setTimeout(r, 300));
    c.socket.resume();
    let frames = 0;
    try {
      for (;;) { await readUpdate(c, 500); frames++; }
    } catch { /* no more frames within 500 ms */ }
    // 40 MB were asked for; only what fit the socket buffers plus the latest pending request is sent.
    expect(frames).toBeGreaterThan(0);
    expect(frames).toBeLessThan(10);
  });

  it('honours a big-endian 32 bpp SetPixelFormat', async () => {
    const server = await start({ width: 100, height: 100 });
    const c = connect(server);
    await handshakeNone(c);
    // type 0, padding, then 32 bpp, depth 24, big-endian, true colour, maxes 255, shifts 0/8/16
    c.write([0, 0, 0, 0, 32, 24, 1, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0]);
    c.write([5, 1, 0, 10, 0, 10]);
    c.write(updateRequest(false, 10, 10, 1, 1));
    const [rect] = await readUpdate(c);
    expect(rect!.pixels.readUInt32BE(0)).toBe(0x2020ff); // red 0xff in the low byte
  });

  it('echoes ClientCutText back as ServerCutText', async () => {
    const server = await start();
    const c = connect(server);
    await handshakeNone(c);
    const text = Buffer.from('hello from the browser');
    const msg = Buffer.alloc(8);
    msg[0] = 6;
    msg.writeUInt32BE(text.length, 4);
    c.write(Buffer.concat([msg, text]));
    const head = await c.read(8);
    expect(head[0]).toBe(3);
    expect((await c.read(head.readUInt32BE(4))).toString()).toBe('hello from the browser');
  });

  it('accepts the right VNC password (DES challenge-response)', async () => {
    const server = await start({ password: 'secret12' });
    const c = connect(server);
    await c.read(12);
    c.write(Buffer.from('RFB 003.008\n'));
    expect([...(await c.read(2))]).toEqual([1, 2]);
    c.write([2]);
    const challenge = await c.read(16);
    const key = DESECBCipher.importKey([...Buffer.from('secret12')]);
    c.write(Buffer.from(key.encrypt({ name: 'DES-ECB' }, challenge)));
    expect((await c.read(4)).readUInt32BE(0)).toBe(0);
    c.write([1]);
    expect((await readServerInit(c)).name).toBe('console-gateway demo');
  });

  it('refuses a wrong VNC password with a failed SecurityResult and a reason', async () => {
    const server = await start({ password: 'secret12' });
    const c = connect(server);
    await c.read(12);
    c.write(Buffer.from('RFB 003.008\n'));
    await c.read(2);
    c.write([2]);
    const challenge = await c.read(16);
    const key = DESECBCipher.importKey([...Buffer.from('wrong')]);
    c.write(Buffer.from(key.encrypt({ name: 'DES-ECB' }, challenge)));
    const result = await c.read(8);
    expect(result.readUInt32BE(0)).toBe(1);
    expect((await c.read(result.readUInt32BE(4))).toString()).toBe('authentication failed');
    await c.closed();
  });

  it('parses a handshake and messages sent one byte at a time', async () => {
    const server = await start({ width: 64, height: 32 });
    const c = connect(server);
    await c.read(12);
    const send = async (bytes: Buffer | number[]) => {
      for (const byte of Buffer.from(bytes)) {
        c.write([byte]);
        await new Promise((r) => setTimeout(r, 2)); // separate TCP segments
      }
    };
    await send(Buffer.from('RFB 003.008\n'));
    expect([...(await c.read(2))]).toEqual([1, 1]);
    await send([1]);
    await c.read(4);
    await send([1]);
    expect((await readServerInit(c)).width).toBe(64);
    await send([2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21]); // SetEncodings: Raw, DesktopSize
    await send(updateRequest(false, 0, 0, 64, 32));
    const [rect] = await readUpdate(c);
    expect(rect!.pixels.length).toBe(64 * 32 * 4);
  });

  it('closes the connection, with a logged reason, on an unknown message type', async () => {
    const warnings: object[] = [];
    const server = await start({ log: { warn: (fields) => warnings.push(fields) } });
    const c = connect(server);
    await handshakeNone(c);
    c.write([200, 1, 2, 3]);
    await c.closed();
    expect(warnings).toEqual([{ type: 200 }]);
  });

  it('close() stops listening and destroys every open client socket', async () => {
    const server = await startDemoVncServer();
    const a = connect(server);
    const b = connect(server);
    await handshakeNone(a);
    await b.read(12); // b stays mid-handshake
    await server.close();
    await Promise.all([a.closed(), b.closed()]);
    expect(a.socket.destroyed && b.socket.destroyed).toBe(true);
    const refused = await new Promise<string>((resolve) => {
      net.connect(server.port, '127.0.0.1').on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? '')).on('connect', () => resolve('connected'));
    });
    expect(refused).toBe('ECONNREFUSED');
  });
});
