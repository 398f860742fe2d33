// The byte pump's backpressure and teardown, with a real gateway and real sockets on both sides.
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import { closesNow, closesSince, expectEnding, expectSilentBrowserDropped } from './helpers/endings.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

let gateway: TestGateway;
let database: TestDatabase;
let vmServer: Server;
let nextVm: (socket: Socket) => void = () => {};

beforeAll(async () => {
  // PostgreSQL: starts in a second where the embedded database can take a minute on a busy machine.
  database = await createTestDatabase();
  // No reconciler: its first pass probes ready sessions, and this file's scripted VM takes the
  // first connection it gets as the console's.
  gateway = await startTestGateway({ RECONCILIATION_ENABLED: 'false' }, database.url);
  vmServer = createServer((socket) => {
    socket.on('error', () => {});
    nextVm(socket);
  });
  await new Promise<void>((resolve) => vmServer.listen(0, '127.0.0.1', resolve));
});
// Whatever a test did, its console must be gone afterwards: no socket outlives its console.
afterEach(async () => {
  await vi.waitFor(() => expect(gateway.running.gateway.consoles.live.size).toBe(0), { timeout: 5000 });
});
afterAll(async () => {
  await gateway?.stop();
  await new Promise((resolve) => vmServer.close(resolve));
  await database?.drop();
});

async function consoleTo(): Promise<{ ws: WebSocket; vm: Socket; id: string }> {
  const vmConnected = new Promise<Socket>((resolve) => (nextVm = resolve));
  const { port } = vmServer.address() as { port: number };
  const created = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port } });
  const ws = new WebSocket(`${gateway.wsUrl}?ticket=${await gateway.mint(created.body.id)}`, ['binary']);
  ws.on('error', () => {});
  await new Promise((resolve, reject) => ws.once('open', resolve).once('close', reject));
  return { ws, vm: await vmConnected, id: created.body.id };
}

async function counter(direction: 'down' | 'up'): Promise<number> {
  const value = (await gateway.running.metrics.bytes.get()).values.find((v) => v.labels.direction === direction);
  return value?.value ?? 0;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the byte pump', () => {
  it('stops reading from the VM while the browser is not reading, then delivers everything in order', async () => {
    const { ws, vm } = await consoleTo();
    const socket = (ws as unknown as { _socket: Socket })._socket;
    socket.pause(); // a background tab: nothing is read from the gateway
    const before = await counter('down');
    const block = Buffer.alloc(64 * 1024);
    let offered = 0;
    // The VM writes as fast as the gateway takes it, for a bounded time and amount.
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline && offered < 256 * 1024 * 1024) {
      block.writeUInt32BE(offered / block.length, 0);
      offered += block.length;
      if (!vm.write(Buffer.from(block))) {
        let drained = () => {};
        await Promise.race([new Promise<void>((r) => vm.once('drain', (drained = r))), sleep(200)]);
        vm.off('drain', drained);
      }
    }
    await sleep(500);
    const pulled = (await counter('down')) - before;
    // Kernel socket buffers on loopback hold a few MiB; the gateway itself holds at most ~320 KiB.
    expect(pulled).toBeLessThan(24 * 1024 * 1024);
    expect(offered - pulled).toBeGreaterThan(0);
    // The tab comes back: every byte arrives, in order.
    let received = 0;
    let expectedBlock = 0;
    let carry = Buffer.alloc(0);
    const all = new Promise<void>((resolve) =>
      ws.on('message', (data: Buffer) => {
        carry = Buffer.concat([carry, data]);
        while (carry.length >= block.length) {
          expect(carry.readUInt32BE(0)).toBe(expectedBlock++);
          carry = carry.subarray(block.length);
        }
        received += data.length;
        if (received >= offered) resolve();
      }),
    );
    socket.resume();
    await all;
    expect(received).toBe(offered);
    ws.close();
  });

  it('streams a VM’s bytes to the browser unchanged while reads and writes overlap', async () => {
    const { ws, vm } = await consoleTo();
    // Random bytes, so a read buffer reused while a write still held it shows as a changed hash.
    const total = 64 * 1024 * 1024;
    const sent = createHash('sha256');
    const received = createHash('sha256');
    let got = 0;
    const all = new Promise<void>((resolve) =>
      ws.on('message', (data: Buffer) => {
        received.update(data);
        if ((got += data.length) >= total) resolve();
      }),
    );
    for (let offered = 0; offered < total; ) {
      const chunk = randomBytes(Math.min(total - offered, randomInt(1, 4 * 1024 * 1024)));
      sent.update(chunk);
      offered += chunk.length;
      if (!vm.write(chunk)) await new Promise((resolve) => vm.once('drain', resolve));
    }
    await all;
    expect([got, received.digest('hex')]).toEqual([total, sent.digest('hex')]);
    ws.close();
  });

  it('stops reading from the browser while the VM is not reading', async () => {
    const { ws, vm } = await consoleTo();
    vm.pause();
    const before = await counter('up');
    const chunk = Buffer.alloc(32 * 1024, 1);
    for (let i = 0; i < 2048; i++) ws.send(chunk); // 64 MiB offered
    await sleep(1500);
    const pulled = (await counter('up')) - before;
    expect(pulled).toBeLessThan(24 * 1024 * 1024);
    // While paused the gateway reads nothing from the browser, so it sees the browser leave only
    // once the VM reads again and the pump resumes.
    ws.terminate();
    vm.resume();
  });

  it('closes the browser side with 1000 and a reason when the VM ends the connection, and counts and logs that close', async () => {
    const { ws, vm, id } = await consoleTo();
    const before = await closesNow(gateway);
    const closed = new Promise<[number, string]>((resolve) => ws.on('close', (c, r) => resolve([c, r.toString()])));
    ws.send(Buffer.from('hello'));
    await new Promise((resolve) => vm.once('data', resolve));
    vm.end(Buffer.from('bye'));
    const [code, reason] = await closed;
    expect([code, reason]).toEqual([1000, 'the VM closed the console connection']);
    const line = await expectEnding(gateway, id, { code, reason }, 'VM_CLOSED');
    expect(line).toMatchObject({ bytesDown: 3, bytesUp: 5, kind: 'vnc' });
    expect(await closesSince(gateway, before)).toEqual({ 1000: 1 });
  });

  it('closes the browser side with 4502 when the VM connection is reset', async () => {
    const { ws, vm, id } = await consoleTo();
    const before = await closesNow(gateway);
    const closed = new Promise<[number, string]>((resolve) => ws.on('close', (c, r) => resolve([c, r.toString()])));
    vm.resetAndDestroy();
    const [code, reason] = await closed;
    expect([code, reason]).toEqual([4502, 'lost the connection to the VM console (ECONNRESET)']);
    await expectEnding(gateway, id, { code, reason }, 'VM_CONNECTION_LOST');
    expect(await closesSince(gateway, before)).toEqual({ 4502: 1 });
  });

  it('drops a browser that never answers its close frame after a few seconds, not ws’s 30', async () => {
    const { ws, vm, id } = await consoleTo();
    await expectSilentBrowserDropped(gateway, { id, ws, vm });
  });

  it('closes the VM connection when the browser goes away', async () => {
    const { ws, vm } = await consoleTo();
    const vmClosed = new Promise((resolve) => vm.on('close', resolve));
    ws.terminate();
    await vmClosed;
  });

  it('refuses a browser frame larger than a console needs', async () => {
    const { ws } = await consoleTo();
    const closed = new Promise<number>((resolve) => ws.on('close', (c) => resolve(c)));
    ws.send(Buffer.alloc(1024 * 1024));
    expect(await closed).toBe(1009);
  });
});
