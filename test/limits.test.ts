// Console limits: idle timeout and maximum duration close with 4408, the console cap with 1013,
// kept within the open-file limit.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { loadConfig } from '../src/config.js';
import { consoleCap, createLimits, openFileLimit, RESERVED_FILES } from '../src/console/limits.js';
import { mintTicket } from '../src/console/ticket.js';
import { startServeProcess } from './helpers/cli.js';
import { CONTROL_TOKEN, openConsole, SECRET, startTestGateway, TEST_ENV, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase } from './helpers/postgres.js';

let vm: Server;
const vmSockets = new Set<Socket>();
beforeAll(async () => {
  // A VM console that says nothing unless spoken to, and echoes what it hears.
  vm = createServer((socket) => {
    vmSockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => vmSockets.delete(socket));
    socket.pipe(socket);
  });
  await new Promise<void>((r) => vm.listen(0, '127.0.0.1', r));
});
afterAll(() => {
  for (const s of vmSockets) s.destroy();
  vm.close();
});

async function open(gateway: TestGateway): Promise<WebSocket> {
  const { port } = vm.address() as { port: number };
  const id = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port } })).body.id;
  const ws = new WebSocket(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, ['binary']);
  ws.on('error', () => {});
  await new Promise((resolve, reject) => ws.once('open', resolve).once('close', reject));
  return ws;
}

const closeOf = (ws: WebSocket) => new Promise<[number, string, number]>((r) => ws.on('close', (c, reason) => r([c, reason.toString(), Date.now()])));

describe('console limits', () => {
  let gateway: TestGateway;
  afterAll(() => gateway?.stop());

  it('closes an idle console with 4408, and keeps a busy one open until its maximum duration', async () => {
    gateway = await startTestGateway({ CONSOLE_IDLE_TIMEOUT_SECONDS: '1', CONSOLE_MAX_DURATION_SECONDS: '3' });
    const idle = await open(gateway);
    const idleOpened = Date.now();
    const [code, reason, at] = await closeOf(idle);
    expect([code, reason]).toEqual([4408, 'console idle for 1 s']);
    expect(at - idleOpened).toBeGreaterThanOrEqual(900);

    const busy = await open(gateway);
    const busyOpened = Date.now();
    const keepBusy = setInterval(() => busy.send(Buffer.from('x')), 200);
    try {
      const [busyCode, busyReason, busyAt] = await closeOf(busy);
      expect([busyCode, busyReason]).toEqual([4408, 'maximum console duration of 3 s reached']);
      expect(busyAt - busyOpened).toBeGreaterThanOrEqual(2900);
    } finally {
      clearInterval(keepBusy);
    }
  });
});

describe('the console cap', () => {
  let gateway: TestGateway;
  afterAll(() => gateway?.stop());

  it('refuses consoles beyond MAX_CONSOLES with 1013 and serves again once one closes', async () => {
    gateway = await startTestGateway({ MAX_CONSOLES: '2' });
    const [a] = await Promise.all([open(gateway), open(gateway)]);
    const { port } = vm.address() as { port: number };
    const id = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port } })).body.id;
    expect(await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`)).toMatchObject({
      code: 1013,
      reason: 'the gateway is at its console limit (MAX_CONSOLES=2); try again shortly',
    });
    a!.close();
    await expect.poll(() => gateway.running.gateway.consoles.live.size).toBe(1);
    const again = await open(gateway);
    again.close();
  });
});

describe('the console cap and the open-file limit', () => {
  it('keeps MAX_CONSOLES when two descriptors per console fit, and caps it below the limit when not', () => {
    expect(consoleCap(100, 1024)).toEqual({ maxConsoles: 100 });
    expect(consoleCap(384, 1024)).toEqual({ maxConsoles: 384 });
    expect(consoleCap(20_000, 20_000)).toEqual({ maxConsoles: 9_872, maxConsolesSetBy: 'the open-file limit of 20000, two per console' });
    // MAX_CONSOLES=0 (no cap of its own) is still held to what the descriptors allow.
    expect(consoleCap(0, 1024)).toEqual({ maxConsoles: 384, maxConsolesSetBy: 'the open-file limit of 1024, two per console' });
    expect(consoleCap(50, RESERVED_FILES)).toMatchObject({ maxConsoles: 1 });
    expect(consoleCap(20_000, undefined)).toEqual({ maxConsoles: 20_000 });
  });

  it('warns when MAX_CONSOLES does not fit, says so quietly for MAX_CONSOLES=0, and is silent when it fits', () => {
    const said = (maxConsoles: string) => {
      const lines: { level: string; msg: string }[] = [];
      const log = { warn: (_: object, msg: string) => lines.push({ level: 'warn', msg }), info: (_: object, msg: string) => lines.push({ level: 'info', msg }) };
      createLimits(loadConfig({ ...TEST_ENV, DATA_DIR: tmpdir(), MAX_CONSOLES: maxConsoles }), { refusals: { inc: () => {} } } as never, log as never);
      return lines;
    };
    // No Linux open-file limit lets ten million consoles fit (two descriptors each); one always fits.
    expect(said('10000000')).toEqual([{ level: 'warn', msg: expect.stringContaining('MAX_CONSOLES does not fit the open-file limit') }]);
    expect(said('0')).toEqual([{ level: 'info', msg: 'MAX_CONSOLES=0: consoles are capped by the open-file limit alone (two per console)' }]);
    expect(said('1')).toEqual([]);
  });

  it('reads the limit from /proc/self/limits, and nothing from a file it cannot read', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cg-limits-'));
    try {
      const file = join(dir, 'limits');
      await writeFile(file, 'Limit                     Soft Limit           Hard Limit           Units\nMax open files            4096                 8192                 files\n');
      expect(openFileLimit(file)).toBe(4096);
      expect(openFileLimit(join(dir, 'missing'))).toBeUndefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses with 1013 naming the open-file limit once two descriptors per console no longer fit, and says so as it starts', async () => {
    const database = await createTestDatabase();
    const openFiles = RESERVED_FILES + 2 * 5; // five consoles
    const serve = await startServeProcess({ ...TEST_ENV, DATABASE_URL: database.url, LOG_LEVEL: 'info' }, 60_000, openFiles);
    const sockets: WebSocket[] = [];
    try {
      expect(serve.output()).toContain('MAX_CONSOLES does not fit the open-file limit');
      const { port } = vm.address() as { port: number };
      const res = await fetch(`${serve.url}/api/v1/sessions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${CONTROL_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ protocol: 'vnc', target: { host: '127.0.0.1', port } }),
      });
      const { id } = (await res.json()) as { id: string };
      const wsUrl = `${serve.url.replace('http', 'ws')}/websockify`;
      const ticket = async () => (await mintTicket({ sessionId: id, key: SECRET })).ticket;
      for (let i = 0; i < 5; i++) {
        const ws = new WebSocket(`${wsUrl}?ticket=${await ticket()}`, ['binary']);
        ws.on('error', () => {});
        sockets.push(ws);
        await new Promise((resolve, reject) => ws.once('open', resolve).once('close', reject));
      }
      expect(await openConsole(`${wsUrl}?ticket=${await ticket()}`)).toMatchObject({
        code: 1013,
        reason: `the gateway is at its console limit (the open-file limit of ${openFiles}, two per console); try again shortly`,
      });
    } finally {
      for (const ws of sockets) ws.terminate();
      serve.child.kill('SIGTERM');
      await new Promise((r) => serve.child.once('exit', r));
      await database.drop();
    }
  });
});

describe('a disabled control API', () => {
  let gateway: TestGateway;
  afterAll(() => gateway?.stop());

  it('answers 503 when no CONTROL_TOKEN is configured', async () => {
    gateway = await startTestGateway({ CONTROL_TOKEN: '' });
    const res = await gateway.api('GET', '/api/v1/ports');
    expect(res).toEqual({ status: 503, body: { error: { code: 'CONTROL_DISABLED', message: 'the control API is disabled: set CONTROL_TOKEN' } } });
  });
});
