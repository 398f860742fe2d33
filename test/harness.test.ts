// The test harness itself: each helper starts the real thing it promises, or the run fails here
// first with a readable reason instead of deep inside a gateway test.
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { describe, expect, inject, it } from 'vitest';
import { WebSocket } from 'ws';
import { launchBrowser } from './helpers/browser.js';
import { createTestDatabase } from './helpers/postgres.js';
import { startWebsockify } from './helpers/websockify.js';
import { readBanner, startXvnc } from './helpers/xvnc.js';

/** RFB server greeting and, after we answer it, the security types offered. */
async function rfbSecurityTypes(port: number): Promise<{ banner: string; types: number[] }> {
  const { connect } = await import('node:net');
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let buffer = Buffer.alloc(0);
    let banner: string | undefined;
    socket.setTimeout(5_000, () => socket.destroy(new Error('RFB handshake timed out')));
    socket.on('error', reject);
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (banner === undefined && buffer.length >= 12) {
        banner = buffer.subarray(0, 12).toString('latin1');
        buffer = buffer.subarray(12);
        socket.write('RFB 003.008\n');
      }
      if (banner !== undefined && buffer.length >= 1 && buffer.length >= 1 + buffer[0]!) {
        const types = [...buffer.subarray(1, 1 + buffer[0]!)];
        socket.destroy();
        resolve({ banner, types });
      }
    });
  });
}

describe('PostgreSQL test cluster', () => {
  it('provides an admin URL on a unix socket, no TCP', () => {
    const url = new URL(inject('pgAdminUrl'));
    expect(url.protocol).toBe('postgresql:');
    expect(url.searchParams.get('host')).toMatch(/^\//);
  });

  it('creates a database that answers queries, and drops it even with a connection open', async () => {
    const database = await createTestDatabase();
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    const { rows } = await client.query<{ db: string; version: string }>('SELECT current_database() AS db, current_setting($1) AS version', [
      'server_version_num',
    ]);
    expect(database.url).toContain(rows[0]!.db);
    expect(Number(rows[0]!.version)).toBeGreaterThanOrEqual(150000);
    client.on('error', () => {}); // the FORCE drop terminates it
    await database.drop();
    await client.end().catch(() => {});
    const again = new pg.Client({ connectionString: database.url });
    await expect(again.connect()).rejects.toThrow(/does not exist/);
  });

  it('gives each call its own database', async () => {
    const [a, b] = await Promise.all([createTestDatabase(), createTestDatabase()]);
    expect(a.url).not.toBe(b.url);
    await Promise.all([a.drop(), b.drop()]);
  });

  it('allows many connections at once (max_connections ~200)', async () => {
    const admin = new pg.Client({ connectionString: inject('pgAdminUrl') });
    await admin.connect();
    const { rows } = await admin.query<{ max_connections: string }>('SHOW max_connections');
    await admin.end();
    expect(Number(rows[0]!.max_connections)).toBeGreaterThanOrEqual(200);
  });
});

describe('Xvnc', () => {
  it('answers RFB 3.8 and offers security type None without a password', async () => {
    const xvnc = await startXvnc();
    try {
      const { banner, types } = await rfbSecurityTypes(xvnc.port);
      expect(banner).toBe('RFB 003.008\n');
      expect(types).toEqual([1]);
    } finally {
      await xvnc.close();
    }
  });

  it('offers VncAuth (type 2) with a password, and runs two servers side by side', async () => {
    const [plain, locked] = await Promise.all([startXvnc(), startXvnc({ password: 'sekrit12' })]);
    try {
      expect(plain.port).not.toBe(locked.port);
      expect(plain.display).not.toBe(locked.display);
      expect((await rfbSecurityTypes(locked.port)).types).toEqual([2]);
    } finally {
      await Promise.all([plain.close(), locked.close()]);
    }
  });

  it('runs an X client that repaints on a click and on a key (seen through a plain RFB client)', async () => {
    // Browser tests click and type into this client; prove here, without the gateway, that it
    // draws and that input repaints it.
    const xvnc = await startXvnc();
    try {
      const first = await framebufferHash(xvnc.port);
      await rfbInput(xvnc.port, { click: [400, 300] });
      const clicked = await pollChange(xvnc.port, first);
      await rfbInput(xvnc.port, { keys: 'hi' });
      await pollChange(xvnc.port, clicked);
    } finally {
      await xvnc.close();
    }
  });

  it('stops listening once closed', async () => {
    const xvnc = await startXvnc();
    await xvnc.close();
    expect(await readBanner(xvnc.port, 1_000)).toBe('ECONNREFUSED');
  });
});

describe('websockify', () => {
  it('upgrades a binary WebSocket and relays the RFB banner of the Xvnc behind it', async () => {
    const xvnc = await startXvnc();
    const websockify = await startWebsockify(xvnc.port);
    try {
      const first = await new Promise<{ protocol: string; data: Buffer }>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${websockify.port}/`, ['binary']);
        ws.once('error', reject);
        ws.once('message', (data: Buffer) => {
          resolve({ protocol: ws.protocol, data });
          ws.close();
        });
      });
      expect(first.protocol).toBe('binary');
      expect(first.data.toString('latin1')).toBe('RFB 003.008\n');
    } finally {
      await Promise.all([websockify.close(), xvnc.close()]);
    }
  });

  it('serves a directory over HTTP with `web`', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cg-web-'));
    await writeFile(join(dir, 'vnc.html'), '<title>noVNC</title>');
    const websockify = await startWebsockify(1, { web: dir });
    try {
      const res = await fetch(`http://127.0.0.1:${websockify.port}/vnc.html`);
      expect(res.status).toBe(200);
      expect(await res.text()).toContain('noVNC');
    } finally {
      await websockify.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('Chromium', () => {
  it('opens about:blank', async () => {
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      await page.goto('about:blank');
      expect(await page.evaluate(() => navigator.userAgent)).toContain('Chrome');
    } finally {
      await browser.close();
    }
  });
});

// A minimal RFB 3.8 client (security None, raw encoding) for the X client checks above.
async function rfbSession<T>(port: number, work: (io: RfbIo) => Promise<T>): Promise<T> {
  const { connect } = await import('node:net');
  const socket = connect({ host: '127.0.0.1', port });
  let buffer = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  socket.on('data', (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    wake?.();
  });
  let failure: Error | undefined;
  socket.on('error', (error) => {
    failure = error;
    wake?.();
  });
  const read = async (n: number): Promise<Buffer> => {
    while (buffer.length < n) {
      if (failure) throw failure;
      await new Promise<void>((resolve) => (wake = resolve));
    }
    const out = buffer.subarray(0, n);
    buffer = buffer.subarray(n);
    return out;
  };
  const io: RfbIo = { read, write: (data) => void socket.write(data) };
  try {
    await read(12);
    io.write(Buffer.from('RFB 003.008\n'));
    const count = (await read(1))[0]!;
    const types = [...(await read(count))];
    if (!types.includes(1)) throw new Error(`no security type None: ${types}`);
    io.write(Buffer.from([1]));
    if ((await read(4)).readUInt32BE(0) !== 0) throw new Error('security handshake failed');
    io.write(Buffer.from([1])); // shared
    const init = await read(24);
    await read(init.readUInt32BE(20)); // desktop name
    // SetPixelFormat: 32 bpp, depth 24, little endian, true colour, r<<16 g<<8 b.
    const format = Buffer.alloc(20);
    format.writeUInt8(0, 0);
    Buffer.from([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]).copy(format, 4);
    io.write(format);
    io.write(Buffer.from([2, 0, 0, 1, 0, 0, 0, 0])); // SetEncodings: raw only
    return await Promise.race([
      work(io),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('RFB exchange timed out')), 5_000).unref()),
    ]);
  } finally {
    socket.destroy();
  }
}

interface RfbIo {
  read(n: number): Promise<Buffer>;
  write(data: Buffer): void;
}

/** SHA-1 of the whole 800x600 framebuffer, fetched raw. */
async function framebufferHash(port: number): Promise<string> {
  return rfbSession(port, async (io) => {
    const request = Buffer.alloc(10);
    request.writeUInt8(3, 0); // FramebufferUpdateRequest, not incremental, the whole screen
    request.writeUInt16BE(800, 6);
    request.writeUInt16BE(600, 8);
    io.write(request);
    const frame = Buffer.alloc(800 * 600 * 4);
    let pixels = 0;
    while (pixels < 800 * 600) {
      const type = (await io.read(1))[0];
      if (type !== 0) throw new Error(`unexpected RFB message ${type}`);
      const rects = (await io.read(3)).readUInt16BE(1);
      for (let i = 0; i < rects; i++) {
        const rect = await io.read(12);
        const w = rect.readUInt16BE(4);
        const h = rect.readUInt16BE(6);
        if (rect.readInt32BE(8) !== 0) throw new Error('non-raw rectangle');
        const x = rect.readUInt16BE(0);
        const y = rect.readUInt16BE(2);
        const data = await io.read(w * h * 4);
        // Place rows in one frame: how Xvnc splits the update into rectangles may vary.
        for (let row = 0; row < h; row++) data.copy(frame, ((y + row) * 800 + x) * 4, row * w * 4, (row + 1) * w * 4);
        pixels += w * h;
      }
    }
    return createHash('sha1').update(frame).digest('hex');
  });
}

async function pollChange(port: number, before: string): Promise<string> {
  let now = before;
  await expect.poll(async () => (now = await framebufferHash(port)), { timeout: 5_000 }).not.toBe(before);
  return now;
}

async function rfbInput(port: number, input: { click?: [number, number]; keys?: string }): Promise<void> {
  await rfbSession(port, async (io) => {
    if (input.click) {
      const [x, y] = input.click;
      for (const mask of [0, 1, 0]) {
        const event = Buffer.alloc(6);
        event.writeUInt8(5, 0); // PointerEvent
        event.writeUInt8(mask, 1);
        event.writeUInt16BE(x, 2);
        event.writeUInt16BE(y, 4);
        io.write(event);
      }
    }
    for (const char of input.keys ?? '') {
      for (const down of [1, 0]) {
        const event = Buffer.alloc(8);
        event.writeUInt8(4, 0); // KeyEvent; Latin-1 keysyms equal their code points
        event.writeUInt8(down, 1);
        event.writeUInt32BE(char.charCodeAt(0), 4);
        io.write(event);
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  });
}
